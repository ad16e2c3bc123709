// The SimpleTextIM web client: speaks the protocol's JSON objects (shared/spec/protocol.md,
// version 1.1) over the server's /ws WebSocket, one object per text message.
//
// Where to start reading: `state` (everything the page knows), `onFrame` (every reply the
// server sends), then `connect` (login, reconnection with back-off) and `Conversation` (one
// conversation's messages, kept in id order, de-duplicated by id).
//
// Rules kept throughout:
// - Text from the network is only ever put into the page with textContent, never as markup.
// - Every command carries a `ref`; a reply is matched to its command by that ref (the echo of
//   a `send` carries it inside the message object, every other reply at the top level).
// - The page displays what the server echoes, so every participant sees one order.

const MAX_CHARS = 140; // the server's limit, in Unicode scalar values
const PAGE = 50; // messages per history page
const BACKOFF_FIRST_MS = 500; // the first reconnection's delay, doubled at each failure
const BACKOFF_MAX_MS = 30_000; // up to this
const USER_ID = /^[A-Za-z0-9_.-]{1,32}$/;
const CONTROL = /\p{Cc}/u;

const $ = (id) => document.getElementById(id);

/** A new element with an optional class and text (always as text, never as markup). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** User ids are ASCII and unique case-insensitively: this is the server's folding. */
const fold = (id) => id.toLowerCase();
/** Length as the server counts it: Unicode scalar values. */
const charCount = (text) => [...text].length;

