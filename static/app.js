/* wsapp demo page: the UI only. The connections (reconnect with backoff, resume, token
 * refresh, acks) are wsapp.js's, served by the blueprint at /wsapp.js (docs/javascript.md).
 * An ES module: plain ES2020, no build step, nothing loaded from elsewhere.
 *
 * Every piece of text that came from the server or the user goes into the DOM through
 * textContent (see el()); innerHTML is never used with data.
 */
import { WsappClient, decodeJwt } from "/wsapp.js";

const $ = (id) => document.getElementById(id);

/** Create an element with text content and attributes (never HTML). */
function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "className") node.className = v;
    else node.setAttribute(k, v);
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

/** A field wrapper is shown and its control enabled together, so hidden fields never take focus. */
function toggleField(wrapper, control, on) {
  wrapper.hidden = !on;
  control.disabled = !on;
}

function timeStr(tsSeconds) {
  const d = tsSeconds ? new Date(tsSeconds * 1000) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function dataText(data) {
  if (typeof data === "string") return data;
  try {
    return JSON.stringify(data);
  } catch (_e) {
    return String(data);
  }
}

function appendLog(list, node, max = 500) {
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.appendChild(node);
  while (list.children.length > max) list.removeChild(list.firstChild);
  if (stick) list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------- close codes

const CLOSE_MEANINGS = {
  1000: "normal closure",
  1001: "going away (server shutting down or page leaving)",
  1002: "protocol error",
  1003: "unsupported data",
  1005: "no status code in the close frame",
  1006: "abnormal: no close frame (handshake refused or connection dropped)",
  1007: "invalid data (e.g. bad UTF-8)",
  1008: "policy violation",
  1009: "message too big",
  1011: "internal server error",
  1012: "service restart",
  1013: "try again later",
  4401: "token expired",
};

function closeMeaning(code) {
  if (CLOSE_MEANINGS[code]) return CLOSE_MEANINGS[code];
  if (code >= 4000 && code <= 4999) return "application-defined";
  return "unknown";
}

// ---------------------------------------------------------------- token

const tokenBox = $("token");
const tokenInfo = $("token-info");
const tokenError = $("token-error");

function currentToken() {
  return tokenBox.value.trim();
}

function looksLikeJwt(token) {
  // the same test the server applies to a raw subprotocol (wsapp/auth.py)
  return token.split(".").length === 3 && token.startsWith("ey");
}

function claimsOf(token) {
  const claims = looksLikeJwt(token) ? decodeJwt(token) : null; // decoded, not verified
  return claims && typeof claims === "object" ? claims : null;
}

function isAdmin(claims) {
  return (Array.isArray(claims.roles) && claims.roles.includes("admin")) || claims.role === "admin";
}

function renderTokenInfo() {
  const token = currentToken();
  if (!token) {
    tokenInfo.textContent = "No token yet.";
    return;
  }
  const claims = claimsOf(token);
  if (!claims) {
    tokenInfo.textContent = "This does not look like a JWT; the server will refuse it.";
    return;
  }
  const who = claims.sub ?? claims.ID ?? claims.Username ?? "?";
  let exp = "no exp";
  if (typeof claims.exp === "number") {
    const left = Math.round(claims.exp - Date.now() / 1000);
    exp = left > 0 ? `expires in ${Math.round(left / 60)} min` : "EXPIRED";
  }
  tokenInfo.textContent = `For “${who}” · ${isAdmin(claims) ? "admin" : "not admin"} · ${exp} (decoded here, verified only by the server)`;
}

tokenBox.addEventListener("input", () => {
  renderTokenInfo();
  renderCurl();
});

$("client-id").value = "user-" + Math.random().toString(16).slice(2, 6);

/** A token from the demo route (POST /api/demo/token); throws with a readable message. */
async function demoToken(clientId, admin) {
  const resp = await fetch("/api/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_id: clientId, admin }),
  });
  const body = await resp.json().catch(() => null);
  if (resp.status === 404) {
    throw new Error(
      "Demo tokens are off on this server (WSAPP_JWT_SECRET is set). " +
        "Mint one with: flask --app app token <client_id> [--admin], then paste it."
    );
  }
  if (!resp.ok || !body || typeof body.token !== "string") {
    const why = body && body.message ? body.message : `HTTP ${resp.status}`;
    throw new Error(`Could not get a token: ${why}`);
  }
  return body.token;
}

$("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  show(tokenError, false);
  const btn = $("get-token");
  btn.disabled = true;
  try {
    tokenBox.value = await demoToken($("client-id").value.trim(), $("admin").checked);
    renderTokenInfo();
    renderCurl();
  } catch (err) {
    tokenError.textContent = err.message || String(err);
    show(tokenError, true);
  } finally {
    btn.disabled = false;
  }
});

