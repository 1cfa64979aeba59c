// chatscale web chat, part 2 of 3: the chat state of one device (one tab)
// and what it does with frames, built on client.js; ui.js draws it.
//
// What a chat client has to get right, and where it happens here:
// - the token is kept in sessionStorage, so each tab is its own device (every
//   log-in makes a new device), and a reload keeps device and cursor  -> saveSession()
// - after every `hello`, `sync` from this device's cursor, paging while
//   `more`; nothing is sent before that                             -> onHello(), syncInbox()
// - dedupe by `seq`; a `seq` gap that stays open means something was
//   missed, so sync                                                  -> receiveMessage()
// - sends are idempotent by `client_msg_id`, so a send not acked before
//   a drop is simply sent again after the reconnect                  -> flushOutbox()
// - history scroll-back with `before`                                -> loadHistory()
// - presence frames are lost while away: reload the friends list     -> refreshFriends()
"use strict";

const GAP_WAIT_MS = 500; // a seq gap may stay open this long (out-of-order delivery) before a sync
const FIRST_SYNC_WINDOW = 200; // a new device fetches this many recent inbox entries
const SYNC_LIMIT = 200; // inbox entries per sync page
const HISTORY_PAGE = 50; // messages per history page
const FRIENDS_REFRESH_MS = 30000; // someone may add us as a friend: no frame says so

function randomHex(bytes) {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b); // unlike crypto.randomUUID, also there on plain-http origins
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------
// Chat state
// ---------------------------------------------------------------------------

const SESSION_KEY = "chatscale.session"; // sessionStorage: per tab, so per device
const GROUP_NAMES_KEY = "chatscale.groupNames"; // localStorage: labels only

const state = {
  session: null, // {username, token, user_id, device_id, servers, cursor, outbox, channels}
  conn: null,
  inbox: null, // Inbox, once the first hello told us where the user's inbox stands
  synced: false, // the inbox is synced since the last hello
  countUnread: true, // not while a new device fetches its first window
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
  // The conversations (not their messages: after a reload, history has them).
  state.session.channels = [...state.channels.values()].map((ch) => [ch.id, ch.lastTs]);
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
    state.countUnread = false; // what this device never saw is not "new" to it
  }
  state.synced = false;
  setStatus("syncing", "Connected; syncing");
  refreshFriends(); // presence frames sent while we were away are lost: ask
  try {
    await syncInbox();
  } catch (e) {
    if (!(e instanceof Disconnected)) {
      // Nothing may be sent before the inbox is synced: start over, after a backoff.
      showError("Sync failed", e);
      state.conn.drop(state.conn.ws, "sync failed");
    }
    return;
  }
  state.synced = true;
  state.countUnread = true;
  state.conn.healthy();
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
  if (ch !== state.open && !mine && state.countUnread) ch.unread += 1;
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
