// A video call in real browsers: the web client (web/call.js) in two headless Chromium
// processes (playwright-core), against a `neulbi serve` this script starts, inside a private
// network namespace (harness.mjs). The demo client and the demo counselor sign in; the client
// opens their room and starts a call; the counselor's incoming-call dialog appears (focus on
// Accept) and is accepted; both remote videos play (size, time advancing, frames decoded per
// getStats); a reaction and a chat line cross over; mute shows on the other side; hang-up
// ends the call for both, and the room shows the call with its duration. Run by
// tests/browser_call.rs.
//
// Env: as harness.mjs, and SCREENSHOT_DIR (optional: PNGs of the call view).
// Prints "OK" last, or "FAIL at <step>: <why>" with the pages' console.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { runInNamespace, serveFromDisk, sleep } from './harness.mjs';

const OVERALL_MS = 110_000;
const STEP_MS = 15_000;
const CLIENT = ['client@demo.neulbi.local', 'demo-client-pass'];
const COUNSELOR = ['counselor@demo.neulbi.local', 'demo-counselor-pass'];

runInNamespace(import.meta.url, OVERALL_MS, main, (page) => page.evaluate(() => ({
  callStatus: document.querySelector('#call-status')?.textContent,
  callHidden: document.querySelector('#call')?.hidden,
  banner: !document.querySelector('#call-banner')?.hidden,
  pc: window.__neulbiCall?.pc?.connectionState ?? null,
  entries: [...document.querySelectorAll('.call-entry')].map((e) => e.textContent),
})));

