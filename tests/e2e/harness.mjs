// What the browser tests share: a private network namespace, a `neulbi serve` of this build,
// Chromium processes with fake camera and microphone, watching pages for script errors, and
// one line of verdict ("OK" last, or "FAIL at <step>: <why>" with the pages' console).
//
// Chromium gathers no loopback ICE candidates (it needs --allow-loopback-in-peer-connection)
// and would otherwise offer the machine's other interfaces, which tests must never use, so
// everything runs inside a private network namespace with only `lo` up: started normally, the
// script runs itself again under `unshare -n` (and fails, never skips, when that is refused).
//
// Env: NEULBI_BIN (the neulbi binary), CHROMIUM (default /usr/bin/chromium), NEULBI_WEB_DIR
// (optional, for working on the client: serve web/ from that directory instead of the
// binary), VERBOSE (print the server's log at the end also when every step passed).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join, normalize } from 'node:path';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Waits `ms` milliseconds. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// With only `lo`, Chromium believes it is offline (navigator.onLine is false, and no
// `offline` event can come). `online` adds a veth pair whose both ends stay in the namespace,
// so the browser sees a network it can then lose (context.setOffline).
const VETH = ['nb0', 'nb1'];
const VETH_SETUP = `ip link add ${VETH[0]} type veth peer name ${VETH[1]} && ip addr add 10.213.0.1/30 dev ${VETH[0]} `
  + `&& ip link set ${VETH[0]} up && ip link set ${VETH[1]} up`;

/**
 * Runs `main(run)` inside a private network namespace, bounded by `overallMs`; `script` is
 * the calling module's path (import.meta.url). `run` gives: step (set it before each step,
 * so a failure names it), startServer(env, args), launch(name, options), watch(who, page),
 * cleanups, and describe(page) (what a failing page shows, added to the verdict).
 * `options.online`: the namespace gets the veth pair above.
 */
export function runInNamespace(script, overallMs, main, describe = async () => ({}), options = {}) {
  if (!process.env.NEULBI_E2E_NETNS) outer(script, overallMs, Boolean(options.online));
  else inner(overallMs, main, describe);
}

// --- outside the namespace: run the script again inside a new one -------------------------

function outer(script, overallMs, online) {
  // Only lo (and the namespace's own veth pair when asked), and no multicast route: the SFU
  // must cope without mDNS here (it probes and turns mDNS resolution off where multicast
  // cannot be joined).
  const setup = online ? `ip link set lo up && ${VETH_SETUP}` : 'ip link set lo up';
  const child = spawn('unshare', ['-n', '--', 'sh', '-c', `${setup} && exec "$0" "$1"`, process.execPath, new URL(script).pathname], {
    env: { ...process.env, NEULBI_E2E_NETNS: online ? 'online' : '1' },
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
    console.log(`FAIL at "whole run": no result within ${overallMs + 10_000} ms`);
    process.exit(1);
  }, overallMs + 10_000);
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

function inner(overallMs, main, describe) {
  const cleanups = [];
  const pages = [];
  const serverLog = [];
  let finished = false;
  const run = {
    step: 'start',
    cleanups,
    serverLog,
    startServer: (env, args) => startServer(run, env, args),
    launch: (name, options) => launch(run, name, options),
    watch: (who, page) => watch(pages, who, page),
  };

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
        const shown = await describe(p.page).catch(() => '?');
        detail.push(`--- ${p.who} at ${p.page.url()}: ${JSON.stringify(shown)}\n${p.console.slice(-40).join('\n')}`);
      }
      console.log(`FAIL at "${run.step}": ${why}`);
      if (detail.length) console.log(`browser console:\n${detail.join('\n')}`);
      if (serverLog.length) console.log(`server log (last lines):\n${serverLog.slice(-30).join('\n')}`);
    }
    await cleanup();
    if (ok && process.env.VERBOSE) console.error(`server log:\n${serverLog.join('\n')}`);
    if (ok) console.log('OK');
    process.exit(ok ? 0 : 1);
  };
  const overall = setTimeout(() => finish(false, `timed out after ${overallMs} ms`), overallMs);
  process.on('SIGTERM', () => finish(false, 'terminated'));

  const checked = async () => {
    run.step = 'private network namespace';
    const ours = process.env.NEULBI_E2E_NETNS === 'online' ? VETH : [];
    const others = Object.entries(networkInterfaces())
      .filter(([name, addrs]) => !ours.includes(name) && addrs.some((a) => !a.internal));
    if (others.length) throw new Error(`interfaces besides loopback are up (${others.map(([n]) => n).join(', ')}): refusing to run here`);
    await main(run);
    run.step = 'no script errors on any page';
    const problems = pages.flatMap((s) => s.problems.map((p) => `${s.who}: ${p}`));
    if (problems.length) throw new Error(problems.join('; '));
  };
  checked().then(() => { clearTimeout(overall); return finish(true); }, (e) => finish(false, String(e?.message ?? e).split('\n')[0]));
}

