#!/usr/bin/env bash
# Run wsapp on its embedded default: one gevent worker, in-process registry, demo mode
# unless WSAPP_JWT_SECRET is set. Open http://127.0.0.1:8000/ for the demo page.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gunicorn -c gunicorn.conf.py app:app
