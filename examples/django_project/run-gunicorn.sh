#!/usr/bin/env bash
# The example project under gunicorn (WSGI) on 127.0.0.1:$PORT, behind nginx (nginx.conf).
#   ./run-gunicorn.sh [more gunicorn options]
# Environment: PORT (8000), WORKERS (2), PYTHON (python3), and the project's MTLS_EXAMPLE_PKI,
# MTLS_EXAMPLE_DB (see mtls_example/settings.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# Loopback only: the app believes certificate headers from 127.0.0.1 (nginx) alone.
exec "${PYTHON:-python3}" -m gunicorn mtls_example.wsgi:application \
    --bind "127.0.0.1:${PORT:-8000}" \
    --workers "${WORKERS:-2}" \
    "$@"
