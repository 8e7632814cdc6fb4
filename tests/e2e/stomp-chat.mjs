// Two members chat through third-party STOMP clients, driven by tests/stomp_clients.rs: an
// outsider is refused, a resend is not a second message, and a client that comes back with
// `since-message-id` gets exactly what it missed.
// Usage: node stomp-chat.mjs TRANSPORT
//   TRANSPORT: ws | sockjs-websocket | sockjs-xhr-streaming | sockjs-xhr-polling   (@stomp/stompjs)
//              legacy-ws | legacy-sockjs-xhr-streaming        (the old stompjs `Stomp.over(socket)`)
// Env: NEULBI_URL (http://127.0.0.1:PORT), ROOM, ALICE_TOKEN, BOB_TOKEN, EVE_TOKEN.
// Protocol with the test over stdio: prints "RECEIPT <client-message-id>" when a RECEIPT
// arrives and waits for a "CHECKED" line (the test looked for the event in the log first), and
// prints "OK" once every check passed. Any failure prints "FAIL <reason>" and exits 1.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import SockJS from 'sockjs-client';
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const { Stomp: LegacyStomp } = require('stompjs/lib/stomp.js');
LegacyStomp.setInterval = (ms, f) => setInterval(f, ms);
LegacyStomp.clearInterval = (id) => clearInterval(id);

const transport = process.argv[2];
const { NEULBI_URL: base, ROOM: room, ALICE_TOKEN, BOB_TOKEN, EVE_TOKEN } = process.env;
if (!transport || !base || !room || !ALICE_TOKEN || !BOB_TOKEN || !EVE_TOKEN) {
  console.error('usage: NEULBI_URL=.. ROOM=.. ALICE_TOKEN=.. BOB_TOKEN=.. EVE_TOKEN=.. node stomp-chat.mjs TRANSPORT');
  process.exit(2);
}
const topic = `/topic/rooms.${room}`;
const sendTo = `/app/rooms.${room}.send`;

