#!/usr/bin/env bash
# The example with a browser login (mtls_example/settings_login.py): two TLS listeners, no proxy.
#   https://localhost:$PORT        the site: gunicorn with TLS, asking for no client certificate
#   https://localhost:$LOGIN_PORT  the certificate login: mtls-admin serve, which asks for one
# Ctrl-C (or SIGTERM) stops both; when one ends, the other is stopped too.
# Environment: PORT (8444), LOGIN_PORT (8443), WORKERS (gunicorn's, 2), PYTHON (python3),
# GUNICORN_CMD_ARGS (more gunicorn options), and the project's MTLS_EXAMPLE_PKI (pki, with
# server.pem, server.key and root.pem), MTLS_EXAMPLE_DB, DJANGO_SECRET_KEY (see settings_login.py).
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")"
python=${PYTHON:-python3}
port=${PORT:-8444}
login_port=${LOGIN_PORT:-8443}
pki=${MTLS_EXAMPLE_PKI:-pki}
export DJANGO_SETTINGS_MODULE=mtls_example.settings_login
# Where the certificate login view sends people back to, and where the button posts.
export MTLS_EXAMPLE_SITE_URL="https://localhost:$port"
export MTLS_EXAMPLE_LOGIN_URL="https://localhost:$login_port/login/certificate/"

# No --ca-certs / --cert-reqs: the site never asks for a certificate, so browsers never prompt.
"$python" -m gunicorn mtls_example.wsgi:application \
    --bind "127.0.0.1:$port" --workers "${WORKERS:-2}" \
    --certfile "$pki/server.pem" --keyfile "$pki/server.key" &
site_pid=$!
# Asks for a client certificate but completes the handshake without one (or with a bad one):
# the view judges it, records the attempt and answers a refusal with the login page.
"$python" -m mtls_middleware.admin.cli serve mtls_example.wsgi:application \
    --host 127.0.0.1 --port "$login_port" \
    --cert "$pki/server.pem" --key "$pki/server.key" --trust "$pki/root.pem" &
login_pid=$!

stop() { kill "$site_pid" "$login_pid" 2>/dev/null || true; wait; }
trap 'stop; exit 0' INT TERM
# Whichever ends first takes the other down.
while kill -0 "$site_pid" 2>/dev/null && kill -0 "$login_pid" 2>/dev/null; do sleep 1; done
stop
exit 1
