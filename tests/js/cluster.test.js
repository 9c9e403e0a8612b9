// Two Herald nodes sharing one Redis (--engine redis): pusher-js clients on both, the HTTP API on
// either. What must hold: a publish reaches every subscriber on every node exactly once, socket_id
// exclusion works across nodes, client events and per-user delivery cross nodes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, collect, connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

let redis, node1, node2, backend1, backend2, api1, api2, stream1, stream2;
before(async () => {
  redis = await startRedis();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'jstest'];
  [node1, node2] = await Promise.all([startHerald(args), startHerald(args)]);
  [backend1, backend2] = await Promise.all([startBackend(node1), startBackend(node2)]);
  [api1, api2] = [sdk(node1), sdk(node2)];
  [stream1, stream2] = await Promise.all([startBackend(node1, APPS.stream), startBackend(node2, APPS.stream)]);
});
after(async () => {
  disconnectAll();
  await Promise.all([backend1.close(), backend2.close(), stream1.close(), stream2.close()]);
  await Promise.all([node1.stop(), node2.stop()]);
  await redis.stop();
});

let markers = 0;
/**
 * A barrier before a negative assertion: publishes one marker event on `channel` through each node
 * and waits until every one of `listeners` (channel objects) got both. Anything a node queued to a
 * listener before it (directly, or through Redis, which keeps the order of publishes) has arrived by then.
 */
async function barrier(channel, listeners) {
  const name = `marker-${++markers}`;
  const arrived = listeners.map((l) => collect(l, name));
  await api1.trigger(channel, name, { via: 1 });
  await api2.trigger(channel, name, { via: 2 });
  await eventually(() => arrived.every((a) => a.length === 2), { message: `${name} reached every listener through both nodes` });
}

test('health reports the redis engine', async () => {
  const up = await (await fetch(`http://127.0.0.1:${node1.port}/up`)).json();
  assert.equal(up.engine, 'redis');
  assert.equal(up.backend, 'up');
  assert.equal(up.status, 'ok');
});

test('a publish on one node reaches subscribers on both, once each', async () => {
  const a = await connect(node1, backend1, 'a');
  const b = await connect(node2, backend2, 'b');
  const [chA, chB] = await Promise.all([subscribe(a, 'scores'), subscribe(b, 'scores')]);
  const seenA = collect(chA, 'goal');
  const seenB = collect(chB, 'goal');
  // No warm-up: once subscription_succeeded arrived, the node already receives the channel from the
  // others. Published through node 2: a (node 1) gets it via Redis, b (node 2) directly; through node 1, the
  // other way round.
  await api2.trigger('scores', 'goal', { n: 1 });
  await api1.trigger('scores', 'goal', { n: 2 });
  // Exactly once each; the two publishes took different paths, so their order may differ.
  const byN = (a, b) => a.n - b.n;
  await eventually(() => seenA.length === 2 && seenB.length === 2, { message: 'both goals reached both clients' });
  await barrier('scores', [chA, chB]);
  assert.deepEqual(seenA.sort(byN), [{ n: 1 }, { n: 2 }]);
  assert.deepEqual(seenB.sort(byN), [{ n: 1 }, { n: 2 }]);
});

test('cross-device sync across nodes: socket_id exclusion names a connection on another node', async () => {
  const A = await connect(node1, backend1, 'u-x'); // the device that made the change
  const B = await connect(node2, backend2, 'u-x');
  const C = await connect(node1, backend1, 'u-x');
  const chans = await Promise.all([A, B, C].map((d) => subscribe(d, 'private-user.u-x')));
  const gotA = collect(chans[0], 'progress');
  const toB = next(chans[1], 'progress');
  const toC = next(chans[2], 'progress');
  await api2.trigger('private-user.u-x', 'progress', { position: 42 }, { socket_id: A.connection.socket_id });
  assert.deepEqual(await toB, { position: 42 });
  assert.deepEqual(await toC, { position: 42 });
  await barrier('private-user.u-x', chans);
  assert.equal(gotA.length, 0);
});

test('client events (whisper) cross nodes and are not echoed', async () => {
  const alice = await connect(node1, backend1, 'alice');
  const bob = await connect(node2, backend2, 'bob');
  const [ra, rb] = await Promise.all([subscribe(alice, 'private-xr-room'), subscribe(bob, 'private-xr-room')]);
  const echoed = collect(ra, 'client-pose');
  const pose = next(rb, 'client-pose');
  ra.trigger('client-pose', { x: 1 });
  const got = await pose;
  assert.deepEqual(got, { x: 1 });
  // Bob's reply crosses back through Redis behind an echo of Alice's event, had node 1 sent one.
  const reply = next(ra, 'client-reply');
  rb.trigger('client-reply', {});
  await reply;
  assert.equal(echoed.length, 0);
});

