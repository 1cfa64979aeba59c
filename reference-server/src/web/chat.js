// chatscale web chat: a reference client for browsers, speaking docs/protocol.md
// exactly as written (HTTP API + WebSocket frames). No framework, no build step.
//
// What a web client has to get right, and where it happens below:
// - sign up / log in over HTTP; the token is kept in sessionStorage, so each tab
//   is its own device (every log-in makes a new device)            -> signIn()
// - connect to a chat server that login or discovery names (`servers`, best
//   first), not necessarily the node that served this page          -> Connection.open()
// - a heartbeat every `heartbeat_interval_ms` (from `hello`), sent with a `req`
//   so that a connection that died silently is noticed and replaced -> Connection.startHeartbeats()
// - reconnect with backoff after a drop, then `sync` from this device's cursor
//   (its highest contiguous inbox `seq`), paging while `more`        -> Connection.lost(), syncInbox()
// - dedupe by `seq`; a `seq` gap that stays open means something was missed,
//   so sync                                                          -> Inbox, receiveMessage()
// - sends are idempotent by `client_msg_id`, so a send that was not acked
//   before a drop is simply sent again after the reconnect           -> flushOutbox()
// - history scroll-back with `before`                                -> loadHistory()
"use strict";

const RECONNECT_MIN_MS = 250; // first retry after a drop (then doubling, with jitter)
const RECONNECT_MAX_MS = 15000; // retries never wait longer than this
const HELLO_TIMEOUT_MS = 10000; // an opened socket must say hello within this
const GAP_WAIT_MS = 500; // a seq gap may stay open this long (out-of-order delivery) before a sync
const FIRST_SYNC_WINDOW = 200; // a new device fetches this many recent inbox entries
const SYNC_LIMIT = 200; // inbox entries per sync page
const HISTORY_PAGE = 50; // messages per history page
const MAX_TEXT_CHARS = 100000; // the protocol's text limit, in Unicode scalar values
const FRIENDS_REFRESH_MS = 30000; // someone may add us as a friend: no frame says so

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** Builds an element. Children are appended as nodes or text: never as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function randomHex(bytes) {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b); // unlike crypto.randomUUID, also there on plain-http origins
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function clockTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

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
    this.failures = 0; // attempts since the last hello
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
    const url = socketUrl(candidates[this.failures % candidates.length], this.token);
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
      this.failures = 0;
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
    this.failures += 1;
    this.retryLater(reason);
  }

  /** Exponential backoff with jitter, so a restarted server is not hit by everyone at once. */
  retryLater(reason) {
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(this.failures, 16));
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.on.onStatus("reconnecting", `${reason}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => this.open(), delay);
  }
}

// ---------------------------------------------------------------------------
// Chat state
// ---------------------------------------------------------------------------

const SESSION_KEY = "chatscale.session"; // sessionStorage: per tab, so per device
const GROUP_NAMES_KEY = "chatscale.groupNames"; // localStorage: labels only

const state = {
  session: null, // {username, token, user_id, device_id, servers, cursor, outbox}
  conn: null,
  inbox: null, // Inbox, once the first hello told us where the user's inbox stands
  synced: false, // the inbox is synced since the last hello
  syncing: false,
  syncAgain: false,
  gapTimer: null,
  friends: new Map(), // user_id -> {user_id, username, status, last_active_at}
  channels: new Map(), // channel id -> {id, messages: Map(id -> message), ...}
  open: null, // the channel on screen
  outbox: [], // sends not acked yet: {channel, to, client_msg_id, text, failed}
  groupNames: {},
};

function saveSession() {
  if (!state.session) return;
  if (state.inbox) state.session.cursor = state.inbox.cursor;
  state.session.outbox = state.outbox.map(({ channel, to, client_msg_id, text, failed }) => ({
    channel, to, client_msg_id, text, failed,
  }));
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
}

function dmChannel(a, b) {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** The other user of a dm channel, or null for a group. */
function dmPeer(channelId) {
  const m = /^dm:(\d+):(\d+)$/.exec(channelId);
  if (!m) return null;
  const [a, b] = [Number(m[1]), Number(m[2])];
  return a === state.session.user_id ? b : a;
}

function channel(id) {
  let ch = state.channels.get(id);
  if (!ch) {
    ch = { id, messages: new Map(), lastTs: 0, unread: 0, historyLoaded: false, historyDone: false, loading: false };
    state.channels.set(id, ch);
  }
  return ch;
}

function userName(id) {
  if (id === state.session.user_id) return state.session.username;
  const f = state.friends.get(id);
  return f ? f.username : `user ${id}`;
}

function channelTitle(ch) {
  const peer = dmPeer(ch.id);
  if (peer !== null) return userName(peer);
  const name = state.groupNames[ch.id];
  return name ? `${name} (${ch.id})` : `group ${ch.id}`;
}

// ---------------------------------------------------------------------------
// Frames from the server
// ---------------------------------------------------------------------------

async function onHello(hello) {
  if (state.inbox === null) {
    // A new device: start a little below the inbox's top so that recent
    // conversations show up; older ones are in history.
    const start = state.session.cursor ?? Math.max(0, hello.seq - FIRST_SYNC_WINDOW);
    state.inbox = new Inbox(start);
  }
  state.synced = false;
  setStatus("syncing", "Connected; syncing");
  refreshFriends(); // presence frames sent while we were away are lost: ask
  try {
    await syncInbox();
  } catch (e) {
    if (!(e instanceof Disconnected)) showError("Sync failed", e);
    return;
  }
  state.synced = true;
  setStatus("connected", `Connected (device ${state.session.device_id})`);
  flushOutbox();
}

function onFrame(frame) {
  switch (frame.type) {
    case "message":
      receiveMessage(frame);
      break;
    case "presence":
      onPresence(frame);
      break;
    case "error":
      showError("The server reported an error", new ApiError(frame.code, frame.message));
      break;
    default:
      // Unknown frame types are ignored (forward compatibility).
      break;
  }
}

/** A message from a live frame, a sync batch or our own ack. */
function receiveMessage(m) {
  if (!state.inbox.take(m.seq)) return; // a duplicate: this device has that seq
  const ch = channel(m.channel);
  ch.messages.set(m.id, m);
  ch.lastTs = Math.max(ch.lastTs, m.ts);
  const mine = m.from === state.session.user_id;
  if (mine && m.from_device === state.session.device_id) {
    // Sent from this device before a drop, and its ack was lost: it is stored.
    settle(m.client_msg_id);
  }
  if (ch !== state.open && !mine) ch.unread += 1;
  if (state.inbox.hasGap && !state.gapTimer) {
    // Across channels, messages may arrive out of seq order; give the gap a
    // moment to fill, then ask.
    state.gapTimer = setTimeout(() => {
      state.gapTimer = null;
      if (state.inbox.hasGap) syncInbox().catch(() => {});
    }, GAP_WAIT_MS);
  }
  saveSession();
  render();
}

/** `sync` from the cursor, paging while `more`; one at a time. */
async function syncInbox() {
  if (state.syncing) {
    state.syncAgain = true;
    return;
  }
  state.syncing = true;
  try {
    do {
      state.syncAgain = false;
      for (let more = true; more; ) {
        const since = state.inbox.cursor;
        const batch = await state.conn.request({ type: "sync", since, limit: SYNC_LIMIT });
        for (const m of batch.messages) receiveMessage(m);
        const last = batch.messages.length ? batch.messages[batch.messages.length - 1].seq : since;
        state.inbox.completeTo(last);
        more = batch.more && batch.messages.length > 0;
      }
      saveSession();
    } while (state.syncAgain);
  } finally {
    state.syncing = false;
  }
}

function onPresence(p) {
  const friend = state.friends.get(p.user_id);
  if (!friend) return refreshFriends(); // someone befriended us meanwhile
  friend.status = p.status;
  friend.last_active_at = p.last_active_at;
  render();
}

async function refreshFriends() {
  try {
    const { friends } = await api("GET", "/v1/friends", undefined, state.session.token);
    state.friends = new Map(friends.map((f) => [f.user_id, f]));
    render();
  } catch (e) {
    authCheck(e) || showError("Could not load friends", e);
  }
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

function send(ch, text) {
  const peer = dmPeer(ch.id);
  state.outbox.push({
    channel: ch.id,
    to: peer !== null ? { user: peer } : { channel: ch.id },
    client_msg_id: "web-" + randomHex(12),
    text,
    failed: null,
  });
  saveSession();
  render();
  flushOutbox();
}

/** Sends every unacked message not in flight; after a reconnect, again (idempotent). */
function flushOutbox() {
  if (!state.conn || !state.conn.ready || !state.synced) return;
  for (const item of state.outbox) if (!item.failed && !item.inFlight) transmit(item);
}

async function transmit(item) {
  item.inFlight = true;
  try {
    const ack = await state.conn.request({
      type: "send",
      to: item.to,
      client_msg_id: item.client_msg_id,
      text: item.text,
    });
    // The ack is the receipt: the message's id in its channel and its seq in our inbox.
    settle(item.client_msg_id);
    receiveMessage({
      type: "message", channel: ack.channel, id: ack.id, seq: ack.seq,
      from: state.session.user_id, from_device: state.session.device_id,
      client_msg_id: item.client_msg_id, text: item.text, ts: ack.ts,
    });
  } catch (e) {
    // Disconnected: it stays in the outbox and is sent again after the reconnect.
    if (!(e instanceof Disconnected)) item.failed = `${e.code}: ${e.message}`;
  } finally {
    item.inFlight = false;
    saveSession();
    render();
  }
}

function settle(clientMsgId) {
  state.outbox = state.outbox.filter((item) => item.client_msg_id !== clientMsgId);
}

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

/** The newest page (first open), or the page just below what we have (`before`). */
async function loadHistory(ch, older) {
  if (ch.loading || (older && ch.historyDone)) return;
  ch.loading = true;
  const params = new URLSearchParams({ limit: HISTORY_PAGE });
  const ids = [...ch.messages.keys()];
  const oldest = ids.length ? Math.min(...ids) : null;
  if (older && oldest !== null) params.set("before", oldest);
  try {
    const path = `/v1/channels/${encodeURIComponent(ch.id)}/messages?${params}`;
    const page = await api("GET", path, undefined, state.session.token);
    // History messages carry no seq (seq is per user); they never touch the inbox.
    for (const m of page.messages) if (!ch.messages.has(m.id)) ch.messages.set(m.id, m);
    const lowest = Math.min(oldest ?? Infinity, ...page.messages.map((m) => m.id));
    ch.historyDone = page.messages.length < HISTORY_PAGE || lowest === 1;
    ch.historyLoaded = true;
    for (const m of page.messages) ch.lastTs = Math.max(ch.lastTs, m.ts);
  } catch (e) {
    authCheck(e) || showError("Could not load history", e);
  } finally {
    ch.loading = false;
    render(older ? "older" : undefined);
  }
}

// ---------------------------------------------------------------------------
// Rendering (coalesced: many changes in one task make one render)
// ---------------------------------------------------------------------------

let renderQueued = false;
let keepBottomOffset = false;

function render(reason) {
  if (reason === "older") keepBottomOffset = true;
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    renderFriends();
    renderChannels();
    renderChat();
  });
}

function setStatus(name, text) {
  const node = $("conn-status");
  node.dataset.state = name;
  node.textContent = text;
}

let errorTimer = null;
function showError(what, e) {
  $("error-text").textContent = e ? `${what}: ${e.message}${e.code ? ` (${e.code})` : ""}` : what;
  $("error").hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($("error").hidden = true), 15000);
}

function renderFriends() {
  const friends = [...state.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
  $("friends").replaceChildren(
    ...friends.map((f) => {
      const seen = f.status === "online" || !f.last_active_at ? f.status : `offline, seen ${clockTime(f.last_active_at)}`;
      return el("li", { "data-user-id": f.user_id, "data-status": f.status },
        el("button", { type: "button", onclick: () => openChannel(dmChannel(state.session.user_id, f.user_id)) },
          el("span", { class: "dot", "aria-hidden": "true" }),
          el("span", { class: "who" }, f.username, el("span", { class: "note" }, ` #${f.user_id}`)),
          el("span", { class: "note presence" }, seen)));
    }),
  );
  $("friends-empty").hidden = friends.length > 0;
  $("group-members").hidden = friends.length === 0;
  // The group form's checkboxes: rebuilt only when the friends change, so
  // that ticks survive presence updates.
  const key = friends.map((f) => f.user_id).join(",");
  const box = $("group-members");
  if (box.dataset.key !== key) {
    box.dataset.key = key;
    box.replaceChildren(
      el("legend", {}, "Friends to add"),
      ...friends.map((f) => el("label", {},
        el("input", { type: "checkbox", value: f.user_id, "data-user-id": f.user_id }), f.username)),
    );
  }
}

