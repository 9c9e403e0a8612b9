// Redis stopped and restarted (empty) under live traffic: local delivery continues, /up reports the
// outage, nodes reconnect on their own, re-subscribe, and re-assert presence; no Herald restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

let redis, node1, node2, backend1, backend2, api1, api2;
before(async () => {
  redis = await startRedis();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'outage', '--redis-lease', '1'];
  [node1, node2] = await Promise.all([startHerald(args), startHerald(args)]);
  [backend1, backend2] = await Promise.all([startBackend(node1), startBackend(node2)]);
  [api1, api2] = [sdk(node1), sdk(node2)];
});
after(async () => {
  disconnectAll();
  await Promise.all([backend1.close(), backend2.close()]);
  await Promise.all([node1.stop(), node2.stop()]);
  await redis.stop();
});

async function health(node) {
  return (await fetch(`http://127.0.0.1:${node.port}/up`)).json();
}

/** Polls `check` for up to 10 s; a request failing meanwhile (503 while a node reconnects) is retried. */
const until = (check, message) => eventually(check, { timeout: 10000, interval: 100, message });

test('a Redis restart is survived: local delivery, health, reconnect, re-subscribe, presence re-asserted', async () => {
  const alice = await connect(node1, backend1, 'alice');
  const bob = await connect(node2, backend2, 'bob');
  const [liveA, liveB] = await Promise.all([subscribe(alice, 'live'), subscribe(bob, 'live')]);
  await Promise.all([subscribe(alice, 'presence-outage'), subscribe(bob, 'presence-outage')]);
  const users = async (api) => (await (await api.get({ path: '/channels/presence-outage/users' })).json()).users.map((u) => u.id).sort();
  assert.deepEqual(await users(api1), ['alice', 'bob']);

  const port = redis.port;
  await redis.stop();
  await until(async () => (await health(node1)).backend === 'down', 'node 1 reports Redis down');
  assert.equal((await health(node1)).status, 'degraded');

  // During the outage new clients are still served without stalling on Redis.
  const started = Date.now();
  const late = await connect(node1, backend1, 'late');
  await subscribe(late, 'during-outage');
  assert.ok(Date.now() - started < 1500, `subscribing during the outage took ${Date.now() - started} ms`);

  // During the outage a node still delivers to its own clients.
  const local = next(liveA, 'tick');
  await api1.trigger('live', 'tick', { during: true });
  assert.deepEqual(await local, { during: true });

  // Redis comes back empty on the same port.
  redis = await startRedis(port);
  await until(async () => (await health(node1)).status === 'ok' && (await health(node2)).status === 'ok', 'both nodes healthy again');
  // Presence is re-asserted by both nodes (their leases were lost with Redis's data).
  await until(async () => assert.deepEqual(await users(api2), ['alice', 'bob']), 'presence re-asserted');
  // Reads are retried over a connection that broke with the restart: no 503 once nodes are back.
  assert.deepEqual(await users(api1), ['alice', 'bob']);
  // Cross-node delivery works again (the subscriptions were re-established).
  let got;
  await until(async () => {
    const arrived = next(liveB, 'tick', 300).catch(() => undefined);
    await api1.trigger('live', 'tick', { after: true });
    got = await arrived;
    return got !== undefined;
  }, 'cross-node delivery resumed');
  assert.deepEqual(got, { after: true });
});
