// Laravel Echo (unmodified, with pusher-js underneath) against Herald, configured the way a Laravel
// app configures it for Pusher or Reverb: authEndpoint + auth headers, namespaced event names.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import { ENCRYPTION_MASTER_KEY, PusherJs, sdk, startBackend, startHerald } from './harness.js';

let herald, backend, api;
const echos = [];
before(async () => {
  herald = await startHerald();
  backend = await startBackend(herald);
  api = sdk(herald);
});
after(async () => {
  for (const e of echos) e.disconnect();
  await backend.close();
  await herald.stop();
});

/** An Echo instance for `user`, connected. */
async function echo(user, broadcaster = 'pusher') {
  const e = new Echo({
    broadcaster,
    key: 'app-key',
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    authEndpoint: `${backend.url}/pusher/auth`,
    auth: { headers: { 'x-user-id': user } },
    userAuthentication: { endpoint: `${backend.url}/pusher/user-auth`, headers: { 'x-user-id': user } },
    Pusher: PusherJs,
    withoutInterceptors: true,
  });
  echos.push(e);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('echo connect timed out')), 5000);
    e.connector.pusher.connection.bind('connected', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  assert.equal(e.connectionStatus(), 'connected');
  return e;
}

/** Resolves when `subscribe(cb)` calls back; the channel object from Echo is chainable. */
function once(register, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out')), ms);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

test('public channel: listen() receives a namespaced Laravel event', async () => {
  const e = await echo('viewer');
  const channel = e.channel('orders');
  await once((cb) => channel.subscribed(cb));
  const got = once((cb) => channel.listen('OrderShipped', cb));
  // Laravel broadcasts with the event class name as the Pusher event name.
  await api.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 42 } });
  assert.deepEqual(await got, { order: { id: 42 } });
  // A leading dot opts out of the namespace.
  const raw = once((cb) => channel.listen('.status', cb));
  await api.trigger('orders', 'status', { ok: true });
  assert.deepEqual(await raw, { ok: true });
});

test('private channel with auth, and error() for a refused one', async () => {
  const e = await echo('alice');
  const mine = e.private('App.Models.User.alice');
  await once((cb) => mine.subscribed(cb));
  const note = once((cb) => mine.notification(cb));
  await api.trigger('private-App.Models.User.alice', 'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated', {
    id: 'n1',
    type: 'InvoicePaid',
  });
  assert.equal((await note).type, 'InvoicePaid');

  const refused = await once((cb) => e.private('forbidden-room').error(cb));
  assert.equal(refused.status, 403);
  const forged = await once((cb) => e.private('forged-room').error(cb));
  assert.equal(forged.type, 'AuthError');
});

test('toOthers: a publish carrying the sender socket id skips the sender', async () => {
  const sender = await echo('u1');
  const other = await echo('u2');
  const chs = [sender, other].map((e) => e.private('project.7'));
  await Promise.all(chs.map((c) => once((cb) => c.subscribed(cb))));
  const seenBySender = [];
  chs[0].listen('TaskMoved', (d) => seenBySender.push(d));
  const got = once((cb) => chs[1].listen('TaskMoved', cb));
  // What Laravel's broadcast(...)->toOthers() sends: the X-Socket-ID the Echo interceptor added.
  await api.trigger('private-project.7', 'App\\Events\\TaskMoved', { task: 3 }, { socket_id: sender.socketId() });
  assert.deepEqual(await got, { task: 3 });
  // Published to everyone after: anything queued to the sender before arrives first.
  const marker = once((cb) => chs[0].listen('.marker', cb));
  await api.trigger('private-project.7', 'marker', {});
  await marker;
  assert.deepEqual(seenBySender, []);
});

test('presence: here, joining, leaving, and whisper / listenForWhisper', async () => {
  const alice = await echo('alice');
  const here = await once((cb) => alice.join('chat.1').here(cb));
  assert.deepEqual(here, [{ name: 'alice' }]);

  const joined = once((cb) => alice.join('chat.1').joining(cb));
  const bob = await echo('bob');
  const bobHere = await once((cb) => bob.join('chat.1').here(cb));
  assert.deepEqual(bobHere.map((m) => m.name).sort(), ['alice', 'bob']);
  assert.deepEqual(await joined, { name: 'bob' });

  // whisper: a client event, relayed to others on the channel but never echoed to the sender.
  const typing = once((cb) => bob.join('chat.1').listenForWhisper('typing', cb));
  const echoed = [];
  alice.join('chat.1').listenForWhisper('typing', (d) => echoed.push(d));
  alice.join('chat.1').whisper('typing', { name: 'alice' });
  assert.deepEqual(await typing, { name: 'alice' });

  const left = once((cb) => alice.join('chat.1').leaving(cb));
  bob.leave('chat.1');
  assert.deepEqual(await left, { name: 'bob' });
  assert.deepEqual(echoed, []);
});

test('Reverb-style configuration (broadcaster: reverb) works unchanged', async () => {
  const e = await echo('reverb-user', 'reverb');
  const channel = e.channel('deploys');
  await once((cb) => channel.subscribed(cb));
  const got = once((cb) => channel.listen('.finished', cb));
  await api.trigger('deploys', 'finished', { build: 9 });
  assert.deepEqual(await got, { build: 9 });
});

test('encryptedPrivate: the SDK encrypts, Echo decrypts, Herald relays ciphertext', async () => {
  const e = await echo('carol');
  const secret = e.encryptedPrivate('vault');
  await once((cb) => secret.subscribed(cb));
  const got = once((cb) => secret.listen('.opened', cb));
  const encrypting = sdk(herald, undefined, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY });
  await encrypting.trigger('private-encrypted-vault', 'opened', { pin: '0000' });
  assert.deepEqual(await got, { pin: '0000' });
});