function formatTime(ts) {
  const date = new Date(ts);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const state = {
  me: "", // the user id, as the server spells it once it has told us
  password: "", // kept in memory only, to log in again after a reconnection
  ws: null,
  // out: not logged in; connecting; login: waiting for the login ack; online;
  // waiting: reconnecting after a delay; stopped: will not reconnect by itself.
  phase: "out",
  everLoggedIn: false, // a login ack arrived since the login form was last submitted
  attempt: 0, // reconnections since the last login ack (the back-off's exponent)
  timer: 0,
  nextRef: 1,
  pending: new Map(), // ref -> what the command was: {kind, conv, node, dir}
  convs: new Map(), // conversation key ("*" or folded user id) -> Conversation
  current: null, // the Conversation shown
  online: new Map(), // folded user id -> spelling
  ackedId: 0, // highest private message id acked in this session
  offlineReason: "", // why the server said it would close the connection, if it did
};

// ---------------------------------------------------------------------------------------
// Conversations

/** One conversation: its messages in id order (each id once), its log element, unread count. */
class Conversation {
  constructor(key, name) {
    this.key = key; // "*" or the other user's folded id
    this.name = name; // "*" or the other user's spelling
    this.ids = []; // ids of the messages shown, ascending
    this.nodes = new Map(); // id -> <li>
    this.unread = 0;
    this.opened = key === "*"; // the user has looked at it: its history is wanted
    this.asked = false; // its latest page was asked in some session
    this.more = false; // older kept messages exist (from the latest page or a `before` page)
    this.loadingOlder = false;

    // The scroll container holds the "older" button and the log itself.
    this.scroller = el("section", "scroller");
    this.scroller.hidden = true;
    this.scroller.tabIndex = 0; // so the keyboard can scroll it
    this.scroller.setAttribute("aria-label", this.title());
    this.olderButton = el("button", "older", "Load older messages");
    this.olderButton.type = "button";
    this.olderButton.hidden = true;
    this.olderButton.addEventListener("click", () => loadOlder(this));
    this.log = el("ol", "log");
    this.log.setAttribute("role", "log");
    this.log.setAttribute("aria-live", "polite");
    this.log.setAttribute("aria-label", `Messages: ${this.title()}`);
    this.scroller.append(this.olderButton, this.log);
    this.scroller.addEventListener("scroll", () => {
      if (this.scroller.scrollTop < 40) loadOlder(this);
    });

    // Its entry in the sidebar.
    this.item = el("li");
    this.button = el("button", "conv");
    this.button.type = "button";
    this.label = el("span", "conv-name", this.title());
    this.badge = el("span", "badge");
    this.badge.hidden = true;
    this.button.append(this.label, " ", this.badge);
    this.button.addEventListener("click", () => select(this));
    this.item.append(this.button);
  }

  title() {
    return this.key === "*" ? "Everyone" : this.name;
  }

  get newest() {
    return this.ids.length ? this.ids[this.ids.length - 1] : 0;
  }

  get oldest() {
    return this.ids.length ? this.ids[0] : 0;
  }

  /** Adds a message in id order; false when its id is already shown. */
  add(m) {
    if (this.nodes.has(m.id)) return false;
    let i = this.ids.length;
    while (i > 0 && this.ids[i - 1] > m.id) i -= 1;
    const next = i < this.ids.length ? this.nodes.get(this.ids[i]) : null;
    const node = messageNode(m);
    this.ids.splice(i, 0, m.id);
    this.nodes.set(m.id, node);
    this.log.insertBefore(node, next);
    return true;
  }

  /** A line that is no message: a presence notice or an error. */
  notice(text, className = "notice") {
    const atBottom = isAtBottom(this);
    this.log.append(el("li", className, text));
    if (atBottom) scrollToBottom(this);
  }

  rename(name) {
    if (this.key === "*" || name === this.name) return;
    this.name = name;
    this.label.textContent = name;
    this.scroller.setAttribute("aria-label", name);
    this.log.setAttribute("aria-label", `Messages: ${name}`);
    if (this === state.current) showTitle();
  }

  render() {
    this.badge.hidden = this.unread === 0;
    this.badge.textContent = this.unread ? `${this.unread} unread` : "";
    this.olderButton.hidden = !this.more;
    this.button.setAttribute("aria-current", this === state.current ? "true" : "false");
  }
}

function messageNode(m) {
  const node = el("li", "msg");
  node.dataset.id = String(m.id);
  if (state.me && fold(m.user_id) === fold(state.me)) node.classList.add("mine");
  const time = el("time", "ts", typeof m.ts === "number" ? formatTime(m.ts) : "");
  if (typeof m.ts === "number") time.dateTime = new Date(m.ts).toISOString();
  node.append(time, " ", el("span", "from", m.user_id), " ", el("span", "body", m.message));
  return node;
}

const isAtBottom = (c) =>
  c.scroller.scrollHeight - c.scroller.scrollTop - c.scroller.clientHeight < 40;
const scrollToBottom = (c) => {
  c.scroller.scrollTop = c.scroller.scrollHeight;
};

function conversation(key, name) {
  let c = state.convs.get(key);
  if (!c) {
    c = new Conversation(key, name);
    state.convs.set(key, c);
    $("logs").append(c.scroller);
    $("convs").append(c.item);
    c.render();
  } else {
    c.rename(name);
  }
  return c;
}

/** The conversation a chat message belongs to, created if new. */
function conversationOf(m) {
  if (m.to === "*" || m.to === undefined) return conversation("*", "*");
  const other = fold(m.user_id) === fold(state.me) ? m.to : m.user_id;
  return conversation(fold(other), other);
}

function select(c) {
  const previous = state.current;
  state.current = c;
  if (previous && previous !== c) {
    previous.scroller.hidden = true;
    previous.render();
  }
  c.scroller.hidden = false;
  c.unread = 0;
  c.render();
  showTitle();
  renderMenu();
  closeSidebar();
  if (!c.opened) {
    c.opened = true;
    if (state.phase === "online") askLatest(c);
  }
  if (!previous || previous !== c) scrollToBottom(c);
  updateComposer();
}

function showTitle() {
  const c = state.current;
  $("conv-title").textContent = c.key === "*" ? "Everyone" : `Private: ${c.name}`;
  $("text-label").textContent = c.key === "*" ? "Message to everyone" : `Message to ${c.name}`;
}

function openPrivate(name) {
  select(conversation(fold(name), name));
  $("text").focus();
}

// ---------------------------------------------------------------------------------------
// Online users

function setOnline(list) {
  state.online = new Map(list.map((id) => [fold(id), id]));
  const me = state.online.get(fold(state.me));
  if (me && me !== state.me) {
    state.me = me; // the spelling the account was created with
    if (state.phase === "online") setStatus(`Online as ${me}`, "online");
  }
  const ul = $("users");
  ul.replaceChildren(...list.map(userItem));
}

function userItem(id) {
  const li = el("li");
  li.dataset.user = fold(id);
  if (fold(id) === fold(state.me)) {
    li.append(el("span", "user me", `${id} (you)`));
  } else {
    const button = el("button", "user", id);
    button.type = "button";
    button.setAttribute("aria-label", `Talk privately with ${id}`);
    button.addEventListener("click", () => openPrivate(id));
    li.append(button);
  }
  return li;
}

function joined(id) {
  const key = fold(id);
  if (!state.online.has(key)) {
    state.online.set(key, id);
    const ul = $("users");
    const next = [...ul.children].find((li) => li.dataset.user > key) ?? null;
    ul.insertBefore(userItem(id), next);
  }
  conversation("*", "*").notice(`${id} joined`);
}

function left(id) {
  const key = fold(id);
  state.online.delete(key);
  for (const li of [...$("users").children]) if (li.dataset.user === key) li.remove();
  conversation("*", "*").notice(`${id} left`);
}

// ---------------------------------------------------------------------------------------
// Sending

/** Sends a command with a fresh ref, remembering what it was; returns the ref. */
function command(obj, what) {
  const ref = state.nextRef;
  state.nextRef += 1;
  if (what) state.pending.set(ref, what);
  sendRaw({ ...obj, ref });
  return ref;
}

function sendRaw(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
}

function askLatest(c) {
  c.asked = true;
  command(
    { command: "history", with: c.name, limit: PAGE },
    { kind: "history", conv: c, dir: "latest" },
  );
}

function askAfter(c) {
  command(
    { command: "history", with: c.name, after: c.newest, limit: PAGE },
    { kind: "history", conv: c, dir: "after" },
  );
}

function loadOlder(c) {
  if (!c.more || c.loadingOlder || state.phase !== "online" || !c.ids.length) return;
  c.loadingOlder = true;
  command(
    { command: "history", with: c.name, before: c.oldest, limit: PAGE },
    { kind: "history", conv: c, dir: "before" },
  );
}

function sendText(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  if (refusal(text) || text.trim() === "" || state.phase !== "online") return;
  const c = state.current;
  const node = el("li", "msg pending");
  node.append(
    el("span", "from", state.me),
    " ",
    el("span", "body", text),
    " ",
    el("span", "status", "sending…"),
  );
  c.log.append(node);
  scrollToBottom(c);
  command(
    { command: "send", message: text, to: c.key === "*" ? "*" : c.name },
    { kind: "send", conv: c, node },
  );
  input.value = "";
  updateComposer();
}

/** Why the page refuses to send `text`, or "" when it may be sent. */
function refusal(text) {
  const n = charCount(text);
  if (n > MAX_CHARS) return `Too long: ${n} characters, at most ${MAX_CHARS}.`;
  if (CONTROL.test(text)) return "Control characters cannot be sent.";
  return "";
}

function updateComposer() {
  const input = $("text");
  const text = input.value;
  const why = refusal(text);
  const counter = $("counter");
  counter.textContent = `${charCount(text)}/${MAX_CHARS}`;
  counter.classList.toggle("over", charCount(text) > MAX_CHARS);
  if ($("text-error").textContent !== why) $("text-error").textContent = why;
  input.setAttribute("aria-invalid", why ? "true" : "false");
  $("send").disabled = why !== "" || text.trim() === "" || state.phase !== "online";
}

// ---------------------------------------------------------------------------------------
// Receiving

function onFrame(data) {
  let r;
  try {
    r = JSON.parse(data);
  } catch {
    return; // not ours to repair; the server only sends JSON
  }
  if (!r || typeof r !== "object") return;
  const what = r.ref === undefined ? undefined : state.pending.get(r.ref);
  if (what) state.pending.delete(r.ref);
  switch (r.command) {
    case "message":
      if (what?.kind === "login") loggedIn(r.messages ?? []);
      else onMessages(r.messages ?? []);
      break;
    case "list":
      if (Array.isArray(r.list)) setOnline(r.list);
      break;
    case "history":
      if (what?.kind === "history") onHistory(r, what);
      break;
    case "joined":
      joined(String(r.user_id));
      break;
    case "left":
      left(String(r.user_id));
      break;
    case "fail":
      onFail(r.fail ?? {}, what, r.ref);
      break;
    default:
    // A reply kind from a newer server: skipped, as the protocol asks.
  }
}

function onMessages(messages) {
  let ackUpTo = 0;
  const touched = new Set();
  for (const m of messages) {
    if (!m || typeof m.id !== "number") continue;
    if (m.ref !== undefined) {
      // The echo of one of our sends: the pending line gives way to the message itself.
      const what = state.pending.get(m.ref);
      state.pending.delete(m.ref);
      what?.node?.remove();
    }
    const c = conversationOf(m);
    const atBottom = isAtBottom(c);
    const mine = fold(m.user_id) === fold(state.me);
    if (c.add(m)) {
      if (!mine && (c !== state.current || document.hidden)) c.unread += 1;
      if (atBottom || mine) scrollToBottom(c);
    }
    if (m.to !== "*" && !mine && m.id > ackUpTo) ackUpTo = m.id;
    touched.add(c);
  }
  for (const c of touched) c.render();
  renderMenu();
  // Acknowledged delivery: the messages are in the page now, so the server may forget them.
  if (ackUpTo > state.ackedId) {
    state.ackedId = ackUpTo;
    sendRaw({ command: "ack", id: ackUpTo, ref: `ack-${ackUpTo}` });
  }
}

function onHistory(r, what) {
  const c = what.conv;
  if (typeof r.with === "string") c.rename(r.with);
  const messages = Array.isArray(r.messages) ? r.messages : [];
  const fromBottom = c.scroller.scrollHeight - c.scroller.scrollTop;
  const atBottom = isAtBottom(c);
  for (const m of messages) if (m && typeof m.id === "number") c.add(m);
  if (what.dir === "after") {
    // Catching up after a reconnection: follow `more` until the gap is filled.
    if (r.more && messages.length) askAfter(c);
    if (atBottom) scrollToBottom(c);
  } else {
    c.more = Boolean(r.more);
    c.loadingOlder = false;
    if (what.dir === "before") c.scroller.scrollTop = c.scroller.scrollHeight - fromBottom;
    else scrollToBottom(c);
  }
  c.render();
}

function onFail(fail, what, ref) {
  const code = fail.error_code;
  const reason = String(fail.reason ?? `error ${code}`);
  if (what?.kind === "login" || (!what && ref === undefined && state.phase === "login")) {
    loginRefused(code, reason);
  } else if (what?.kind === "send") {
    what.node.classList.add("failed");
    what.node.querySelector(".status").textContent = `Not sent: ${reason}`;
  } else if (what?.kind === "history") {
    what.conv.loadingOlder = false;
    what.conv.notice(`History not available: ${reason}`, "notice error");
  } else if (ref === undefined && code === 409) {
    // Taken over by a newer login: reconnecting by itself would take it back, and so on.
    stop(`Stopped: ${reason}. Reconnect to continue here.`);
  } else if (ref === undefined && code === 401) {
    // The session was revoked (password changed, account deleted): ask for the password.
    state.password = "";
    stop(reason);
    showLogin(reason);
  } else if (ref === undefined && code === 503) {
    // The server is going away (shutting down): the connection closes next.
    state.offlineReason = reason;
    setStatus(`Disconnected: ${reason}`, "waiting");
  } else {
    (state.current ?? conversation("*", "*")).notice(`Error ${code}: ${reason}`, "notice error");
  }
}

// ---------------------------------------------------------------------------------------
// Connection

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  clearTimeout(state.timer);
  state.phase = "connecting";
  setStatus("Connecting…", "connecting");
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (error) {
    connectionLost(String(error));
    return;
  }
  state.ws = ws;
  ws.addEventListener("open", () => {
    if (ws !== state.ws) return;
    state.phase = "login";
    setStatus("Logging in…", "connecting");
    command(
      { command: "login", user_id: state.me, password: state.password, acks: true },
      { kind: "login" },
    );
  });
  ws.addEventListener("message", (event) => {
    if (ws === state.ws && typeof event.data === "string") onFrame(event.data);
  });
  ws.addEventListener("close", () => {
    if (ws !== state.ws) return;
    state.ws = null;
    connectionLost("connection closed");
  });
}

