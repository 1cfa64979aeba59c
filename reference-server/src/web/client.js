// chatscale web chat, part 1 of 3: the protocol client. It speaks
// docs/protocol.md as written (HTTP API + WebSocket frames) and knows nothing of
// the page; chat.js (the chat state) and ui.js (the page) build on it. The
// server places the three files into the page, in this order, as classic
// scripts sharing one global scope. No framework, no build step.
//
// What a client connection has to get right, and where it happens here:
// - connect to a chat server that login or discovery names (`servers`, best
//   first), not necessarily the node that served this page   -> Connection.open(), reachable()
// - a heartbeat every `heartbeat_interval_ms` (from `hello`), sent with a
//   `req` so that a connection that died silently is noticed  -> Connection.startHeartbeats()
// - reconnect with backoff and jitter after a drop           -> Connection.lost(), retryLater()
// - a cursor per device: the highest inbox `seq` below which nothing is
//   missing; dedupe by `seq`, notice gaps                     -> Inbox
"use strict";

const RECONNECT_MIN_MS = 250; // first retry after a drop (then doubling, with jitter)
const RECONNECT_MAX_MS = 15000; // retries never wait longer than this
const HELLO_TIMEOUT_MS = 10000; // an opened socket must say hello within this

// ---------------------------------------------------------------------------
// HTTP API calls
// ---------------------------------------------------------------------------

/** An HTTP or protocol error: the protocol's `code` and `message`. */
class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/** A request whose connection went away before it was answered. */
class Disconnected extends Error {}

/** One HTTP API call. Errors come back as {"error": CODE, "message": TEXT}. */
async function api(method, path, body, token) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError("network", "cannot reach the server (" + e.message + ")");
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: the status and the text are all we have
  }
  if (!resp.ok) {
    throw new ApiError(
      (data && data.error) || "http_" + resp.status,
      (data && data.message) || text.trim() || resp.statusText,
      resp.status,
    );
  }
  return data;
}

// ---------------------------------------------------------------------------
// The device's inbox cursor
// ---------------------------------------------------------------------------

/**
 * Which inbox `seq`s this device has. `cursor` is the highest seq below which
 * nothing is missing (the design's `cur_max_message_id`); `ahead` holds seqs
 * seen above a gap. A seq at or below the cursor, or already ahead, is a
 * duplicate.
 */
class Inbox {
  constructor(cursor) {
    this.cursor = cursor;
    this.ahead = new Set();
  }

  /** Records `seq`; false when this device already had it. */
  take(seq) {
    if (seq <= this.cursor || this.ahead.has(seq)) return false;
    this.ahead.add(seq);
    this.advance();
    return true;
  }

  /** A sync returned everything up to `seq`: a seq it skipped does not exist. */
  completeTo(seq) {
    if (seq > this.cursor) this.cursor = seq;
    for (const s of this.ahead) if (s <= this.cursor) this.ahead.delete(s);
    this.advance();
  }

  advance() {
    while (this.ahead.delete(this.cursor + 1)) this.cursor += 1;
  }

  get hasGap() {
    return this.ahead.size > 0;
  }
}

// ---------------------------------------------------------------------------
// The WebSocket connection: one at a time, replaced after a drop
// ---------------------------------------------------------------------------

/** `ws://` URL of a chat server, with the token; `wss://` if this page came over https. */
function socketUrl(server, token) {
  const url = new URL(server, location.href);
  if (location.protocol === "https:" && url.protocol === "ws:") url.protocol = "wss:";
  url.searchParams.set("token", token);
  return url;
}

const isLoopback = (host) => /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$/.test(host);

/**
 * A server from `servers`, as this browser can reach it. A server advertises
 * its listen address unless told otherwise (`--advertise`); a loopback address
 * there means "this machine", which for a browser on another machine is the
 * node that served this page.
 */
function reachable(server) {
  const url = new URL(server, location.href);
  if (isLoopback(url.hostname) && !isLoopback(location.hostname)) {
    url.host = location.host;
  }
  return url.href;
}

