// The Neulbi web client: the shell (header, language switch, connection state), the router
// (#/counselors, #/rooms[/id], #/calls, #/profile, #/account, sign-in otherwise) and the wiring
// of the pages in web/pages/. No build step: static ES modules; @stomp/stompjs is vendored.
// The access token lives in memory only (session.js). Every text from the server is put on
// the page as text, never as HTML. Video calls live in web/call.js.

import { $, h } from './dom.js';
import { t, apply, currentLang, setLang, onLangChange, has } from './i18n.js';
import * as session from './session.js';
import * as live from './live.js';
import { setupCalls } from './call.js';
import { setupSignin } from './pages/signin.js';
import { setupDirectory } from './pages/directory.js';
import { setupRooms } from './pages/rooms.js';
import { setupHistory } from './pages/history.js';
import { setupProfile } from './pages/profile.js';
import { setupAccount } from './pages/account.js';

/** What the pages share. */
const app = {
  me: null,
  rooms: [],
  names: new Map(),
  room: null,
  api: session.api,
  calls: null,
  rooms$: null,
  route: null,
};

// --- messages -----------------------------------------------------------------------------

/** A server or network error in the person's language (the server's words otherwise). */
app.errorText = (e) => {
  const code = e?.code ?? e?.error?.code;
  if (code === 'network') return t('error.network');
  if (code && has(`error.${code}`)) return t(`error.${code}`);
  return e?.message ?? e?.error?.message ?? t('error.generic');
};

/** A short message at the bottom of the screen, read out by screen readers. */
app.toast = (text, kind = 'info') => {
  const el = h('div', { class: `toast${kind === 'error' ? ' error' : ''}`, role: kind === 'error' ? 'alert' : null }, text);
  $('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
};

app.fail = (e) => {
  console.warn(e);
  app.toast(typeof e === 'string' ? e : app.errorText(e), 'error');
};

/** A user's name as far as this page knows it. */
app.nameOf = (userId) => {
  if (userId === app.me?.id) return app.me.nickname ?? t('call.you');
  const r = app.rooms.find((x) => x.peer_id === userId);
  return r?.peer_nickname ?? app.names.get(userId) ?? t('chat.user', { id: String(userId).slice(0, 8) });
};

app.refreshMe = async () => {
  app.me = await session.api('GET', '/users/me');
  app.names.set(app.me.id, app.me.nickname);
  return app.me;
};

app.go = (path) => {
  if (location.hash === `#${path}`) route();
  else location.hash = path;
};

// --- pages --------------------------------------------------------------------------------

const pages = {
  signin: setupSignin(app),
  counselors: setupDirectory(app),
  rooms: setupRooms(app),
  calls: setupHistory(app),
  profile: setupProfile(app),
  account: setupAccount(app),
};
app.rooms$ = pages.rooms;

app.calls = setupCalls({
  state: app,
  api: session.api,
  fail: app.fail,
  nameOf: app.nameOf,
  openRoom: async (roomId) => app.go(`/rooms/${roomId}`),
  /** Who the room is with (or `fallback`'s name when the room is not listed yet). */
  roomTitle: (roomId, fallback) => {
    const r = app.rooms.find((x) => x.room_id === roomId);
    return r ? pages.rooms.peerName(r) : fallback ? app.nameOf(fallback) : t('chat.someone');
  },
  freshToken: session.freshToken,
});

/** Parses the hash: `#/rooms/ID` → ['rooms', 'ID']. */
function parse() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  return [parts[0] ?? '', parts[1] ?? null];
}

let current = null;
let routing = Promise.resolve();

/** Shows the page the hash names (sign-in while signed out). */
function route() {
  routing = routing.then(routeNow, routeNow);
  return routing;
}

