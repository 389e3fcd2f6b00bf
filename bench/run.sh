#!/usr/bin/env bash
# One command for the whole benchmark: bench/run.sh [--quick] [--profile] [--only ...]
# Installs what it needs when missing: Debian's Go + gorilla/websocket (the load
# generator, built offline from /usr/share/gocode), bench/requirements.txt (the Python
# peers: python websockets, picows, Granian among them) and bench/package.json into
# bench/node_modules (npm: Bun, socket.io, @socket.io/redis-adapter; needs node and npm).
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
if ! "$PY" -c "import flask_socketio, flask_sock, websockets, picows, granian" 2>/dev/null; then
    "$PY" -m pip install -q -r bench/requirements.txt
fi
if [ ! -x bench/node_modules/.bin/bun ] || [ ! -d bench/node_modules/@socket.io/redis-adapter ]; then
    if command -v npm >/dev/null; then
        # bun's binary comes in its platform package (@oven/bun-linux-x64), an npm dependency
        (cd bench && npm ci --no-audit --no-fund --loglevel=error) ||
            echo "bench: npm ci failed: the Bun and Socket.IO-node peers will not run" >&2
    else
        echo "bench: no npm: the Bun and Socket.IO-node peers will not run (apt-get install nodejs npm)" >&2
    fi
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" bench/run.py "$@"