/** Drops the socket without reacting to its closing. */
function hangUp() {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
}

function connectionLost(why) {
  // Sends the server never answered: shown as such (gap filling brings back those it took).
  for (const what of state.pending.values()) {
    if (what.kind === "send") {
      what.node.classList.add("failed");
      what.node.querySelector(".status").textContent = "Not sent: the connection was lost";
    }
  }
  state.pending.clear();
  if (!state.everLoggedIn) {
    if (state.phase !== "out") loginRefused(0, `Cannot reach the server (${why}). Try again.`);
    return;
  }
  if (state.phase === "stopped" || state.phase === "out") return;
  // Jittered (±25 %), so that the pages of a restarted server do not all come back at once.
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
  const delay = base * (0.75 + Math.random() * 0.5);
  state.attempt += 1;
  state.phase = "waiting";
  const seconds = Math.max(1, Math.round(delay / 1000));
  const reason = state.offlineReason || why;
  state.offlineReason = "";
  setStatus(`Offline (${reason}): reconnecting in ${seconds} s`, "waiting");
  state.timer = setTimeout(connect, delay);
  updateComposer();
}

function loggedIn(pending) {
  state.everLoggedIn = true;
  state.attempt = 0;
  state.ackedId = 0;
  state.phase = "online";
  setStatus(`Online as ${state.me}`, "online");
  showChat();
  onMessages(pending);
  command({ command: "list" }, { kind: "list" });
  // History: the latest page of each conversation looked at, or what was missed meanwhile.
  for (const c of state.convs.values()) {
    if (!c.opened) continue;
    if (c.asked && c.newest) askAfter(c);
    else askLatest(c);
  }
  updateComposer();
}

