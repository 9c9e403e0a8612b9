// User sign-in with pusher-js: per-user delivery to every device, cross-device sync, termination.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { collect, connect, disconnectAll, eventually, next, roundTrip, sdk, startBackend, startHerald, subscribe } from './harness.js';

let herald, backend, api;
before(async () => {
  herald = await startHerald();
  backend = await startBackend(herald);
  api = sdk(herald);
});
after(async () => {
  disconnectAll();
  await backend.close();
  await herald.stop();
});

async function device(user) {
  const p = await connect(herald, backend, user);
  p.signin();
  await p.user.signinDonePromise;
  // pusher-js subscribes #server-to-user-{id} after sign-in; wait until it is confirmed.
  await eventually(() => p.user.serverToUserChannel?.subscribed === true, { message: 'user channel subscribed' });
  return p;
}

test('sendToUser reaches every signed-in device of that user only', async () => {
  const phone = await device('u-media');
  const tv = await device('u-media');
  const stranger = await device('someone-else');
  const strangerGot = collect(stranger.user, 'watchlist-updated');
  const a = next(phone.user, 'watchlist-updated');
  const b = next(tv.user, 'watchlist-updated');
  const res = await api.sendToUser('u-media', 'watchlist-updated', { added: 'tt0133093' });
  assert.equal(res.status, 200);
  assert.deepEqual(await a, { added: 'tt0133093' });
  assert.deepEqual(await b, { added: 'tt0133093' });
  // Sent to the stranger after: anything queued to it before arrives first.
  const marker = next(stranger.user, 'marker');
  await api.sendToUser('someone-else', 'marker', {});
  await marker;
  assert.equal(strangerGot.length, 0);
});

test('cross-device sync: a publish with device A socket_id reaches B and C, not A', async () => {
  const devices = await Promise.all(['A', 'B', 'C'].map(() => device('u-sync')));
  const [A, B, C] = devices;
  // Per-user channel delivery with sender exclusion.
  const gotA = collect(A.user, 'progress');
  const toB = next(B.user, 'progress');
  const toC = next(C.user, 'progress');
  // The SDK's trigger() refuses '#' in channel names (sendToUser has no socket_id), so post the event
  // as the HTTP API documents it.
  const body = { name: 'progress', channel: '#server-to-user-u-sync', data: JSON.stringify({ position: 1234 }), socket_id: A.connection.socket_id };
  assert.equal((await api.post({ path: '/events', body })).status, 200);
  assert.deepEqual(await toB, { position: 1234 });
  assert.deepEqual(await toC, { position: 1234 });
  // The same pattern on a private per-user channel (what Laravel's toOthers() does).
  const channels = await Promise.all(devices.map((d) => subscribe(d, 'private-user.u-sync')));
  const onA = collect(channels[0], 'handoff');
  const onB = next(channels[1], 'handoff');
  const onC = next(channels[2], 'handoff');
  await api.trigger('private-user.u-sync', 'handoff', { to: 'tv' }, { socket_id: A.connection.socket_id });
  assert.deepEqual(await onB, { to: 'tv' });
  assert.deepEqual(await onC, { to: 'tv' });
  // Published to A after both: anything queued to A before arrives first.
  const markers = [next(A.user, 'marker'), next(channels[0], 'marker')];
  await api.sendToUser('u-sync', 'marker', {});
  await api.trigger('private-user.u-sync', 'marker', {});
  await Promise.all(markers);
  assert.equal(gotA.length, 0);
  assert.equal(onA.length, 0);
});

test('terminateUserConnections closes every device of the user and no one else', async () => {
  const d1 = await device('u-banned');
  const d2 = await device('u-banned');
  const other = await device('u-fine');
  const closed = [d1, d2].map((d) => next(d.connection, 'error'));
  const res = await api.terminateUserConnections('u-banned');
  assert.equal(res.status, 200);
  for (const e of await Promise.all(closed)) {
    assert.equal((e.error ?? e).data?.code ?? e.data?.code, 4009);
  }
  await eventually(() => d1.connection.state !== 'connected', { message: 'd1 disconnected' });
  // The other user's connection still answers.
  await roundTrip(other);
  assert.equal(other.connection.state, 'connected');
});

test('another user cannot subscribe to someone else\'s #server-to-user channel', async () => {
  const p = await connect(herald, backend, 'mallory');
  p.signin();
  await p.user.signinDonePromise;
  // pusher-js will not subscribe to '#' channels by hand, so send what a modified client would.
  const refused = new Promise((resolve) => p.connection.bind('message', (m) => m.event === 'pusher:subscription_error' && resolve(m)));
  p.send_event('pusher:subscribe', { channel: '#server-to-user-victim' });
  const m = await refused;
  assert.equal(m.channel, '#server-to-user-victim');
  assert.equal(m.data.status, 403);
});
