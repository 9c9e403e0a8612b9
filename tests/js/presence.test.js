// Presence with pusher-js: members per user across tabs, join/leave events, limits, live-stream counts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, collect, connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, subscribe } from './harness.js';

let herald, backend, tinyBackend, streamBackend;
before(async () => {
  herald = await startHerald();
  backend = await startBackend(herald);
  tinyBackend = await startBackend(herald, APPS.tiny);
  streamBackend = await startBackend(herald, APPS.stream);
});
after(async () => {
  disconnectAll();
  await Promise.all([backend.close(), tinyBackend.close(), streamBackend.close()]);
  await herald.stop();
});

test('members list, member_added and member_removed', async () => {
  const alice = await connect(herald, backend, 'alice');
  const room = await subscribe(alice, 'presence-lobby');
  assert.equal(room.members.count, 1);
  assert.equal(room.members.me.id, 'alice');
  const added = next(room, 'pusher:member_added');
  const bob = await connect(herald, backend, 'bob');
  const bobRoom = await subscribe(bob, 'presence-lobby');
  const member = await added;
  assert.equal(member.id, 'bob');
  assert.deepEqual(member.info, { name: 'bob' });
  assert.equal(bobRoom.members.count, 2);
  assert.deepEqual(bobRoom.members.get('alice').info, { name: 'alice' });
  const removed = next(room, 'pusher:member_removed');
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
  assert.equal(room.members.count, 1);
});

test('two tabs of one user are one member; removed only when the last tab leaves', async () => {
  const watcher = await connect(herald, backend, 'watcher');
  const room = await subscribe(watcher, 'presence-tabs');
  const added = collect(room, 'pusher:member_added');
  const removed = collect(room, 'pusher:member_removed');
  const tab1 = await connect(herald, backend, 'carol');
  await subscribe(tab1, 'presence-tabs');
  const tab2 = await connect(herald, backend, 'carol');
  const tab2Room = await subscribe(tab2, 'presence-tabs');
  assert.equal(tab2Room.members.count, 2, 'watcher and carol');
  const api = sdk(herald);
  // A publish reaches the watcher behind whatever the server queued to it before.
  const barrier = async () => {
    const marker = next(room, 'marker');
    await api.trigger('presence-tabs', 'marker', {});
    await marker;
  };
  await eventually(() => added.length >= 1, { message: 'carol added' });
  await barrier();
  assert.equal(added.length, 1, 'carol added once');
  tab1.disconnect();
  // The server has handled tab 1's leave once the channel counts two subscriptions again.
  const subscriptions = async () =>
    (await (await api.get({ path: '/channels/presence-tabs', params: { info: 'subscription_count' } })).json()).subscription_count;
  await eventually(async () => (await subscriptions()) === 2, { message: "tab 1's leave handled" });
  await barrier();
  assert.equal(removed.length, 0, 'carol still has a tab');
  tab2.disconnect();
  await eventually(() => assert.deepEqual(removed.map((m) => m.id), ['carol']));
  await eventually(async () => assert.deepEqual(await (await api.get({ path: '/channels/presence-tabs/users' })).json(), { users: [{ id: 'watcher' }] }));
});

test('member limit per channel and member info size are enforced', async () => {
  const a = await connect(herald, tinyBackend, 'a', { app: APPS.tiny });
  const b = await connect(herald, tinyBackend, 'b', { app: APPS.tiny });
  const c = await connect(herald, tinyBackend, 'c', { app: APPS.tiny, userName: 'n'.repeat(100) });
  await subscribe(a, 'presence-full');
  await subscribe(b, 'presence-full');
  await assert.rejects(subscribe(c, 'presence-full'), (e) => e.detail.type === 'LimitReached');
  // c's user_info is over 64 bytes (the tiny app's limit)
  await assert.rejects(subscribe(c, 'presence-big'), (e) => e.detail.status === 413);
});

test('live-stream room: viewer count via subscription_count and presence count as viewers come and go', async () => {
  const api = sdk(herald, APPS.stream);
  const host = await connect(herald, streamBackend, 'host', { app: APPS.stream });
  const stream = host.subscribe('stream-42');
  const counts = collect(stream, 'pusher:subscription_count');
  await next(stream, 'pusher:subscription_succeeded');
  const viewers = [];
  for (let i = 0; i < 3; i++) {
    const v = await connect(herald, streamBackend, `viewer${i}`, { app: APPS.stream });
    await subscribe(v, 'stream-42');
    viewers.push(v);
  }
  await eventually(() => assert.deepEqual(counts.map((c) => c.subscription_count), [1, 2, 3, 4]));
  assert.equal(stream.subscriptionCount, 4, 'pusher-js tracks the count');
  viewers.pop().disconnect();
  await eventually(() => stream.subscriptionCount === 3, { message: 'pusher-js count back to 3' });
  let res = await api.get({ path: '/channels/stream-42', params: { info: 'subscription_count' } });
  assert.deepEqual(await res.json(), { occupied: true, subscription_count: 3 });

  // The presence flavour of the same room: members.count follows viewers.
  const room = await subscribe(host, 'presence-stream-42');
  for (const v of viewers) await subscribe(v, 'presence-stream-42');
  // The host's member_added events trail the viewers' own confirmations.
  await eventually(() => room.members.count === 3, { message: 'the host sees 3 members' });
  viewers.pop().disconnect();
  await next(room, 'pusher:member_removed');
  assert.equal(room.members.count, 2);
  res = await api.get({ path: '/channels/presence-stream-42', params: { info: 'user_count' } });
  assert.deepEqual(await res.json(), { occupied: true, user_count: 2 });
});

test('subscription_count is not sent when the app does not enable it', async () => {
  const a = await connect(herald);
  const ch = await subscribe(a, 'quiet-count');
  const counts = collect(ch, 'pusher:subscription_count');
  const b = await connect(herald);
  await subscribe(b, 'quiet-count');
  // A publish reaches `a` behind any count the server would have queued to it for b's subscribe.
  const marker = next(ch, 'marker');
  await sdk(herald).trigger('quiet-count', 'marker', {});
  await marker;
  assert.equal(counts.length, 0);
});
