// The Neulbi web client: sign-in, the counselor directory, my rooms and a live chat over
// STOMP (raw WebSocket at /chat/websocket, @stomp/stompjs from web/vendor/).
// The access token lives in memory only; the refresh token is an HttpOnly cookie the page never
// sees, and renews the access token on reload and before every STOMP (re)connect.
// Every text from the server is put on the page with textContent, never as HTML.
// Video calls live in web/call.js.

import { setupCalls } from './call.js';

const $ = (id) => document.getElementById(id);
const state = { access: null, me: null, room: null, rooms: [], names: new Map(), stomp: null, sub: null, lastSeen: null, readTimer: null, revoked: false };

const fail = (e) => { $('error').textContent = e?.error?.message ?? e?.message ?? String(e); };
const clearError = () => { $('error').textContent = ''; };

/**
 * Calls the JSON API with the access token; throws the API's error object on failure. A token
 * the server revoked (a role change, or "sign out everywhere" elsewhere) is renewed once with
 * the refresh cookie; if that fails too, the page signs out.
 */
async function api(method, path, body, retried = false) {
  const headers = { Authorization: `Bearer ${state.access}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  const j = await r.json().catch(() => ({ error: { message: `HTTP ${r.status}` } }));
  if (r.status === 401 && j?.error?.code === 'token_revoked' && !retried) {
    if (await renewRevoked()) return api(method, path, body, true);
  }
  if (!r.ok) throw j;
  return j;
}

/** After a revocation: a new access token from the refresh cookie, or sign out. */
async function renewRevoked() {
  try {
    await tokens({ grant_type: 'refresh_token' });
    return true;
  } catch {
    await signedOut();
    return false;
  }
}

async function tokens(body) {
  const r = await fetch('/oauth/token', { method: 'POST', body: new URLSearchParams(body), credentials: 'same-origin' });
  const j = await r.json();
  if (!r.ok) throw j;
  state.access = j.access_token;
  return j;
}

// --- sign-in ------------------------------------------------------------------------------

/** Seconds until a JWT's `exp` (read, not verified: the server verifies). */
function expiresInSeconds(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return payload.exp - Date.now() / 1000;
  } catch {
    return 0;
  }
}

// Whether this browser signed in before, so a reload only tries the refresh cookie then.
const SESSION_HINT = 'neulbi.signed-in';

async function signedIn() {
  state.me = await api('GET', '/users/me');
  localStorage.setItem(SESSION_HINT, '1');
  $('who').textContent = state.me.nickname ?? state.me.email;
  $('role').textContent = state.me.role;
  $('signin').hidden = true;
  $('me').hidden = false;
  $('app').hidden = false;
  $('directory').hidden = state.me.role !== 'client';
  await Promise.all([loadCounselors(), loadRooms()]);
  connect();
}

$('local').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearError();
  const f = new FormData(ev.target);
  const r = await fetch('/auth/login', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, credentials: 'same-origin',
    body: JSON.stringify({ email: f.get('email'), password: f.get('password') }),
  });
  const j = await r.json();
  if (!r.ok) return fail(j);
  state.access = j.access_token;
  signedIn().catch(fail);
});

/** Back to the sign-in form: the chat and calls stop, the page forgets the session. */
async function signedOut() {
  calls.reset();
  const stomp = state.stomp;
  Object.assign(state, { access: null, me: null, room: null, stomp: null, sub: null });
  await stomp?.deactivate();
  localStorage.removeItem(SESSION_HINT);
  $('me').hidden = true;
  $('app').hidden = true;
  $('chat').hidden = true;
  $('signin').hidden = false;
}

$('logout').addEventListener('click', async () => {
  await state.stomp?.deactivate();
  await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin' });
  await signedOut();
});

// Every session of mine, on every device, ends (their pages go back to sign-in too). This
// page closes its own chat first, so the server's cut does not race a clean DISCONNECT.
$('logout-all').addEventListener('click', async () => {
  await state.stomp?.deactivate();
  await api('POST', '/auth/logout-all').catch(fail);
  await signedOut();
});

// --- directory and rooms ------------------------------------------------------------------

async function loadCounselors() {
  const { items } = await fetch('/counselors').then((r) => r.json());
  const list = $('counselors');
  list.replaceChildren();
  for (const c of items) {
    state.names.set(c.user_id, c.nickname ?? 'counselor');
    const li = document.createElement('li');
    const b = document.createElement('button');
    const name = document.createElement('strong');
    name.textContent = c.nickname ?? 'counselor';
    const headline = document.createElement('div');
    headline.className = 'muted';
    headline.textContent = c.headline;
    b.append(name, headline);
    b.addEventListener('click', () => startChat(c.user_id).catch(fail));
    li.append(b);
    list.append(li);
  }
  if (items.length === 0) list.textContent = 'No counselor has published a profile yet.';
}

async function startChat(counselorId) {
  clearError();
  // The room list is a read model that may not list the new room yet: title it from the answer.
  const room = await api('POST', '/rooms', { counselor_id: counselorId });
  await openRoom(room.room_id, room);
}

function otherParty(r) {
  const other = state.me.id === r.client_id ? r.counselor_id : r.client_id;
  return state.names.get(other) ?? `${state.me.id === r.client_id ? 'counselor' : 'client'} ${other.slice(0, 8)}`;
}

/** A user's name as far as this page knows it. */
function nameOf(userId) {
  if (state.names.has(userId)) return state.names.get(userId);
  const r = state.rooms.find((x) => x.client_id === userId || x.counselor_id === userId);
  return r ? otherParty(r) : `user ${userId.slice(0, 8)}`;
}

async function loadRooms() {
  const { items } = await api('GET', '/users/me/rooms');
  state.rooms = items;
  const list = $('rooms');
  list.replaceChildren();
  for (const r of items) {
    const li = document.createElement('li');
    if (r.room_id === state.room) li.className = 'active';
    const b = document.createElement('button');
    const title = document.createElement('strong');
    title.textContent = otherParty(r) + (r.closed_at ? ' (closed)' : ' ');
    b.append(title);
    if (r.unread_count > 0 && r.room_id !== state.room) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(r.unread_count);
      b.append(badge);
    }
    const preview = document.createElement('div');
    preview.className = 'muted';
    preview.textContent = r.last_message_preview ?? 'no messages yet';
    b.append(preview);
    b.addEventListener('click', () => openRoom(r.room_id));
    li.append(b);
    list.append(li);
  }
  if (items.length === 0) list.textContent = 'No rooms yet.';
}

// --- chat ---------------------------------------------------------------------------------

/** Shows one message; a pending one (sent, no RECEIPT yet) is replaced when it comes back. */
function showMessage({ id, authorId, body, at, clientMessageId }, pending = false) {
  const box = $('messages');
  let el = clientMessageId && box.querySelector(`[data-cmid="${CSS.escape(clientMessageId)}"]`);
  if (id && box.querySelector(`[data-id="${CSS.escape(id)}"]`)) return;
  if (!el) {
    el = document.createElement('div');
    box.append(el);
  }
  el.className = `msg${authorId === state.me.id ? ' mine' : ''}${pending ? ' pending' : ''}`;
  if (id) el.dataset.id = id;
  if (clientMessageId) el.dataset.cmid = clientMessageId;
  const text = document.createElement('div');
  text.textContent = body ?? '(erased)';
  const when = document.createElement('div');
  when.className = 'muted';
  when.textContent = pending ? 'sending…' : new Date(at).toLocaleTimeString();
  el.replaceChildren(text, when);
  box.scrollTop = box.scrollHeight;
  if (at) el.dataset.at = at;
  if (id && !pending) state.lastSeen = id;
}

/** Tells the server what I have read, at most once a second. */
function markRead() {
  if (!state.room || !state.lastSeen || document.hidden) return;
  clearTimeout(state.readTimer);
  const [room, upTo] = [state.room, state.lastSeen];
  state.readTimer = setTimeout(() => api('POST', `/rooms/${room}/read`, { up_to: upTo }).then(loadRooms).catch(() => {}), 1000);
}

function setComposing(enabled) {
  $('text').disabled = !enabled;
  $('compose').querySelector('button').disabled = !enabled;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The newest page of a room's history. A room opened a moment ago may not be in the read
 * model yet (it follows the log by milliseconds), so a 404 is retried for a few seconds. */
async function history(roomId) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api('GET', `/rooms/${roomId}/messages?limit=50`);
    } catch (e) {
      if (e?.error?.code !== 'not_found' || attempt >= 30) throw e;
      await sleep(100);
    }
  }
}

async function openRoom(roomId, known) {
  clearError();
  state.room = roomId;
  state.lastSeen = null;
  const r = state.rooms.find((x) => x.room_id === roomId) ?? known;
  $('room-title').textContent = r ? `Chat with ${otherParty(r)}` : 'Chat';
  $('compose').hidden = Boolean(r?.closed_at);
  $('close-room').hidden = Boolean(r?.closed_at);
  $('start-call').hidden = Boolean(r?.closed_at);
  $('messages').replaceChildren();
  $('chat').hidden = false;
  // Writing waits for the history: a message sent meanwhile could come back in it, without
  // the client message id that ties it to what is on screen.
  setComposing(false);
  const page = await history(roomId);
  if (state.room !== roomId) return;
  for (const m of page.items.reverse()) {
    showMessage({ id: m.message_id, authorId: m.author_id, body: m.body, at: m.posted_at });
  }
  subscribeRoom();
  setComposing(true);
  calls.roomOpened(roomId);
  markRead();
  loadRooms().catch(() => {});
}

/** Follows the open room live; with the last message shown, the server first replays what
 * came after it (since-message-id), so nothing falls between history and live messages. */
function subscribeRoom() {
  state.sub?.unsubscribe();
  state.sub = null;
  if (!state.room || !state.stomp?.connected) return;
  const room = state.room;
  const headers = state.lastSeen ? { 'since-message-id': state.lastSeen } : {};
  state.sub = state.stomp.subscribe(`/topic/rooms.${room}`, (frame) => {
    if (state.room !== room) return;
    showMessage(JSON.parse(frame.body));
    markRead();
  }, headers);
}

/** Room-list changes pushed for me (new message, read marker, opened, closed): reload the
 * list, at most every half second. */
let roomsTimer = null;
function followRoomList() {
  state.stomp.subscribe('/user/queue/rooms', () => {
    clearTimeout(roomsTimer);
    roomsTimer = setTimeout(() => loadRooms().catch(() => {}), 500);
  });
}

$('compose').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text || !state.stomp?.connected) return;
  const clientMessageId = crypto.randomUUID();
  showMessage({ authorId: state.me.id, body: text, clientMessageId }, true);
  state.stomp.watchForReceipt(clientMessageId, () => {
    const el = $('messages').querySelector(`[data-cmid="${CSS.escape(clientMessageId)}"].pending`);
    if (el) el.lastChild.textContent = 'sent';
  });
  // The client message id makes a resend after a dropped connection harmless.
  state.stomp.publish({
    destination: `/app/rooms.${state.room}.send`,
    headers: { receipt: clientMessageId, 'client-message-id': clientMessageId, 'content-type': 'text/plain' },
    body: text,
  });
  $('text').value = '';
});

$('close-room').addEventListener('click', async () => {
  if (!state.room || !confirm('Close this room? Nobody can post in it afterwards.')) return;
  await api('POST', `/rooms/${state.room}/close`).catch(fail);
  await loadRooms();
  openRoom(state.room).catch(fail);
});

document.addEventListener('visibilitychange', markRead);

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = new StompJs.Client({
    brokerURL: `${scheme}://${location.host}/chat/websocket`,
    reconnectDelay: 2000,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
    // A fresh access token for a (re)connect when the current one is about to expire.
    beforeConnect: async () => {
      if (state.revoked) {
        state.revoked = false;
        if (!(await renewRevoked())) return;
      } else if (expiresInSeconds(state.access) < 60) {
        await tokens({ grant_type: 'refresh_token' }).catch(() => {});
      }
      client.connectHeaders = { Authorization: `Bearer ${state.access}` };
    },
  });
  client.onConnect = () => {
    $('status').textContent = 'live';
    followRoomList();
    calls.follow(client);
    // After a reconnect the server replays what the open room missed since the last message.
    subscribeRoom();
    loadRooms().catch(() => {});
  };
  client.onWebSocketClose = () => { $('status').textContent = 'reconnecting…'; };
  client.onStompError = (frame) => {
    const message = frame.headers.message ?? 'chat error';
    if (message === 'account closed') {
      signedOut().then(() => fail('This account was closed.'));
      return;
    }
    // The token was revoked (role change, "sign out everywhere"): the reconnect renews it
    // with the refresh cookie, or signs out when that was revoked too.
    if (/revoked/.test(message)) {
      state.revoked = true;
      return;
    }
    // Too much missed to replay: start the room over from its history.
    if (/history|messages/.test(message) && state.room) {
      state.lastSeen = null;
      openRoom(state.room).catch(fail);
      return;
    }
    fail(message);
  };
  client.activate();
  state.stomp = client;
}