const fail = (why) => {
  console.log(`FAIL ${transport}: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 25_000).unref();

// Lines from the test, consumed in order.
const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (line) => waiting.shift()?.(line.trim()));
const nextLine = () => new Promise((resolve) => waiting.push(resolve));

/** A promise with its resolve/reject exposed. */
function deferred() {
  let resolve, reject;
  const promise = new Promise((a, b) => { resolve = a; reject = b; });
  return { promise, resolve, reject };
}

/** Waits for `d` or fails after `ms` naming `what`. */
function within(d, ms, what) {
  const timer = setTimeout(() => d.reject(new Error(`no ${what} within ${ms} ms`)), ms);
  return d.promise.finally(() => clearTimeout(timer));
}

/** One connected person, with the same small surface over both client libraries. */
class Person {
  constructor(name, token) {
    this.name = name;
    this.token = token;
    this.messages = [];
    this.waiters = [];
    this.errors = [];
    this.receipts = new Map();
  }

  socket() {
    const url = `${base}/chat`;
    switch (transport) {
      case 'ws':
      case 'legacy-ws':
        return new WebSocket(`${base.replace(/^http/, 'ws')}/chat/websocket`, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
      case 'sockjs-websocket':
        return new SockJS(url, null, { transports: ['websocket'] });
      case 'sockjs-xhr-streaming':
      case 'legacy-sockjs-xhr-streaming':
        return new SockJS(url, null, { transports: ['xhr-streaming'] });
      case 'sockjs-xhr-polling':
        return new SockJS(url, null, { transports: ['xhr-polling'] });
      default:
        throw new Error(`unknown transport ${transport}`);
    }
  }

  onMessage(m) {
    const body = m.body;
    this.messages.push(body);
    for (const w of this.waiters.splice(0)) {
      if (!w.match(body)) this.waiters.push(w); else w.d.resolve(body);
    }
  }

  /** Resolves with the first message body (past or future) for which `match` holds. */
  waitMessage(match, ms = 5000) {
    const seen = this.messages.find(match);
    const d = deferred();
    if (seen !== undefined) d.resolve(seen); else this.waiters.push({ match, d });
    return within(d, ms, `message for ${this.name}`);
  }

  receipt(id) {
    if (!this.receipts.has(id)) this.receipts.set(id, deferred());
    return this.receipts.get(id);
  }

  async connect() {
    const connected = deferred();
    this.error = deferred();
    const headers = { Authorization: `Bearer ${this.token}` };
    if (transport.startsWith('legacy')) {
      const client = LegacyStomp.over(this.socket());
      client.debug = () => {};
      client.heartbeat.outgoing = 1000;
      client.heartbeat.incoming = 1000;
      client.onreceipt = (f) => this.receipt(f.headers['receipt-id']).resolve(f);
      client.connect(headers, (f) => connected.resolve(f), (e) => {
        const frame = typeof e === 'string' ? { headers: { message: e } } : e;
        this.errors.push(frame);
        connected.reject(new Error(`connect failed: ${frame.headers?.message}`));
        this.error.resolve(frame);
      });
      this.legacy = client;
    } else {
      const client = new Client({
        webSocketFactory: () => this.socket(),
        connectHeaders: headers,
        reconnectDelay: 0,
        heartbeatIncoming: 1000,
        heartbeatOutgoing: 1000,
        debug: () => {},
      });
      client.onConnect = (f) => connected.resolve(f);
      client.onStompError = (f) => {
        this.errors.push(f);
        connected.reject(new Error(`connect failed: ${f.headers.message}`));
        this.error.resolve(f);
      };
      client.onWebSocketClose = () => connected.reject(new Error('socket closed before CONNECTED'));
      client.activate();
      this.modern = client;
    }
    const frame = await within(connected, 5000, `CONNECTED for ${this.name}`);
    this.version = frame.headers.version;
    return frame;
  }

  subscribe(destination, receipt, extra = {}) {
    const headers = receipt ? { receipt, ...extra } : { ...extra };
    if (receipt) this.receipt(receipt);
    if (this.legacy) {
      this.legacy.subscribe(destination, (m) => this.onMessage(m), headers);
    } else {
      if (receipt) this.modern.watchForReceipt(receipt, (f) => this.receipt(receipt).resolve(f));
      this.modern.subscribe(destination, (m) => this.onMessage(m), headers);
    }
    return receipt ? within(this.receipt(receipt), 5000, `receipt ${receipt}`) : Promise.resolve();
  }

  send(body, headers) {
    const receipt = headers.receipt;
    if (this.legacy) {
      this.legacy.send(sendTo, headers, body);
    } else {
      if (receipt) this.modern.watchForReceipt(receipt, (f) => this.receipt(receipt).resolve(f));
      this.modern.publish({ destination: sendTo, headers, body });
    }
    return receipt ? within(this.receipt(receipt), 5000, `receipt ${receipt}`) : Promise.resolve();
  }

  async disconnect() {
    if (this.legacy) {
      await new Promise((resolve) => this.legacy.disconnect(resolve));
    } else {
      await this.modern.deactivate();
    }
  }
}

async function main() {
  const alice = new Person('alice', ALICE_TOKEN);
  const bob = new Person('bob', BOB_TOKEN);
  const eve = new Person('eve', EVE_TOKEN);
  await alice.connect();
  await bob.connect();
  const expected = transport.startsWith('legacy') ? '1.1' : '1.2';
  if (alice.version !== expected) fail(`negotiated ${alice.version}, expected ${expected}`);
  await alice.subscribe(topic, 'sub-alice');
  await bob.subscribe(topic, 'sub-bob');

  // An outsider connects but may not read the room: ERROR, then the server closes.
  await eve.connect();
  eve.subscribe(topic, 'sub-eve').catch(() => {});
  const refused = await within(eve.error, 5000, 'ERROR for the outsider');
  if (!/member/.test(refused.headers.message ?? '')) fail(`outsider refused for another reason: ${refused.headers.message}`);

  // A RECEIPT arrives only once the message is in the log: the test checks before we go on.
  const cmid = `c-${transport}-1`;
  const text = `안녕하세요 via ${transport}`;
  await alice.send(text, { receipt: 'post-1', 'client-message-id': cmid, 'content-type': 'text/plain' });
  console.log(`RECEIPT ${cmid}`);
  if ((await nextLine()) !== 'CHECKED') fail('the test did not confirm the append');
  await bob.waitMessage((b) => b.includes(text));
  await alice.waitMessage((b) => b.includes(text));

  // A resend with the same client message id is not a second message.
  await alice.send(text, { receipt: 'post-1-again', 'client-message-id': cmid });
  const reply = `bob answers over ${transport}`;
  await bob.send(reply, { receipt: 'post-2', 'client-message-id': `c-${transport}-2` });
  await alice.waitMessage((b) => b.includes(reply));
  // Deliveries follow log order: once bob sees his reply, a duplicate would have come first.
  await bob.waitMessage((b) => b.includes(reply));
  const copies = bob.messages.filter((b) => b.includes(text)).length;
  if (copies !== 1) fail(`bob got ${copies} copies of a resent message`);
  if (eve.messages.length !== 0) fail('the outsider received messages');

  // Reconnect catch-up: alice goes away, bob writes three messages, alice comes back with the
  // id of the last message she saw and gets exactly the missed ones, in order, then live ones.
  const lastSeen = JSON.parse(alice.messages.at(-1)).id;
  await alice.disconnect();
  const missed = [0, 1, 2].map((i) => `missed ${i} over ${transport}`);
  for (const [i, text] of missed.entries()) {
    await bob.send(text, { receipt: `missed-${i}`, 'client-message-id': `c-${transport}-m${i}` });
  }
  const back = new Person('alice again', ALICE_TOKEN);
  await back.connect();
  await back.subscribe(topic, 'sub-alice-again', { 'since-message-id': lastSeen });
  const live = `live after catch-up over ${transport}`;
  await bob.send(live, { receipt: 'live', 'client-message-id': `c-${transport}-live` });
  await back.waitMessage((b) => b.includes(live));
  const got = back.messages.map((b) => JSON.parse(b).body);
  if (JSON.stringify(got) !== JSON.stringify([...missed, live])) fail(`catch-up delivered ${JSON.stringify(got)}`);

  await back.disconnect();
  await bob.disconnect();
  console.log('OK');
  process.exit(0);
}

main().catch((e) => fail(e?.message ?? String(e)));