// ---------------------------------------------------------------- refusal probe

/* A browser cannot see the HTTP status of a refused WebSocket handshake: the socket
 * just closes with 1006 and no reason. To tell the user why, we ask an HTTP route
 * that checks tokens the same way the handshake does (auth.verify_token):
 * GET /api/clients with Authorization: Bearer <token>.
 *   401 -> its JSON error/message (missing_token, invalid_token, token_expired,
 *          token_not_yet_valid) is the handshake's refusal too;
 *   403 forbidden (not admin) or 200 -> the token itself is valid, so the refusal
 *          was something the API cannot show: Origin, too many connections, server
 *          busy or shutting down (the server log names it);
 *   network error -> the server is unreachable.
 * It is a second request, so it is a diagnosis, not the handshake's own answer.
 * wsapp.js calls it through its `onRefusal` option: a token refusal stops the retries. */
async function probeRefusal(token, offer) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let resp;
  try {
    resp = await fetch("/api/clients", { headers, cache: "no-store" });
  } catch (_e) {
    return { kind: "unreachable", code: "unreachable", text: "The server is unreachable." };
  }
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    let text = `${body.error || "unauthorized"}: ${body.message || "the token was refused"}`;
    if (token && offer === "raw" && !looksLikeJwt(token)) {
      text += " (a raw subprotocol that does not look like a JWT is ignored, so the handshake saw no token)";
    }
    text += ". (Found by offering the same token to GET /api/clients: a browser is not shown a refused handshake's own answer.)";
    return { kind: "token", code: body.error || "unauthorized", text };
  }
  if (resp.status === 403 || resp.ok) {
    return {
      kind: "other",
      code: "token_ok",
      text:
        "The token is valid, so the handshake was refused for another reason: Origin not allowed, " +
        "too many connections for this client id, or the server is busy or shutting down.",
    };
  }
  return { kind: "other", code: body.error || `http_${resp.status}`, text: `Probe answered HTTP ${resp.status}.` };
}

// ---------------------------------------------------------------- a connection panel

/* The panel of one route (/ws/chat or /ws/echo): its buttons, state badge, last close,
 * countdown and refusal. The connection itself is a WsappClient, made on Connect (the
 * token and the way to offer it are read then) and kept until the next Connect, so a
 * chat reconnect by hand still resumes from the positions it kept. */
class Panel {
  constructor(name, path, handlers) {
    this.name = name;
    this.path = path;
    this.handlers = handlers;
    this.client = null;
    this.countdown = null;
    this.offer = "raw";
    this.ui = {
      state: $(`${name}-state`),
      close: $(`${name}-close`),
      reason: $(`${name}-reason`),
      retry: $(`${name}-retry`),
      refusal: $(`${name}-refusal`),
      connect: $(`${name}-connect`),
      disconnect: $(`${name}-disconnect`),
      // optional copies next to the chat, so state and close stay in view on a phone
      stateMirror: $(`${name}-summary-state`),
      closeMirror: $(`${name}-summary-close`),
    };
    this.ui.connect.addEventListener("click", () => this.start());
    this.ui.disconnect.addEventListener("click", () => this.stop());
    $("auto-reconnect").addEventListener("change", () => {
      if (this.client) this.client.reconnect = $("auto-reconnect").checked;
    });
  }

  get isOpen() {
    return !!this.client && this.client.status === "open";
  }