function renderChannels() {
  const channels = [...state.channels.values()].sort((a, b) => b.lastTs - a.lastTs);
  $("channels").replaceChildren(
    ...channels.map((ch) =>
      el("li", { "data-channel": ch.id, "aria-current": ch === state.open ? "true" : null },
        el("button", { type: "button", onclick: () => openChannel(ch.id) },
          el("span", { class: "who" }, channelTitle(ch)),
          ch.unread ? el("span", { class: "unread" }, String(ch.unread),
            el("span", { class: "visually-hidden" }, " unread")) : null))),
  );
  $("channels-empty").hidden = channels.length > 0;
}

function messageItem(m) {
  const mine = m.from === state.session.user_id;
  let who = userName(m.from);
  if (mine && m.from_device !== undefined && m.from_device !== state.session.device_id) {
    who += ` (device ${m.from_device})`;
  }
  return el("li", { class: mine ? "msg mine" : "msg", "data-id": m.id, "data-channel": m.channel },
    el("div", { class: "meta" }, `${who} · ${clockTime(m.ts)}`),
    el("div", { class: "text" }, m.text));
}

function pendingItem(item) {
  return el("li", { class: item.failed ? "msg mine failed" : "msg mine pending", "data-client-msg-id": item.client_msg_id },
    el("div", { class: "state" }, item.failed ? `not sent: ${item.failed} ` : "sending…",
      item.failed ? el("button", { type: "button", class: "plain", onclick: () => retry(item) }, "Retry") : null),
    el("div", { class: "text" }, item.text));
}

