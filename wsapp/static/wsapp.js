// wsapp.js: the browser (and Node >= 22) client for wsapp's chat protocol (docs/protocol.md).
// One dependency-free ES module, served by wsapp's blueprint at /wsapp.js.
//
//   import { WsappClient } from "/wsapp.js";
//   const client = new WsappClient("wss://example.com/ws/chat", {
//     getToken: async () => (await fetch("/my/token")).text(),   // called for every connection and refresh
//     rooms: ["lobby"],                                          // joined, and joined again after a reconnect
//     onStatus: (s) => console.log(s.status, s.code, s.reason),
//   });
//   client.on("room", (m) => show(m.room, m.from, m.data));
//   client.on("gap", (g) => reload(g.stream));                   // recovered: false: reload that state
//   await client.join("ops"); await client.room("ops", "hello"); await client.direct("bob", {hi: 1});
//
// Reconnects with exponential backoff and jitter (not after a close it cannot fix: 1000
// by us, 1002/1003/1007/1009/1010, 4400-4499 but 4401 with a new token, a refusal that
// `onRefusal` says is final); every reconnect opens ?resume=1 and hands back the last
// position of each stream (broadcast, direct, each room), so what was sent while away
// arrives once; the token is refreshed (a `refresh` frame) before its `exp`. With
// `raw: true` it keeps a connection to a route that is not chat (echo, your own
// `@ws.route`) open the same way, and hands its messages over as they are (`data` events).

const NO_RETRY = new Set([1002, 1003, 1007, 1009, 1010]);
const EMPTY = Object.freeze({ offset: 0, epoch: "" });

/** The claims of a JWT (unverified: only to read `exp`), or null. */
export function decodeJwt(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const text = typeof atob === "function" ? atob(padded) : Buffer.from(padded, "base64").toString("binary");
    return JSON.parse(decodeURIComponent(escape(text)));
  } catch (_e) {
    return null;
  }
}

/** An `error` frame answering one of our frames (or a timeout, or the connection closing). */
export class WsappError extends Error {
  constructor(code, message, frame) {
    super(`${code}: ${message || ""}`);
    this.name = "WsappError";
    this.code = code;
    this.frame = frame || null;
  }
}

/** True when the token's `exp` (read, not verified) has passed. */
function expired(token) {
  const claims = token ? decodeJwt(token) : null;
  return !!claims && typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
}

export class WsappClient {
  constructor(url, options = {}) {
    this.url = url;
    this.getToken = options.getToken || (() => null);
    this.onStatus = options.onStatus || null;
    this.onRefusal = options.onRefusal || null; // a close before the open: (detail) => false stops retrying
    this.raw = options.raw === true; // not a chat route: no chat frames, messages as `data` events
    this.bearer = options.bearer === true; // offer ["bearer", token] instead of [token]
    this.reconnect = options.reconnect !== false; // false: no retry after any close
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10000;
    this.backoffBaseMs = options.backoffBaseMs ?? 1000;
    this.backoffMaxMs = options.backoffMaxMs ?? 30000;
    this.stableMs = options.stableMs ?? 10000; // open this long and the backoff starts over
    this.refreshAheadMs = options.refreshAheadMs ?? 60000;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.rooms = new Set(options.rooms || []); // wanted: joined again on every connection
    this.members = new Map(); // room -> Set of client ids (joined, presence, resumed)
    this.positions = new Map(); // "broadcast" | "direct" | "room:NAME" -> {offset, epoch}
    this.status = "idle";
    this.clientId = null;
    this.connId = null;
    this.attempt = 0;
    this._listeners = new Map();
    this._pending = new Map(); // frame id -> {resolve, reject, timer}
    this._seq = 0;
    this._ws = null;
    this._token = null;
    this._wanted = false;
    this._retryTimer = null;
    this._refreshTimer = null;
    this._openedAt = 0;
    this._resuming = false;
    this._gen = 0; // counts connection attempts: a late answer about an older one is ignored
    if (options.autoConnect !== false) this.connect();
  }

  // ---- events ------------------------------------------------------------------------