  setState(state, label) {
    for (const badge of [this.ui.state, this.ui.stateMirror]) {
      if (!badge) continue;
      badge.dataset.state = state;
      badge.textContent = label || state;
    }
    const busy = state === "connecting" || state === "open" || state === "retrying" || state === "closing";
    // a disabled button drops keyboard focus: hand it to its partner instead
    const refocus = document.activeElement === (busy ? this.ui.connect : this.ui.disconnect);
    this.ui.connect.disabled = busy;
    this.ui.disconnect.disabled = !busy;
    if (refocus) (busy ? this.ui.disconnect : this.ui.connect).focus();
    if (this.handlers.onState) this.handlers.onState(state);
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.path}`;
  }

  start() {
    show(this.ui.refusal, false);
    this.offer = $("token-offer").value;
    const options = {
      getToken: (ctx) => (ctx && ctx.purpose === "refresh" && this.handlers.refreshToken ? this.handlers.refreshToken() : currentToken() || null),
      bearer: this.offer === "pair",
      raw: !!this.handlers.raw,
      reconnect: $("auto-reconnect").checked,
      onStatus: (s) => this.onStatus(s),
      onRefusal: (d) => this.onRefusal(d),
      autoConnect: false,
    };
    // the same client across Connect clicks (its positions and rooms make the resume),
    // unless what it was made with changed
    const same = this.client && this.client.bearer === options.bearer;
    if (!same) {
      this.client = new WsappClient(this.url(), options);
      if (this.handlers.bind) this.handlers.bind(this.client);
    } else {
      Object.assign(this.client, { getToken: options.getToken, reconnect: options.reconnect });
    }
    this.client.connect();
  }

  stop() {
    this.clearCountdown();
    this.ui.retry.textContent = "—";
    if (this.client && this.client.status !== "closed" && this.client.status !== "refused") {
      this.setState("closing");
      this.client.close(1000, "user disconnected");
    } else {
      this.setState("closed");
    }
  }

  clearCountdown() {
    clearInterval(this.countdown);
    this.countdown = null;
  }

  showClose(code, reason) {
    this.ui.close.textContent = `${code} — ${closeMeaning(code)}`;
    this.ui.close.dataset.code = String(code);
    this.ui.reason.textContent = reason || "(none given)";
    if (this.ui.closeMirror) this.ui.closeMirror.textContent = `last close ${code}${reason ? ` “${reason}”` : ""}`;
  }

  /** wsapp.js's status events, shown. */
  onStatus(s) {
    // a `refused` with an `error` was decided here, before any socket: there was no close to show
    if (s.code !== undefined && !(s.status === "refused" && s.error)) this.showClose(s.code, s.reason);
    if (s.code !== undefined && s.opened && this.handlers.onClose) this.handlers.onClose(s);
    if (s.status === "reconnecting" && s.delay !== undefined) return this.scheduled(s);
    this.clearCountdown();
    this.ui.retry.textContent = "—";
    switch (s.status) {
      case "connecting":
        return this.setState("connecting");
      case "reconnecting":
        return this.setState("connecting", `connecting (try ${s.attempt + 1})`);
      case "open":
        show(this.ui.refusal, false);
        return this.setState("open");
      case "refused":
        if (s.error === "bad_token") this.showRefusal("bad_token", `Cannot offer this token as a subprotocol: ${s.reason}`);
        else if (s.error === "token_expired") this.showRefusal("token_expired", "The token has expired: get or paste a new one, then connect again.");
        return this.setState("refused");
      default: // closed
        if (s.error === "token_expired") {
          this.showRefusal("token_expired", "The token expired while connected: get or paste a new one, then connect again.");
        }
        return this.setState(this.ui.state.dataset.state === "refused" && !s.opened ? "refused" : "closed");
    }
  }

  /** A close before the open: find out why (see probeRefusal); false stops the retries. */
  async onRefusal(d) {
    this.setState("refused");
    const probe = await probeRefusal(d.token, this.offer);
    this.showRefusal(probe.code, `Handshake refused. ${probe.text}`);
    if (this.ui.closeMirror) this.ui.closeMirror.textContent += ` · refused: ${probe.code}`;
    return probe.kind !== "token"; // the same token would be refused again
  }

  showRefusal(code, text) {
    this.ui.refusal.textContent = text;
    this.ui.refusal.dataset.error = code;
    show(this.ui.refusal, true);
  }

  /** A reconnect is due in `s.delay` ms: show the countdown. */
  scheduled(s) {
    this.clearCountdown();
    const due = Date.now() + s.delay;
    this.setState("retrying", "reconnecting");
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      this.ui.retry.textContent = `in ${left} s (attempt ${s.attempt})`;
    };
    tick();
    this.countdown = setInterval(tick, 500);
  }
}

// ---------------------------------------------------------------- echo

const echoLog = $("echo-log");
const echo = new Panel("echo", "/ws/echo", {
  raw: true, // not a chat route: wsapp.js hands each message over as it came
  bind(client) {
    client.on("data", (data) => {
      const text = typeof data === "string" ? data : "(binary message)";
      appendLog(echoLog, el("li", `← ${text}`, { "data-testid": "echo-msg", className: "msg in" }));
    });
  },
  onState(state) {
    const open = state === "open";
    $("echo-input").disabled = !open;
    $("echo-send").disabled = !open;
  },
});

$("echo-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("echo-input");
  if (!input.value || !echo.client) return;
  if (echo.client.sendRaw(input.value)) {
    appendLog(echoLog, el("li", `→ ${input.value}`, { className: "msg out" }));
    input.value = "";
  }
});

// ---------------------------------------------------------------- chat

const chatLog = $("chat-log");
const roomsList = $("rooms");
const KNOWN = new Set(["welcome", "resumed", "broadcast", "direct", "room", "joined", "left", "presence", "ack", "error"]);
let connected = false; // a welcome since the last close

function logLine(kind, parts, attrs) {
  const li = el("li", null, Object.assign({ className: `msg msg-${kind}`, "data-testid": "chat-msg", "data-kind": kind }, attrs || {}));
  li.appendChild(el("time", parts.time || timeStr()));
  if (parts.tag) li.appendChild(el("span", parts.tag, { className: "tag" }));
  if (parts.who) li.appendChild(el("span", parts.who, { className: "who" }));
  if (parts.text !== undefined) li.appendChild(el("span", parts.text, { className: "text" }));
  appendLog(chatLog, li);
  return li;
}

function logError(err) {
  const code = (err && err.code) || "error";
  logLine("error", { tag: code, text: (err && err.frame && err.frame.message) || (err && err.message) || "" }, { "data-code": code });
}

/** The rooms this connection is in, with their members: wsapp.js's `members`. */
function renderRooms() {
  const client = chat.client;
  const rooms = client && connected ? client.members : new Map();
  const me = client ? client.clientId : null;
  roomsList.replaceChildren();
  const sendRoom = $("send-room");
  const chosen = sendRoom.value;
  sendRoom.replaceChildren();
  for (const [room, members] of [...rooms.entries()].sort()) {
    const li = el("li", null, { className: "room", "data-testid": "room", "data-room": room });
    const head = el("div", null, { className: "room-head" });
    head.appendChild(el("span", `#${room}`, { className: "room-name" }));
    head.appendChild(el("span", `${members.size}`, { className: "count", "aria-label": `${members.size} members` }));
    const leave = el("button", "Leave", { type: "button", className: "small", "aria-label": `Leave room ${room}` });
    leave.addEventListener("click", () => leaveRoom(room));
    head.appendChild(leave);
    li.appendChild(head);
    const ul = el("ul", null, { className: "members", "aria-label": `Members of ${room}` });
    for (const m of [...members].sort()) {
      ul.appendChild(el("li", m === me ? `${m} (you)` : m, { "data-testid": "member", "data-member": m }));
    }
    li.appendChild(ul);
    roomsList.appendChild(li);
    sendRoom.appendChild(el("option", `#${room}`, { value: room }));
  }
  if (rooms.has(chosen)) sendRoom.value = chosen;
  show($("rooms-empty"), rooms.size === 0);
}

