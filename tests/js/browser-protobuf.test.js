// centrifuge-js's protobuf browser bundle (`dist/centrifuge.protobuf.js`) in Debian's headless Chromium,
// driven by playwright-core: the `centrifuge-protobuf` subprotocol and binary frames from a real browser.
// A file of its own because both bundles set the global `Centrifuge`, and the channels here need
// publish and presence options the Pusher app of browser.test.js does not have.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { eventually, startBackend, startHerald } from './harness.js';
import { connToken, connected, disconnectCentrifuges, serverApi, subToken, subscribed } from './centrifugo-harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const skip = process.env.HERALD_SKIP_BROWSER ? 'HERALD_SKIP_BROWSER is set' : false;

// Subscribing needs a subscription token (no allow_subscribe_for_client); subscribers may publish
// and ask for presence.
const CONFIG = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
[apps.channel_options]
presence = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
`;

const PAGE = `<!doctype html><html><head><script src="/centrifuge.protobuf.js"></script></head><body>
<script>
  // The WebSocket the client uses, wrapped to record what the browser itself saw: the subprotocol
  // the handshake settled on and the kind of every frame sent and received.
  window.sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = { requested: protocols === undefined ? null : protocols, protocol: null, sent: [], received: [] };
      window.sockets.push(rec);
      this.addEventListener('open', () => { rec.protocol = this.protocol; });
      this.addEventListener('message', (e) => rec.received.push(typeof e.data === 'string' ? 'text' : e.data.constructor.name));
    }
    send(data) {
      this._rec().sent.push(typeof data === 'string' ? 'text' : data.constructor.name);
      super.send(data);
    }
    _rec() { return window.sockets[window.sockets.length - 1]; }
  }
  // A publication's data as the protobuf client yields it: its type, and its bytes.
  const bytes = (data) => ({ type: data.constructor.name, bytes: Array.from(data) });
  window.cfReceived = [];
  window.cfStart = (url, token) => new Promise((resolve, reject) => {
    const Client = window.Centrifuge.Centrifuge || window.Centrifuge;
    window.centrifuge = new Client(url, { token, websocket: RecordingWebSocket });
    window.centrifuge.on('connected', (ctx) => resolve({ client: ctx.client, transport: ctx.transport }));
    window.centrifuge.on('disconnected', (ctx) => reject(new Error('disconnected ' + JSON.stringify(ctx))));
    window.centrifuge.connect();
  });
  window.cfSubscribe = (channel, token) => new Promise((resolve, reject) => {
    const sub = window.centrifuge.newSubscription(channel, token ? { token } : {});
    sub.on('publication', (ctx) => window.cfReceived.push({ channel: ctx.channel, data: bytes(ctx.data) }));
    sub.on('subscribed', () => resolve(true));
    // A refusal (code >= 100) unsubscribes; a temporary error would resubscribe, so stop that too.
    const fail = (what) => { window.centrifuge.removeSubscription(sub); reject(new Error(what)); };
    sub.on('unsubscribed', (ctx) => fail('unsubscribed ' + JSON.stringify(ctx)));
    sub.on('error', (ctx) => fail('subscription error ' + JSON.stringify(ctx.error)));
    sub.subscribe();
  });
  window.cfPublish = (channel, data) => window.centrifuge.getSubscription(channel).publish(new Uint8Array(data)).then(() => true);
  window.cfPresence = (channel) => window.centrifuge.getSubscription(channel).presence().then((r) => r.clients);
</script></body></html>`;

let herald, backend, browser, page;
before(async () => {
  if (skip) return;
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: install Debian's chromium (scripts/test does) or set HERALD_SKIP_BROWSER=1`);
  herald = await startHerald([], { config: CONFIG });
  const bundle = fs.readFileSync(path.join(here, 'node_modules/centrifuge/dist/centrifuge.protobuf.js'));
  backend = await startBackend(herald, undefined, {
    '/': { type: 'text/html', body: PAGE },
    '/centrifuge.protobuf.js': { type: 'text/javascript', body: bundle },
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--headless=new'] });
  page = await browser.newPage();
  await page.goto(`${backend.url}/`);
});
after(async () => {
  disconnectCentrifuges();
  await browser?.close();
  await backend?.close();
  await herald?.stop();
});

