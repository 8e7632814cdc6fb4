// Connects to Neulbi's SockJS endpoint with the real sockjs-client (npm) over each transport
// it offers outside a browser (websocket, xhr-streaming, xhr-polling), and speaks enough STOMP
// to prove the session works: CONNECT → CONNECTED, DISCONNECT with a receipt → RECEIPT, then
// the server's close. Prints one JSON line per transport and exits non-zero on any failure.
//
// Usage: NEULBI_TOKEN=<access token> node sockjs-client.mjs http://127.0.0.1:PORT/chat
// (the token comes from the environment, never the command line or a URL).
import SockJS from 'sockjs-client';

const url = process.argv[2];
const token = process.env.NEULBI_TOKEN;
if (!url || !token) {
  console.error('usage: NEULBI_TOKEN=... node sockjs-client.mjs BASE_URL');
  process.exit(2);
}

function frame(command, headers, body = '') {
  const lines = Object.entries(headers).map(([k, v]) => `${k}:${v}`);
  return `${command}\n${lines.join('\n')}\n\n${body}\0`;
}

function check(transport) {
  return new Promise((resolve) => {
    const seen = [];
    const done = (ok, detail) => {
      clearTimeout(timer);
      resolve({ transport, ok, detail, seen });
    };
    const timer = setTimeout(() => done(false, 'timed out'), 15000);
    const sock = new SockJS(url, null, { transports: [transport] });
    sock.onopen = () => {
      seen.push(`open:${sock.transport}`);
      sock.send(frame('CONNECT', {
        'accept-version': '1.2',
        'heart-beat': '0,0',
        Authorization: `Bearer ${token}`,
      }));
    };
    sock.onmessage = (e) => {
      const command = String(e.data).replace(/^\n+/, '').split('\n', 1)[0];
      if (!command) return; // a STOMP heart-beat
      seen.push(command);
      if (command === 'CONNECTED') {
        sock.send(frame('DISCONNECT', { receipt: 'bye' }));
      } else if (command !== 'RECEIPT') {
        done(false, `unexpected ${command}`);
      }
    };
    sock.onclose = (e) => {
      seen.push(`close:${e.code}`);
      const ok = seen.includes('CONNECTED') && seen.includes('RECEIPT') && e.code === 3000
        && seen[0] === `open:${transport}`;
      done(ok, ok ? 'ok' : `closed ${e.code} ${e.reason}`);
    };
  });
}

let failed = false;
for (const transport of ['websocket', 'xhr-streaming', 'xhr-polling']) {
  const result = await check(transport);
  console.log(JSON.stringify(result));
  failed ||= !result.ok;
}
process.exit(failed ? 1 : 0);
