// A video call in real browsers: the web client (web/call.js) in two headless Chromium
// processes (playwright-core), against a `neulbi serve` this script starts. The demo client
// and the demo counselor sign in; the client opens their room and starts a call; the
// counselor's incoming-call dialog appears (focus on Accept) and is accepted; both remote
// videos play (size, time advancing, frames decoded per getStats); a reaction and a chat line
// cross over; mute shows on the other side; hang-up ends the call for both, and the room
// shows the call with its duration. Run by tests/browser_call.rs.
//
// Chromium gathers no loopback ICE candidates (it needs --allow-loopback-in-peer-connection)
// and would otherwise offer the machine's other interfaces, which tests must never use, so
// everything runs inside a private network namespace with only `lo` up: started normally, the
// script runs itself again under `unshare -n` (and fails, never skips, when that is refused).
//
// Env: NEULBI_BIN (the neulbi binary), CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR
// (optional: PNGs of the call view), NEULBI_WEB_DIR (optional, for working on the client:
// serve index.html, app.js and call.js from that directory instead of the binary), VERBOSE
// (print the server's log at the end also when every step passed).
// Prints "OK" last, or "FAIL at <step>: <why>" with the pages' console.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const OVERALL_MS = 110_000;
const STEP_MS = 15_000;
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const CLIENT = ['client@demo.neulbi.local', 'demo-client-pass'];
const COUNSELOR = ['counselor@demo.neulbi.local', 'demo-counselor-pass'];

if (!process.env.NEULBI_CALL_NETNS) {
  outer();
} else {
  inner();
}

// --- outside the namespace: run this script again inside a new one ------------------------