function renderChat() {
  const ch = state.open;
  const box = $("messages-box");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fromBottom = box.scrollHeight - box.scrollTop;
  $("chat-title").textContent = ch ? channelTitle(ch) : "No conversation open";
  $("add-member").hidden = !ch || dmPeer(ch.id) !== null;
  $("empty-chat").hidden = !!ch;
  $("text").disabled = $("send").disabled = !ch;
  if (!ch) {
    $("messages").replaceChildren();
    $("older").hidden = $("history-note").hidden = true;
    return;
  }
  const messages = [...ch.messages.values()].sort((a, b) => a.id - b.id);
  $("messages").replaceChildren(
    ...messages.map(messageItem),
    ...state.outbox.filter((item) => item.channel === ch.id).map(pendingItem),
  );
  $("older").hidden = !ch.historyLoaded || ch.historyDone;
  $("older").disabled = ch.loading;
  $("history-note").hidden = !ch.historyDone;
  if (keepBottomOffset) box.scrollTop = box.scrollHeight - fromBottom; // older page above: stay put
  else if (atBottom) box.scrollTop = box.scrollHeight;
  keepBottomOffset = false;
}

// ---------------------------------------------------------------------------
// User actions
// ---------------------------------------------------------------------------

function openChannel(id) {
  const ch = channel(id);
  state.open = ch;
  ch.unread = 0;
  render();
  queueMicrotask(() => ($("messages-box").scrollTop = $("messages-box").scrollHeight));
  if (!ch.historyLoaded) loadHistory(ch, false);
  $("text").focus();
}

