// The Centrifugo server HTTP API (POST /api/{method}) with the unmodified centrifuge-js client on the
// receiving side: a publish through the API reaches subscribers with its offset, history and presence
// answer what the clients did, and a wrong API key is HTTP 401.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startHerald } from './harness.js';
import { centrifuge, connToken, connected, disconnectCentrifuges, subscribed } from './centrifugo-harness.js';
import WebSocket from 'ws';

const API_KEY = 'api-key-for-tests';
const CONFIG = `
log = "warn"
centrifugo_expired_grace = 1
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
api_key = "${API_KEY}"

[apps.channel_options]
presence = true
allow_subscribe_for_client = true

[[apps.namespaces]]
name = "hist"
history_size = 100
history_ttl = "300s"
allow_recovery = true
allow_subscribe_for_client = true
`;

let herald;
before(async () => {
  herald = await startHerald([], { config: CONFIG });
});
after(async () => {
  disconnectCentrifuges();
  await herald.stop();
});

async function api(method, body, { key = API_KEY, path = `/api/${method}` } = {}) {
  const res = await fetch(`http://127.0.0.1:${herald.port}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': key },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

test('an API publish reaches centrifuge-js subscribers with its offset; history and idempotency agree', async () => {
  const alice = await connected(herald, 'alice');
  const sub = await subscribed(alice, 'hist:feed');
  const first = await api('publish', { channel: 'hist:feed', data: { n: 1 }, tags: { kind: 'test' } });
  assert.equal(first.status, 200);
  assert.equal(first.body.result.offset, 1);
  assert.ok(first.body.result.epoch);
  const keyed = await api('publish', { channel: 'hist:feed', data: { n: 2 }, idempotency_key: 'once' }, { path: '/apps/app-id/api/publish' });
  const repeat = await api('publish', { channel: 'hist:feed', data: { n: 2 }, idempotency_key: 'once' });
  assert.equal(keyed.body.result.offset, 2);
  assert.equal(repeat.body.result.offset, 2);
  await eventually(() => sub.publications.length === 2, { message: 'both publications arrive' });
  assert.deepEqual(sub.publications.map((p) => [p.data.n, p.offset]), [[1, 1], [2, 2]]);
  assert.deepEqual(sub.publications[0].tags, { kind: 'test' });
  // A marker after the repeat proves it was not delivered again.
  await api('publish', { channel: 'hist:feed', data: { n: 3 } });
  await eventually(() => sub.publications.length === 3);
  assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 3]);
  const history = await api('history', { channel: 'hist:feed', limit: -1 });
  assert.deepEqual(history.body.result.publications.map((p) => p.data.n), [1, 2, 3]);
  assert.equal(history.body.result.epoch, first.body.result.epoch);
});

test('broadcast, presence, presence_stats and channels see centrifuge-js clients; a wrong key is 401', async () => {
  const bob = await connected(herald, 'bob');
  const a = await subscribed(bob, 'room-a');
  const b = await subscribed(bob, 'room-b');
  const sent = await api('broadcast', { channels: ['room-a', 'room-b'], data: { hi: true } });
  assert.deepEqual(sent.body, { result: { responses: [{ result: {} }, { result: {} }] } });
  await eventually(() => a.publications.length === 1 && b.publications.length === 1);
  const presence = await api('presence', { channel: 'room-a' });
  assert.equal(presence.body.result.presence.bob.user, 'bob');
  const stats = await api('presence_stats', { channel: 'room-a' });
  assert.deepEqual(stats.body, { result: { num_clients: 1, num_users: 1 } });
  const channels = await api('channels', { pattern: 'room-*' });
  assert.deepEqual(channels.body.result.channels, { 'room-a': { num_clients: 1 }, 'room-b': { num_clients: 1 } });
  const unknown = await api('publish', { channel: 'nope:x', data: 1 });
  assert.deepEqual(unknown.body, { error: { code: 102, message: 'unknown channel' } });
  const refused = await api('publish', { channel: 'room-a', data: 1 }, { key: 'wrong' });
  assert.equal(refused.status, 401);
});

test('disconnect closes the user\'s connections (terminal: the client does not reconnect)', async () => {
  const carol = await connected(herald, 'carol');
  const closed = new Promise((resolve) => carol.once('disconnected', resolve));
  const answer = await api('disconnect', { user: 'carol' });
  assert.deepEqual(answer.body, { result: {} });
  const ctx = await closed;
  assert.equal(ctx.code, 3503);
  assert.equal(carol.state, 'disconnected');
});

/** A connected centrifuge-js client of `user` and its client id (from the connect reply). */
async function withId(user) {
  const c = centrifuge(herald, { token: connToken(user) });
  const ready = new Promise((resolve, reject) => {
    c.once('connected', resolve);
    c.once('disconnected', (ctx) => reject(new Error(`disconnected: ${JSON.stringify(ctx)}`)));
  });
  c.connect();
  const ctx = await ready;
  return { c, id: ctx.client };
}

test('disconnect with a custom code and reason; one client by id; a whitelist spares a client', async () => {
  const one = await withId('dave');
  const two = await withId('dave');
  const three = await withId('dave');
  const closes = [];
  for (const [name, { c }] of Object.entries({ one, two, three })) c.on('disconnected', (ctx) => closes.push({ name, ...ctx }));
  // One connection, named by its client id: a terminal custom code (4500-4999) with its reason.
  let answer = await api('disconnect', { user: 'dave', client: two.id, disconnect: { code: 4501, reason: 'moved away' } });
  assert.deepEqual(answer.body, { result: {} });
  await eventually(() => closes.length === 1);
  assert.deepEqual(closes[0], { name: 'two', code: 4501, reason: 'moved away' });
  assert.equal(two.c.state, 'disconnected', 'terminal: no reconnect');
  // Every other connection of the user but the whitelisted one.
  answer = await api('disconnect', { user: 'dave', whitelist: [three.id], disconnect: { code: 4502, reason: 'bye' } });
  assert.deepEqual(answer.body, { result: {} });
  await eventually(() => closes.length === 2);
  assert.deepEqual(closes[1], { name: 'one', code: 4502, reason: 'bye' });
  assert.equal(three.c.state, 'connected');
  // An unknown client id matches nothing; a code outside Centrifugo's range is refused.
  assert.deepEqual((await api('disconnect', { user: 'dave', client: 'not-a-client' })).body, { result: {} });
  assert.equal((await api('disconnect', { user: 'dave', disconnect: { code: 1000, reason: 'x' } })).body.error.code, 107);
  assert.equal(three.c.state, 'connected');
});

test('unsubscribe removes a user from a channel with an unsubscribe push; nothing more arrives', async () => {
  const erin = await connected(herald, 'erin');
  const sub = await subscribed(erin, 'unsub-room');
  const unsubscribed = new Promise((resolve) => sub.once('unsubscribed', resolve));
  const answer = await api('unsubscribe', { user: 'erin', channel: 'unsub-room' });
  assert.deepEqual(answer.body, { result: {} });
  const ctx = await unsubscribed;
  assert.equal(ctx.code, 2000);
  assert.equal(sub.state, 'unsubscribed');
  await eventually(async () => (await api('presence_stats', { channel: 'unsub-room' })).body.result.num_clients === 0);
  assert.equal(erin.state, 'connected', 'the connection stays');
});

test('subscribe makes a server-side subscription (subscribe push with data); publications follow', async () => {
  const { c: frank, id } = await withId('frank');
  const other = await withId('frank');
  const subscribedCtx = new Promise((resolve) => frank.once('subscribed', resolve));
  const publications = [];
  frank.on('publication', (ctx) => publications.push(ctx));
  const otherSubs = [];
  other.c.on('subscribed', (ctx) => otherSubs.push(ctx));
  const answer = await api('subscribe', { user: 'frank', client: id, channel: 'hist:server-side', data: { welcome: true } });
  assert.deepEqual(answer.body, { result: {} });
  const ctx = await subscribedCtx;
  assert.equal(ctx.channel, 'hist:server-side');
  assert.deepEqual(ctx.data, { welcome: true });
  assert.equal(ctx.recoverable, true, 'the namespace allows recovery');
  await api('publish', { channel: 'hist:server-side', data: { n: 1 } });
  await eventually(() => publications.length === 1);
  assert.equal(publications[0].channel, 'hist:server-side');
  assert.deepEqual(publications[0].data, { n: 1 });
  assert.equal(otherSubs.length, 0, 'only the client named');
  assert.equal((await api('subscribe', { user: 'frank', channel: 'nope:x' })).body.error.code, 102);
});

test('subscribe with recover_since: centrifuge-js gets recovered, then the missed publications before live ones; a wrong epoch recovers nothing', async () => {
  const first = await api('publish', { channel: 'hist:since', data: { n: 1 } });
  const { epoch } = first.body.result;
  for (const n of [2, 3]) await api('publish', { channel: 'hist:since', data: { n } });
  const { c: iris } = await withId('iris');
  const subscribedCtx = new Promise((resolve) => iris.once('subscribed', resolve));
  const publications = [];
  iris.on('publication', (ctx) => publications.push(ctx));
  const answer = await api('subscribe', { user: 'iris', channel: 'hist:since', recover_since: { offset: 1, epoch } });
  assert.deepEqual(answer.body, { result: {} });
  const ctx = await subscribedCtx;
  assert.equal(ctx.recovered, true);
  assert.equal(ctx.wasRecovering, true);
  assert.deepEqual(ctx.streamPosition, { offset: 1, epoch });
  await api('publish', { channel: 'hist:since', data: { n: 4 } });
  await eventually(() => publications.length === 3, { message: 'two missed and one live publication' });
  assert.deepEqual(publications.map((p) => [p.data.n, p.offset]), [[2, 2], [3, 3], [4, 4]]);

  const { c: jack } = await withId('jack');
  const jackCtx = new Promise((resolve) => jack.once('subscribed', resolve));
  const jackPubs = [];
  jack.on('publication', (p) => jackPubs.push(p.data.n));
  await api('subscribe', { user: 'jack', channel: 'hist:since', recover_since: { offset: 1, epoch: 'wrong' } });
  const wrong = await jackCtx;
  assert.equal(wrong.recovered, false);
  assert.equal(wrong.wasRecovering, true);
  assert.deepEqual(wrong.streamPosition, { offset: 4, epoch });
  await api('publish', { channel: 'hist:since', data: { n: 5 } });
  await eventually(() => jackPubs.length === 1);
  assert.deepEqual(jackPubs, [5]);
});

test('subscribe with info and override: presence and the join push show the info; join_leave turned on for one subscription', async () => {
  // The watcher's subscription turns on join/leave pushes, which the namespace (presence only) doesn't.
  const { c: watcher } = await withId('watcher');
  const joins = [];
  watcher.on('join', (ctx) => joins.push(ctx));
  const watcherSubscribed = new Promise((resolve) => watcher.once('subscribed', resolve));
  const on = { join_leave: { value: true }, force_push_join_leave: { value: true } };
  assert.deepEqual((await api('subscribe', { user: 'watcher', channel: 'lobby', override: on })).body, { result: {} });
  await watcherSubscribed;
  const plain = await subscribed(await connected(herald, 'plain-user'), 'lobby', { joinLeave: true });
  const plainJoins = [];
  plain.on('join', (ctx) => plainJoins.push(ctx));

  const { c: kate } = await withId('kate');
  const kateSubscribed = new Promise((resolve) => kate.once('subscribed', resolve));
  assert.deepEqual((await api('subscribe', { user: 'kate', channel: 'lobby', info: { role: 'host' } })).body, { result: {} });
  await kateSubscribed;
  await eventually(() => joins.some((j) => j.info.user === 'kate'), { message: 'the watcher sees kate join' });
  assert.deepEqual(joins.find((j) => j.info.user === 'kate').info.connInfo, { role: 'host' });
  await eventually(async () => (await api('presence', { channel: 'lobby' })).body.result.presence.kate !== undefined);
  const presence = (await api('presence', { channel: 'lobby' })).body.result.presence;
  assert.deepEqual(presence.kate.conn_info, { role: 'host' });
  // A marker publication: the plain subscriber asked for joins, but the namespace has no join_leave.
  const marker = new Promise((resolve) => plain.once('publication', resolve));
  await api('publish', { channel: 'lobby', data: { marker: true } });
  await marker;
  assert.equal(plainJoins.length, 0);
  // Too large for the app's max_presence_member_size (1024 bytes): refused with 106.
  const big = await api('subscribe', { user: 'kate', channel: 'lobby2', info: { pad: 'x'.repeat(1100) } });
  assert.equal(big.body.error.code, 106);
});

test('refresh: expired closes with 3005 (the client reconnects); a past expire_at expires after the grace', async () => {
  const gina = await withId('gina');
  const codes = [];
  gina.c.on('connecting', (ctx) => codes.push(ctx.code));
  assert.deepEqual((await api('refresh', { user: 'gina', expired: true })).body, { result: {} });
  await eventually(() => codes.includes(3005) && gina.c.state === 'connected', { timeout: 5000 });
  const hank = await withId('hank');
  const hankCodes = [];
  hank.c.on('connecting', (ctx) => hankCodes.push(ctx.code));
  const expireAt = Math.floor(Date.now() / 1000);
  assert.deepEqual((await api('refresh', { user: 'hank', client: hank.id, expire_at: expireAt })).body, { result: {} });
  await eventually(() => hankCodes.includes(3005), { timeout: 6000, message: 'expired after the 1 s grace' });
});

test('disconnect reaches a uni_websocket connection as a disconnect push before the close', async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${herald.port}/connection/uni_websocket`);
  const received = [];
  ws.on('message', (m) => received.push(JSON.parse(m.toString())));
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve) => ws.once('open', resolve));
  ws.send(JSON.stringify({ token: connToken('ulla') }));
  await eventually(() => received.some((m) => m.connect), { message: 'connect push' });
  const answer = await api('disconnect', { user: 'ulla', disconnect: { code: 4503, reason: 'go away' } });
  assert.deepEqual(answer.body, { result: {} });
  assert.deepEqual(await closed, { code: 4503, reason: 'go away' });
  const push = received.find((m) => m.disconnect);
  assert.deepEqual(push?.disconnect, { code: 4503, reason: 'go away' }, `pushes: ${JSON.stringify(received)}`);
});
