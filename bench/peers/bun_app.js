// The Bun peer, the ceiling: Bun.serve's WebSocket server (uWebSockets-derived, in Zig/C++),
// the same echo / chat service as bench/peers/websockets_app.py (plain JSON, `?id=` instead
// of a token, no checks), plus `POST /api/broadcast` like bench/peers/flask_sock_app.py.
//
// Chat connections subscribe to one topic and a broadcast is `server.publish` to it (every
// subscriber, the sender too, as the other peers do); Bun queues per connection up to its
// backpressure limit and drops a message for a connection over it, so a never-reading
// subscriber does not stall the others. Compression off, 64 KiB messages at most.
//
//     bench/node_modules/.bin/bun bench/peers/bun_app.js [port]
//
// It prints the two lines bench/run.py waits for ("Listening at:", "Booting worker with pid:").

const TOPIC = "chat";

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.argv[2] || 0),
  async fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return Response.json({ status: "ok" });
    if (url.pathname === "/api/broadcast" && req.method === "POST") {
      const body = await req.json();
      const text = JSON.stringify({ type: "broadcast", from: "api", data: body.data, ts: Date.now() / 1000 });
      server.publish(TOPIC, text);
      return Response.json({ delivered: server.subscriberCount(TOPIC) });
    }
    if (url.pathname === "/ws/echo" || url.pathname === "/ws/chat") {
      const data = { chat: url.pathname === "/ws/chat", id: url.searchParams.get("id") || "anonymous" };
      if (server.upgrade(req, { data })) return undefined;
      return new Response("upgrade failed", { status: 400 });
    }
    return new Response("not found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 65536,
    open(ws) {
      if (!ws.data.chat) return;
      ws.subscribe(TOPIC);
      ws.send(JSON.stringify({ type: "welcome", client_id: ws.data.id }));
    },
    message(ws, message) {
      if (!ws.data.chat) {
        ws.send(message);
        return;
      }
      const msg = JSON.parse(message);
      if (msg.type === "broadcast") {
        const text = JSON.stringify({ type: "broadcast", from: ws.data.id, data: msg.data, ts: Date.now() / 1000 });
        server.publish(TOPIC, text);
      }
    },
  },
});

console.log(`Listening at: http://127.0.0.1:${server.port}`);
console.log(`Booting worker with pid: ${process.pid}`);
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
