// Public, private, cache and encrypted channels with pusher-js, published by the `pusher` SDK.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import nacl from 'tweetnacl';
import { APPS, ENCRYPTION_MASTER_KEY, collect, connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, subscribe } from './harness.js';

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

test('public channel: SDK trigger reaches every subscriber; socket_id excludes the sender', async () => {
  const a = await connect(herald);
  const b = await connect(herald);
  const ca = await subscribe(a, 'scores');
  const cb = await subscribe(b, 'scores');
  const gotA = collect(ca, 'goal');
  // Listen first: the event may arrive before the HTTP response does.
  const gotB = next(cb, 'goal');
  const res = await api.trigger('scores', 'goal', { team: 'home' }, { socket_id: a.connection.socket_id });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  assert.deepEqual(await gotB, { team: 'home' });
  // A later publish without exclusion reaches `a` behind anything queued to it before.
  const marker = next(ca, 'marker');
  await api.trigger('scores', 'marker', {});
  await marker;
  assert.equal(gotA.length, 0, 'the excluded socket got nothing');
});

test('multi-channel trigger with info returns counts', async () => {
  const a = await connect(herald);
  await subscribe(a, 'multi-1');
  const res = await api.trigger(['multi-1', 'multi-2'], 'e', 'x', { info: 'subscription_count' });
  assert.deepEqual(await res.json(), { channels: { 'multi-1': { subscription_count: 1 }, 'multi-2': { subscription_count: 0 } } });
});

test('private channel: auth endpoint signs, Herald verifies', async () => {
  const a = await connect(herald, backend, 'u1');
  const ch = await subscribe(a, 'private-orders');
  const got = next(ch, 'shipped');
  await api.trigger('private-orders', 'shipped', { id: 7 });
  assert.deepEqual(await got, { id: 7 });
});

test('private channel: a forged signature gets pusher:subscription_error 401', async () => {
  const a = await connect(herald, backend, 'u1');
  await assert.rejects(subscribe(a, 'private-forged'), (e) => e.detail.status === 401 && e.detail.type === 'AuthError');
  // The connection is still usable.
  await subscribe(a, 'private-fine');
});

test('private channel: backend refusal surfaces as an AuthError', async () => {
  const a = await connect(herald, backend, 'u1');
  await assert.rejects(subscribe(a, 'private-forbidden'), (e) => e.detail.status === 403);
});

test('cache channel: cache_miss when empty, last event replayed on subscribe', async () => {
  const a = await connect(herald);
  const ch = a.subscribe('cache-weather');
  await next(ch, 'pusher:cache_miss');
  await api.trigger('cache-weather', 'update', { temp: 20 });
  await api.trigger('cache-weather', 'update', { temp: 21 });
  const b = await connect(herald);
  const late = b.subscribe('cache-weather');
  assert.deepEqual(await next(late, 'update'), { temp: 21 });
});

test('private-cache and presence-cache channels replay too', async () => {
  await api.trigger('private-cache-stock', 'level', { n: 3 });
  const a = await connect(herald, backend, 'u1');
  const ch = a.subscribe('private-cache-stock');
  assert.deepEqual(await next(ch, 'level'), { n: 3 });
  const pc = a.subscribe('presence-cache-room');
  await next(pc, 'pusher:cache_miss');
});

test('encrypted channel: server relays ciphertext; pusher-js decrypts with the shared secret', async () => {
  const encApi = sdk(herald, APPS.main, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY });
  const a = await connect(herald, backend, 'u1');
  const ch = await subscribe(a, 'private-encrypted-dm');
  const got = next(ch, 'message');
  await encApi.trigger('private-encrypted-dm', 'message', { text: 'top secret' });
  assert.deepEqual(await got, { text: 'top secret' });
});

test('encrypted channel: what goes over the wire is not plaintext', async () => {
  // A raw subscriber with the shared secret: decrypt by hand with tweetnacl to prove the envelope.
  const encApi = sdk(herald, APPS.main, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY });
  const a = await connect(herald, backend, 'u1');
  const ch = await subscribe(a, 'private-encrypted-raw');
  const frames = [];
  a.connection.bind('message', (m) => m.event === 'secret' && frames.push(m));
  const got = next(ch, 'secret');
  await encApi.trigger('private-encrypted-raw', 'secret', 'hush');
  assert.equal(await got, 'hush');
  const raw = frames[0].data;
  const envelope = typeof raw === 'string' ? JSON.parse(raw) : raw;
  assert.ok(envelope.nonce && envelope.ciphertext);
  assert.ok(!JSON.stringify(frames[0]).includes('hush'));
  const auth = encApi.authorizeChannel(a.connection.socket_id, 'private-encrypted-raw');
  const key = Buffer.from(auth.shared_secret, 'base64');
  const plain = nacl.secretbox.open(Buffer.from(envelope.ciphertext, 'base64'), Buffer.from(envelope.nonce, 'base64'), key);
  assert.equal(JSON.parse(Buffer.from(plain).toString()), 'hush');
});