async function main(run) {
  run.step = 'start neulbi serve';
  const base = await run.startServer();

  run.step = 'warm up Chromium (first launch builds its caches)';
  const warm = await run.launch('warm-up');
  const warmPage = await warm.newPage();
  await warmPage.goto(base, { timeout: 60_000 });
  await warm.close();

  const t0 = Date.now();
  run.step = 'both sign in';
  const [client, counselor] = await Promise.all([signIn(run, base, 'client', CLIENT), signIn(run, base, 'counselor', COUNSELOR)]);

  run.step = 'client opens the room with the demo counselor';
  await client.page.click('#counselors li:has-text("Demo Counselor") button');
  await client.page.waitForSelector('#chat:not([hidden]) #room-title:has-text("Demo Counselor")');
  await client.page.waitForSelector('#start-call:not([hidden]):not([disabled])');

  run.step = "the room shows on the counselor's page";
  await counselor.page.click('#nav a[data-route="rooms"]');
  await counselor.page.click('#rooms li a');
  await counselor.page.waitForSelector('#chat:not([hidden]) #start-call:not([hidden])');

  run.step = 'client starts a video call';
  await client.page.click('#start-call');
  await client.page.waitForSelector('#call:not([hidden]) #call-status:has-text("Calling")');

  run.step = "counselor's incoming-call dialog appears with the focus on Accept";
  await counselor.page.waitForSelector('dialog#incoming[open]');
  const focused = await counselor.page.evaluate(() => document.activeElement?.id);
  if (focused !== 'incoming-accept') throw new Error(`focus is on #${focused}, not on Accept`);

  if (process.env.SCREENSHOT_DIR) {
    mkdirSync(process.env.SCREENSHOT_DIR, { recursive: true });
    await counselor.page.screenshot({ path: join(process.env.SCREENSHOT_DIR, 'incoming.png') });
  }
  run.step = 'counselor accepts';
  await counselor.page.click('#incoming-accept');
  for (const side of [client, counselor]) {
    run.step = `${side.who}: the call view opens and the peer connection connects`;
    await side.page.waitForSelector('#call:not([hidden])');
    await side.page.waitForFunction(() => window.__neulbiCall?.pc?.connectionState === 'connected', null, { timeout: STEP_MS });
  }

  for (const side of [client, counselor]) {
    run.step = `${side.who}: sends camera and microphone on its uplink`;
    const dirs = await side.page.evaluate(() => {
      const sdp = window.__neulbiCall.pc.localDescription.sdp;
      const seen = {};
      let kind = null;
      for (const line of sdp.split(/\r?\n/)) {
        if (line.startsWith('m=')) kind = line.slice(2).split(' ')[0];
        else if (kind && !(kind in seen) && /^a=(sendrecv|sendonly|recvonly|inactive)$/.test(line)) seen[kind] = line.slice(2);
      }
      return seen;
    });
    if (!/send/.test(dirs.audio ?? '') || !/send/.test(dirs.video ?? '')) throw new Error(`the answer's uplink sections are ${JSON.stringify(dirs)}`);
  }

  for (const side of [client, counselor]) {
    run.step = `${side.who}: the remote video plays`;
    await side.page.waitForFunction(() => {
      const v = document.querySelector('#tiles .tile.remote video');
      return v && v.videoWidth > 0 && v.currentTime > 0.2 && !v.paused;
    }, null, { timeout: STEP_MS });
  }
  run.step = 'both remote videos advance and decode frames for 2 s';
  await Promise.all([client, counselor].map((side) => keepsPlaying(side, 2000)));

  run.step = 'a reaction from the client floats on the counselor\'s video';
  await client.page.click('#emoji-bar button[aria-label="React 🎉"]');
  await counselor.page.waitForSelector('#reactions .reaction:has-text("🎉")', { state: 'attached' });
  run.step = 'a reaction from the counselor floats on the client\'s video';
  await counselor.page.click('#emoji-bar button[aria-label="React 👏"]');
  await client.page.waitForSelector('#reactions .reaction:has-text("👏")', { state: 'attached' });

  run.step = 'in-call chat reaches the other side';
  await counselor.page.fill('#call-chat-text', 'Take your time. I am here.');
  await counselor.page.click('#call-chat-form button');
  await client.page.waitForSelector('#call-chat .line:not(.mine):has-text("Take your time. I am here.")');

  run.step = 'the client mutes and the counselor sees it';
  await client.page.click('#call-mute');
  await counselor.page.waitForSelector('#tiles .tile.remote .flag:has-text("muted")');
  await client.page.click('#call-mute');
  await counselor.page.waitForSelector('#tiles .tile.remote .flag:not(:has-text("muted"))', { state: 'attached' });

  run.step = "the client's signaling socket drops: the banner shows and it rejoins the same call";
  await client.page.evaluate(() => window.__neulbiCall.ws.close());
  await client.page.waitForSelector('#call-banner:not([hidden])', { state: 'attached' });
  await client.page.waitForFunction(() => window.__neulbiCall?.pc?.connectionState === 'connected', null, { timeout: STEP_MS });
  await client.page.waitForSelector('#call-banner[hidden]', { state: 'attached' });
  run.step = 'after the rejoin both remote videos decode frames again';
  await client.page.waitForFunction(() => {
    const v = document.querySelector('#tiles .tile.remote video');
    return v && v.videoWidth > 0 && v.currentTime > 0.2 && !v.paused;
  }, null, { timeout: STEP_MS });
  await Promise.all([client, counselor].map((side) => keepsPlaying(side, 1000)));

  if (process.env.SCREENSHOT_DIR) {
    mkdirSync(process.env.SCREENSHOT_DIR, { recursive: true });
    await client.page.click('#emoji-bar button[aria-label="React ❤️"]');
    await sleep(400);
    await client.page.screenshot({ path: join(process.env.SCREENSHOT_DIR, 'call-client.png') });
    await counselor.page.screenshot({ path: join(process.env.SCREENSHOT_DIR, 'call-counselor.png') });
  }

  run.step = 'the counselor hangs up and the call ends on both sides';
  await counselor.page.click('#call-hangup');
  for (const side of [client, counselor]) {
    await side.page.waitForSelector('#call[hidden]', { state: 'attached' });
  }
  for (const side of [client, counselor]) {
    run.step = `${side.who}: the room shows the call with its duration`;
    // The entry may first show the list from before the hang-up ("in progress"); the
    // `ended` push and the read model bring the duration in behind it, so wait for it.
    await side.page.waitForSelector('#messages .call-entry:has-text("Video call ·")');
    await side.page
      .waitForFunction(
        () => [...document.querySelectorAll('#messages .call-entry')]
          .some((e) => /Video call · \d+:\d\d/.test(e.textContent)),
        null,
        { timeout: 20000 },
      )
      .catch(() => {});
    const text = await side.page.$eval('#messages .call-entry:has-text("Video call ·")', (e) => e.textContent);
    if (!/Video call · \d+:\d\d/.test(text)) throw new Error(`call entry reads ${JSON.stringify(text)}`);
    if (/· 0:00\b/.test(text)) throw new Error(`call entry has no duration: ${JSON.stringify(text)}`);
  }
  if (process.env.SCREENSHOT_DIR) {
    await client.page.screenshot({ path: join(process.env.SCREENSHOT_DIR, 'room-after-call.png') });
  }

  run.step = 'a second call: Escape on the incoming-call dialog declines it';
  await client.page.click('#start-call');
  await counselor.page.waitForSelector('dialog#incoming[open]');
  await counselor.page.keyboard.press('Escape');
  await counselor.page.waitForSelector('dialog#incoming:not([open])', { state: 'attached' });
  await client.page.waitForSelector('#call[hidden]', { state: 'attached' });
  await client.page.waitForSelector('#call-last:has-text("Declined")');
  for (const side of [client, counselor]) {
    run.step = `${side.who}: the room shows the declined call as missed`;
    await side.page.waitForSelector('#messages .call-entry.missed:has-text("Missed call")');
  }

  console.error(`call flow took ${((Date.now() - t0) / 1000).toFixed(1)} s after the warm-up`);
}

