#!/usr/bin/env bash
# Install what the tests need (Python packages; Debian's nginx, redis-server, chromium),
# then check style and types and run the whole test suite against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
.venv/bin/ruff format --check wsapp tests bench app.py gunicorn.conf.py
.venv/bin/ruff check wsapp tests bench app.py gunicorn.conf.py
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
