#!/usr/bin/env bash
# Make .venv with the Python packages the service needs. With --system (the test
# command), also Debian's packages the tests run for real: nginx, redis-server,
# chromium. Installs only what is missing; safe to run again. apt-get needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${1:-}" = "--system" ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v node >/dev/null 2>&1 || need+=(nodejs)  # the JavaScript client's Node test (Node 20+)
fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
fi
if [ "${1:-}" = "--system" ]; then
  # the tests start their own nginx and redis-server on free ports; the packages'
  # own services are not needed
  (service nginx stop || true) >/dev/null 2>&1
  (service redis-server stop || true) >/dev/null 2>&1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
req=requirements.txt
[ "${1:-}" = "--system" ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$req")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$stamp"
fi