function joinRoom(room) {
  chat.client.join(room).catch(logError);
}

function leaveRoom(room) {
  chat.client.leave(room).catch(logError);
  renderRooms();
  logLine("system", { tag: "left", text: `#${room}` });
}

function setChatEnabled(open) {
  for (const id of ["room-name", "join-btn", "send-kind", "send-text", "send-btn"]) $(id).disabled = !open;
  updateComposer();
}

function updateComposer() {
  const kind = $("send-kind").value;
  toggleField($("send-to-field"), $("send-to"), kind === "direct");
  toggleField($("send-room-field"), $("send-room"), kind === "room");
  if (!chat.isOpen) {
    $("send-to").disabled = true;
    $("send-room").disabled = true;
  }
}

/** The stream names of wsapp.js's `gap`s, as the page names them. */
function streamLabel(stream) {
  return stream.startsWith("room:") ? `#${stream.slice(5)}` : stream;
}

// A token is swapped in before it expires, without reconnecting (wsapp.js sends `refresh`):
// a new one comes from the demo token route when the server has it, or from the token
// box when the user pastes one for the same client id while connected.
async function refreshToken() {
  const claims = claimsOf(currentToken());
  const me = chat.client && chat.client.clientId;
  if (!me || !claims) return currentToken();
  try {
    tokenBox.value = await demoToken(me, isAdmin(claims));
    renderTokenInfo();
    renderCurl();
  } catch (_e) {
    logLine("system", { tag: "token", text: "the token expires soon: paste a new one for the same client id to keep this connection" });
  }
  return currentToken();
}

