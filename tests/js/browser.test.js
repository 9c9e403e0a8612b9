// pusher-js and centrifuge-js in a real browser (Debian's headless Chromium, driven by playwright-core):
// the web build of pusher-js, authorizing over XHR against the page's own backend, as in a browser app,
// and the browser bundle of centrifuge-js with JWTs the backend made (here: the test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { connect, disconnectAll, next, sdk, startBackend, startHerald, subscribe } from './harness.js';
import { connToken, subToken } from './centrifugo-harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const skip = process.env.HERALD_SKIP_BROWSER ? 'HERALD_SKIP_BROWSER is set' : false;

const PAGE = `<!doctype html><html><head><script src="/pusher.min.js"></script><script src="/centrifuge.js"></script></head><body>
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
  // centrifuge-js: the bundle's global (the class, or the module namespace holding it).
  window.cfReceived = [];
  window.cfStart = (url, token) => new Promise((resolve, reject) => {
    const Client = window.Centrifuge.Centrifuge || window.Centrifuge;
    window.centrifuge = new Client(url, { token });
    window.centrifuge.on('connected', (ctx) => resolve(ctx.client));
    window.centrifuge.on('disconnected', (ctx) => reject(new Error('disconnected ' + JSON.stringify(ctx))));
    window.centrifuge.connect();
  });
  window.cfSubscribe = (channel, token) => new Promise((resolve, reject) => {
    const sub = window.centrifuge.newSubscription(channel, { token });
    sub.on('publication', (ctx) => window.cfReceived.push({ channel: ctx.channel, data: ctx.data }));
    sub.on('subscribed', () => resolve(true));
    sub.on('error', (ctx) => reject(new Error('subscription error ' + JSON.stringify(ctx.error))));
    sub.subscribe();
  });
</script></body></html>`;

let herald, backend, browser, page;
before(async () => {
  if (skip) return;
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: install Debian's chromium (scripts/test does) or set HERALD_SKIP_BROWSER=1`);
  herald = await startHerald();
  const pusherJs = fs.readFileSync(path.join(here, 'node_modules/pusher-js/dist/web/pusher.min.js'));
  const centrifugeJs = fs.readFileSync(path.join(here, 'node_modules/centrifuge/dist/centrifuge.js'));
  backend = await startBackend(herald, undefined, {
    '/': { type: 'text/html', body: PAGE },
    '/pusher.min.js': { type: 'text/javascript', body: pusherJs },
    '/centrifuge.js': { type: 'text/javascript', body: centrifugeJs },
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

test('browser centrifuge-js: JWT connect, subscription token, a server API publish arrives', { skip }, async () => {
  const url = `ws://127.0.0.1:${herald.port}/connection/websocket`;
  const client = await page.evaluate(([u, t]) => window.cfStart(u, t), [url, connToken('browser-cf-user')]);
  assert.match(client, /^\d+\.\d+$/);
  await page.evaluate(([c, t]) => window.cfSubscribe(c, t), ['browser-cf', subToken('browser-cf-user', 'browser-cf')]);
  // The default app's API key is its secret.
  const res = await fetch(`http://127.0.0.1:${herald.port}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': 'app-secret' },
    body: JSON.stringify({ channel: 'browser-cf', data: { title: 'to the browser' } }),
  });
  assert.deepEqual(await res.json(), { result: {} });
  const got = await page.waitForFunction(() => window.cfReceived[0], null, { timeout: 5000 });
  assert.deepEqual(await got.jsonValue(), { channel: 'browser-cf', data: { title: 'to the browser' } });
  await page.evaluate(() => window.centrifuge.disconnect());
});