// --- calls --------------------------------------------------------------------------------

const calls = setupCalls({
  state,
  api,
  fail,
  openRoom,
  nameOf,
  /** Who the room is with (or `fallback`'s name when the room is not listed yet). */
  roomTitle: (roomId, fallback) => {
    const r = state.rooms.find((x) => x.room_id === roomId);
    return r ? otherParty(r) : fallback ? nameOf(fallback) : 'your counselor';
  },
  freshToken: async () => {
    if (expiresInSeconds(state.access) < 60) await tokens({ grant_type: 'refresh_token' }).catch(() => {});
    return state.access;
  },
});

// --- start --------------------------------------------------------------------------------

fetch('/auth/providers').then((r) => r.json()).then(({ providers }) => {
  for (const p of providers) {
    const a = document.createElement('a');
    a.href = p.authorization_url;
    a.textContent = `Sign in with ${p.display_name}`;
    $('providers').append(a, ' ');
  }
});
const code = new URLSearchParams(location.hash.slice(1)).get('login_code');
if (code) {
  // `window.`: this module's own history() (a room's messages) shadows the global.
  window.history.replaceState(null, '', location.pathname);
  tokens({ grant_type: 'authorization_code', code }).then(signedIn).catch(fail);
} else if (localStorage.getItem(SESSION_HINT)) {
  // A page reload: the refresh cookie, if still valid, renews the session.
  tokens({ grant_type: 'refresh_token' }).then(signedIn).catch(() => localStorage.removeItem(SESSION_HINT));
}
