#!/bin/sh
# Serve the example: nginx on https://127.0.0.1:8443 in front of gunicorn on 127.0.0.1:8000.
# Ctrl-C (or SIGTERM) stops both. Run make_demo.py first.
#   BIND=127.0.0.1:8000  where gunicorn listens (nginx.conf's proxy_pass must match)
#   NGINX_CONF=nginx.conf  the nginx configuration to use
#   APP='app:create_app()'  the app gunicorn serves (login_app:create_app() with nginx-login.conf)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
run="$here/.run"
mkdir -p "$run/tmp"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
conf=$(cd "$here" && realpath "${NGINX_CONF:-nginx.conf}")

"$nginx" -p "$run" -c "$conf" -e stderr -g 'daemon off;' &
nginx_pid=$!
cd "$here"
python3=${PYTHON:-python3}
"$python3" -m gunicorn --bind "${BIND:-127.0.0.1:8000}" --workers 2 --access-logfile - "${APP:-app:create_app()}" &
app_pid=$!

stop() { kill "$app_pid" "$nginx_pid" 2>/dev/null || true; wait; }
trap 'stop; exit 0' INT TERM
# Whichever ends first takes the other down.
while kill -0 "$nginx_pid" 2>/dev/null && kill -0 "$app_pid" 2>/dev/null; do sleep 1; done
stop
exit 1