function retry(item) {
  item.failed = null;
  render();
  flushOutbox();
}

/** A 401 from the HTTP API: the token is dead (logged out, expired). */
function authCheck(e) {
  if (e.status !== 401) return false;
  endSession("your session has ended; log in again");
  return true;
}

async function signIn(signup) {
  const form = $("auth-form");
  if (!form.reportValidity()) return;
  const username = $("username").value.trim();
  const password = $("password").value;
  try {
    if (signup) await api("POST", "/v1/signup", { username, password });
    const r = await api("POST", "/v1/login", { username, password });
    state.session = {
      username, token: r.token, user_id: r.user_id, device_id: r.device_id,
      servers: r.servers, cursor: null, outbox: [],
    };
    $("password").value = "";
    saveSession();
    startSession();
  } catch (e) {
    const hint = { 401: "wrong username or password", 409: "that username is taken" }[e.status];
    showError(signup ? "Sign-up failed" : "Log-in failed", hint ? new ApiError(e.code, hint) : e);
  }
}

function startSession() {
  const s = state.session;
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  $("me").hidden = false;
  $("me-name").textContent = `${s.username} · your user id ${s.user_id} · device ${s.device_id}`;
  state.outbox = s.outbox || [];
  state.inbox = s.cursor === null || s.cursor === undefined ? null : new Inbox(s.cursor);
  state.conn = new Connection(s.token, s.servers, {
    onHello,
    onFrame,
    onDown: () => (state.synced = false),
    onStatus: setStatus,
    onAuthLost: endSession,
  });
  state.conn.start();
  render();
}