class Connection {
  /**
   * `handlers`: onHello(hello), onFrame(frame), onDown(reason),
   * onStatus(state, text), onAuthLost(reason).
   */
  constructor(token, servers, handlers) {
    this.token = token;
    this.servers = servers;
    this.on = handlers;
    this.ws = null;
    this.ready = false; // hello received on this.ws
    this.failures = 0; // attempts since the last healthy connection
    this.lastReq = 0;
    this.pending = new Map(); // req -> {resolve, reject}
    this.timers = {};
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** For good (log-out): no reconnect. */
  stop() {
    this.stopped = true;
    if (this.ws) this.drop(this.ws, "stopped");
    for (const t of Object.values(this.timers)) clearTimeout(t);
  }

  /** When the browser says the network is back, retry at once instead of waiting. */
  networkBack() {
    if (!this.stopped && !this.ws) {
      clearTimeout(this.timers.retry);
      this.open();
    }
  }

  async open() {
    if (this.stopped || this.ws) return;
    if (!navigator.onLine) {
      // Attempts would fail until the 'online' event (networkBack) anyway; look
      // again now and then in case that event never comes.
      this.on.onStatus("offline", "Offline: waiting for the network");
      clearTimeout(this.timers.retry);
      this.timers.retry = setTimeout(() => this.open(), RECONNECT_MAX_MS);
      return;
    }
    if (this.failures > 0) {
      // After a failure, ask discovery again: the node we used may be gone, and
      // the answer also tells whether our token still works.
      try {
        this.servers = (await api("GET", "/v1/discovery", undefined, this.token)).servers;
      } catch (e) {
        if (e.status === 401) return this.on.onAuthLost("your session has ended; log in again");
        return this.retryLater(e.message);
      }
      if (this.stopped || this.ws) return;
    }
    const here = new URL("/v1/ws", location.href).href.replace(/^http/, "ws");
    const candidates = this.servers.length ? this.servers.map(reachable) : [here];
    // The best server first; if attempts keep failing, the next ones in turn.
    const pick = candidates[Math.max(0, this.failures - 1) % candidates.length];
    const url = socketUrl(pick, this.token);
    this.on.onStatus("connecting", "Connecting to " + url.host);
    const ws = new WebSocket(url);
    this.ws = ws;
    this.timers.hello = setTimeout(() => this.drop(ws, "no hello from the server"), HELLO_TIMEOUT_MS);
    ws.onmessage = (ev) => this.receive(ws, ev.data);
    // 'error' is always followed by 'close', where the drop is handled.
    ws.onclose = (ev) => this.closed(ws, ev);
  }

  receive(ws, data) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return this.drop(ws, "the server sent a frame that is not JSON");
    }
    if (frame.type === "hello") {
      clearTimeout(this.timers.hello);
      this.ready = true;
      this.startHeartbeats(frame.heartbeat_interval_ms);
      this.on.onHello(frame);
      return;
    }
    // A frame with our `req` is the one answer to that request.
    if (frame.req !== undefined && this.pending.has(frame.req)) {
      const waiter = this.pending.get(frame.req);
      this.pending.delete(frame.req);
      if (frame.type === "error") waiter.reject(new ApiError(frame.code, frame.message));
      else waiter.resolve(frame);
      return;
    }
    this.on.onFrame(frame);
  }

  /** The connection did its job (synced): the next drop starts the backoff afresh. */
  healthy() {
    this.failures = 0;
  }

  /** Sends a frame with a fresh `req`; resolves with its ack or sync_batch. */
  request(frame) {
    if (!this.ready) return Promise.reject(new Disconnected("not connected"));
    const req = ++this.lastReq;
    return new Promise((resolve, reject) => {
      this.pending.set(req, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, req }));
    });
  }

  /**
   * Heartbeats keep this device online (presence). Each carries a `req`, and the
   * protocol answers every `req`: if the previous one is still unanswered when
   * the next is due, the connection is dead even if the socket has not noticed
   * (a tunnel, a sleeping laptop), and it is replaced.
   */
  startHeartbeats(intervalMs) {
    clearInterval(this.timers.heartbeat);
    let answered = true;
    this.timers.heartbeat = setInterval(() => {
      if (!answered) return this.drop(this.ws, `no answer to a heartbeat for ${intervalMs} ms`);
      answered = false;
      this.request({ type: "heartbeat" }).then(
        () => (answered = true),
        () => {}, // the drop is handled where it is noticed
      );
    }, intervalMs);
  }

  closed(ws, ev) {
    if (ws !== this.ws) return;
    // 1000 is how the server closes a device that logged out (from any tab or
    // via POST /v1/logout): its token no longer works, so do not reconnect.
    if (ev.code === 1000) return this.on.onAuthLost("this device was logged out");
    const why = {
      1001: "the server is shutting down",
      1008: "the connection fell behind",
      1009: "a frame was too large",
      1011: "the server's storage was unavailable",
    };
    this.lost(why[ev.code] || (this.ready ? "connection lost" : "cannot connect"));
  }

  /** Abandons `ws` at once (it may be dead), then reconnects unless stopped. */
  drop(ws, reason) {
    if (!ws || ws !== this.ws) return;
    ws.onmessage = ws.onclose = null;
    // Closing a socket that is still connecting makes the browser log an error;
    // close it as soon as it opens instead (the server must not keep it).
    if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(4000, "gave up");
    else if (ws.readyState === WebSocket.OPEN) ws.close(4000, "gave up");
    this.lost(reason);
  }

  lost(reason) {
    this.ws = null;
    this.ready = false;
    clearInterval(this.timers.heartbeat);
    clearTimeout(this.timers.hello);
    for (const waiter of this.pending.values()) waiter.reject(new Disconnected(reason));
    this.pending.clear();
    if (this.stopped) return;
    this.on.onDown(reason);
    this.retryLater(reason);
  }

  /**
   * Exponential backoff with jitter, so that a restarted server is not hit by
   * all its clients at once: the n-th retry waits between half and all of
   * RECONNECT_MIN_MS * 2^(n-1), at most RECONNECT_MAX_MS.
   */
  retryLater(reason) {
    if (this.stopped) return;
    this.failures += 1;
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(this.failures - 1, 16));
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.on.onStatus("reconnecting", `${reason}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => this.open(), delay);
  }
}
