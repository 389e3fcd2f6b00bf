"""The plain flask-sock + gevent app the issue compares with: a dict of sockets.

What a first version of a chat service usually looks like: no token check, no send
queues, every broadcast written to every socket in turn by the sender's greenlet. One
subscriber that stops reading blocks that loop, and with it everyone else.

    gunicorn -k gevent -w 1 bench.peers.flask_sock_app:app
"""

import itertools
import json
import time

from flask import Flask, jsonify, request
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)
clients = {}  # connection number -> simple_websocket.Server
_numbers = itertools.count()


def _broadcast(sender, data):
    text = json.dumps({"type": "broadcast", "from": sender, "data": data, "ts": time.time()})
    delivered = 0
    for ws in list(clients.values()):
        try:
            ws.send(text)
            delivered += 1
        except Exception:  # a closed socket: its own handler removes it
            pass
    return delivered


@sock.route("/ws/echo")
def echo(ws):
    while True:
        ws.send(ws.receive())


@sock.route("/ws/chat")
def chat(ws):
    client_id = request.args.get("id", "anonymous")
    number = next(_numbers)
    clients[number] = ws
    try:
        ws.send(json.dumps({"type": "welcome", "client_id": client_id}))
        while True:
            msg = json.loads(ws.receive())
            if msg.get("type") == "broadcast":
                _broadcast(client_id, msg.get("data"))
    finally:
        clients.pop(number, None)


@app.post("/api/broadcast")
def http_broadcast():
    body = request.get_json()
    return jsonify(delivered=_broadcast("api", body["data"]))


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
