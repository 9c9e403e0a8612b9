// The Centrifugo front on two Herald nodes sharing one Redis: publications, presence, history and
// recovery cross nodes, and pusher-js on the other node sees the same channel.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, eventually, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';
import { connected, disconnectCentrifuges, serverApi, subscribed } from './centrifugo-harness.js';

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
history_size = 100
history_ttl = "300s"
allow_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
`;

let redis, node1, node2, backend2;
before(async () => {
  redis = await startRedis();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'cfjs'];
  [node1, node2] = await Promise.all([startHerald(args, { config: CONFIG }), startHerald(args, { config: CONFIG })]);
  backend2 = await startBackend(node2);
});
after(async () => {
  disconnectCentrifuges();
  disconnectAll();
  await backend2.close();
  await Promise.all([node1.stop(), node2.stop()]);
  await redis.stop();
});

test('a publish on one node reaches centrifuge-js on the other and pusher-js; presence is cluster-wide', async () => {
  const a = await subscribed(await connected(node1, 'n1-user'), 'room');
  const b = await subscribed(await connected(node2, 'n2-user'), 'room');
  const pusher = await connect(node2, backend2, 'p-user');
  const channel = await subscribe(pusher, 'room');
  const fromPusher = [];
  channel.bind('e', (d) => fromPusher.push(d));
  await b.publish({ from: 'node2' });
  await sdk(node1).trigger('room', 'e', { from: 'api1' });
  await eventually(() => a.publications.length === 2 && b.publications.length === 2 && fromPusher.length === 1);
  assert.deepEqual(a.publications.map((p) => p.data.from), ['node2', 'api1']);
  await eventually(async () => {
    const presence = await a.presence();
    assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ['n1-user', 'n2-user']);
  });
});

test('recovery across nodes: publications made through node 2 while a node 1 client was away', async () => {
  const c = await connected(node1, 'rec-user');
  const sub = await subscribed(c, 'hist:cluster');
  const events = [];
  sub.on('subscribed', (ctx) => events.push(ctx.recovered));
  const publisher = await subscribed(await connected(node2, 'rec-pub'), 'hist:cluster');
  await publisher.publish({ n: 1 });
  await eventually(() => sub.publications.length === 1);
  const away = new Promise((resolve) => c.once('connecting', resolve));
  c._transport._transport.terminate();
  await away;
  for (let n = 2; n <= 4; n++) await publisher.publish({ n });
  await eventually(() => events.length === 1, { timeout: 5000 });
  assert.deepEqual(events, [true]);
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 3, 4]));
  const history = await sub.history({ limit: -1 });
  assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2, 3, 4]);
});

test('server API user commands cross nodes: subscribe, unsubscribe and a custom disconnect from node 2 reach node 1', async () => {
  const c = await connected(node1, 'far-user');
  const subscribedCtx = new Promise((resolve) => c.once('subscribed', resolve));
  const publications = [];
  c.on('publication', (ctx) => publications.push(ctx.data));
  assert.deepEqual(await serverApi(node2, 'subscribe', { user: 'far-user', channel: 'far-room' }), { result: {} });
  assert.equal((await subscribedCtx).channel, 'far-room');
  await serverApi(node2, 'publish', { channel: 'far-room', data: { n: 1 } });
  await eventually(() => publications.length === 1);
  const unsubscribed = new Promise((resolve) => c.once('unsubscribed', resolve));
  assert.deepEqual(await serverApi(node2, 'unsubscribe', { user: 'far-user', channel: 'far-room' }), { result: {} });
  assert.equal((await unsubscribed).channel, 'far-room');
  const closed = new Promise((resolve) => c.once('disconnected', resolve));
  assert.deepEqual(await serverApi(node2, 'disconnect', { user: 'far-user', disconnect: { code: 4503, reason: 'elsewhere' } }), { result: {} });
  const ctx = await closed;
  assert.deepEqual([ctx.code, ctx.reason], [4503, 'elsewhere']);
});

test('a server API subscribe with info, recover_since and override crosses nodes (Redis envelope kind 4)', async () => {
  const first = await serverApi(node2, 'publish', { channel: 'hist:far-since', data: { n: 1 } });
  const { epoch } = first.result;
  await serverApi(node2, 'publish', { channel: 'hist:far-since', data: { n: 2 } });
  const c = await connected(node1, 'far-since');
  const subscribedCtx = new Promise((resolve) => c.once('subscribed', resolve));
  const publications = [];
  c.on('publication', (ctx) => publications.push(ctx.data.n));
  const joins = [];
  c.on('join', (ctx) => joins.push(ctx.info));
  const body = {
    user: 'far-since',
    channel: 'hist:far-since',
    info: { desk: 3 },
    recover_since: { offset: 1, epoch },
    override: { presence: { value: true }, join_leave: { value: true }, force_push_join_leave: { value: true } },
  };
  assert.deepEqual(await serverApi(node2, 'subscribe', body), { result: {} });
  const ctx = await subscribedCtx;
  assert.equal(ctx.recovered, true);
  assert.deepEqual(ctx.streamPosition, { offset: 1, epoch });
  await eventually(() => assert.deepEqual(publications, [2]));
  // Its override turned presence on (`hist` keeps none): another user's join reaches it with her info.
  const other = await connected(node2, 'far-other');
  const otherSubscribed = new Promise((resolve) => other.once('subscribed', resolve));
  await serverApi(node2, 'subscribe', { user: 'far-other', channel: 'hist:far-since', info: { desk: 4 }, override: { presence: { value: true } } });
  await otherSubscribed;
  await eventually(() => joins.some((i) => i.user === 'far-other'));
  assert.deepEqual(joins.find((i) => i.user === 'far-other').connInfo, { desk: 4 });
});