function bindChat(client) {
  client.on("welcome", (msg) => {
    connected = true;
    $("chat-me").textContent = `You are ${msg.client_id} (connection ${msg.conn_id})`;
    logLine("system", { tag: "welcome", text: `connected as ${msg.client_id}` });
    renderRooms();
  });
  client.on("resumed", (r) => {
    renderRooms();
    logLine("recovery", { tag: "resumed", text: `recovered ${r.replayed} message${r.replayed === 1 ? "" : "s"}` }, { "data-replayed": String(r.replayed) });
  });
  client.on("gap", (g) => {
    // the server cannot say what was missed: start that stream afresh from here
    const what = streamLabel(g.stream);
    logLine("recovery", { tag: "resumed", text: `could not recover ${what}: reloaded` }, { "data-lost": what });
  });
  client.on("broadcast", (msg) => {
    logLine("broadcast", { time: timeStr(msg.ts), tag: "all", who: `${msg.from}:`, text: dataText(msg.data) }, { "data-from": msg.from });
  });
  client.on("direct", (msg) => {
    logLine("direct", { time: timeStr(msg.ts), tag: "direct", who: `${msg.from} → ${msg.to}:`, text: dataText(msg.data) }, { "data-from": msg.from });
  });
  client.on("room", (msg) => {
    logLine("room", { time: timeStr(msg.ts), tag: `#${msg.room}`, who: `${msg.from}:`, text: dataText(msg.data) }, {
      "data-from": msg.from,
      "data-room": msg.room,
    });
  });
  client.on("joined", (msg) => {
    renderRooms();
    const n = (client.members.get(msg.room) || new Set()).size;
    logLine("system", { tag: "joined", text: `#${msg.room} (${n} member${n === 1 ? "" : "s"})` });
  });
  client.on("left", (msg) => {
    renderRooms();
    logLine("system", { tag: "left", text: `#${msg.room}${msg.code ? ` (${msg.code}${msg.message ? `: ${msg.message}` : ""})` : ""}` });
  });
  client.on("presence", (msg) => {
    if (!client.members.has(msg.room)) return;
    renderRooms();
    logLine("presence", { tag: `#${msg.room}`, text: `${msg.client_id} ${msg.event === "join" ? "joined" : "left"}` });
  });
  client.on("error", (msg) => {
    // an error frame answering no request of ours (rate_limited...), or a room a resume could not join again
    const text = msg.room ? `could not join #${msg.room} again: ${msg.message || ""}` : msg.message || "";
    logLine("error", { tag: msg.code || "error", text }, { "data-code": msg.code || "" });
  });
  client.on("refreshed", () => logLine("system", { tag: "token", text: "token refreshed" }, { "data-refreshed": "1" }));
  client.on("message", (msg) => {
    if (!KNOWN.has(msg.type)) logLine("system", { tag: msg.type || "?", text: JSON.stringify(msg) });
  });
}

const chat = new Panel("chat", "/ws/chat", {
  bind: bindChat,
  refreshToken,
  onState(state) {
    setChatEnabled(state === "open");
  },
  onClose(s) {
    // an open connection ended: the server dropped us from every room; the next connection resumes them
    if (!connected) return;
    connected = false;
    renderRooms();
    $("chat-me").textContent = "not connected";
    logLine("system", { tag: "closed", text: `${s.code} ${s.reason || closeMeaning(s.code)}` });
  },
});

tokenBox.addEventListener("change", () => {
  // a token pasted while connected, for the same client id: swap it in
  const claims = claimsOf(currentToken());
  const client = chat.client;
  if (client && chat.isOpen && claims && String(claims.sub) === client.clientId) {
    client.refresh(currentToken()).catch(logError);
  }
});

$("send-kind").addEventListener("change", updateComposer);

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const room = $("room-name").value.trim();
  if (room && chat.isOpen) joinRoom(room);
});

