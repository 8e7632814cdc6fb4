// The whole product journey in real browsers (playwright-core on Debian's Chromium), a client
// and a counselor each in a browser of their own, at one viewport (VIEWPORT=desktop|phone,
// 1280×800 or 360×740), against a `neulbi serve` this script starts in a private network
// namespace (harness.mjs). axe-core checks every page: no serious or critical violation.
//
// Sign-up (after a refused sign-in shows its error), the counselor found by search, a room,
// chat both ways (live, unread badge, read marker, history paging), the network dropped and
// back (banner, then the missed messages), a profile photo (preview, upload), a video call and
// hang-up, the call in history, English and back, the export, and the account deleted (the
// counselor then sees the messages erased). The counselor signs out everywhere from a second
// browser: the first returns to sign-in with a message; sign-out revokes the refresh token.
// Access tokens live 20 s here, so the silent renewal runs many times during the journey.
//
// Env: as harness.mjs; VIEWPORT; SCREENSHOT_DIR (optional: a PNG of each page in Korean and
// English, named <lang>-<page>-<viewport>.png). Prints "OK" last, or "FAIL at <step>: <why>".
import { mkdirSync, readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInNamespace, serveFromDisk, sleep } from './harness.mjs';

const OVERALL_MS = 170_000;
const STEP_MS = 15_000;
const VIEWPORTS = { desktop: { width: 1280, height: 800 }, phone: { width: 360, height: 740 } };
const vp = process.env.VIEWPORT ?? 'desktop';
const viewport = VIEWPORTS[vp];
const phone = vp === 'phone';
const COUNSELOR = ['counselor@demo.neulbi.local', 'demo-counselor-pass'];
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const shots = process.env.SCREENSHOT_DIR;

if (!viewport) {
  console.log(`FAIL at "start": VIEWPORT must be one of ${Object.keys(VIEWPORTS).join(', ')}`);
  process.exit(2);
}

runInNamespace(import.meta.url, OVERALL_MS, main, (page) => page.evaluate(() => ({
  lang: document.documentElement.lang,
  online: navigator.onLine,
  conn: document.querySelector('#conn')?.dataset.state,
  page: [...document.querySelectorAll('main > section')].find((s) => !s.hidden)?.id,
  banner: document.querySelector('#banner')?.hidden ? null : document.querySelector('#banner')?.textContent,
  toasts: [...document.querySelectorAll('.toast')].map((e) => e.textContent),
  errors: [...document.querySelectorAll('.form-error')].map((e) => e.textContent).filter(Boolean),
})), { online: true });

/** No serious or critical accessibility violation on what `page` shows now. */
async function axe(run, page, label) {
  const was = run.step;
  run.step = `${was} (axe: ${label})`;
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    throw new Error(`axe on ${label}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`).join('; ')}`);
  }
  run.step = was;
}

async function shot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  const lang = await page.evaluate(() => document.documentElement.lang);
  await sleep(300);
  await page.screenshot({ path: join(shots, `${lang}-${name}-${vp}.png`) });
}

/** Goes to a page through the header's menu, as a person would. */
async function nav(page, route) {
  await page.click(`#nav a[data-route="${route}"]`);
  await page.waitForSelector(`#page-${route}:not([hidden])`);
}

/** A browser for `who`, Korean-speaking, at this run's viewport. */
async function browser(run, base, who) {
  const context = await run.launch(who, { viewport, locale: 'ko-KR', acceptDownloads: true });
  await context.grantPermissions(['camera', 'microphone'], { origin: base });
  await serveFromDisk(context, base);
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const side = run.watch(who, page);
  side.context = context;
  side.renewals = 0;
  page.on('request', (r) => {
    if (r.url().endsWith('/oauth/token') && r.postData()?.includes('refresh_token')) side.renewals += 1;
  });
  await page.goto(base);
  return side;
}

