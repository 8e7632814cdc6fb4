// STOMP over every SockJS transport a browser can use, in headless Chromium (playwright-core),
// with this node's own sockjs-client and @stomp/stompjs (web/vendor): the transports Node cannot
// run (eventsource, htmlfile and jsonp, also through the iframe page) as well as the others.
// For each transport two members connect, subscribe to their room, one sends with a receipt
// and the other receives the message. Run by tests/sockjs_browser.rs.
// Env: NEULBI_URL, ROOM, ALICE_TOKEN, BOB_TOKEN. Prints "OK" or "FAIL <transport>: <why>".
import { chromium } from 'playwright-core';

const { NEULBI_URL: base, ROOM: room, ALICE_TOKEN, BOB_TOKEN } = process.env;
if (!base || !room || !ALICE_TOKEN || !BOB_TOKEN) {
  console.error('usage: NEULBI_URL=.. ROOM=.. ALICE_TOKEN=.. BOB_TOKEN=.. node sockjs-browser.mjs');
  process.exit(2);
}
const TRANSPORTS = process.env.TRANSPORTS?.split(',') ?? [
  'websocket',
  'xhr-streaming',
  'xhr-polling',
  'eventsource',
  'iframe-eventsource',
  'iframe-htmlfile',
  'iframe-xhr-polling',
  'jsonp-polling',
];

/** Runs in the page: one round of chat over `transport`; resolves with what went wrong, or null. */
async function chatOver({ transport, room, alice, bob }) {
  const connect = (token) => new Promise((resolve, reject) => {
    let used = null;
    const client = new StompJs.Client({
      webSocketFactory: () => {
        const socket = new SockJS('/chat', null, { transports: [transport] });
        socket.addEventListener('open', () => { used = socket.transport; });
        return socket;
      },
      connectHeaders: { Authorization: `Bearer ${token}` },
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
    });
    client.onConnect = () => resolve({ client, used: () => used });
    client.onStompError = (f) => reject(new Error(`ERROR ${f.headers.message}`));
    client.onWebSocketClose = (e) => reject(new Error(`closed before CONNECTED (${e?.code ?? '?'})`));
    client.activate();
  });
  const within = (p, ms, what) => Promise.race([p, new Promise((_, r) => setTimeout(() => r(new Error(`no ${what} in ${ms} ms`)), ms))]);
  try {
    const a = await within(connect(alice), 8000, 'CONNECTED for alice');
    const b = await within(connect(bob), 8000, 'CONNECTED for bob');
    if (a.used() !== transport) return `sockjs-client used ${a.used()}, not ${transport}`;
    const text = `over ${transport} in the browser`;
    // Both SUBSCRIBEs must be in force before alice sends: over the polling and streaming
    // transports each one travels on its own HTTP request, so bob's could otherwise arrive
    // after the delivery. A RECEIPT of SUBSCRIBE says it is.
    const bobSubscribed = new Promise((resolve) => b.client.watchForReceipt('sub-b', resolve));
    const received = new Promise((resolve) => {
      b.client.subscribe(`/topic/rooms.${room}`, (m) => { if (m.body.includes(text)) resolve(); }, { receipt: 'sub-b' });
    });
    const subscribed = new Promise((resolve) => a.client.watchForReceipt('sub', resolve));
    a.client.subscribe(`/topic/rooms.${room}`, () => {}, { receipt: 'sub' });
    await within(subscribed, 8000, 'RECEIPT of SUBSCRIBE');
    await within(bobSubscribed, 8000, "RECEIPT of bob's SUBSCRIBE");
    const receipt = new Promise((resolve) => a.client.watchForReceipt('post', resolve));
    a.client.publish({ destination: `/app/rooms.${room}.send`, headers: { receipt: 'post' }, body: text });
    await within(receipt, 8000, 'RECEIPT of SEND');
    await within(received, 8000, 'MESSAGE for bob');
    await a.client.deactivate();
    await b.client.deactivate();
    return null;
  } catch (e) {
    return String(e?.message ?? e);
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // The browser's own complaints (CSP, failed loads) explain a failing transport.
    const consoleLines = [];
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    await page.goto(`${base}/`);
    // The page already loads @stomp/stompjs; add this node's sockjs-client (allowed by the CSP).
    await page.addScriptTag({ url: '/web/vendor/sockjs.min.js' });
    for (const transport of TRANSPORTS) {
      const problem = await page.evaluate(chatOver, { transport, room, alice: ALICE_TOKEN, bob: BOB_TOKEN });
      if (problem) {
        console.log(`FAIL ${transport}: ${problem}; console: ${JSON.stringify(consoleLines.slice(-5))}`);
        process.exit(1);
      }
    }
    if (errors.length) throw new Error(errors.join('; '));
    console.log('OK');
  } finally {
    await browser.close();
  }
}

setTimeout(() => { console.log('FAIL timed out'); process.exit(1); }, 120_000).unref();
main().then(() => process.exit(0), (e) => {
  console.log(`FAIL ${e?.message ?? e}`);
  process.exit(1);
});