/** The delivery line of a direct message, settled by its ack or error. */
function deliveryStatus(promise, status) {
  promise.then(
    (ack) => {
      status.textContent = ack.stored ? "kept for when they come back" : `delivered to ${ack.delivered} connection${ack.delivered === 1 ? "" : "s"}`;
      status.dataset.state = ack.stored ? "stored" : "delivered";
    },
    (err) => {
      status.textContent = err.code === "closed" ? "connection closed before an ack" : `not delivered: ${err.code}`;
      status.dataset.state = "failed";
      if (err.code !== "closed") logError(err);
    }
  );
}

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("send-text");
  const text = input.value;
  if (!text || !chat.isOpen) return;
  const client = chat.client;
  const kind = $("send-kind").value;
  if (kind === "direct") {
    const to = $("send-to").value.trim();
    if (!to) {
      $("send-to").focus();
      return;
    }
    // a direct message does not come back to the sender: show it here with its ack
    const li = logLine("direct-out", { tag: "direct", who: `you → ${to}:`, text }, { "data-to": to });
    const status = el("span", "sending…", { className: "status", "data-testid": "delivery", "data-state": "pending" });
    li.appendChild(status);
    deliveryStatus(client.direct(to, text), status);
  } else if (kind === "room") {
    const room = $("send-room").value;
    if (!room) {
      $("room-name").focus();
      return;
    }
    client.room(room, text).catch(logError);
  } else {
    client.send(text).catch(logError);
  }
  input.value = "";
});

// ---------------------------------------------------------------- HTTP panel

function shellQuote(s) {
  return "'" + String(s).replace(/'/g, "'\\''") + "'";
}

function httpRequest() {
  const endpoint = $("http-endpoint").value;
  const raw = $("http-data").value;
  let data = raw;
  if ($("http-json").checked) {
    try {
      data = JSON.parse(raw);
    } catch (err) {
      return { error: `Data is not valid JSON: ${err.message}` };
    }
  }
  const body = { data };
  if (endpoint === "send") body.to = $("http-to").value.trim();
  else if ($("http-room").value.trim()) body.room = $("http-room").value.trim();
  return { path: `/api/${endpoint}`, body };
}

function renderCurl() {
  const req = httpRequest();
  const out = $("http-curl");
  if (req.error) {
    out.textContent = req.error;
    return;
  }
  const token = currentToken() || "<paste a token>";
  out.textContent =
    `TOKEN=${shellQuote(token)}\n` +
    `curl -sS -X POST ${shellQuote(location.origin + req.path)} \\\n` +
    `  -H "Authorization: Bearer $TOKEN" \\\n` +
    `  -H 'Content-Type: application/json' \\\n` +
    `  -d ${shellQuote(JSON.stringify(req.body))}`;
}

function updateHttpForm() {
  const send = $("http-endpoint").value === "send";
  toggleField($("http-to-field"), $("http-to"), send);
  toggleField($("http-room-field"), $("http-room"), !send);
  renderCurl();
}

for (const id of ["http-endpoint", "http-to", "http-room", "http-data", "http-json"]) {
  $(id).addEventListener("input", updateHttpForm);
  $(id).addEventListener("change", updateHttpForm);
}

$("http-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("http-result");
  const req = httpRequest();
  if (req.error) {
    out.textContent = req.error;
    out.dataset.status = "error";
    return;
  }
  const token = currentToken();
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  out.textContent = "sending…";
  try {
    const resp = await fetch(req.path, { method: "POST", headers, body: JSON.stringify(req.body) });
    const text = await resp.text();
    out.textContent = `HTTP ${resp.status}\n${text.trim()}`;
    out.dataset.status = String(resp.status);
  } catch (err) {
    out.textContent = `request failed: ${err.message}`;
    out.dataset.status = "error";
  }
});

$("http-copy").addEventListener("click", async () => {
  const btn = $("http-copy");
  try {
    await navigator.clipboard.writeText($("http-curl").textContent);
    btn.textContent = "Copied";
  } catch (_e) {
    btn.textContent = "Copy failed: select the text";
  }
  setTimeout(() => (btn.textContent = "Copy command"), 2000);
});

// ---------------------------------------------------------------- start

updateHttpForm();
updateComposer();
renderTokenInfo();
renderRooms();
