// Reliable delivery of the Centrifugo front with the Redis engine, as the unmodified centrifuge-js
// client sees it: recovery when Redis lost the history (a restart, or FLUSHALL) while the client was
// away, and a gap on a live subscription (an offset skipped in the same epoch) answered with an
// unsubscribe push 2500 "insufficient state", after which the client resubscribes with recovery.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { eventually, startHerald, startRedis } from './harness.js';
import { connected, disconnectCentrifuges, serverApi, subscribed } from './centrifugo-harness.js';

const run = promisify(execFile);

const PREFIX = 'cfrec';
const APP = 'app-id';
const CONFIG = `
log = "warn"
[[apps]]
id = "${APP}"
key = "app-key"
secret = "app-secret"
[[apps.namespaces]]
name = "hist"
history_size = 100
history_ttl = "300s"
allow_recovery = true
allow_subscribe_for_client = true
allow_history_for_subscriber = true
`;

let redis, node1, node2;
before(async () => {
  redis = await startRedis();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', PREFIX];
  [node1, node2] = await Promise.all([startHerald(args, { config: CONFIG }), startHerald(args, { config: CONFIG })]);
});
after(async () => {
  disconnectCentrifuges();
  await Promise.all([node1.stop(), node2.stop()]);
  await redis.stop();
});

/** Publishes `data` on `channel` through `node`'s API; resolves with the publication's position. */
async function publish(node, channel, data) {
  const reply = await serverApi(node, 'publish', { channel, data });
  assert.ok(reply.result, `publish ${JSON.stringify(data)}: ${JSON.stringify(reply)}`);
  return reply.result;
}

async function health(node) {
  return (await fetch(`http://127.0.0.1:${node.port}/up`)).json();
}

async function redisCli(...args) {
  const { stdout } = await run('redis-cli', ['-p', String(redis.port), ...args]);
  return stdout.trim();
}

/**
 * A TCP proxy in front of `node`: `cut()` closes every connection through it and refuses new ones
 * (the client's network is gone, it keeps trying to reconnect), `restore()` lets them through again.
 * This decides when the client comes back, without a timer.
 */
async function proxy(node) {
  const sockets = new Set();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) return client.destroy();
    const upstream = net.connect(node.port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    close() {
      open = false;
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** Subscription events of `sub`, in order: `subscribing` (code) and `subscribed` (recovery flags, position). */
function track(sub) {
  const events = [];
  sub.on('subscribing', (ctx) => events.push({ type: 'subscribing', code: ctx.code, reason: ctx.reason }));
  sub.on('subscribed', (ctx) =>
    events.push({ type: 'subscribed', wasRecovering: ctx.wasRecovering, recovered: ctx.recovered, position: ctx.streamPosition }),
  );
  return events;
}

for (const loss of ['restart', 'flushall']) {
  test(`recovery after Redis lost the history (${loss}): recovered false, a new epoch, later publications arrive`, async (t) => {
    const channel = `hist:lost-${loss}`;
    const link = await proxy(node1);
    t.after(() => link.close());
    const c = await connected(link, `lost-${loss}`);
    const sub = await subscribed(c, channel);
    const events = track(sub);
    const first = await publish(node2, channel, { n: 1 });
    await publish(node2, channel, { n: 2 });
    await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2]));
    assert.deepEqual(
      sub.publications.map((p) => p.offset),
      [1, 2],
    );

    // The client loses its socket and stays away while Redis loses the channel's history.
    const away = new Promise((resolve) => c.once('connecting', resolve));
    link.cut();
    await away;
    if (loss === 'restart') {
      const port = redis.port;
      await redis.stop();
      redis = await startRedis(port);
    } else {
      assert.equal(await redisCli('FLUSHALL'), 'OK');
    }
    await eventually(async () => (await health(node1)).status === 'ok' && (await health(node2)).status === 'ok', {
      timeout: 10000,
      interval: 100,
      message: 'both nodes healthy again',
    });
    // Publications continue meanwhile, in a new stream.
    const third = await publish(node2, channel, { n: 3 });
    assert.notEqual(third.epoch, first.epoch, 'the stream started over with a new epoch');
    assert.equal(third.offset, 1);
    await publish(node2, channel, { n: 4 });

    link.restore();
    await eventually(() => events.some((e) => e.type === 'subscribed'), { timeout: 5000, message: () => `resubscribed: ${JSON.stringify(events)}` });
    const resubscribed = events.find((e) => e.type === 'subscribed');
    assert.equal(resubscribed.wasRecovering, true);
    assert.equal(resubscribed.recovered, false, 'the history the client would recover from is gone');
    assert.equal(resubscribed.position.epoch, third.epoch, 'the client is told the new epoch');
    assert.notEqual(resubscribed.position.epoch, first.epoch);
    // Centrifugo sends no publications of another epoch: 3 and 4 are lost for this client (the app
    // reloads its state on recovered false); what is published from now on arrives.
    await publish(node2, channel, { n: 5 });
    await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 5]));
    assert.equal(sub.publications.at(-1).offset, 3);
    // Recovery from here on works again in the new epoch.
    const away2 = new Promise((resolve) => c.once('connecting', resolve));
    link.cut();
    await away2;
    await publish(node2, channel, { n: 6 });
    link.restore();
    await eventually(() => events.filter((e) => e.type === 'subscribed').length === 2, { timeout: 5000 });
    assert.deepEqual(events.filter((e) => e.type === 'subscribed')[1].recovered, true);
    await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 5, 6]));
  });
}

