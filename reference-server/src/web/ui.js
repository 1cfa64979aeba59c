// chatscale web chat, part 3 of 3: the page. Draws the state of chat.js and
// turns the user's actions into its calls (and HTTP API calls for accounts,
// friends and groups). Text from the network is always set as text, never as
// HTML.
"use strict";

const MAX_TEXT_CHARS = 100000; // the protocol's text limit, in Unicode scalar values

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

/** "14:05" today, "3 Mar, 14:05" on another day. */
function clockTime(ts) {
  const when = new Date(ts);
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === new Date().toDateString()) return time;
  return `${when.toLocaleDateString([], { day: "numeric", month: "short" })}, ${time}`;
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
  for (const [id, lastTs] of s.channels || []) channel(id).lastTs = lastTs;
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