/** Waits until the page holds `n` publications, and returns them. */
async function pagePublications(n) {
  const handle = await page.waitForFunction((k) => window.cfReceived.length >= k && window.cfReceived, n, { timeout: 5000 });
  return handle.jsonValue();
}

test('browser centrifuge-js protobuf: subprotocol, JWT, sub token, API and browser publishes as bytes, presence', { skip }, async () => {
  const url = `ws://127.0.0.1:${herald.port}/connection/websocket`;
  const user = 'browser-pb-user';
  const channel = 'browser-pb';
  const { client, transport } = await page.evaluate(([u, t]) => window.cfStart(u, t), [url, connToken(user)]);
  assert.match(client, /^\d+\.\d+$/);
  assert.equal(transport, 'websocket');

  // The subscription token is what lets the browser in: without one the channel refuses it.
  await assert.rejects(page.evaluate((c) => window.cfSubscribe(c), channel), /permission denied|103/);
  await page.evaluate(([c, t]) => window.cfSubscribe(c, t), [channel, subToken(user, channel)]);

  // A server API publish of JSON `data` reaches the protobuf client as the JSON text's UTF-8 bytes,
  // exactly as the API request carried it; `b64data` arrives as its raw bytes.
  const json = '{"title":"to the browser","n":1}';
  assert.deepEqual(await serverApi(herald, 'publish', `{"channel":"${channel}","data":${json}}`), { result: {} });
  const binary = [0, 1, 2, 127, 128, 254, 255];
  const b64 = Buffer.from(binary).toString('base64');
  assert.deepEqual(await serverApi(herald, 'publish', JSON.stringify({ channel, b64data: b64 })), { result: {} });
  const [first, second] = await pagePublications(2);
  assert.deepEqual(first, { channel, data: { type: 'Uint8Array', bytes: [...Buffer.from(json)] } });
  assert.deepEqual(second, { channel, data: { type: 'Uint8Array', bytes: binary } });

  // A publish from the browser reaches a Node protobuf client byte for byte (and the browser itself).
  const node = await connected(herald, 'node-pb-user', { protobuf: true });
  const nodeSub = await subscribed(node, channel, { token: subToken('node-pb-user', channel) });
  const fromBrowser = [255, 0, 42, 10, 13, 0xc3];
  assert.equal(await page.evaluate(([c, d]) => window.cfPublish(c, d), [channel, fromBrowser]), true);
  await eventually(() => nodeSub.publications.length === 1, { message: 'the Node client gets the browser publication' });
  assert.ok(nodeSub.publications[0].data instanceof Uint8Array);
  assert.deepEqual([...nodeSub.publications[0].data], fromBrowser);
  // Herald names the publisher by user; its client id field stays empty (the engine's publisher is a user).
  assert.equal(nodeSub.publications[0].info?.user, user, 'the publication names the browser user as its publisher');
  assert.deepEqual((await pagePublications(3))[2].data, { type: 'Uint8Array', bytes: fromBrowser });

  // Presence, asked by the Node client and by the browser, shows the browser's user. (Herald's
  // presence is per user, as the engine keeps it, so an entry's `client` is the user id, not a client id.)
  const users = (clients) => Object.values(clients).map((c) => c.user).sort();
  assert.deepEqual(users((await nodeSub.presence()).clients), [user, 'node-pb-user']);
  assert.deepEqual(users(await page.evaluate((c) => window.cfPresence(c), channel)), [user, 'node-pb-user']);

  // What the browser's own WebSocket saw: one socket, the protobuf subprotocol asked for and agreed
  // by the server's handshake, and only binary frames either way.
  const sockets = await page.evaluate(() => window.sockets);
  assert.equal(sockets.length, 1);
  const [ws] = sockets;
  assert.equal(ws.requested, 'centrifuge-protobuf');
  assert.equal(ws.protocol, 'centrifuge-protobuf');
  assert.ok(ws.sent.length >= 4, `connect, both subscribes, publish, each awaited before the next: ${ws.sent}`);
  assert.deepEqual([...new Set(ws.sent)], ['Uint8Array']);
  assert.ok(ws.received.length >= 4, `replies and pushes: ${ws.received}`);
  assert.deepEqual([...new Set(ws.received)], ['ArrayBuffer']);

  // The browser's entry is its connection's: it leaves when the browser disconnects.
  await page.evaluate(() => window.centrifuge.disconnect());
  await eventually(async () => assert.deepEqual(users((await nodeSub.presence()).clients), ['node-pb-user']));
});