async function routeNow() {
  let [name, param] = parse();
  if (!app.me) name = 'signin';
  else if (!pages[name] || name === 'signin') {
    const home = app.me.role === 'client' ? 'counselors' : 'rooms';
    history.replaceState(null, '', `#/${home}`);
    [name, param] = [home, null];
  }
  if (current && current !== name) pages[current].hide?.();
  const changed = current !== name;
  current = name;
  for (const key of Object.keys(pages)) $(`page-${key}`).hidden = key !== name;
  for (const a of document.querySelectorAll('#nav a[data-route]')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    await pages[name].show(param);
  } catch (e) {
    app.fail(e);
  }
  // Focus moves to the new page's heading, so keyboard and screen-reader users start there.
  if (changed) {
    const heading = $(`page-${name}`).querySelector('h1');
    if (heading && !(name === 'rooms' && param)) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

window.addEventListener('hashchange', route);

// --- session ------------------------------------------------------------------------------

/** After a sign-in: load me, show the app, go live. */
app.signedIn = async () => {
  await app.refreshMe();
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('nav-directory').hidden = app.me.role !== 'client';
  pages.signin.say(null);
  await Promise.all([pages.rooms.loadRooms(), app.me.role === 'client' ? pages.counselors.preload() : null]);
  live.start();
  live.follow('user-rooms', '/user/queue/rooms', (frame) => pages.rooms.onPush(JSON.parse(frame.body)));
  live.follow('user-calls', '/user/queue/calls', (frame) => app.calls.onFrame(frame));
  await route();
};

/** Back to sign-in, with a message saying why. */
app.signedOut = async (why) => {
  app.calls.reset();
  await live.stop();
  pages.rooms.reset();
  if (why === 'deleted' || why === 'closed') session.forgetLocally();
  Object.assign(app, { me: null, rooms: [], room: null });
  app.names.clear();
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('unread-total').textContent = '';
  pages.signin.say({ expired: 'signin.expired', closed: 'signin.closed', deleted: 'signin.deleted', signedout: 'signin.signedout' }[why] ?? null);
  history.replaceState(null, '', '#/signin');
  await route();
};

/** Signing out revokes the refresh token (here, or on every device). */
app.signOut = async ({ everywhere = false } = {}) => {
  // The chat closes first, so the server's cut does not race a clean DISCONNECT.
  await live.stop();
  try {
    if (everywhere) await session.logoutEverywhere();
    else await session.logout();
  } catch (e) {
    app.fail(e);
  }
  await app.signedOut('signedout');
};

session.onSessionLost((reason) => {
  app.signedOut(reason === 'closed' ? 'closed' : 'expired').catch(() => {});
});

live.onError((message) => {
  if (message === 'account closed') {
    app.signedOut('closed');
    return;
  }
  // Too much missed to replay: start the room over from its history.
  if (/history|messages/.test(message) && app.room) {
    pages.rooms.reopen();
    return;
  }
  app.fail(message);
});

$('logout').addEventListener('click', () => app.signOut());

// --- language -----------------------------------------------------------------------------

$('lang').addEventListener('click', () => setLang(currentLang() === 'ko' ? 'en' : 'ko'));
onLangChange(() => {
  live.relabel();
  app.calls.relabel();
  for (const p of Object.values(pages)) p.relabel?.();
});

// --- start --------------------------------------------------------------------------------

async function start() {
  apply();
  const code = new URLSearchParams(location.hash.slice(1)).get('login_code');
  if (code) {
    // Back from a provider: the one-time code becomes a session; the code leaves the URL.
    history.replaceState(null, '', location.pathname);
    try {
      await session.tokenGrant({ grant_type: 'authorization_code', code });
      await app.signedIn();
      return;
    } catch (e) {
      pages.signin.say(null);
      app.fail(e);
    }
  } else if (session.hadSession()) {
    // A reload: the refresh cookie, if still valid, renews the session.
    try {
      await session.tokenGrant({ grant_type: 'refresh_token' });
      await app.signedIn();
      return;
    } catch {
      session.forgetLocally();
    }
  }
  await route();
}

start();
