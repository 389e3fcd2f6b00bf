#!/usr/bin/env bash
# One command for the whole benchmark: bench/run.sh [--quick] [--profile] [--only ...]
# Installs what it needs when missing: Debian's Go + gorilla/websocket (the load
# generator, built offline from /usr/share/gocode) and bench/requirements.txt (the peers,
# python websockets among them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/gorilla/websocket ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-gorilla-websocket-dev
    else
        echo "need: sudo apt-get install golang-go golang-github-gorilla-websocket-dev" >&2; exit 1
    fi
fi
if ! "$PY" -c "import flask_socketio, flask_sock, websockets" 2>/dev/null; then
    "$PY" -m pip install -q -r bench/requirements.txt
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" bench/run.py "$@"
