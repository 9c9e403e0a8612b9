// The Centrifugo server HTTP API (POST /api/{method}) with the unmodified centrifuge-js client on the
// receiving side: a publish through the API reaches subscribers with its offset, history and presence
// answer what the clients did, and a wrong API key is HTTP 401.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startHerald } from './harness.js';
import { connected, disconnectCentrifuges, subscribed } from './centrifugo-harness.js';

const API_KEY = 'api-key-for-tests';
const CONFIG = `
log = "warn"
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
