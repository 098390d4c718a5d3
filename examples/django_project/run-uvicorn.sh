#!/usr/bin/env bash
# The example project under uvicorn (ASGI) on 127.0.0.1:$PORT, behind nginx (nginx.conf).
#   ./run-uvicorn.sh [more uvicorn options]
# Environment: PORT (8000), WORKERS (2), PYTHON (python3), and the project's MTLS_EXAMPLE_PKI,
# MTLS_EXAMPLE_DB (see mtls_example/settings.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# --no-proxy-headers: uvicorn would otherwise take X-Forwarded-For from 127.0.0.1 as the client's
# address, and the trusted-proxy gate would judge an address any local process can forge.
exec "${PYTHON:-python3}" -m uvicorn mtls_example.asgi:application \
    --host 127.0.0.1 \
    --port "${PORT:-8000}" \
    --workers "${WORKERS:-2}" \
    --no-proxy-headers \
    "$@"
