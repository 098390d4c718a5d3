#!/bin/sh
# Serve the example: nginx on https://127.0.0.1:8443 in front of uvicorn on 127.0.0.1:8000.
# Ctrl-C (or SIGTERM) stops both. Run make_demo.py first.
#   BIND=127.0.0.1:8000    where uvicorn listens (nginx.conf's proxy_pass must match)
#   NGINX_CONF=nginx.conf  the nginx configuration to use
#   PYTHON=python3         the interpreter that has mtls_middleware, fastapi and uvicorn
set -eu
here=$(cd "$(dirname "$0")" && pwd)
run="$here/.run"
mkdir -p "$run/tmp"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
conf=$(cd "$here" && realpath "${NGINX_CONF:-nginx.conf}")
bind=${BIND:-127.0.0.1:8000}

"$nginx" -p "$run" -c "$conf" -e stderr -g 'daemon off;' &
nginx_pid=$!
cd "$here"
# --no-proxy-headers: uvicorn would otherwise take the client address from X-Forwarded-For sent
# by 127.0.0.1, and the middleware's trusted-proxy gate must see the real peer.
"${PYTHON:-python3}" -m uvicorn app:create_app --factory \
    --host "${bind%:*}" --port "${bind##*:}" --no-proxy-headers &
app_pid=$!

stop() { kill "$app_pid" "$nginx_pid" 2>/dev/null || true; wait; }
trap 'stop; exit 0' INT TERM
# Whichever ends first takes the other down.
while kill -0 "$nginx_pid" 2>/dev/null && kill -0 "$app_pid" 2>/dev/null; do sleep 1; done
stop
exit 1