test('encrypted channel: plaintext publish is rejected with 400', async () => {
  // The SDK refuses this itself, so send the request a careless backend would send.
  const body = { name: 'leak', channel: 'private-encrypted-dm', data: JSON.stringify({ text: 'plain' }) };
  await assert.rejects(api.post({ path: '/events', body }), (e) => e.status === 400);
});

test('encrypted channel: client events are refused', async () => {
  const a = await connect(herald, backend, 'u1');
  const ch = await subscribe(a, 'private-encrypted-room');
  const err = next(a.connection, 'error');
  // pusher-js refuses this client-side; a modified client could still send it, so send it raw.
  a.send_event('client-leak', { text: 'plain' }, ch.name);
  assert.equal((await err).data.code, 4300);
});

test('batch trigger delivers up to 10 events; 11 is refused', async () => {
  const a = await connect(herald);
  const ch = await subscribe(a, 'batch-ch');
  const seen = collect(ch, 'b');
  const batch = Array.from({ length: 10 }, (_, i) => ({ channel: 'batch-ch', name: 'b', data: String(i) }));
  const res = await api.triggerBatch(batch);
  assert.equal(res.status, 200);
  await eventually(() => assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
  await assert.rejects(api.triggerBatch([...batch, batch[0]]), (e) => e.status === 400);
});

test('HTTP API rejections: bad secret 401, unknown app 404, oversized 413, bad channel 400', async () => {
  const bad = sdk(herald, { ...APPS.main, secret: 'wrong' });
  await assert.rejects(bad.trigger('x', 'e', {}), (e) => e.status === 401);
  const ghost = sdk(herald, { id: 'ghost', key: 'app-key', secret: 'app-secret' });
  await assert.rejects(ghost.trigger('x', 'e', {}), (e) => e.status === 404);
  await assert.rejects(api.trigger('x', 'e', 'y'.repeat(11000)), (e) => e.status === 413);
  const res = await api.post({ path: '/events', body: { name: 'e', channel: 'bad name!', data: '{}' } }).catch((e) => e);
  assert.equal(res.status, 400);
});

test('channel queries through the SDK', async () => {
  const a = await connect(herald, backend, 'alice');
  await subscribe(a, 'query-public');
  await subscribe(a, 'presence-query');
  let res = await api.get({ path: '/channels', params: { filter_by_prefix: 'query-' } });
  assert.deepEqual(await res.json(), { channels: { 'query-public': {} } });
  res = await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-query', info: 'user_count' } });
  assert.deepEqual(await res.json(), { channels: { 'presence-query': { user_count: 1 } } });
  res = await api.get({ path: '/channels/query-public', params: { info: 'subscription_count' } });
  assert.deepEqual(await res.json(), { occupied: true, subscription_count: 1 });
  res = await api.get({ path: '/channels/presence-query/users' });
  assert.deepEqual(await res.json(), { users: [{ id: 'alice' }] });
  await assert.rejects(api.get({ path: '/channels/query-public/users' }), (e) => e.status === 400);
});

test('unsubscribe stops delivery', async () => {
  const a = await connect(herald);
  await subscribe(a, 'leaving');
  // pusher-js forgets an unsubscribed channel's bindings, so watch the connection's raw messages.
  const seen = [];
  a.connection.bind('message', (m) => m.channel === 'leaving' && m.event === 'e' && seen.push(m));
  const marker = await subscribe(a, 'leaving-marker');
  a.unsubscribe('leaving');
  // The server has handled the unsubscribe once the channel is vacated.
  await eventually(async () => assert.deepEqual(await (await api.get({ path: '/channels/leaving' })).json(), { occupied: false }));
  await api.trigger('leaving', 'e', {});
  // Published after `e`: had `e` been queued to `a`, it would have arrived before this.
  const done = next(marker, 'marker');
  await api.trigger('leaving-marker', 'marker', {});
  await done;
  assert.equal(seen.length, 0);
});
