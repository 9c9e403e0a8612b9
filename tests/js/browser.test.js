// pusher-js in a real browser (Debian's headless Chromium, driven by playwright-core): the web build of
// pusher-js, authorizing over XHR against the page's own backend, as in a browser app.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { connect, disconnectAll, next, sdk, startBackend, startHerald, subscribe } from './harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const skip = process.env.HERALD_SKIP_BROWSER ? 'HERALD_SKIP_BROWSER is set' : false;

const PAGE = `<!doctype html><html><head><script src="/pusher.min.js"></script></head><body>
<script>
  window.received = [];
  window.start = (port, user) => new Promise((resolve) => {
    window.pusher = new Pusher('app-key', {
      cluster: 'mt1', wsHost: '127.0.0.1', wsPort: port, forceTLS: false, enabledTransports: ['ws'],
      disableStats: true,
      channelAuthorization: { endpoint: '/pusher/auth', headers: { 'x-user-id': user } },
    });
    window.pusher.connection.bind('connected', () => resolve(window.pusher.connection.socket_id));
  });
  window.join = (name) => new Promise((resolve, reject) => {
    const ch = window.pusher.subscribe(name);
    ch.bind('pusher:subscription_succeeded', (data) => resolve(data && data.count !== undefined ? data.count : true));
    ch.bind('pusher:subscription_error', (e) => reject(new Error('subscription_error ' + JSON.stringify(e))));
    ch.bind_global((event, data) => { if (!event.startsWith('pusher')) window.received.push({ channel: name, event, data }); });
  });
  window.whisper = (name, event, data) => window.pusher.channel(name).trigger(event, data);
</script></body></html>`;

let herald, backend, browser, page;
before(async () => {
  if (skip) return;
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: install Debian's chromium (scripts/test does) or set HERALD_SKIP_BROWSER=1`);
  herald = await startHerald();
  const pusherJs = fs.readFileSync(path.join(here, 'node_modules/pusher-js/dist/web/pusher.min.js'));
  backend = await startBackend(herald, undefined, {
    '/': { type: 'text/html', body: PAGE },
    '/pusher.min.js': { type: 'text/javascript', body: pusherJs },
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--headless=new'] });
  page = await browser.newPage();
  await page.goto(`${backend.url}/`);
});
after(async () => {
  disconnectAll();
  await browser?.close();
  await backend?.close();
  await herald?.stop();
});

/** Waits until the page has received an event matching `event` on `channel`. */
async function received(channel, event) {
  const handle = await page.waitForFunction(
    ([c, e]) => window.received.find((r) => r.channel === c && r.event === e),
    [channel, event],
    { timeout: 5000 },
  );
  return handle.jsonValue();
}

test('browser pusher-js: connect, public and presence channels, HTTP publish, whispers both ways', { skip }, async () => {
  const socketId = await page.evaluate((port) => window.start(port, 'browser-user'), herald.port);
  assert.match(socketId, /^\d+\.\d+$/);

  await page.evaluate(() => window.join('news'));
  await sdk(herald).trigger('news', 'headline', { title: 'from the backend' });
  assert.deepEqual((await received('news', 'headline')).data, { title: 'from the backend' });

  // Presence: the browser (authorized by XHR to its origin) and a Node client are one room.
  const count = await page.evaluate(() => window.join('presence-room'));
  assert.equal(count, 1);
  const node = await connect(herald, backend, 'node-user');
  const room = await subscribe(node, 'presence-room');
  assert.equal(room.members.count, 2);
  assert.ok(room.members.get('browser-user'));

  // Whisper browser -> node, then node -> browser.
  const got = next(room, 'client-typing');
  await page.evaluate(() => window.whisper('presence-room', 'client-typing', { from: 'browser' }));
  assert.deepEqual(await got, { from: 'browser' });
  room.trigger('client-typing', { from: 'node' });
  assert.deepEqual((await received('presence-room', 'client-typing')).data, { from: 'node' });

  // The browser leaving is seen as member_removed.
  const left = next(room, 'pusher:member_removed');
  await page.evaluate(() => window.pusher.disconnect());
  assert.equal((await left).id, 'browser-user');
});
