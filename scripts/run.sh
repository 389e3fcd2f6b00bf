#!/usr/bin/env bash
# Run wsapp on its embedded default: one gevent worker, in-process registry. With no
# WSAPP_JWT_SECRET or WSAPP_JWT_PUBLIC_KEY it runs in demo mode (WSAPP_DEMO=1: a
# generated secret, tokens for anyone at POST /api/demo/token, loopback Host values
# only). Open http://127.0.0.1:8000/ for the demo page; WSAPP_PORT=8001 picks another port.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${WSAPP_JWT_SECRET:-}" ] && [ -z "${WSAPP_JWT_PUBLIC_KEY:-}" ]; then
  export WSAPP_DEMO="${WSAPP_DEMO:-1}"
fi
exec .venv/bin/gunicorn -c gunicorn.conf.py app:app
