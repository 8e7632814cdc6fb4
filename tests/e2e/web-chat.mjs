// The web client in a real browser (Debian chromium, headless, driven by playwright-core),
// run by tests/web_client.rs. The demo client signs in, finds the demo counselor in the
// directory, opens a room and writes; the demo counselor, in a second browser context, sees
// the room and the message live over STOMP and answers; the client sees the answer. Then the
// counselor signs out everywhere: their other device goes back to the sign-in form, the
// client's chat stays live.
// Usage: NEULBI_URL=http://127.0.0.1:PORT node web-chat.mjs   → prints "OK" or "FAIL <why>".
import { chromium } from 'playwright-core';

const base = process.env.NEULBI_URL;
if (!base) {
  console.error('usage: NEULBI_URL=http://127.0.0.1:PORT node web-chat.mjs');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TIMEOUT = 10_000;
// What the test is waiting for, so a timeout names the step.
let step = 'start';
// The pages, so a failure can say what they show.
const pages = [];

async function signIn(browser, email, password) {
  const context = await browser.newContext();
  const page = await context.newPage();
  pages.push(page);
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Script errors count; the browser's own log of a failed request does not (a room opened a
  // moment ago answers 404 until the read model has it, and the page retries).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  await page.goto(base);
  await page.fill('#local input[name=email]', email);
  await page.fill('#local input[name=password]', password);
  await page.click('#local button');
  step = `${email} connects to the chat`;
  await page.waitForSelector('#status:text("live")');
  return { page, problems };
}

async function main() {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  try {
    const client = await signIn(browser, 'client@demo.neulbi.local', 'demo-client-pass');
    step = 'client opens a room with the demo counselor';
    await client.page.click('#counselors li button:has-text("Demo Counselor")');
    await client.page.waitForSelector('#chat:not([hidden]) #room-title:has-text("Demo Counselor")');
    const hello = `안녕하세요, browser ${Date.now()}`;
    await client.page.fill('#text', hello);
    await client.page.click('#compose button');
    // Shown at once as pending, then confirmed by the message coming back from the log.
    step = 'client sees its message confirmed';
    await client.page.waitForSelector(`.msg.mine:not(.pending):has-text("${hello}")`);
    if ((await client.page.locator(`.msg:has-text("${hello}")`).count()) !== 1) throw new Error('the message is shown twice');

    const counselor = await signIn(browser, 'counselor@demo.neulbi.local', 'demo-counselor-pass');
    step = 'counselor opens the room and sees the message';
    await counselor.page.click('#rooms li button');
    await counselor.page.waitForSelector(`.msg:not(.mine):has-text("${hello}")`);
    const answer = 'Thank you for writing. How are you feeling today?';
    await counselor.page.fill('#text', answer);
    await counselor.page.click('#compose button');
    step = 'client sees the answer live';
    await client.page.waitForSelector(`.msg:not(.mine):has-text("${answer}")`);

    // Server text is shown as text: markup in a message is not interpreted.
    const markup = '<img src=x onerror="window.pwned=1"><b>bold?</b>';
    await client.page.fill('#text', markup);
    await client.page.click('#compose button');
    step = 'counselor sees markup as text';
    await counselor.page.waitForSelector('.msg:not(.mine):has-text("<b>bold?</b>")');
    if (await counselor.page.evaluate(() => window.pwned === 1 || document.querySelector('#messages b') !== null)) {
      throw new Error('message markup was interpreted');
    }
    const otherDevice = await signIn(browser, 'counselor@demo.neulbi.local', 'demo-counselor-pass');
    step = 'counselor signs out everywhere';
    await counselor.page.click('#logout-all');
    await counselor.page.waitForSelector('#signin:not([hidden])');
    step = "the counselor's other device is signed out";
    await otherDevice.page.waitForSelector('#signin:not([hidden])');
    step = "the client's chat stays live";
    await client.page.waitForSelector('#status:text("live")');

    const problems = [...client.problems, ...counselor.problems, ...otherDevice.problems];
    if (problems.length) throw new Error(problems.join('; '));
    console.log('OK');
  } catch (e) {
    // What the pages show, read before the browser closes.
    const shown = await Promise.all(pages.map((p) => p.evaluate(() => ({
      error: document.querySelector('#error')?.textContent,
      status: document.querySelector('#status')?.textContent,
      messages: [...document.querySelectorAll('.msg')].map((m) => `${m.className}: ${m.textContent}`),
    })).catch(() => '?')));
    throw new Error(`${String(e?.message ?? e).split('\n')[0]}; pages: ${JSON.stringify(shown)}`);
  } finally {
    await browser.close();
  }
}

const timer = setTimeout(() => { console.log('FAIL timed out'); process.exit(1); }, 60_000);
main().then(() => { clearTimeout(timer); process.exit(0); }, (e) => {
  console.log(`FAIL at "${step}": ${e?.message ?? e}`);
  process.exit(1);
});
