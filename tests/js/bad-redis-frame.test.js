// Input from Redis is as untrusted as input from a socket: an envelope whose frame is not UTF-8,
// published on Herald's Redis channels by anyone with access to the Redis, must be dropped. Today it
// panics every session subscribed to the channel; the panicked sessions skip their cleanup, so their
// presence members stay forever (ghosts), and on a cache channel the bad frame is kept and crashes
// every later subscriber.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { collect, connect, disconnectAll, eventually, next, roundTrip, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

const PREFIX = 'herald';
const DELIVER = 0;

/** A length-prefixed field of an envelope: `u32 big endian | bytes`. */
function field(bytes) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bytes.length);
  return Buffer.concat([len, Buffer.from(bytes)]);
}

/**
 * An inter-node envelope (version 2) as Herald's nodes publish them: `version (1) | kind (1) | node (16;
 * random, so not the receiving node's) | channel | event | data kind (1; 0 = text) | data | no except,
 * device, publisher or position (4 zero flags) | no tags (u16 0)`.
 */
function envelope(kind, channel, event, data) {
  const head = Buffer.alloc(1 + 1 + 16);
  head[0] = 2;
  head[1] = kind;
  crypto.randomBytes(16).copy(head, 2);
  const text = Buffer.from([0]);
  const tail = Buffer.from([0, 0, 0, 0, 0, 0]);
  return Buffer.concat([head, field(Buffer.from(channel)), field(Buffer.from(event)), text, field(Buffer.from(data)), tail]);
}

/** `redis-cli -x PUBLISH channel` with `payload` on stdin; resolves with the number of receivers. */
function redisPublish(redis, channel, payload) {
  return new Promise((resolve, reject) => {
    const cli = spawn('redis-cli', ['-p', String(redis.port), '-x', 'PUBLISH', channel], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    cli.stdout.on('data', (c) => (out += c));
    cli.on('error', reject);
    cli.on('exit', (code) => (code === 0 ? resolve(Number.parseInt(out.trim(), 10)) : reject(new Error(`redis-cli exited ${code}: ${out}`))));
    cli.stdin.end(payload);
  });
}

const NOT_UTF8 = [0xff, 0xfe, 0xfd];
const topic = (channel) => `${PREFIX}:app-id:c:${channel}`;

let redis, herald, backend, api;
before(async () => {
  redis = await startRedis();
  herald = await startHerald(['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', PREFIX]);
  backend = await startBackend(herald);
  api = sdk(herald);
});
after(async () => {
  disconnectAll();
  await backend.close();
  await herald.stop();
  await redis.stop();
});

test('a non-UTF-8 frame from Redis is dropped: subscribers stay connected, cache replay is safe, presence has no ghost', { timeout: 20000 }, async () => {
  const alice = await connect(herald, backend, 'alice');
  const bob = await connect(herald, backend, 'bob');
  const carol = await connect(herald, backend, 'carol');
  const aliceRoom = await subscribe(alice, 'presence-room');
  const bobRoom = await subscribe(bob, 'presence-room');
  const cache = await subscribe(carol, 'cache-x');
  const clients = { alice, bob, carol };
  const ids = Object.fromEntries(Object.entries(clients).map(([n, p]) => [n, p.connection.socket_id]));
  const states = Object.fromEntries(Object.entries(clients).map(([n, p]) => [n, collect(p.connection, 'state_change')]));

  // The garbage: a well-formed envelope whose text data is not UTF-8; on the cache channel as the history
  // script sends it (its position first), which is how a cache channel's publications arrive.
  assert.equal(await redisPublish(redis, topic('presence-room'), envelope(DELIVER, 'presence-room', 'garbage', NOT_UTF8)), 1, 'herald receives presence-room');
  assert.equal(await redisPublish(redis, topic('cache-x'), Buffer.concat([Buffer.from('7:ep:'), envelope(DELIVER, 'cache-x', 'garbage', NOT_UTF8)])), 1, 'herald receives cache-x');

  // A valid frame on the same Redis channels after the garbage: Redis keeps the order of publishes,
  // so once it arrives the garbage has been handled.
  const arrived = [next(aliceRoom, 'after-garbage'), next(bobRoom, 'after-garbage'), next(cache, 'after-garbage')];
  await redisPublish(redis, topic('presence-room'), envelope(DELIVER, 'presence-room', 'after-garbage', JSON.stringify({ n: 1 })));
  await redisPublish(redis, topic('cache-x'), envelope(DELIVER, 'cache-x', 'after-garbage', JSON.stringify({ n: 2 })));
  assert.deepEqual(await Promise.all(arrived), [{ n: 1 }, { n: 1 }, { n: 2 }]);
  // The same connections, never dropped (pusher-js would have reconnected with new socket ids).
  for (const [name, p] of Object.entries(clients)) {
    assert.equal(p.connection.socket_id, ids[name], `${name} kept its connection`);
    assert.deepEqual(states[name].map((s) => s.current), [], `${name} never left connected`);
  }

  // Events published through the HTTP API afterwards reach everyone.
  const published = [next(aliceRoom, 'after'), next(bobRoom, 'after'), next(cache, 'after')];
  await api.trigger(['presence-room', 'cache-x'], 'after', { ok: true });
  assert.deepEqual(await Promise.all(published), [{ ok: true }, { ok: true }, { ok: true }]);

  // A new subscriber of the cache channel gets the last valid event (or a cache miss), not the garbage.
  const dave = await connect(herald, backend, 'dave');
  const daveStates = collect(dave.connection, 'state_change');
  const late = dave.subscribe('cache-x');
  const replayed = [];
  late.bind('after', (d) => replayed.push({ after: d }));
  late.bind('pusher:cache_miss', () => replayed.push('cache_miss'));
  await eventually(() => replayed.length > 0, { message: 'the late cache-x subscriber got the last event or a cache miss' });
  assert.ok([JSON.stringify({ after: { ok: true } }), '"cache_miss"'].includes(JSON.stringify(replayed[0])), JSON.stringify(replayed));
  await roundTrip(dave);
  assert.deepEqual(daveStates.map((s) => s.current), [], 'the late subscriber never left connected');

  // Presence has no ghosts: members leave when their connections close.
  const users = async () => (await (await api.get({ path: '/channels/presence-room/users' })).json()).users.map((u) => u.id).sort();
  assert.deepEqual(await users(), ['alice', 'bob']);
  const removed = next(aliceRoom, 'pusher:member_removed', 5000);
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
  await eventually(async () => assert.deepEqual(await users(), ['alice']), { timeout: 5000, message: 'bob left the user list' });
  alice.disconnect();
  await eventually(async () => assert.deepEqual(await users(), []), { timeout: 5000, message: 'alice left the user list' });
});
