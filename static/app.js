/* wsapp demo page. Plain ES2020, no build step, nothing loaded from elsewhere.
 *
 * Every piece of text that came from the server or the user goes into the DOM through
 * textContent (see el()); innerHTML is never used with data.
 */
"use strict";

(() => {
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

  /* Reconnecting after these would only repeat the failure (or hammer a server that
   * asked us to slow down): a normal close, our own bad frames, a policy violation
   * (rate limit, slow consumer), an expired token and other 44xx auth codes. */
  function shouldRetryAfter(code) {
    if ([1000, 1002, 1003, 1007, 1008, 1009, 1010, 4401].includes(code)) return false;
    if (code >= 4400 && code <= 4499) return false;
    return true;
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

  /** Decode (not verify!) the JWT payload so the page can say who the token is for. */
  function decodeJwt(token) {
    try {
      const part = token.split(".")[1];
      const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (_e) {
      return null;
    }
  }

  function renderTokenInfo() {
    const token = currentToken();
    if (!token) {
      tokenInfo.textContent = "No token yet.";
      return;
    }
    const claims = looksLikeJwt(token) ? decodeJwt(token) : null;
    if (!claims) {
      tokenInfo.textContent = "This does not look like a JWT; the server will refuse it.";
      return;
    }
    const admin = (Array.isArray(claims.roles) && claims.roles.includes("admin")) || claims.role === "admin";
    const who = claims.sub ?? claims.ID ?? claims.Username ?? "?";
    let exp = "no exp";
    if (typeof claims.exp === "number") {
      const left = Math.round(claims.exp - Date.now() / 1000);
      exp = left > 0 ? `expires in ${Math.round(left / 60)} min` : "EXPIRED";
    }
    tokenInfo.textContent = `For “${who}” · ${admin ? "admin" : "not admin"} · ${exp} (decoded here, verified only by the server)`;
  }

  tokenBox.addEventListener("input", () => {
    renderTokenInfo();
    renderCurl();
  });

  $("client-id").value = "user-" + Math.random().toString(16).slice(2, 6);

  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    show(tokenError, false);
    const clientId = $("client-id").value.trim();
    const admin = $("admin").checked;
    const btn = $("get-token");
    btn.disabled = true;
    try {
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
      tokenBox.value = body.token;
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
   * It is a second request, so it is a diagnosis, not the handshake's own answer. */
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

  // ---------------------------------------------------------------- a connection with backoff

  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const STABLE_MS = 10000; // open this long and the backoff starts over

  class Conn {
    constructor(name, path, handlers) {
      this.name = name;
      this.path = path;
      this.handlers = handlers;
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.countdown = null;
      this.wanted = false; // the user asked to be connected
      this.openedAt = 0;
      this.gen = 0; // counts open() calls, so a late probe result can tell it is stale
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
      const query = this.handlers.query ? this.handlers.query() : "";
      return `${scheme}//${location.host}${this.path}${query}`;
    }

    start() {
      this.wanted = true;
      this.attempt = 0;
      show(this.ui.refusal, false);
      this.open();
    }

    stop() {
      this.wanted = false;
      this.clearTimers();
      this.ui.retry.textContent = "—";
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
        this.setState("closing");
        this.ws.close(1000, "user disconnected");
      } else {
        this.setState("closed");
      }
    }

    clearTimers() {
      clearTimeout(this.timer);
      clearInterval(this.countdown);
      this.timer = this.countdown = null;
    }

    open() {
      this.clearTimers();
      this.ui.retry.textContent = "—";
      const token = currentToken();
      const offer = $("token-offer").value;
      const protocols = !token ? [] : offer === "pair" ? ["bearer", token] : [token];
      let ws;
      try {
        ws = new WebSocket(this.url(), protocols);
      } catch (err) {
        // e.g. a SyntaxError: the token has characters a subprotocol may not contain
        this.wanted = false;
        this.setState("closed");
        this.showRefusal("bad_token", `Cannot offer this token as a subprotocol: ${err.message}`);
        return;
      }
      this.ws = ws;
      this.gen += 1;
      this.openedAt = 0;
      this.setState("connecting", this.attempt ? `connecting (try ${this.attempt + 1})` : "connecting");

      ws.addEventListener("open", () => {
        if (this.ws !== ws) return;
        this.openedAt = Date.now();
        show(this.ui.refusal, false);
        this.setState("open");
        if (this.handlers.onOpen) this.handlers.onOpen(ws);
      });
      ws.addEventListener("message", (ev) => {
        if (this.ws === ws && this.handlers.onMessage) this.handlers.onMessage(ev);
      });
      ws.addEventListener("close", (ev) => {
        if (this.ws !== ws) return;
        this.onClose(ev, token, offer);
      });
    }

    async onClose(ev, token, offer) {
      const wasOpen = this.openedAt > 0;
      const openFor = wasOpen ? Date.now() - this.openedAt : 0;
      this.ws = null;
      this.ui.close.textContent = `${ev.code} — ${closeMeaning(ev.code)}`;
      this.ui.close.dataset.code = String(ev.code);
      this.ui.reason.textContent = ev.reason || "(none given)";
      if (this.ui.closeMirror) {
        this.ui.closeMirror.textContent = `last close ${ev.code}${ev.reason ? ` “${ev.reason}”` : ""}`;
      }
      if (this.handlers.onClose) this.handlers.onClose(ev, wasOpen);

      let retry = this.wanted && $("auto-reconnect").checked && shouldRetryAfter(ev.code);
      if (!wasOpen && this.wanted) {
        // refused or unreachable before the upgrade: find out why (see probeRefusal)
        this.setState("refused");
        const gen = this.gen;
        const probe = await probeRefusal(token, offer);
        if (gen !== this.gen) return; // the user connected again meanwhile
        this.showRefusal(probe.code, `Handshake refused. ${probe.text}`);
        if (this.ui.closeMirror) this.ui.closeMirror.textContent += ` · refused: ${probe.code}`;
        if (probe.kind === "token") retry = false; // the same token would be refused again
        retry = retry && this.wanted && $("auto-reconnect").checked;
      } else {
        if (openFor >= STABLE_MS) this.attempt = 0;
        if (ev.code === 4401) this.showRefusal("token_expired", "The token expired while connected: get or paste a new one, then connect again.");
      }
      if (retry) {
        this.scheduleRetry();
      } else {
        this.wanted = false;
        this.setState(wasOpen || this.ui.state.dataset.state !== "refused" ? "closed" : "refused");
      }
    }

    showRefusal(code, text) {
      this.ui.refusal.textContent = text;
      this.ui.refusal.dataset.error = code;
      show(this.ui.refusal, true);
    }

    scheduleRetry() {
      // exponential backoff with jitter: 1 s, 2 s, 4 s ... capped at 30 s
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
      const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
      this.attempt += 1;
      const due = Date.now() + delay;
      this.setState("retrying", "reconnecting");
      const tick = () => {
        const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        this.ui.retry.textContent = `in ${left} s (attempt ${this.attempt})`;
      };
      tick();
      this.countdown = setInterval(tick, 500);
      this.timer = setTimeout(() => {
        if (this.wanted) this.open();
      }, delay);
    }

    send(text) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(text);
      return true;
    }
  }

  // ---------------------------------------------------------------- echo

  const echoLog = $("echo-log");
  const echo = new Conn("echo", "/ws/echo", {
    onState(state) {
      const open = state === "open";
      $("echo-input").disabled = !open;
      $("echo-send").disabled = !open;
    },
    onMessage(ev) {
      const text = typeof ev.data === "string" ? ev.data : "(binary message)";
      appendLog(echoLog, el("li", `← ${text}`, { "data-testid": "echo-msg", className: "msg in" }));
    },
  });

  $("echo-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("echo-input");
    if (!input.value) return;
    if (echo.send(input.value)) {
      appendLog(echoLog, el("li", `→ ${input.value}`, { className: "msg out" }));
      input.value = "";
    }
  });

  // ---------------------------------------------------------------- chat

  const chatLog = $("chat-log");
  const roomsList = $("rooms");
  const rooms = new Map(); // room -> Set of member client ids (from joined + presence)
  const wantedRooms = new Set(); // rooms to rejoin after a reconnect
  const pending = new Map(); // frame id -> status element of a sent direct message
  // Positions (docs/protocol.md, "Positions, history and resume"): the last {offset, epoch}
  // seen per stream ("broadcast", "direct", "room:NAME"). Kept across reconnects: every
  // reconnect opens /ws/chat?resume=1 and hands them back, so nothing sent meanwhile is lost.
  const positions = new Map();
  const EMPTY = { offset: 0, epoch: "" };
  let resuming = false; // this connection was opened with ?resume=1 (its first frame is `resume`)
  let me = null;
  let seq = 0;

  function streamOf(msg) {
    if (msg.type === "room") return `room:${msg.room}`;
    return msg.type === "broadcast" || msg.type === "direct" ? msg.type : null;
  }

  function remember(key, pos) {
    if (pos && typeof pos.offset === "number" && typeof pos.epoch === "string") positions.set(key, { offset: pos.offset, epoch: pos.epoch });
  }

  function resumeFrame() {
    const frame = { type: "resume", id: nextId(), rooms: {} };
    for (const key of ["broadcast", "direct"]) if (positions.has(key)) frame[key] = positions.get(key);
    for (const room of wantedRooms) frame.rooms[room] = positions.get(`room:${room}`) || EMPTY;
    return frame;
  }

  /** The `resumed` answer: rooms and their members back, and what could not be recovered. */
  function onResumed(msg) {
    let replayed = 0;
    const lost = [];
    for (const key of ["broadcast", "direct"]) {
      const r = msg[key];
      if (!r) continue;
      remember(key, r);
      if (r.recovered) replayed += r.replayed;
      else lost.push(key);
    }
    for (const [room, r] of Object.entries(msg.rooms || {})) {
      if (r.error) {
        wantedRooms.delete(room);
        positions.delete(`room:${room}`);
        logLine("error", { tag: r.error, text: `could not join #${room} again: ${r.message || ""}` }, { "data-code": r.error });
        continue;
      }
      remember(`room:${room}`, r);
      rooms.set(room, new Set(r.members || rooms.get(room) || []));
      if (r.recovered) replayed += r.replayed;
      else lost.push(`#${room}`);
    }
    renderRooms();
    logLine("recovery", { tag: "resumed", text: `recovered ${replayed} message${replayed === 1 ? "" : "s"}` }, { "data-replayed": String(replayed) });
    for (const what of lost) {
      // the server cannot say what was missed: start that stream afresh from here
      logLine("recovery", { tag: "resumed", text: `could not recover ${what}: reloaded` }, { "data-lost": what });
    }
  }

  // ---------------------------------------------------------------- token refresh
  // A token is swapped in before it expires, without reconnecting (a `refresh` frame):
  // a new one comes from the demo token route when the server has it, or from the token
  // box when the user pastes one for the same client id while connected.

  const REFRESH_AHEAD_MS = 60000;
  let refreshTimer = null;

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const claims = looksLikeJwt(currentToken()) ? decodeJwt(currentToken()) : null;
    if (!claims || typeof claims.exp !== "number") return;
    const left = claims.exp * 1000 - Date.now();
    // a minute ahead, or half-way for a short-lived token
    refreshTimer = setTimeout(refreshToken, Math.max(500, left - Math.min(REFRESH_AHEAD_MS, left / 2)));
  }

  async function refreshToken() {
    const claims = decodeJwt(currentToken());
    if (!me || !claims) return;
    const admin = (Array.isArray(claims.roles) && claims.roles.includes("admin")) || claims.role === "admin";
    let token = null;
    try {
      const resp = await fetch("/api/demo/token", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ client_id: me, admin }),
      });
      const body = await resp.json().catch(() => null);
      if (resp.ok && body && typeof body.token === "string") token = body.token;
    } catch (_e) {
      token = null;
    }
    if (!token) {
      logLine("system", { tag: "token", text: "the token expires soon: paste a new one for the same client id to keep this connection" });
      return;
    }
    tokenBox.value = token;
    renderTokenInfo();
    sendRefresh(token);
  }

  function sendRefresh(token) {
    if (sendFrame({ type: "refresh", token, id: nextId() })) {
      logLine("system", { tag: "token", text: "token refreshed" }, { "data-refreshed": "1" });
      scheduleRefresh();
    }
  }

  tokenBox.addEventListener("change", () => {
    // a token pasted while connected, for the same client id: swap it in
    const claims = looksLikeJwt(currentToken()) ? decodeJwt(currentToken()) : null;
    if (me && claims && String(claims.sub) === me && chat.ws && chat.ws.readyState === WebSocket.OPEN) sendRefresh(currentToken());
  });

  function logLine(kind, parts, attrs) {
    const li = el("li", null, Object.assign({ className: `msg msg-${kind}`, "data-testid": "chat-msg", "data-kind": kind }, attrs || {}));
    li.appendChild(el("time", parts.time || timeStr()));
    if (parts.tag) li.appendChild(el("span", parts.tag, { className: "tag" }));
    if (parts.who) li.appendChild(el("span", parts.who, { className: "who" }));
    if (parts.text !== undefined) li.appendChild(el("span", parts.text, { className: "text" }));
    appendLog(chatLog, li);
    return li;
  }

  function renderRooms() {
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

  function nextId() {
    seq += 1;
    return `m${seq}`;
  }

  function sendFrame(frame) {
    return chat.send(JSON.stringify(frame));
  }

  function joinRoom(room) {
    wantedRooms.add(room);
    sendFrame({ type: "join", room, id: nextId() });
  }

  function leaveRoom(room) {
    wantedRooms.delete(room);
    rooms.delete(room);
    renderRooms();
    sendFrame({ type: "leave", room, id: nextId() });
    logLine("system", { tag: "left", text: `#${room}` });
  }

  function setChatEnabled(open) {
    for (const id of ["room-name", "join-btn", "send-kind", "send-text", "send-btn"]) $(id).disabled = !open;
    updateComposer();
  }

  function updateComposer() {
    const open = chat.ws && chat.ws.readyState === WebSocket.OPEN;
    const kind = $("send-kind").value;
    toggleField($("send-to-field"), $("send-to"), kind === "direct");
    toggleField($("send-room-field"), $("send-room"), kind === "room");
    if (!open) {
      $("send-to").disabled = true;
      $("send-room").disabled = true;
    }
  }

  function handleChatFrame(msg) {
    switch (msg.type) {
      case "welcome":
        if (me !== null && me !== msg.client_id) positions.clear(); // another client id: nothing to resume
        me = msg.client_id;
        $("chat-me").textContent = `You are ${msg.client_id} (connection ${msg.conn_id})`;
        logLine("system", { tag: "welcome", text: `connected as ${msg.client_id}` });
        if (resuming) {
          sendFrame(resumeFrame()); // rooms joined again, what was missed replayed, then `resumed`
        } else {
          for (const [key, pos] of Object.entries(msg.streams || {})) remember(key, pos);
          for (const room of wantedRooms) sendFrame({ type: "join", room, id: nextId() });
        }
        scheduleRefresh();
        break;
      case "resumed":
        onResumed(msg);
        break;
      case "broadcast":
        logLine("broadcast", { time: timeStr(msg.ts), tag: "all", who: `${msg.from}:`, text: dataText(msg.data) }, {
          "data-from": msg.from,
        });
        break;
      case "direct":
        logLine("direct", { time: timeStr(msg.ts), tag: "direct", who: `${msg.from} → ${msg.to}:`, text: dataText(msg.data) }, {
          "data-from": msg.from,
        });
        break;
      case "room":
        logLine("room", { time: timeStr(msg.ts), tag: `#${msg.room}`, who: `${msg.from}:`, text: dataText(msg.data) }, {
          "data-from": msg.from,
          "data-room": msg.room,
        });
        break;
      case "joined":
        if (msg.offset !== undefined) remember(`room:${msg.room}`, msg);
        // a repeated join of a room this connection is in carries no `members`: keep what we have
        if (msg.members || !rooms.has(msg.room)) rooms.set(msg.room, new Set(msg.members || []));
        wantedRooms.add(msg.room);
        renderRooms();
        {
          const n = rooms.get(msg.room).size;
          logLine("system", { tag: "joined", text: `#${msg.room} (${n} member${n === 1 ? "" : "s"})` });
        }
        break;
      case "presence": {
        const members = rooms.get(msg.room);
        if (!members) break;
        if (msg.event === "join") members.add(msg.client_id);
        else if (msg.event === "leave") members.delete(msg.client_id);
        renderRooms();
        logLine("presence", { tag: `#${msg.room}`, text: `${msg.client_id} ${msg.event === "join" ? "joined" : "left"}` });
        break;
      }
      case "ack": {
        const status = pending.get(msg.id);
        if (status) {
          status.textContent = msg.stored
            ? "kept for when they come back"
            : `delivered to ${msg.delivered} connection${msg.delivered === 1 ? "" : "s"}`;
          status.dataset.state = msg.stored ? "stored" : "delivered";
          pending.delete(msg.id);
        }
        break;
      }
      case "error": {
        const status = msg.id !== undefined ? pending.get(msg.id) : null;
        if (status) {
          status.textContent = `not delivered: ${msg.code}`;
          status.dataset.state = "failed";
          pending.delete(msg.id);
        }
        logLine("error", { tag: msg.code || "error", text: msg.message || "" }, { "data-code": msg.code || "" });
        break;
      }
      default:
        logLine("system", { tag: msg.type || "?", text: JSON.stringify(msg) });
    }
  }

  const chat = new Conn("chat", "/ws/chat", {
    query() {
      // every reconnect (automatic or by hand) resumes where the last connection stopped
      resuming = positions.size > 0 || wantedRooms.size > 0;
      return resuming ? "?resume=1" : "";
    },
    onState(state) {
      setChatEnabled(state === "open");
    },
    onMessage(ev) {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_e) {
        logLine("error", { tag: "bad frame", text: String(ev.data).slice(0, 200) });
        return;
      }
      if (msg && typeof msg === "object") {
        const key = streamOf(msg);
        if (key && msg.offset !== undefined) remember(key, msg);
        handleChatFrame(msg);
      }
    },
    onClose(ev, wasOpen) {
      // the server drops us from every room on close; the next connection resumes them
      clearTimeout(refreshTimer);
      rooms.clear();
      renderRooms();
      for (const status of pending.values()) {
        status.textContent = "connection closed before an ack";
        status.dataset.state = "failed";
      }
      pending.clear();
      if (wasOpen) {
        me = null;
        $("chat-me").textContent = "not connected";
        logLine("system", { tag: "closed", text: `${ev.code} ${ev.reason || closeMeaning(ev.code)}` });
      }
    },
  });

  $("send-kind").addEventListener("change", updateComposer);

  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = $("room-name").value.trim();
    if (room) joinRoom(room);
  });

  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("send-text");
    const text = input.value;
    if (!text) return;
    const kind = $("send-kind").value;
    const id = nextId();
    let frame;
    if (kind === "direct") {
      const to = $("send-to").value.trim();
      if (!to) {
        $("send-to").focus();
        return;
      }
      frame = { type: "direct", to, data: text, id };
    } else if (kind === "room") {
      const room = $("send-room").value;
      if (!room) {
        $("room-name").focus();
        return;
      }
      frame = { type: "room", room, data: text, id };
    } else {
      frame = { type: "broadcast", data: text, id };
    }
    if (!sendFrame(frame)) return;
    if (kind === "direct") {
      // a direct message does not come back to the sender: show it here with its ack
      const li = logLine("direct-out", { tag: "direct", who: `you → ${frame.to}:`, text }, { "data-to": frame.to });
      const status = el("span", "sending…", { className: "status", "data-testid": "delivery", "data-state": "pending" });
      li.appendChild(status);
      pending.set(id, status);
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
})();