/** A login refused: on the login form the first time, else as the connection's state. */
function loginRefused(code, reason) {
  hangUp();
  if (!state.everLoggedIn || code === 401) {
    state.phase = "out";
    state.everLoggedIn = false;
    setStatus("Not connected", "idle");
    showLogin(reason);
    return;
  }
  // Busy or throttled while logging in again: keep trying, later.
  state.phase = "connecting";
  connectionLost(`cannot log in again: ${reason}`);
}

/** No more automatic reconnection: a takeover, a revoked session. */
function stop(message) {
  hangUp();
  state.phase = "stopped";
  clearTimeout(state.timer);
  setStatus(message, "stopped");
  updateComposer();
}

function setStatus(text, kind) {
  const conn = $("conn");
  conn.textContent = text;
  conn.dataset.state = kind;
  const retry = $("retry");
  retry.hidden = !(kind === "waiting" || kind === "stopped") || !state.password;
  retry.textContent = kind === "stopped" ? "Reconnect" : "Reconnect now";
}

// ---------------------------------------------------------------------------------------
// Views

function showLogin(reason) {
  $("login-view").hidden = false;
  $("chat-view").hidden = true;
  $("logout").hidden = true;
  document.body.classList.remove("chatting");
  $("login-button").disabled = false;
  $("login-error").textContent = reason ?? "";
  $("password").value = "";
  ($("user").value ? $("password") : $("user")).focus();
}