/** Starts `neulbi serve` on a free loopback port with a fresh data dir (demo users seeded),
 * `env` and `args` added, and waits until it is ready; returns its URL. */
async function startServer(run, env = {}, args = []) {
  const bin = process.env.NEULBI_BIN;
  if (!bin) throw new Error('NEULBI_BIN must name the neulbi binary');
  const data = mkdtempSync(join(tmpdir(), 'neulbi-e2e-'));
  run.cleanups.push(() => rmSync(data, { recursive: true, force: true }));
  const server = spawn(bin, [...args, 'serve'], {
    env: {
      ...process.env,
      NEULBI_DATA_DIR: data,
      NEULBI_LISTEN: '127.0.0.1:0',
      NEULBI_MEDIA_UDP: '127.0.0.1:0',
      NEULBI_LOG: process.env.NEULBI_LOG ?? 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => server.on('exit', resolve));
  run.cleanups.push(async () => {
    if (server.exitCode !== null || server.signalCode !== null) return;
    server.kill('SIGTERM');
    const t = setTimeout(() => server.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  });
  // Also when this process ends some other way.
  process.on('exit', () => { try { server.kill('SIGKILL'); } catch { /* gone */ } });
  server.stderr.on('data', (d) => run.serverLog.push(...String(d).trimEnd().split('\n')));
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
 * microphone, loopback ICE allowed, and nothing that calls home. `options` go to the
 * context (viewport, locale). */
async function launch(run, name, options = {}) {
  const profile = mkdtempSync(join(tmpdir(), `neulbi-chromium-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 760 },
    ...options,
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
  run.cleanups.push(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  return context;
}

/** Collects a page's script errors (they fail the run) and its console (shown on failure). */
function watch(pages, who, page) {
  const side = { who, page, problems: [], console: [] };
  pages.push(side);
  page.on('pageerror', (e) => { side.problems.push(`page error: ${e.message}`); side.console.push(`[pageerror] ${e.message}`); });
  page.on('console', (m) => {
    const at = m.location();
    side.console.push(`[${m.type()}] ${m.text()}${at?.url ? ` (${at.url.split('/').pop()}:${at.lineNumber})` : ''}`);
    // A room opened a moment ago answers 404 until the read model has it, and the page
    // retries; a refused request is shown to the person by the page itself: the browser's own
    // log of those requests does not count.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) side.problems.push(`console: ${m.text()}`);
  });
  return side;
}

/** Serves the web client's own files from `dir` (editing without rebuilding the binary). */
export async function serveFromDisk(context, base) {
  const dir = process.env.NEULBI_WEB_DIR;
  if (!dir) return;
  await context.route((url) => url.origin === base && (url.pathname === '/' || url.pathname.startsWith('/web/')), (route) => {
    const path = new URL(route.request().url()).pathname;
    const file = path === '/' ? 'index.html' : normalize(path.slice('/web/'.length));
    const full = join(dir, file);
    if (file.startsWith('..') || !existsSync(full)) return route.continue();
    const contentType = file.endsWith('.html') ? 'text/html' : file.endsWith('.css') ? 'text/css' : 'text/javascript';
    return route.fulfill({ body: readFileSync(full), contentType });
  });
}