function endSession(reason) {
  if (state.conn) state.conn.stop();
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, {
    session: null, conn: null, inbox: null, synced: false, open: null,
    friends: new Map(), channels: new Map(), outbox: [],
  });
  $("auth-view").hidden = false;
  $("chat-view").hidden = true;
  $("me").hidden = true;
  setStatus("signed-out", "Signed out");
  if (reason) showError(reason);
}

function wireUp() {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn(false);
  });
  $("signup").addEventListener("click", () => signIn(true));
  $("logout").addEventListener("click", async () => {
    const token = state.session.token;
    endSession();
    try {
      await api("POST", "/v1/logout", undefined, token);
    } catch (e) {
      showError("Log-out failed", e);
    }
  });
  $("error-close").addEventListener("click", () => ($("error").hidden = true));
  $("friends-refresh").addEventListener("click", refreshFriends);

  $("add-friend").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const userId = Number($("friend-id").value);
    try {
      await api("POST", "/v1/friends", { user_id: userId }, state.session.token);
      $("friend-id").value = "";
      await refreshFriends();
    } catch (e) {
      authCheck(e) || showError(`Could not add user ${userId}`, e);
    }
  });

  $("new-group").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("group-name").value.trim();
    const ticked = [...$("group-members").querySelectorAll("input:checked")].map((i) => Number(i.value));
    const extra = $("group-extra").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    try {
      const { channel: id } = await api("POST", "/v1/groups", { name, members: [...ticked, ...extra] }, state.session.token);
      state.groupNames[id] = name;
      localStorage.setItem(GROUP_NAMES_KEY, JSON.stringify(state.groupNames));
      $("new-group").reset();
      channel(id).lastTs = Date.now();
      openChannel(id);
    } catch (e) {
      authCheck(e) || showError("Could not create the group", e);
    }
  });

  $("add-member").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const userId = Number($("member-id").value);
    try {
      const path = `/v1/groups/${encodeURIComponent(state.open.id)}/members`;
      await api("POST", path, { user_id: userId }, state.session.token);
      $("member-id").value = "";
    } catch (e) {
      authCheck(e) || showError(`Could not add user ${userId}`, e);
    }
  });

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value;
    if (!state.open || text.trim() === "") return;
    if ([...text].length > MAX_TEXT_CHARS) {
      return showError(`A message is at most ${MAX_TEXT_CHARS} characters`);
    }
    send(state.open, text);
    $("text").value = "";
    const box = $("messages-box");
    queueMicrotask(() => (box.scrollTop = box.scrollHeight));
  });
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });

  // Scroll-back: reaching the top loads the page before the oldest message.
  $("messages-box").addEventListener("scroll", () => {
    if ($("messages-box").scrollTop < 30 && state.open && state.open.historyLoaded) loadHistory(state.open, true);
  });
  $("older").addEventListener("click", () => state.open && loadHistory(state.open, true));

  window.addEventListener("online", () => state.conn && state.conn.networkBack());
  setInterval(() => state.synced && refreshFriends(), FRIENDS_REFRESH_MS);
}

function main() {
  try {
    state.groupNames = JSON.parse(localStorage.getItem(GROUP_NAMES_KEY)) || {};
  } catch {
    state.groupNames = {};
  }
  wireUp();
  try {
    state.session = JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    state.session = null;
  }
  if (state.session) startSession(); // a reload: same tab, same device, same cursor
}

main();
