"""The Flask-SocketIO + gevent peer: the same echo / broadcast service in Socket.IO.

Clients talk Engine.IO 4 over a bare WebSocket (`/socket.io/?EIO=4&transport=websocket`);
python-engineio uses simple-websocket under gunicorn's gevent worker.

    gunicorn -k gevent -w 1 bench.peers.socketio_app:app
"""

from flask import Flask, jsonify, request
from flask_socketio import SocketIO, emit

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*")


@socketio.on("echo")
def on_echo(data):
    emit("echo", data)


@socketio.on("broadcast")
def on_broadcast(data):
    emit("broadcast", data, broadcast=True)


@app.post("/api/broadcast")
def http_broadcast():
    socketio.emit("broadcast", request.get_json()["data"])
    return jsonify(delivered=None)


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
