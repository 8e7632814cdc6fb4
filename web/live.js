// The live connection: STOMP over a WebSocket at /chat/websocket (@stomp/stompjs, vendored).
// It reconnects by itself; pages register subscriptions here and get them back after every
// reconnect. While the connection is down a banner says so; when it is back the pages catch
// up (the room replays what it missed via since-message-id) and the banner says that too.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { freshToken, renew } from './session.js';

const live = {
  client: null,
  subs: new Map(),
  wasLive: false,
  onReconnect: new Set(),
  onError: () => {},
  backTimer: null,
};

function setStatus(state) {
  const conn = $('conn');
  conn.dataset.state = state;
  $('status-dot').classList.toggle('live', state === 'live');
  const text = t(`status.${state}`);
  $('status').textContent = text;
  conn.title = text;
}

function banner(kind) {
  const b = $('banner');
  clearTimeout(live.backTimer);
  if (!kind) {
    b.hidden = true;
    return;
  }
  b.className = `banner${kind === 'back' ? ' ok' : ''}`;
  b.textContent = t(kind === 'back' ? 'banner.back' : 'banner.reconnecting');
  b.hidden = false;
  if (kind === 'back') live.backTimer = setTimeout(() => { b.hidden = true; }, 4000);
}

/** Subscribes `s` on the current connection (its headers evaluated now). */
function subscribe(s) {
  s.handle = live.client.subscribe(s.destination, s.onMessage, typeof s.headers === 'function' ? s.headers() : s.headers);
}

function resubscribe() {
  for (const s of live.subs.values()) subscribe(s);
}

/**
 * Keeps a subscription while the key is registered, across reconnects. `headers` may be a
 * function (evaluated at each (re)subscribe: the room's since-message-id).
 */
export function follow(key, destination, onMessage, headers = {}) {
  unfollow(key);
  const s = { destination, onMessage, headers, handle: null };
  live.subs.set(key, s);
  if (live.client?.connected) subscribe(s);
}

/** Drops a subscription. */
export function unfollow(key) {
  const s = live.subs.get(key);
  live.subs.delete(key);
  try {
    if (s?.handle && live.client?.connected) s.handle.unsubscribe();
  } catch {
    // Already gone with the old connection.
  }
}

/** Whether frames can be sent now. */
export const connected = () => Boolean(live.client?.connected);

/** Sends a frame; false when offline. */
export function publish(frame) {
  if (!connected()) return false;
  live.client.publish(frame);
  return true;
}

/** Runs `f` (once) when the server confirms the receipt `id`. */
export function watchForReceipt(id, f) {
  live.client?.watchForReceipt(id, f);
}

/** Called after every reconnect (not the first connect). */
export const onReconnect = (f) => live.onReconnect.add(f);

/** Called with the ERROR frame's message for errors no page handled. */
export function onError(f) {
  live.onError = f;
}

// The browser knows first when the network goes: drop the socket at once (its heart-beats
// would take tens of seconds to notice) and say so; the client reconnects by itself when the
// network is back, and catches up.
window.addEventListener('offline', () => {
  if (!live.client) return;
  setStatus('offline');
  if (live.wasLive) banner('down');
  live.client.forceDisconnect();
});

/** Connects (and keeps reconnecting until stop()). */
export function start(onConnect) {
  stop();
  setStatus('connecting');
  $('conn').hidden = false;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  let revoked = false;
  const client = new StompJs.Client({
    brokerURL: `${scheme}://${location.host}/chat/websocket`,
    reconnectDelay: 2000,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
    // A lost network or missed heart-beats drop the socket at once rather than wait for a
    // close handshake that cannot complete: the reconnect starts right away.
    discardWebsocketOnCommFailure: true,
    beforeConnect: async () => {
      if (revoked) {
        revoked = false;
        await renew().catch(() => {});
      }
      client.connectHeaders = { Authorization: `Bearer ${await freshToken()}` };
    },
  });
  client.onConnect = () => {
    setStatus('live');
    resubscribe();
    onConnect?.(client);
    if (live.wasLive) {
      banner('back');
      for (const f of live.onReconnect) f();
    }
    live.wasLive = true;
  };
  client.onWebSocketClose = () => {
    if (live.client !== client) return;
    setStatus('offline');
    if (live.wasLive) banner('down');
  };
  client.onStompError = (frame) => {
    const message = frame.headers.message ?? 'chat error';
    // A revoked token (role change, "sign out everywhere"): the reconnect renews it with
    // the refresh cookie, or the session ends when that was revoked too.
    if (/revoked/.test(message)) {
      revoked = true;
      return;
    }
    live.onError(message);
  };
  live.client = client;
  client.activate();
}

/** Disconnects for good (sign-out). */
export async function stop() {
  const client = live.client;
  live.client = null;
  live.subs.clear();
  live.wasLive = false;
  banner(null);
  $('conn').hidden = true;
  delete $('conn').dataset.state;
  // A clean DISCONNECT on an open socket; a socket the server is already closing (it cut a
  // revoked session) is just dropped: writing to it would fail.
  const open = client?.webSocket?.readyState === WebSocket.OPEN;
  await client?.deactivate({ force: !open });
}

/** The STOMP client (for the call module's pushes). */
export const client = () => live.client;

/** Re-labels the status after a language switch. */
export function relabel() {
  const state = $('conn').dataset.state;
  if (state) setStatus(state);
}