test('a gap on a live subscription: unsubscribe push 2500, resubscribe with recovery (recovered false), order kept', async () => {
  const channel = 'hist:gap';
  const c = await connected(node1, 'gap-user');
  const sub = await subscribed(c, channel);
  const events = track(sub);
  const first = await publish(node2, channel, { n: 1 });
  await publish(node2, channel, { n: 2 });
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2]));

  // The channel's offset is bumped in Redis (the meta hash of the history script), so the next
  // publication skips offset 3: node 1 sees 2 then 4 in the same epoch.
  const meta = `{${PREFIX}:${APP}}:hm:${channel}`;
  assert.equal(await redisCli('HGET', meta, 'epoch'), first.epoch, `the meta hash is ${meta}`);
  assert.equal(await redisCli('HINCRBY', meta, 'offset', '1'), '3');
  const skipped = await publish(node2, channel, { n: 3 });
  assert.deepEqual([skipped.offset, skipped.epoch], [4, first.epoch]);

  await eventually(() => events.some((e) => e.type === 'subscribed'), { message: () => `resubscribed: ${JSON.stringify(events)}` });
  assert.deepEqual(events[0], { type: 'subscribing', code: 2500, reason: 'insufficient state' });
  const resubscribed = events[1];
  assert.equal(resubscribed.type, 'subscribed');
  assert.equal(resubscribed.wasRecovering, true);
  // Centrifugo's rule: recovered only if the publications since the client's offset are all there
  // (the first is offset + 1, the last is the top). Offset 3 never existed: recovered false, and
  // what is there (offset 4) is still delivered.
  assert.equal(resubscribed.recovered, false);
  assert.deepEqual(resubscribed.position, { offset: 4, epoch: first.epoch });
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 3]));

  // Later publications arrive, in order, with no further resubscribe.
  for (let n = 4; n <= 6; n++) await publish(node2, channel, { n });
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 3, 4, 5, 6]));
  assert.deepEqual(
    sub.publications.map((p) => p.offset),
    [1, 2, 4, 5, 6, 7],
  );
  assert.equal(events.length, 2, `no further resubscribe: ${JSON.stringify(events)}`);
});

// Centrifugo (centrifugal/centrifuge client.go, writePublicationUpdatePosition) compares each
// publication of a recoverable/positioned subscription with the client's position: another epoch, or
// an offset other than the next one, is insufficient state (unsubscribe push 2500, the client
// resubscribes and learns recovered false and the new epoch). Herald's `deliver_in_order` (herald-core
// hub/history.rs) does the same for an offset skipped in the same epoch and for a new epoch, so a
// stream that starts over while a client is subscribed (Redis restarted or flushed) is noticed.
test(
  'a new epoch on a live subscription (Redis flushed while subscribed): unsubscribe push 2500, resubscribe learns the new epoch',
  async () => {
    const channel = 'hist:live-epoch';
    const c = await connected(node1, 'epoch-user');
    const sub = await subscribed(c, channel);
    const events = track(sub);
    const first = await publish(node2, channel, { n: 1 });
    await eventually(() => sub.publications.length === 1);
    assert.equal(await redisCli('FLUSHALL'), 'OK');
    await eventually(async () => (await health(node1)).status === 'ok' && (await health(node2)).status === 'ok', { timeout: 10000, interval: 100 });
    const second = await publish(node2, channel, { n: 2 });
    assert.notEqual(second.epoch, first.epoch);
    await eventually(() => events.some((e) => e.type === 'subscribed'), { message: () => `resubscribed: ${JSON.stringify(events)}` });
    assert.deepEqual(events[0], { type: 'subscribing', code: 2500, reason: 'insufficient state' });
    assert.equal(events[1].wasRecovering, true);
    assert.equal(events[1].recovered, false);
    assert.equal(events[1].position.epoch, second.epoch);
  },
);