/** Checks that `side`'s remote video keeps playing: over at least `ms`, its time advances by
 * at least half of that and the peer connection decodes frames (30 a second from the fake camera;
 * at least 5 a second asked). A busy machine gets a few seconds more, never a pass without
 * progress. */
async function keepsPlaying(side, ms) {
  const start = await playback(side);
  const begun = Date.now();
  let now = start;
  while (Date.now() - begun < ms + 6000) {
    await sleep(250);
    now = await playback(side);
    const elapsed = Date.now() - begun;
    if (elapsed >= ms && now.currentTime - start.currentTime >= (ms / 1000) * 0.5
      && now.framesDecoded - start.framesDecoded >= (ms / 1000) * 5) return;
  }
  throw new Error(`${side.who}: over ${Date.now() - begun} ms currentTime ${start.currentTime} → ${now.currentTime}, `
    + `framesDecoded ${start.framesDecoded} → ${now.framesDecoded}`);
}

/** The first remote video's playback time and the peer connection's decoded video frames. */
async function playback(side) {
  return side.page.evaluate(async () => {
    const v = document.querySelector('#tiles .tile.remote video');
    let framesDecoded = 0;
    const stats = await window.__neulbiCall.pc.getStats();
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') framesDecoded += r.framesDecoded ?? 0;
    });
    return { currentTime: v.currentTime, framesDecoded };
  });
}

/** Signs `who` in, in a browser of their own, in English. */
async function signIn(run, base, who, [email, password]) {
  const context = await run.launch(who, { locale: 'en-US' });
  await context.grantPermissions(['camera', 'microphone'], { origin: base });
  await serveFromDisk(context, base);
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const side = run.watch(who, page);
  await page.goto(base);
  await page.fill('#login-email', email);
  await page.fill('#login-password', password);
  await page.click('#local button[type=submit]');
  await page.waitForSelector('#conn[data-state="live"]');
  return side;
}