async function signIn(page, [email, password]) {
  await page.fill('#login-email', email);
  await page.fill('#login-password', password);
  await page.click('#local button[type=submit]');
  await page.waitForSelector('#conn[data-state="live"]');
}

/** Opens the room with `name` from the room list (on a phone the list is its own screen). */
async function openRoom(page, name) {
  await nav(page, 'rooms');
  await page.click(`#rooms li a:has-text("${name}")`);
  await page.waitForSelector('#chat:not([hidden]) #compose textarea:not([disabled])');
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** A PNG drawn by the browser itself (a photo to upload). */
async function drawnPng(page) {
  const data = await page.evaluate(() => {
    const c = document.createElement('canvas');
    c.width = 320;
    c.height = 320;
    const g = c.getContext('2d');
    const grad = g.createLinearGradient(0, 0, 320, 320);
    grad.addColorStop(0, '#7fc8bd');
    grad.addColorStop(1, '#2a6f6f');
    g.fillStyle = grad;
    g.fillRect(0, 0, 320, 320);
    g.fillStyle = '#fff';
    g.beginPath();
    g.arc(160, 130, 60, 0, Math.PI * 2);
    g.fill();
    g.fillRect(70, 210, 180, 110);
    return c.toDataURL('image/png').split(',')[1];
  });
  return Buffer.from(data, 'base64');
}

async function main(run) {
  run.step = 'start neulbi serve (access tokens live 20 s)';
  const configDir = mkdtempSync(join(tmpdir(), 'neulbi-journey-'));
  const config = join(configDir, 'neulbi.toml');
  writeFileSync(config, '[auth]\naccess_token_ttl_secs = 20\n');
  // Paging needs more than a page of messages, written faster than a person types.
  const base = await run.startServer({ NEULBI_CONFIG: config, NEULBI_CHAT_SEND_BURST: '100' });

  run.step = 'warm up Chromium';
  const warm = await run.launch('warm-up');
  await (await warm.newPage()).goto(base, { timeout: 60_000 });
  await warm.close();

  // --- the client arrives -----------------------------------------------------------------
  run.step = 'the sign-in page in Korean';
  const client = await browser(run, base, 'client');
  const c = client.page;
  await c.waitForSelector('#page-signin:not([hidden])');
  if ((await c.evaluate(() => document.documentElement.lang)) !== 'ko') throw new Error('a Korean browser gets the page in Korean');
  await c.waitForSelector('#tab-signin:has-text("로그인")');
  await axe(run, c, 'sign-in');
  await shot(c, 'signin');

  run.step = 'a wrong password is refused with a clear error';
  await c.fill('#login-email', 'nobody@example.com');
  await c.fill('#login-password', 'not the password');
  await c.click('#local button[type=submit]');
  await c.waitForSelector('#login-error:has-text("이메일 또는 비밀번호가 맞지 않습니다")');

  run.step = 'the client signs up';
  const nickname = `민지 ${vp}`;
  const email = `minji.${vp}.${Date.now()}@example.com`;
  await c.click('#tab-signup');
  await c.fill('#signup-nickname', nickname);
  await c.fill('#signup-email', email);
  await c.fill('#signup-password', 'short');
  await c.click('#signup button[type=submit]');
  await c.waitForSelector('#signup-error:not(:empty)');
  await c.fill('#signup-password', 'a long enough password');
  await c.click('#signup button[type=submit]');
  await c.waitForSelector('#conn[data-state="live"]');
  await c.waitForSelector('#page-counselors:not([hidden])');

  run.step = 'the client finds the counselor by search';
  await c.fill('#dir-q', 'listening');
  await c.waitForSelector('#counselors li.counselor:has-text("Demo Counselor")');
  await c.fill('#dir-q', 'zzz-nobody-matches');
  await c.waitForSelector('#counselors li.empty:has-text("zzz-nobody-matches")');
  await c.fill('#dir-q', 'LISTENING first');
  await c.waitForSelector('#counselors li.counselor:has-text("Demo Counselor")');
  if ((await c.locator('#counselors li.counselor').count()) !== 1) throw new Error('the search lists one counselor');
  await c.selectOption('#dir-filter', 'mine');
  await c.waitForSelector('#counselors li.empty');
  await c.selectOption('#dir-filter', 'all');
  await c.waitForSelector('#counselors li.counselor:has-text("Demo Counselor")');
  await axe(run, c, 'directory');
  await shot(c, 'counselors');

  run.step = 'the client opens a room and writes';
  await c.click('#counselors li.counselor:has-text("Demo Counselor") button');
  await c.waitForSelector('#chat:not([hidden]) #room-title:has-text("Demo Counselor")');
  await c.waitForSelector('#text:not([disabled])');
  const hello = `안녕하세요, 상담 받고 싶어요 (${vp})`;
  await send(c, hello);
  await c.waitForSelector(`.msg.mine:not(.pending):has-text("${hello}") time`);

  // --- the counselor answers ----------------------------------------------------------------
  run.step = 'the counselor signs in and sees the new room with one unread message';
  const counselor = await browser(run, base, 'counselor');
  const k = counselor.page;
  await signIn(k, COUNSELOR);
  const counselorSince = Date.now();
  await k.waitForSelector('#page-rooms:not([hidden])');
  await k.waitForSelector(`#rooms li a:has-text("${nickname}") .badge:text-is("1")`);
  await k.waitForSelector(`#rooms li a:has-text("${nickname}") .preview:has-text("${hello.slice(0, 10)}")`);
  await k.waitForSelector('#unread-total:text-is("1")', { state: 'attached' });
  await axe(run, k, 'rooms (counselor)');
  await shot(k, 'rooms');

  run.step = 'the counselor opens the room; the client sees "read"';
  await k.click(`#rooms li a:has-text("${nickname}")`);
  await k.waitForSelector(`.msg:not(.mine):has-text("${hello}")`);
  await c.waitForSelector(`.msg.mine:has-text("${hello}") .read:has-text("읽음")`);

  run.step = 'the counselor answers; the client sees it live';
  const answer = '반가워요. 편하게 이야기해 주세요.';
  await send(k, answer);
  await c.waitForSelector(`.msg:not(.mine):has-text("${answer}")`);
  await axe(run, c, 'room (client)');
  await shot(c, 'room');

  run.step = 'elsewhere in the app, a new message shows as an unread badge';
  await nav(c, 'calls');
  const second = '지난주에는 어떻게 지내셨어요?';
  await send(k, second);
  await c.waitForSelector('#unread-total:text-is("1")');
  await nav(c, 'rooms');
  await c.waitForSelector('#rooms li a:has-text("Demo Counselor") .badge:text-is("1")');
  await c.click('#rooms li a:has-text("Demo Counselor")');
  await c.waitForSelector(`.msg:not(.mine):has-text("${second}")`);
  await c.waitForSelector('#unread-total:empty', { state: 'attached' });

  run.step = 'the network drops: the banner shows';
  await client.context.setOffline(true);
  // Offline stops new traffic; the open WebSocket is noticed by its heart-beats, or at once.
  await c.waitForSelector('#banner:not([hidden]):has-text("다시 연결하는 중")', { timeout: 40_000 });
  const missed = ['연결이 끊긴 동안 보낸 첫 메시지', '그리고 두 번째 메시지'];
  for (const m of missed) await send(k, m);
  await k.waitForSelector(`.msg.mine:not(.pending):has-text("${missed[1]}")`);

  run.step = 'the network is back: the banner says so and the missed messages appear';
  await client.context.setOffline(false);
  await c.waitForSelector('#banner.ok:not([hidden])', { timeout: 30_000 });
  for (const m of missed) await c.waitForSelector(`.msg:not(.mine):has-text("${m}")`);

  run.step = 'history pages back with the cursor';
  for (let i = 1; i <= 55; i++) {
    await send(c, `메시지 ${i}/55`);
    await c.waitForSelector(`.msg.mine:not(.pending):has-text("메시지 ${i}/55") time`);
  }
  await nav(k, 'profile');
  await openRoom(k, nickname);
  await k.waitForSelector('.msg:has-text("메시지 55/55")');
  if (await k.locator(`.msg:has-text("${hello}")`).count()) throw new Error('the first page holds only the newest messages');
  await k.click('#messages .older');
  await k.waitForSelector(`.msg:has-text("${hello}")`, { state: 'attached' });
  await k.waitForSelector('#messages .start', { state: 'attached' });

  // --- profile ---------------------------------------------------------------------------
  run.step = 'the client uploads a profile photo (preview first)';
  await nav(c, 'profile');
  await axe(run, c, 'profile');
  await c.setInputFiles('#photo-file', { name: 'me.png', mimeType: 'image/png', buffer: await drawnPng(c) });
  await c.waitForSelector('#photo img[src^="blob:"]');
  await c.waitForSelector('#photo-preview-note:not([hidden])');
  await c.click('#photo-upload');
  await c.waitForSelector('#photo img:not([src^="blob:"])');
  await c.waitForSelector('#photo-remove:not([hidden])');
  const src = await c.getAttribute('#photo img', 'src');
  const fetched = await c.evaluate(async (u) => (await fetch(u)).headers.get('content-type'), src);
  if (!/^image\//.test(fetched ?? '')) throw new Error(`the stored photo is served as ${fetched}`);
  await shot(c, 'profile');

  run.step = 'the counselor sees the photo beside the client\'s name';
  await nav(k, 'profile');
  await nav(k, 'rooms');
  await k.waitForSelector(`#rooms li a:has-text("${nickname}") .avatar img`);
  await openRoom(k, nickname);

  // --- a video call -----------------------------------------------------------------------
  run.step = 'the client calls; the counselor accepts';
  await openRoom(c, 'Demo Counselor');
  await c.click('#start-call');
  await k.waitForSelector('dialog#incoming[open]');
  await axe(run, k, 'incoming call');
  await k.click('#incoming-accept');
  for (const p of [c, k]) {
    await p.waitForSelector('#call:not([hidden])');
    await p.waitForFunction(() => window.__neulbiCall?.pc?.connectionState === 'connected', null, { timeout: STEP_MS });
  }
  await sleep(2500);
  run.step = 'the client hangs up; both rooms show the call with its duration';
  await c.click('#call-hangup');
  for (const p of [c, k]) {
    await p.waitForSelector('#call[hidden]', { state: 'attached' });
    await p.waitForFunction(() => [...document.querySelectorAll('#messages .call-entry')]
      .some((e) => /화상 통화 · \d+:\d\d/.test(e.textContent) && !/0:00/.test(e.textContent)), null, { timeout: 20_000 });
  }

  run.step = 'the call is in the client\'s call history';
  await nav(c, 'calls');
  await c.waitForSelector('#call-history li:has-text("Demo Counselor")');
  await c.waitForFunction(() => /화상 통화 · \d+:\d\d/.test(document.querySelector('#call-history')?.textContent ?? ''));
  await axe(run, c, 'calls');
  await shot(c, 'calls');

  run.step = 'the account page';
  await nav(c, 'account');
  await axe(run, c, 'account');
  await shot(c, 'account');

  // --- English and back ---------------------------------------------------------------------
  run.step = 'English: every page in English';
  await c.click('#lang');
  await c.waitForFunction(() => document.documentElement.lang === 'en');
  await c.waitForSelector('#nav a[data-route="rooms"]:has-text("Rooms")');
  for (const route of ['counselors', 'calls', 'profile', 'account']) {
    await nav(c, route);
    await axe(run, c, `${route} (English)`);
    await shot(c, route);
  }
  await openRoom(c, 'Demo Counselor');
  await c.waitForSelector('#room-title:has-text("Session with Demo Counselor")');
  await c.waitForFunction(() => /Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday/.test(document.querySelector('#messages .day')?.textContent ?? ''));
  await shot(c, 'room');
  await k.click('#lang');
  await k.waitForFunction(() => document.documentElement.lang === 'en');
  await nav(k, 'rooms');
  await shot(k, 'rooms');
  await k.click('#lang');
  run.step = 'back to Korean (remembered across a reload)';
  await c.click('#lang');
  await c.waitForFunction(() => document.documentElement.lang === 'ko');
  await c.reload();
  await c.waitForSelector('#conn[data-state="live"]');
  if ((await c.evaluate(() => document.documentElement.lang)) !== 'ko') throw new Error('the choice of language is remembered');

  // --- the person's rights ------------------------------------------------------------------
  run.step = 'the client downloads their data';
  await nav(c, 'account');
  const [download] = await Promise.all([c.waitForEvent('download'), c.click('#export')]);
  const exported = JSON.parse(readFileSync(await download.path(), 'utf8'));
  if (!exported.messages?.some((m) => m.body === hello)) throw new Error('the export holds the messages I wrote');
  if (exported.profile?.nickname !== nickname) throw new Error(`the export's profile is ${JSON.stringify(exported.profile)}`);

  run.step = 'the client deletes the account after the confirmation';
  await c.click('#delete-account');
  await c.waitForSelector('#delete-dialog[open]');
  if ((await c.evaluate(() => document.activeElement?.id)) !== 'delete-confirm') throw new Error('the dialog takes the focus');
  await axe(run, c, 'delete dialog');
  await shot(c, 'delete');
  if (!(await c.isDisabled('#delete-submit'))) throw new Error('deleting needs the typed confirmation');
  await c.keyboard.press('Escape');
  await c.waitForSelector('#delete-dialog:not([open])', { state: 'attached' });
  if ((await c.evaluate(() => document.activeElement?.id)) !== 'delete-account') throw new Error('focus returns to the button');
  await c.click('#delete-account');
  await c.fill('#delete-confirm', '삭제');
  await c.click('#delete-submit');
  await c.waitForSelector('#page-signin:not([hidden]) #signin-notice:has-text("삭제되었습니다")');

  run.step = 'the counselor sees the client\'s messages erased';
  await nav(k, 'profile');
  await openRoom(k, '');
  await k.waitForSelector('.msg.erased');
  if (await k.locator(`.msg:has-text("${hello}")`).count()) throw new Error('an erased message is still readable');

  // --- sessions ---------------------------------------------------------------------------
  run.step = 'access tokens were renewed silently along the way';
  // Past the first token's 20 s the page still works: it renewed before the token expired.
  await sleep(Math.max(0, counselorSince + 26_000 - Date.now()));
  if (counselor.renewals < 1) throw new Error(`the counselor's page renewed its token ${counselor.renewals} times`);
  await nav(k, 'calls');
  await k.waitForSelector('#call-history li[data-call]');
  if (await k.locator('#page-signin:not([hidden])').count()) throw new Error('the session ended');

  run.step = 'signing out everywhere sends the other browser to sign-in with a message';
  const other = await browser(run, base, 'counselor-2');
  await signIn(other.page, COUNSELOR);
  await nav(other.page, 'account');
  await other.page.click('#logout-all');
  await other.page.waitForSelector('#page-signin:not([hidden])');
  await k.waitForSelector('#page-signin:not([hidden]) #signin-notice:has-text("다시 로그인")', { timeout: 30_000 });

  run.step = 'sign-out revokes the refresh token';
  await signIn(k, COUNSELOR);
  const cookies = await counselor.context.cookies(base);
  await k.click('#logout');
  await k.waitForSelector('#page-signin:not([hidden])');
  const header = cookies.map((x) => `${x.name}=${x.value}`).join('; ');
  const r = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { Cookie: header, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=refresh_token',
  });
  if (r.ok) throw new Error('the refresh token still works after sign-out');
}
