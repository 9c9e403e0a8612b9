// The Centrifugo front with centrifuge-js's protobuf build (`centrifuge-protobuf` subprotocol,
// varint-delimited binary frames), beside JSON clients and pusher-js on the same channels.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, sdk, startHerald } from './harness.js';
import { connToken, connected, disconnectCentrifuges, raw, subscribed } from './centrifugo-harness.js';

const CONFIG = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
[apps.channel_options]
presence = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
[[apps.namespaces]]
name = "hist"
history_size = 50
history_ttl = "60s"
allow_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
`;

const text = (bytes) => Buffer.from(bytes).toString();

let herald;
before(async () => {
  herald = await startHerald([], { config: CONFIG });
});
after(async () => {
  disconnectCentrifuges();
  await herald.stop();
});

test('protobuf and JSON clients and the HTTP API on one channel: each encoding gets its frames', async () => {
  const pb = await connected(herald, 'pb-user', { protobuf: true });
  const js = await connected(herald, 'js-user');
  const pbSub = await subscribed(pb, 'mixed');
  const jsSub = await subscribed(js, 'mixed');
  await sdk(herald).trigger('mixed', 'e', { n: 1 });
  await jsSub.publish({ n: 2 });
  await eventually(() => pbSub.publications.length === 2 && jsSub.publications.length === 2);
  assert.deepEqual(pbSub.publications.map((p) => JSON.parse(text(p.data)).n), [1, 2]);
  assert.deepEqual(jsSub.publications.map((p) => p.data.n), [1, 2]);
  // Binary from a protobuf client reaches protobuf subscribers only.
  await pbSub.publish(new Uint8Array([0, 1, 2, 255]));
  await jsSub.publish({ n: 3 });
  await eventually(() => pbSub.publications.length === 4 && jsSub.publications.length === 3);
  assert.deepEqual([...pbSub.publications[2].data], [0, 1, 2, 255]);
  assert.equal(jsSub.publications[2].data.n, 3);
  const presence = await pbSub.presence();
  assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ['js-user', 'pb-user']);
});

test('protobuf recovery after a lost socket', async () => {
  const pb = await connected(herald, 'pb-rec', { protobuf: true });
  const sub = await subscribed(pb, 'hist:pb');
  const recovered = [];
  sub.on('subscribed', (ctx) => recovered.push(ctx.recovered));
  const publisher = await subscribed(await connected(herald, 'pb-pub'), 'hist:pb');
  await publisher.publish({ n: 1 });
  await eventually(() => sub.publications.length === 1);
  const away = new Promise((resolve) => pb.once('connecting', resolve));
  pb._transport._transport.terminate();
  await away;
  await publisher.publish({ n: 2 });
  await publisher.publish({ n: 3 });
  await eventually(() => recovered.length === 1);
  assert.deepEqual(recovered, [true]);
  await eventually(() => assert.deepEqual(sub.publications.map((p) => JSON.parse(text(p.data)).n), [1, 2, 3]));
  const history = await sub.history({ limit: -1 });
  assert.equal(history.publications.length, 3);
});

test('a malformed protobuf frame closes that connection with 3501; a text frame on a protobuf connection too', async () => {
  for (const bad of [Buffer.from([0x05, 0x01]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), 'text']) {
    const r = await raw(herald, { protocols: ['centrifuge-protobuf'] });
    assert.equal(r.ws.protocol, 'centrifuge-protobuf');
    r.send(bad);
    assert.deepEqual(await r.waitClosed(), { code: 3501, reason: 'bad request' });
  }
  const ok = await connected(herald, 'pb-ok', { protobuf: true, token: connToken('pb-ok') });
  assert.equal(ok.state, 'connected');
});