test('per-user delivery and termination cross nodes', async () => {
  async function device(node, backend) {
    const p = await connect(node, backend, 'u-roam');
    p.signin();
    await p.user.signinDonePromise;
    await eventually(() => p.user.serverToUserChannel?.subscribed === true, { message: 'user channel subscribed' });
    return p;
  }
  const phone = await device(node1, backend1);
  const tv = await device(node2, backend2);
  // Sign-in is confirmed only once the node receives the user's messages from the cluster, so the first
  // sendToUser through the other node reaches both devices.
  const onPhone = next(phone.user, 'hello');
  const onTv = next(tv.user, 'hello');
  await api2.sendToUser('u-roam', 'hello', { hi: 1 });
  assert.deepEqual(await onPhone, { hi: 1 });
  assert.deepEqual(await onTv, { hi: 1 });

  const closed = next(phone.connection, 'error', 4000);
  await api2.terminateUserConnections('u-roam');
  const e = await closed;
  assert.equal((e.error ?? e).data?.code ?? e.data?.code, 4009);
});

test('presence is one list across nodes: tabs on two nodes are one member, added and removed once', async () => {
  const bob = await connect(node2, backend2, 'bob');
  const room = await subscribe(bob, 'presence-cluster');
  const added = collect(room, 'pusher:member_added');
  const removed = collect(room, 'pusher:member_removed');

  const tab1 = await connect(node1, backend1, 'alice');
  const t1 = await subscribe(tab1, 'presence-cluster');
  // Alice (node 1) sees Bob (node 2) in her member list.
  assert.equal(t1.members.count, 2);
  assert.ok(t1.members.get('bob'));
  const tab2 = await connect(node2, backend2, 'alice');
  const t2 = await subscribe(tab2, 'presence-cluster');
  assert.equal(t2.members.count, 2);
  await eventually(() => added.length >= 1, { message: 'member_added for alice' });
  // The second tab must not announce Alice again.
  await barrier('presence-cluster', [room]);
  assert.deepEqual(added.map((m) => m.id), ['alice']);
  assert.equal(room.members.count, 2);

  // The HTTP API answers the same from either node.
  for (const api of [api1, api2]) {
    const users = await (await api.get({ path: '/channels/presence-cluster/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
    const info = await (await api.get({ path: '/channels/presence-cluster', params: { info: 'user_count,subscription_count' } })).json();
    assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });
    const list = await (await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-cluster', info: 'user_count' } })).json();
    assert.deepEqual(list.channels['presence-cluster'], { user_count: 2 });
  }

  // Closing one tab keeps Alice; closing the other removes her, once.
  tab1.disconnect();
  // The cluster has counted tab 1's leave once the subscription count drops; a member_removed it
  // (wrongly) announced would have been published before the barrier's markers.
  const subscriptions = async () =>
    (await (await api2.get({ path: '/channels/presence-cluster', params: { info: 'subscription_count' } })).json()).subscription_count;
  await eventually(async () => (await subscriptions()) === 2, { message: "tab 1's leave counted" });
  await barrier('presence-cluster', [room]);
  assert.equal(removed.length, 0);
  const gone = next(room, 'pusher:member_removed');
  tab2.disconnect();
  assert.equal((await gone).id, 'alice');
  await barrier('presence-cluster', [room]);
  assert.equal(removed.length, 1);
  assert.equal(room.members.count, 1);
});

test('live-stream viewer count (subscription_count) is cluster-wide', async () => {
  const opts = { app: APPS.stream };
  const v1 = await connect(node1, stream1, 'viewer-1', opts);
  const c1 = await subscribe(v1, 'stream-42');
  const counts = [];
  c1.bind('pusher:subscription_count', (d) => counts.push(d.subscription_count));
  const v2 = await connect(node2, stream2, 'viewer-2', opts);
  const c2 = await subscribe(v2, 'stream-42');
  const seen2 = next(c2, 'pusher:subscription_count');
  const v3 = await connect(node2, stream2, 'viewer-3', opts);
  await subscribe(v3, 'stream-42');
  assert.equal((await seen2).subscription_count, 3);
  // Viewer 1 (node 1) saw the count of the whole cluster grow.
  await eventually(() => counts.at(-1) === 3, { message: 'viewer 1 saw the count reach 3' });
  const down = next(c1, 'pusher:subscription_count');
  v3.disconnect();
  assert.equal((await down).subscription_count, 2);
});

test('kill -9 of a node: its presence members are reaped and survivors see member_removed', async () => {
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'jstest', '--redis-lease', '1'];
  const doomed = await startHerald(args);
  const doomedBackend = await startBackend(doomed);
  try {
    const bob = await connect(node2, backend2, 'bob');
    const room = await subscribe(bob, 'presence-crash');
    const joined = next(room, 'pusher:member_added');
    const ghost = await connect(doomed, doomedBackend, 'ghost');
    await subscribe(ghost, 'presence-crash');
    assert.equal((await joined).id, 'ghost');
    assert.equal(room.members.count, 2);

    const removed = next(room, 'pusher:member_removed', 15000);
    const killedAt = Date.now();
    doomed.proc.kill('SIGKILL');
    assert.equal((await removed).id, 'ghost');
    const took = Date.now() - killedAt;
    assert.ok(took < 15000, `ghost removed after ${took} ms`);
    assert.equal(room.members.count, 1);
    const users = await (await api1.get({ path: '/channels/presence-crash/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id), ['bob']);
  } finally {
    await doomedBackend.close();
    await doomed.exited;
  }
});
