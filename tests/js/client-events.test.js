// Client events (whispers) between pusher-js clients: delivery, no echo, rules and rate limits.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, collect, connect, disconnectAll, next, roundTrip, sdk, startBackend, startHerald, subscribe } from './harness.js';

let herald, backend, tinyBackend;
before(async () => {
  herald = await startHerald();
  backend = await startBackend(herald);
  tinyBackend = await startBackend(herald, APPS.tiny);
});
after(async () => {
  disconnectAll();
  await Promise.all([backend.close(), tinyBackend.close()]);
  await herald.stop();
});

test('whisper between two clients on a private channel, not echoed to the sender', async () => {
  const a = await connect(herald, backend, 'a');
  const b = await connect(herald, backend, 'b');
  const ca = await subscribe(a, 'private-chat-1');
  const cb = await subscribe(b, 'private-chat-1');
  const echoed = collect(ca, 'client-typing');
  const got = next(cb, 'client-typing');
  assert.equal(ca.trigger('client-typing', { typing: true }), true);
  assert.deepEqual(await got, { typing: true });
  // b's reply is relayed to a behind an echo of a's own event, had there been one.
  const reply = next(ca, 'client-reply');
  cb.trigger('client-reply', {});
  await reply;
  assert.equal(echoed.length, 0);
});

test('client events on presence channels carry the sender user_id', async () => {
  const a = await connect(herald, backend, 'xr-alice');
  const b = await connect(herald, backend, 'xr-bob');
  const ra = await subscribe(a, 'presence-xr-room');
  const rb = await subscribe(b, 'presence-xr-room');
  const got = new Promise((resolve) => rb.bind('client-pose', (data, meta) => resolve({ data, meta })));
  ra.trigger('client-pose', { x: 1, y: 2, z: 3 });
  const { data, meta } = await got;
  assert.deepEqual(data, { x: 1, y: 2, z: 3 });
  assert.equal(meta.user_id, 'xr-alice');
});

test('rate limit: beyond 10/s the sender gets pusher:error 4301 and the excess is dropped', async () => {
  const a = await connect(herald, backend, 'flooder');
  const b = await connect(herald, backend, 'listener');
  const ca = await subscribe(a, 'private-flood');
  const cb = await subscribe(b, 'private-flood');
  const received = collect(cb, 'client-pos');
  const errors = collect(a.connection, 'error');
  for (let i = 0; i < 25; i++) ca.trigger('client-pos', { i });
  // Once a's ping is answered, the server has handled all 25 (relayed or dropped) and sent a its
  // errors; a publish made after that reaches b behind every relayed event.
  await roundTrip(a);
  const marker = next(cb, 'marker');
  await sdk(herald).trigger('private-flood', 'marker', {});
  await marker;
  assert.equal(received.length, 10);
  assert.deepEqual(received.map((r) => r.i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.ok(errors.length >= 1 && errors.every((e) => e.data.code === 4301), JSON.stringify(errors));
  assert.equal(a.connection.state, 'connected', 'a rate-limited client stays connected');
});

test('client events are refused on public channels and unsubscribed channels', async () => {
  const a = await connect(herald, backend, 'a');
  await subscribe(a, 'public-room');
  let err = next(a.connection, 'error');
  a.send_event('client-x', {}, 'public-room');
  assert.match((await err).data.message, /private and presence/);
  err = next(a.connection, 'error');
  a.send_event('client-x', {}, 'private-not-mine');
  assert.match((await err).data.message, /Subscribe/);
});

test('client events are refused when the app disables them', async () => {
  const a = await connect(herald, tinyBackend, 'a', { app: APPS.tiny });
  const ch = await subscribe(a, 'private-disabled');
  const err = next(a.connection, 'error');
  ch.trigger('client-x', {});
  assert.match((await err).data.message, /disabled/);
});

test('oversized client event is refused; connection stays usable', async () => {
  const a = await connect(herald, backend, 'a');
  const b = await connect(herald, backend, 'b');
  const ca = await subscribe(a, 'private-big-events');
  const cb = await subscribe(b, 'private-big-events');
  const seen = collect(cb, 'client-big');
  const err = next(a.connection, 'error');
  ca.trigger('client-big', { blob: 'z'.repeat(12 * 1024) });
  assert.match((await err).data.message, /limit/);
  const ok = next(cb, 'client-small');
  ca.trigger('client-small', { ok: true });
  assert.deepEqual(await ok, { ok: true });
  assert.equal(seen.length, 0);
});