  /** `message` (every frame), `welcome`, `broadcast`, `direct`, `room`, `joined`, `left`,
   * `presence`, `resumed`, `gap` ({stream}), `status`, `error` (frames without an id),
   * `refreshed`; `data` (every message as received, with `raw: true`). */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, detail) {
    for (const fn of this._listeners.get(event) || []) {
      try {
        fn(detail);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  _setStatus(status, extra = {}) {
    this.status = status;
    const detail = { status, attempt: this.attempt, ...extra };
    if (this.onStatus) this.onStatus(detail);
    this._emit("status", detail);
  }

  // ---- the connection ----------------------------------------------------------------

  /** Connect (and keep connected, until `close()`). */
  connect() {
    if (this._wanted) return;
    this._wanted = true;
    this.attempt = 0;
    this._open();
  }

  /** Close for good (1000): no reconnect; pending promises are rejected. */
  close(code = 1000, reason = "") {
    this._wanted = false;
    this._gen += 1; // a getToken() or onRefusal() still running is forgotten
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    if (this._ws) this._ws.close(code, reason);
    else this._setStatus("closed", { opened: false }); // nothing was open: no close to report
  }

  async _open() {
    clearTimeout(this._retryTimer);
    const gen = ++this._gen;
    this._setStatus(this.attempt ? "reconnecting" : "connecting");
    let token;
    try {
      token = await this.getToken({ purpose: "connect" });
    } catch (err) {
      if (gen !== this._gen) return;
      return this._closed({ code: 1006, reason: `getToken failed: ${err && err.message}` }, false, gen);
    }
    if (!this._wanted || gen !== this._gen) return;
    if (this.attempt > 0 && expired(token)) {
      // a retry with a token whose exp has passed would be refused again: a refusal we
      // cannot fix (a first connection asks the server, whose clock and leeway decide)
      this._wanted = false;
      return this._setStatus("refused", { code: 4401, reason: "token expired", error: "token_expired", opened: false });
    }
    this._token = token;
    // a first connection joins its rooms from now; every later one resumes from its positions
    this._resuming = !this.raw && this.positions.size > 0;
    const url = this._resuming ? this.url + (this.url.includes("?") ? "&" : "?") + "resume=1" : this.url;
    let ws;
    try {
      const protocols = !token ? [] : this.bearer ? ["bearer", token] : [token];
      ws = new this.WebSocket(url, protocols);
    } catch (err) {
      // a SyntaxError: the token has characters a subprotocol may not hold; it never will
      this._wanted = false;
      return this._setStatus("refused", { code: 1006, reason: String((err && err.message) || err), error: "bad_token", opened: false });
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._openedAt = Date.now();
      if (this.raw) this._setStatus("open", {});
    };
    ws.onmessage = (ev) => (this.raw ? this._emit("data", ev.data) : this._onFrame(ev.data));
    ws.onclose = (ev) => {
      if (this._ws === ws) this._ws = null;
      if (gen !== this._gen && this._wanted) return; // close() then connect(): a newer attempt owns the state
      this._closed(ev, opened, gen, token);
    };
  }

  async _closed(ev, opened, gen, token) {
    clearTimeout(this._refreshTimer);
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new WsappError("closed", `the connection closed (${ev.code}) before an answer`));
      this._pending.delete(id);
    }
    this.members.clear(); // the server dropped this connection from every room; a resume brings them back
    const code = ev.code;
    const reason = ev.reason || "";
    if (!this._wanted) return this._setStatus("closed", { code, reason, opened }); // close() asked for it
    if (opened && Date.now() - this._openedAt >= this.stableMs) this.attempt = 0;
    let retry = this.reconnect && !NO_RETRY.has(code) && !(code >= 4400 && code <= 4499 && code !== 4401);
    if (code === 1000 && opened) retry = this.reconnect; // the server ended it normally: come back
    let error;
    if (retry && code === 4401) {
      // the token expired: come back only with a new one (asked now, not after a delay)
      let next = null;
      try {
        next = await this.getToken({ purpose: "connect" });
      } catch (_e) {
        next = null;
      }
      if (gen !== this._gen || !this._wanted) return;
      if (!next || next === token || expired(next)) {
        retry = false;
        error = "token_expired";
      }
    }
    if (retry && !opened && this.onRefusal) {
      // a browser is not shown why a handshake was refused: let the app find out (and stop)
      let verdict;
      try {
        verdict = await this.onRefusal({ code, reason, token, attempt: this.attempt });
      } catch (_e) {
        verdict = undefined;
      }
      if (gen !== this._gen || !this._wanted) return;
      if (verdict === false) retry = false;
      retry = retry && this.reconnect;
    }
    if (!retry) {
      this._wanted = false;
      return this._setStatus(opened ? "closed" : "refused", error ? { code, reason, opened, error } : { code, reason, opened });
    }
    // exponential backoff with jitter: half the ceiling plus a random half
    const ceiling = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this._setStatus("reconnecting", { code, reason, delay, opened });
    this._retryTimer = setTimeout(() => {
      if (this._wanted) this._open();
    }, delay);
  }

  _sendFrame(frame) {
    return this.sendRaw(JSON.stringify(frame));
  }

  /** Send `data` (text, or binary) as it is, on any route; false when not open. */
  sendRaw(data) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(data);
    return true;
  }

  /** A frame with an id; a Promise settled by its `ack` (resolved) or `error` (rejected). */
  request(frame) {
    const id = ++this._seq;
    return new Promise((resolve, reject) => {
      if (!this._sendFrame({ ...frame, id })) {
        reject(new WsappError("not_connected", "the connection is not open"));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new WsappError("timeout", `no answer within ${this.ackTimeoutMs} ms`));
      }, this.ackTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
    });
  }

  /** Join `room` (and again after every reconnect). */
  async join(room) {
    const ack = await this.request({ type: "join", room });
    this.rooms.add(room);
    return ack;
  }

  async leave(room) {
    this.rooms.delete(room);
    this.members.delete(room);
    this.positions.delete(`room:${room}`);
    return this.request({ type: "leave", room });
  }

  /** A broadcast to every connection (admins only, per the server's rules). */
  send(data) {
    return this.request({ type: "broadcast", data });
  }

  direct(to, data) {
    return this.request({ type: "direct", to, data });
  }

  room(room, data) {
    return this.request({ type: "room", room, data });
  }

  // ---- frames ------------------------------------------------------------------------

  _remember(key, pos) {
    if (pos && typeof pos.offset === "number" && typeof pos.epoch === "string") {
      this.positions.set(key, { offset: pos.offset, epoch: pos.epoch });
    }
  }

  _onFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_e) {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    const stream = msg.type === "room" ? `room:${msg.room}` : msg.type === "broadcast" || msg.type === "direct" ? msg.type : null;
    if (stream && msg.offset !== undefined) this._remember(stream, msg);
    this._emit("message", msg);
    switch (msg.type) {
      case "welcome":
        this._onWelcome(msg);
        break;
      case "resumed":
        this._onResumed(msg);
        break;
      case "joined":
        // the answer to our join, or a join the server made for us: a room we are in either way
        this.rooms.add(msg.room);
        if (msg.offset !== undefined) this._remember(`room:${msg.room}`, msg);
        if (msg.members || !this.members.has(msg.room)) this.members.set(msg.room, new Set(msg.members || []));
        this._emit("joined", msg);
        break;
      case "left":
        this.rooms.delete(msg.room);
        this.members.delete(msg.room);
        this.positions.delete(`room:${msg.room}`);
        this._emit("left", msg);
        break;
      case "presence": {
        const set = this.members.get(msg.room);
        if (set && msg.event === "join") set.add(msg.client_id);
        if (set && msg.event === "leave") set.delete(msg.client_id);
        this._emit("presence", msg);
        break;
      }
      case "ack":
      case "error": {
        const p = msg.id !== undefined ? this._pending.get(msg.id) : null;
        if (p) {
          clearTimeout(p.timer);
          this._pending.delete(msg.id);
          if (msg.type === "ack") p.resolve(msg);
          else p.reject(new WsappError(msg.code, msg.message, msg));
        } else if (msg.type === "error") {
          this._emit("error", msg);
        }
        break;
      }
      default:
        this._emit(msg.type, msg);
    }
  }

  _onWelcome(msg) {
    if (this.clientId !== null && this.clientId !== msg.client_id) this.positions.clear(); // another client: nothing to resume
    this.clientId = msg.client_id;
    this.connId = msg.conn_id;
    if (this._resuming) {
      const frame = { type: "resume", rooms: {} };
      for (const key of ["broadcast", "direct"]) if (this.positions.has(key)) frame[key] = this.positions.get(key);
      for (const room of this.rooms) frame.rooms[room] = this.positions.get(`room:${room}`) || EMPTY;
      this.request(frame).catch(() => {});
    } else {
      for (const [key, pos] of Object.entries(msg.streams || {})) this._remember(key, pos);
      for (const room of this.rooms) this.request({ type: "join", room }).catch((err) => this._emit("error", err.frame || err));
    }
    this._setStatus("open", { clientId: msg.client_id, connId: msg.conn_id, resuming: this._resuming });
    this._emit("welcome", msg);
    this._scheduleRefresh();
  }

  _onResumed(msg) {
    const gaps = [];
    let replayed = 0;
    for (const key of ["broadcast", "direct"]) {
      const r = msg[key];
      if (!r) continue;
      this._remember(key, r);
      if (r.recovered) replayed += r.replayed || 0;
      else gaps.push(key);
    }
    for (const [room, r] of Object.entries(msg.rooms || {})) {
      if (r.error) {
        this.rooms.delete(room);
        this.positions.delete(`room:${room}`);
        this._emit("error", { type: "error", code: r.error, message: r.message, room });
        continue;
      }
      this._remember(`room:${room}`, r);
      this.members.set(room, new Set(r.members || []));
      if (r.recovered) replayed += r.replayed || 0;
      else gaps.push(`room:${room}`);
    }
    for (const stream of gaps) this._emit("gap", { stream, recovered: false });
    this._emit("resumed", { recovered: gaps.length === 0, replayed, gaps, frame: msg });
  }

  // ---- token refresh -----------------------------------------------------------------

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (this.raw) return; // `refresh` is a chat frame
    const claims = this._token ? decodeJwt(this._token) : null;
    if (!claims || typeof claims.exp !== "number") return;
    const left = claims.exp * 1000 - Date.now();
    const wait = Math.max(500, left - Math.min(this.refreshAheadMs, left / 2));
    this._refreshTimer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  /** Swap `token` (by default a new one from `getToken({purpose: "refresh"})`) in without
   * reconnecting (a `refresh` frame); null when there is no new token. */
  async refresh(token) {
    if (token === undefined) token = await this.getToken({ purpose: "refresh" });
    if (!token || token === this._token) return null;
    const ack = await this.request({ type: "refresh", token });
    this._token = token;
    this._emit("refreshed", { token });
    this._scheduleRefresh();
    return ack;
  }
}
