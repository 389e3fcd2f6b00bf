// The Socket.IO Node peer: socket.io 4 on Node's http server, the same echo / broadcast
// service as bench/peers/socketio_app.py (Flask-SocketIO), no auth, plus
// `POST /api/broadcast`. With REDIS_URL set it uses @socket.io/redis-adapter (node-redis
// clients), so a broadcast also goes to every other node on that Redis: the cross-node setup.
//
//     node bench/peers/socketio_node.js [port]          # REDIS_URL=redis://... for the adapter
//
// Clients talk Engine.IO 4 over a bare WebSocket (`/socket.io/?EIO=4&transport=websocket`).
// It prints the two lines bench/run.py waits for ("Listening at:", "Booting worker with pid:").

const http = require("node:http");
const { Server } = require("socket.io");

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

async function main() {
  const httpServer = http.createServer();
  // socket.io answers /socket.io/ itself; everything else comes here
  const io = new Server(httpServer, { cors: { origin: "*" }, perMessageDeflate: false });
  httpServer.on("request", (req, res) => {
    if (req.url.startsWith("/socket.io/")) return;
    if (req.url === "/healthz") return json(res, 200, { status: "ok" });
    if (req.url === "/api/broadcast" && req.method === "POST") {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        io.emit("broadcast", JSON.parse(Buffer.concat(chunks).toString()).data);
        json(res, 200, { delivered: null });
      });
      return;
    }
    json(res, 404, { error: "not found" });
  });
  if (process.env.REDIS_URL) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on("connection", (socket) => {
    socket.on("echo", (data) => socket.emit("echo", data));
    socket.on("broadcast", (data) => io.emit("broadcast", data));
  });
  httpServer.listen({ host: "127.0.0.1", port: Number(process.argv[2] || 0), backlog: 2048 }, () => {
    console.log(`Listening at: http://127.0.0.1:${httpServer.address().port}`);
    console.log(`Booting worker with pid: ${process.pid}`);
  });
  process.on("SIGTERM", () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
