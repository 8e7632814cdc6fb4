// The signed-in session. The access token lives in this module's memory only (never in
// storage, never in a URL); the refresh token is an HttpOnly cookie the page never sees.
// A timer renews the access token a minute before it expires; when renewal fails the session
// is over and the app goes back to sign-in with a message.

const HINT = 'neulbi.signed-in';
// Renew this long before expiry: a minute, or a quarter of a short token's life.
const RENEW_BEFORE_SECS = 60;

const session = { access: null, timer: null, margin: RENEW_BEFORE_SECS, lost: () => {} };

/** An API failure: `code` and `message` from the server's JSON error, and the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Seconds until a JWT's `exp` (read, not verified: the server verifies). */
export function expiresInSeconds(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return payload.exp - Date.now() / 1000;
  } catch {
    return 0;
  }
}

/** The current access token (or null). */
export const accessToken = () => session.access;

/** Whether this browser signed in before, so a reload tries the refresh cookie. */
export const hadSession = () => localStorage.getItem(HINT) === '1';

/** Called once, with the reason, when the session cannot be renewed. */
export function onSessionLost(f) {
  session.lost = f;
}

async function errorOf(r) {
  const j = await r.json().catch(() => null);
  return new ApiError(r.status, j?.error?.code ?? `http_${r.status}`, j?.error?.message ?? `HTTP ${r.status}`);
}

function adopt(accessTokenValue) {
  session.access = accessTokenValue;
  localStorage.setItem(HINT, '1');
  clearTimeout(session.timer);
  const life = expiresInSeconds(accessTokenValue);
  session.margin = Math.min(RENEW_BEFORE_SECS, life / 4);
  const secs = Math.max(1, life - session.margin);
  session.timer = setTimeout(() => renew().catch(() => {}), secs * 1000);
}

async function post(path, init) {
  let r;
  try {
    r = await fetch(path, { method: 'POST', credentials: 'same-origin', ...init });
  } catch {
    throw new ApiError(0, 'network', 'network');
  }
  if (!r.ok) throw await errorOf(r);
  return r.json();
}

/** Exchanges at the token endpoint (a login code, or the refresh cookie) and adopts the token. */
export async function tokenGrant(body) {
  const j = await post('/oauth/token', { body: new URLSearchParams(body) });
  adopt(j.access_token);
  return j;
}

let renewing = null;
/** Renews the access token with the refresh cookie; on a refusal the session is lost. A
 * network failure keeps the session and tries again shortly. */
export function renew() {
  renewing ??= tokenGrant({ grant_type: 'refresh_token' })
    .catch((e) => {
      if (e.code === 'network') {
        clearTimeout(session.timer);
        session.timer = setTimeout(() => renew().catch(() => {}), 5000);
        throw e;
      }
      lose('expired');
      throw e;
    })
    .finally(() => { renewing = null; });
  return renewing;
}

/** An access token valid for a while yet (renewed first if it is about to expire). */
export async function freshToken() {
  if (session.access && expiresInSeconds(session.access) < session.margin) await renew().catch(() => {});
  return session.access;
}

/** Signs in with e-mail and password. */
export async function login(email, password) {
  const j = await post('/auth/login', { headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password }) });
  adopt(j.access_token);
}

/** Creates a local account and signs in. */
export async function signup(email, password, nickname) {
  const j = await post('/auth/signup', {
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password, nickname: nickname || undefined }),
  });
  adopt(j.access_token);
}

/**
 * Calls the JSON API with the access token; throws an ApiError on failure. A token the
 * server revoked (a role change, "sign out everywhere" elsewhere) is renewed once.
 * `body` may be a FormData (sent as multipart) or anything JSON.
 */
export async function api(method, path, body, retried = false) {
  const headers = { Authorization: `Bearer ${await freshToken()}` };
  const multipart = body instanceof FormData;
  if (body !== undefined && !multipart) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : multipart ? body : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network', 'network');
  }
  if (r.status === 204) return null;
  if (r.ok) return r.json();
  const e = await errorOf(r);
  if (r.status === 401 && !retried && e.code !== 'account_closed') {
    await renew();
    return api(method, path, body, true);
  }
  if (e.code === 'account_closed') lose('closed');
  throw e;
}

/** The API answer as a Blob (the export download), with the token in a header, not the URL. */
export async function download(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${await freshToken()}` } });
  if (!r.ok) throw await errorOf(r);
  return r.blob();
}

function forget() {
  clearTimeout(session.timer);
  session.access = null;
  localStorage.removeItem(HINT);
}

function lose(reason) {
  if (!session.access && !hadSession()) return;
  forget();
  session.lost(reason);
}

/** Signs out here: the server revokes the refresh token and clears its cookie. */
export async function logout() {
  await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin' }).catch(() => {});
  forget();
}

/** Ends every session of mine on every device. */
export async function logoutEverywhere() {
  await api('POST', '/auth/logout-all');
  await logout();
}

/** Forgets the session without asking the server (after the account was deleted). */
export const forgetLocally = forget;