function showChat() {
  if (!$("chat-view").hidden) return;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  document.body.classList.add("chatting");
  if (!state.current) select(conversation("*", "*"));
  $("text").focus();
}

function renderMenu() {
  let unread = 0;
  for (const c of state.convs.values()) unread += c.unread;
  $("menu").textContent = unread ? `Chats (${unread} unread)` : "Chats";
  document.title = unread ? `(${unread}) SimpleTextIM` : "SimpleTextIM";
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  $("menu").setAttribute("aria-expanded", "false");
}

function resetChat() {
  for (const c of state.convs.values()) {
    c.scroller.remove();
    c.item.remove();
  }
  state.convs.clear();
  state.current = null;
  state.online.clear();
  $("users").replaceChildren();
}

function submitLogin(event) {
  event.preventDefault();
  const id = $("user").value.trim();
  const password = $("password").value;
  if (!USER_ID.test(id)) {
    $("login-error").textContent =
      "A user id is 1–32 characters of A–Z a–z 0–9 _ . - (no spaces).";
    return;
  }
  const bytes = new TextEncoder().encode(password).length;
  if (bytes < 1 || bytes > 256) {
    $("login-error").textContent = "A password is 1–256 bytes.";
    return;
  }
  if (state.me && fold(state.me) !== fold(id)) resetChat();
  state.me = id;
  state.password = password;
  state.everLoggedIn = false;
  $("login-error").textContent = "";
  $("login-button").disabled = true;
  connect();
}

function logOut() {
  sendRaw({ command: "exit", ref: "exit" });
  hangUp();
  // A fresh page: nothing of this user's conversations stays in memory.
  location.reload();
}

function init() {
  $("login-form").addEventListener("submit", submitLogin);
  $("composer").addEventListener("submit", sendText);
  $("text").addEventListener("input", updateComposer);
  $("logout").addEventListener("click", logOut);
  $("retry").addEventListener("click", () => {
    state.attempt = 0;
    if (state.password) connect();
  });
  $("menu").hidden = false;
  $("menu").addEventListener("click", () => {
    const open = document.body.classList.toggle("sidebar-open");
    $("menu").setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("visibilitychange", () => {
    const c = state.current;
    if (!document.hidden && c && c.unread) {
      c.unread = 0;
      c.render();
      renderMenu();
    }
  });
  updateComposer();
  $("user").focus();
}

init();