function outer() {
  const script = fileURLToPath(import.meta.url);
  // Only lo, and no multicast route: the SFU must cope without mDNS here (it probes and turns
  // mDNS resolution off where multicast cannot be joined).
  const setup = 'ip link set lo up';
  const child = spawn('unshare', ['-n', '--', 'sh', '-c', `${setup} && exec "$0" "$1"`, process.execPath, script], {
    env: { ...process.env, NEULBI_CALL_NETNS: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, so a hung run is ended with everything it started.
    detached: true,
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; process.stdout.write(d); });
  child.stderr.on('data', (d) => { err += d; process.stderr.write(d); });
  const killAll = () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
  const timer = setTimeout(() => {
    killAll();
    console.log(`FAIL at "whole run": no result within ${OVERALL_MS + 10_000} ms`);
    process.exit(1);
  }, OVERALL_MS + 10_000);
  child.on('error', (e) => {
    console.log(`FAIL at "network namespace": cannot run unshare: ${e.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    clearTimeout(timer);
    killAll();
    if (code !== 0 && !/\b(OK|FAIL)\b/.test(out)) {
      // unshare (or ip) refused before the script ran: say so, never skip.
      console.log(`FAIL at "network namespace": could not make a private network namespace (\`unshare -n\`, then \`${setup}\`) `
        + `(exit ${code ?? signal}): ${err.trim().split('\n').slice(-3).join(' | ')}. `
        + 'This test needs a private network namespace (root, or user namespaces enabled).');
    }
    process.exit(code ?? 1);
  });
}

// --- inside the namespace -----------------------------------------------------------------

function inner() {
  let step = 'start';
  const cleanups = [];
  const pages = [];
  const serverLog = [];
  let finished = false;

  const cleanup = async () => {
    for (const f of cleanups.reverse()) await Promise.resolve().then(f).catch(() => {});
    cleanups.length = 0;
  };
  const finish = async (ok, why) => {
    if (finished) return;
    finished = true;
    if (!ok) {
      const detail = [];
      for (const p of pages) {
        const shown = await p.page.evaluate(() => ({
          error: document.querySelector('#error')?.textContent,
          callStatus: document.querySelector('#call-status')?.textContent,
          callHidden: document.querySelector('#call')?.hidden,
          banner: !document.querySelector('#call-banner')?.hidden,
          pc: window.__neulbiCall?.pc?.connectionState ?? null,
          entries: [...document.querySelectorAll('.call-entry')].map((e) => e.textContent),
        })).catch(() => '?');
        detail.push(`--- ${p.who}: ${JSON.stringify(shown)}\n${p.console.slice(-40).join('\n')}`);
      }
      console.log(`FAIL at "${step}": ${why}`);
      if (detail.length) console.log(`browser console:\n${detail.join('\n')}`);
      if (serverLog.length) console.log(`server log (last lines):\n${serverLog.slice(-30).join('\n')}`);
    }
    await cleanup();
    if (ok && process.env.VERBOSE) console.error(`server log:\n${serverLog.join('\n')}`);
    if (ok) console.log('OK');
    process.exit(ok ? 0 : 1);
  };
  const overall = setTimeout(() => finish(false, `timed out after ${OVERALL_MS} ms`), OVERALL_MS);
  process.on('SIGTERM', () => finish(false, 'terminated'));

  main().then(() => { clearTimeout(overall); return finish(true); }, (e) => finish(false, String(e?.message ?? e).split('\n')[0]));

  async function main() {
    step = 'private network namespace';
    const others = Object.entries(networkInterfaces()).filter(([, addrs]) => addrs.some((a) => !a.internal));
    if (others.length) throw new Error(`interfaces besides loopback are up (${others.map(([n]) => n).join(', ')}): refusing to run a call here`);

    step = 'start neulbi serve';
    const base = await startServer();

    step = 'warm up Chromium (first launch builds its caches)';
    const warm = await launch('warm-up');
    const warmPage = await warm.newPage();
    await warmPage.goto(base, { timeout: 60_000 });
    await warm.close();

    const t0 = Date.now();
    step = 'both sign in';
    const [client, counselor] = await Promise.all([signIn(base, 'client', CLIENT), signIn(base, 'counselor', COUNSELOR)]);

    step = 'client opens the room with the demo counselor';
    await client.page.click('#counselors li button:has-text("Demo Counselor")');
    await client.page.waitForSelector('#chat:not([hidden]) #room-title:has-text("Demo Counselor")');
    await client.page.waitForSelector('#start-call:not([hidden]):not([disabled])');

    step = "the room shows on the counselor's page";
    await counselor.page.waitForSelector('#rooms li button');
    await counselor.page.click('#rooms li button');
    await counselor.page.waitForSelector('#chat:not([hidden]) #start-call:not([hidden])');

    step = 'client starts a video call';
    await client.page.click('#start-call');
    await client.page.waitForSelector('#call:not([hidden]) #call-status:has-text("Calling")');

    step = "counselor's incoming-call dialog appears with the focus on Accept";
    await counselor.page.waitForSelector('dialog#incoming[open][role="dialog"]');
    const focused = await counselor.page.evaluate(() => document.activeElement?.id);
    if (focused !== 'incoming-accept') throw new Error(`focus is on #${focused}, not on Accept`);

    if (process.env.SCREENSHOT_DIR) {
      mkdirSync(process.env.SCREENSHOT_DIR, { recursive: true });
      await counselor.page.screenshot({ path: join(process.env.SCREENSHOT_DIR, 'incoming.png') });
    }
    step = 'counselor accepts';
    await counselor.page.click('#incoming-accept');
    for (const side of [client, counselor]) {
      step = `${side.who}: the call view opens and the peer connection connects`;
      await side.page.waitForSelector('#call:not([hidden])');
      await side.page.waitForFunction(() => window.__neulbiCall?.pc?.connectionState === 'connected', null, { timeout: STEP_MS });
    }

    for (const side of [client, counselor]) {
      step = `${side.who}: sends camera and microphone on its uplink`;
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
      step = `${side.who}: the remote video plays`;
      await side.page.waitForFunction(() => {
        const v = document.querySelector('#tiles .tile.remote video');
        return v && v.videoWidth > 0 && v.currentTime > 0.2 && !v.paused;
      }, null, { timeout: STEP_MS });
    }
    step = 'both remote videos advance and decode frames for 2 s';
    await Promise.all([client, counselor].map((side) => keepsPlaying(side, 2000)));

    step = 'a reaction from the client floats on the counselor\'s video';
    await client.page.click('#emoji-bar button[aria-label="React 🎉"]');
    await counselor.page.waitForSelector('#reactions .reaction:has-text("🎉")', { state: 'attached' });
    step = 'a reaction from the counselor floats on the client\'s video';
    await counselor.page.click('#emoji-bar button[aria-label="React 👏"]');
    await client.page.waitForSelector('#reactions .reaction:has-text("👏")', { state: 'attached' });

    step = 'in-call chat reaches the other side';
    await counselor.page.fill('#call-chat-text', 'Take your time. I am here.');
    await counselor.page.click('#call-chat-form button');
    await client.page.waitForSelector('#call-chat .line:not(.mine):has-text("Take your time. I am here.")');

    step = 'the client mutes and the counselor sees it';
    await client.page.click('#call-mute');
    await counselor.page.waitForSelector('#tiles .tile.remote .flag:has-text("muted")');
    await client.page.click('#call-mute');
    await counselor.page.waitForSelector('#tiles .tile.remote .flag:not(:has-text("muted"))', { state: 'attached' });

    step = "the client's signaling socket drops: the banner shows and it rejoins the same call";
    await client.page.evaluate(() => window.__neulbiCall.ws.close());
    await client.page.waitForSelector('#call-banner:not([hidden])', { state: 'attached' });
    await client.page.waitForFunction(() => window.__neulbiCall?.pc?.connectionState === 'connected', null, { timeout: STEP_MS });
    await client.page.waitForSelector('#call-banner[hidden]', { state: 'attached' });
    step = 'after the rejoin both remote videos decode frames again';
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

    step = 'the counselor hangs up and the call ends on both sides';
    await counselor.page.click('#call-hangup');
    for (const side of [client, counselor]) {
      await side.page.waitForSelector('#call[hidden]', { state: 'attached' });
    }
    for (const side of [client, counselor]) {
      step = `${side.who}: the room shows the call with its duration`;
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

    step = 'a second call: Escape on the incoming-call dialog declines it';
    await client.page.click('#start-call');
    await counselor.page.waitForSelector('dialog#incoming[open]');
    await counselor.page.keyboard.press('Escape');
    await counselor.page.waitForSelector('dialog#incoming:not([open])', { state: 'attached' });
    await client.page.waitForSelector('#call[hidden]', { state: 'attached' });
    await client.page.waitForSelector('#call-last:has-text("Declined")');
    for (const side of [client, counselor]) {
      step = `${side.who}: the room shows the declined call as missed`;
      await side.page.waitForSelector('#messages .call-entry.missed:has-text("Missed call")');
    }

    step = 'no script errors on either page';
    const problems = [client, counselor].flatMap((s) => s.problems.map((p) => `${s.who}: ${p}`));
    if (problems.length) throw new Error(problems.join('; '));
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

  /** Starts `neulbi serve` on a free loopback port with a fresh data dir (demo users seeded)
   * and waits until it is ready; returns its URL. */
  async function startServer() {
    const bin = process.env.NEULBI_BIN;
    if (!bin) throw new Error('NEULBI_BIN must name the neulbi binary');
    const data = mkdtempSync(join(tmpdir(), 'neulbi-call-'));
    cleanups.push(() => rmSync(data, { recursive: true, force: true }));
    const server = spawn(bin, ['serve'], {
      env: {
        ...process.env,
        NEULBI_DATA_DIR: data,
        NEULBI_LISTEN: '127.0.0.1:0',
        NEULBI_MEDIA_UDP: '127.0.0.1:0',
        NEULBI_LOG: process.env.NEULBI_LOG ?? 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise((resolve) => server.on('exit', resolve));
    cleanups.push(async () => {
      if (server.exitCode !== null || server.signalCode !== null) return;
      server.kill('SIGTERM');
      const t = setTimeout(() => server.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    });
    // Also when this process ends some other way.
    process.on('exit', () => { try { server.kill('SIGKILL'); } catch { /* gone */ } });
    server.stderr.on('data', (d) => serverLog.push(...String(d).trimEnd().split('\n')));
    const url = await new Promise((resolve, reject) => {
      let buffered = '';
      const t = setTimeout(() => reject(new Error('serve printed no URL within 30 s')), 30_000);
      server.stdout.on('data', (d) => {
        buffered += d;
        const m = buffered.match(/Neulbi is ready at (http:\/\/\S+?)\/?\s/);
        if (m) {
          clearTimeout(t);
          resolve(m[1]);
        }
      });
      server.on('exit', (code) => reject(new Error(`serve exited (${code}) before it was ready`)));
    });
    // The directory lists the demo counselor once the projections caught up.
    for (let i = 0; ; i++) {
      const r = await fetch(`${url}/readyz`).catch(() => null);
      if (r?.ok) break;
      if (i > 150) throw new Error(`${url}/readyz did not answer 200 within 30 s`);
      await sleep(200);
    }
    return url;
  }

  /** A Chromium with its own fresh profile (a browser process per person), fake camera and
   * microphone, loopback ICE allowed, and nothing that calls home. */
  async function launch(name) {
    const profile = mkdtempSync(join(tmpdir(), `neulbi-chromium-${name}-`));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      viewport: { width: 1280, height: 760 },
      args: [
        '--no-sandbox',
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        '--allow-loopback-in-peer-connection',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
        '--disable-sync',
        // Pages fulfilled by the test (NEULBI_WEB_DIR) have no address, so Chromium would
        // treat them as public and refuse their connections to 127.0.0.1.
        ...(process.env.NEULBI_WEB_DIR ? ['--disable-features=LocalNetworkAccessChecks'] : []),
      ],
      timeout: 60_000,
    });
    cleanups.push(async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    });
    return context;
  }

  async function signIn(base, who, [email, password]) {
    const context = await launch(who);
    await context.grantPermissions(['camera', 'microphone'], { origin: base });
    if (process.env.NEULBI_WEB_DIR) await serveFromDisk(context, base, process.env.NEULBI_WEB_DIR);
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    const side = { who, page, problems: [], console: [] };
    pages.push(side);
    page.on('pageerror', (e) => { side.problems.push(`page error: ${e.message}`); side.console.push(`[pageerror] ${e.message}`); });
    page.on('console', (m) => {
      side.console.push(`[${m.type()}] ${m.text()}`);
      // A room opened a moment ago answers 404 until the read model has it, and the page
      // retries: the browser's own log of that request does not count.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) side.problems.push(`console: ${m.text()}`);
    });
    await page.goto(base);
    await page.fill('#local input[name=email]', email);
    await page.fill('#local input[name=password]', password);
    await page.click('#local button');
    await page.waitForSelector('#status:text("live")');
    return side;
  }

  /** Serves the web client's own files from `dir` (editing without rebuilding the binary). */
  async function serveFromDisk(context, base, dir) {
    const files = { '/': ['index.html', 'text/html'], '/web/app.js': ['app.js', 'text/javascript'], '/web/call.js': ['call.js', 'text/javascript'] };
    await context.route((url) => url.origin === base && url.pathname in files, (route) => {
      const [file, contentType] = files[new URL(route.request().url()).pathname];
      return route.fulfill({ body: readFileSync(join(dir, file)), contentType });
    });
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
