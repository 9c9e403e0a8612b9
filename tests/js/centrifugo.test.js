// The Centrifugo front with the unmodified centrifuge-js client (JSON): JWT connect, subscribe,
// publish, pings, several commands per frame, refusals with Centrifugo's codes, and one engine shared
// with the Pusher front (one HTTP publish reaches pusher-js and centrifuge-js; presence seen from both).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, subscribe } from './harness.js';
import WebSocket from 'ws';
import { connToken, connected, centrifuge, disconnectCentrifuges, jwt, now, raw, subToken, subscribed } from './centrifugo-harness.js';

const CENTRIFUGO_CONFIG = `
log = "warn"
centrifugo_ping_interval = 1
centrifugo_expired_grace = 1
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_client_messages = true
enable_user_authentication = true
user_subscribe_to_personal = true

[apps.channel_options]
presence = true
join_leave = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true

[[apps.namespaces]]
name = "hist"
history_size = 100
history_ttl = "300s"
allow_recovery = true
allow_positioning = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true

[[apps.namespaces]]
name = "locked"

[[apps]]
id = "anon-id"
key = "anon-key"
secret = "anon-secret"
allow_anonymous = true
[apps.channel_options]
allow_subscribe_for_anonymous = true
`;

let herald, backend;
before(async () => {
  herald = await startHerald([], { config: CENTRIFUGO_CONFIG });
  backend = await startBackend(herald);
});
after(async () => {
  disconnectCentrifuges();
  disconnectAll();
  await backend.close();
  await herald.stop();
});

test('connect with an HS256 token, subscribe, publish and receive', async () => {
  const alice = await connected(herald, 'alice');
  const sub = await subscribed(alice, 'news');
  await sub.publish({ hello: 'world' });
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data), [{ hello: 'world' }]));
  assert.equal(sub.publications[0].info.user, 'alice', 'the publisher is told');
});

test('one HTTP API publish reaches a pusher-js and a centrifuge-js subscriber once each', async () => {
  const pusher = await connect(herald, backend, 'p1');
  const channel = await subscribe(pusher, 'shared');
  const fromPusher = [];
  channel.bind('update', (data) => fromPusher.push(data));
  const c = await connected(herald, 'c1');
  const sub = await subscribed(c, 'shared');
  await sdk(herald).trigger('shared', 'update', { n: 1 });
  await eventually(() => fromPusher.length === 1 && sub.publications.length === 1, { message: 'both got it' });
  assert.deepEqual(fromPusher[0], { n: 1 });
  assert.deepEqual(sub.publications[0].data, { n: 1 });
  // A marker after it proves nothing else was queued.
  await sdk(herald).trigger('shared', 'update', { n: 2 });
  await eventually(() => fromPusher.length === 2 && sub.publications.length === 2);
  assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2]);
});

test('presence is shared: each front sees the members that joined through the other', async () => {
  const pusher = await connect(herald, backend, 'pat');
  const room = await subscribe(pusher, 'presence-both');
  const added = next(room, 'pusher:member_added');
  const c = await connected(herald, 'cora', { token: connToken('cora', { info: { name: 'Cora' } }) });
  // Pusher's protected channels need a subscription token on the Centrifugo front.
  const refused = c.newSubscription('presence-both');
  const denied = new Promise((resolve) => refused.on('unsubscribed', resolve));
  refused.subscribe();
  assert.equal((await denied).code, 103);
  c.removeSubscription(refused);
  const sub = await subscribed(c, 'presence-both', { token: subToken('cora', 'presence-both'), joinLeave: true });
  const member = await added;
  assert.equal(member.id, 'cora');
  assert.deepEqual(member.info, { name: 'Cora' });
  const presence = await sub.presence();
  assert.deepEqual(Object.values(presence.clients).map((i) => i.user).sort(), ['cora', 'pat']);
  const stats = await sub.presenceStats();
  assert.deepEqual(stats, { numClients: 2, numUsers: 2 });
  const left = [];
  sub.on('leave', (ctx) => left.push(ctx.info.user));
  pusher.disconnect();
  await eventually(() => left.includes('pat'), { message: 'centrifuge-js told that pat left' });
});

test('the personal channel #user is the engine user delivery (Pusher sendToUser reaches it)', async () => {
  const c = centrifuge(herald, { token: connToken('dana') });
  const got = [];
  c.on('publication', (ctx) => got.push(ctx));
  const subs = new Promise((resolve) => c.on('subscribed', resolve));
  c.connect();
  assert.equal((await subs).channel, '#dana');
  await sdk(herald).sendToUser('dana', 'note', { hi: 1 });
  await eventually(() => got.length === 1, { message: 'personal publication' });
  assert.equal(got[0].channel, '#dana');
  assert.deepEqual(got[0].data, { hi: 1 });
});

test('the server API cannot unsubscribe the personal channel: it stays, and its publications keep arriving', async () => {
  const c = centrifuge(herald, { token: connToken('pia') });
  const got = [];
  const subscribed = [];
  const unsubscribed = [];
  c.on('publication', (ctx) => got.push(ctx));
  c.on('subscribed', (ctx) => subscribed.push(ctx.channel));
  c.on('unsubscribed', (ctx) => unsubscribed.push(ctx.channel));
  c.connect();
  await eventually(() => subscribed.includes('#pia'), { message: 'personal channel' });
  const api = (method, body) =>
    fetch(`http://127.0.0.1:${herald.port}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': 'app-secret' },
      body: JSON.stringify(body),
    }).then((r) => r.json());
  assert.deepEqual(await api('unsubscribe', { user: 'pia', channel: '#pia' }), { result: {} });
  // Commands reach a connection in order: once this one's push is seen, the unsubscribe was handled.
  assert.deepEqual(await api('subscribe', { user: 'pia', channel: 'after-personal' }), { result: {} });
  await eventually(() => subscribed.includes('after-personal'), { message: 'server-side subscribe' });
  assert.deepEqual(unsubscribed, [], 'no unsubscribe push for the personal channel');
  await sdk(herald).sendToUser('pia', 'note', { n: 1 });
  await eventually(() => got.some((p) => p.channel === '#pia'), { message: 'personal publication after the API unsubscribe' });
});

test('an invalid token closes with 3500 and a reason; the client does not reconnect', async () => {
  const c = centrifuge(herald, { token: jwt({ sub: 'eve', exp: now() + 60 }, { key: 'wrong-secret' }) });
  const disconnected = new Promise((resolve) => c.on('disconnected', resolve));
  let connecting = 0;
  c.on('connecting', () => connecting++);
  c.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500);
  assert.equal(ctx.reason, 'invalid token');
  assert.equal(c.state, 'disconnected');
  assert.equal(connecting, 1, 'no reconnect attempt');
});

test('alg none and HS/RS confusion are refused like any invalid token', async () => {
  for (const token of [jwt({ sub: 'mallory' }, { alg: 'none' })]) {
    const r = await raw(herald);
    r.send(JSON.stringify({ id: 1, connect: { token } }));
    const closed = await r.waitClosed();
    assert.deepEqual(closed, { code: 3500, reason: 'invalid token' });
  }
});

test('an expired token answers 109 and the client gets a new one through getToken', async () => {
  let calls = 0;
  const c = centrifuge(herald, {
    token: connToken('frank', { exp: now() - 10 }),
    getToken: async () => {
      calls++;
      return connToken('frank');
    },
  });
  const ok = new Promise((resolve) => c.on('connected', resolve));
  c.connect();
  await ok;
  assert.equal(calls, 1);
});

test('no token: 101 unauthorized without anonymous access; anonymous app connects', async () => {
  const c = centrifuge(herald, {});
  const disconnected = new Promise((resolve) => c.on('disconnected', resolve));
  c.connect();
  assert.equal((await disconnected).code, 101);
  const anon = await connected(herald, '', { token: '' }, 'anon-id');
  const sub = await subscribed(anon, 'lobby');
  assert.equal(sub.state, 'subscribed');
});

test('unknown namespaces and channels without permission are refused with 102 and 103', async () => {
  const c = await connected(herald, 'gina');
  for (const [channel, code] of [
    ['nope:x', 102],
    ['locked:x', 103],
  ]) {
    const sub = c.newSubscription(channel);
    const refused = new Promise((resolve) => sub.on('unsubscribed', resolve));
    sub.subscribe();
    assert.equal((await refused).code, code, channel);
  }
});

test('several commands in one frame are answered in order; unknown methods get 104', async () => {
  const r = await raw(herald);
  r.send([{ id: 1, connect: { token: connToken('hal') } }, { id: 2, subscribe: { channel: 'multi', flag: 1 } }, { id: 3, bogus: {} }].map((c) => JSON.stringify(c)).join('\n'));
  const connect = await r.reply(1);
  assert.equal(typeof connect.connect.client, 'string');
  assert.deepEqual((await r.reply(2)).subscribe, {});
  assert.equal((await r.reply(3)).error.code, 104);
  const ids = r.json().filter((x) => x.id).map((x) => x.id);
  assert.deepEqual(ids, [1, 2, 3]);
  r.ws.close();
});

test('the server pings with {} and closes a client that never answers with 3012', async () => {
  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token: connToken('ivy') } }));
  const reply = await r.reply(1);
  assert.equal(reply.connect.ping, 1);
  assert.equal(reply.connect.pong, true);
  await eventually(() => r.frames.includes('{}'), { message: 'a ping' });
  const closed = await r.waitClosed(5000);
  assert.deepEqual(closed, { code: 3012, reason: 'no pong' });
});

test('a malformed frame closes with 3501 bad request; others are unaffected', async () => {
  const other = await connected(herald, 'jay');
  const sub = await subscribed(other, 'calm');
  const r = await raw(herald);
  r.send('{not json');
  assert.deepEqual(await r.waitClosed(), { code: 3501, reason: 'bad request' });
  await sub.publish({ still: 'fine' });
  await eventually(() => sub.publications.length === 1);
});

/** Cuts a centrifuge-js client's socket without a close handshake (as a network loss would). */
function cut(client) {
  client._transport._transport.terminate();
}

test('recovery: publications made while a client was away arrive on reconnect, in order, recovered', async () => {
  const c = await connected(herald, 'kim');
  const sub = await subscribed(c, 'hist:stream');
  const subscribedEvents = [];
  sub.on('subscribed', (ctx) => subscribedEvents.push(ctx));
  // Pusher channel names have no ':'; another centrifuge-js client publishes.
  const publisher = await subscribed(await connected(herald, 'kim-pub'), 'hist:stream');
  await publisher.publish({ n: 1 });
  await eventually(() => sub.publications.length === 1);
  const away = new Promise((resolve) => c.once('connecting', resolve));
  cut(c);
  await away;
  for (let n = 2; n <= 5; n++) await publisher.publish({ n });
  await eventually(() => subscribedEvents.length === 1, { message: 'resubscribed' });
  assert.equal(subscribedEvents[0].wasRecovering, true);
  assert.equal(subscribedEvents[0].recovered, true);
  await eventually(() => assert.deepEqual(sub.publications.map((p) => p.data.n), [1, 2, 3, 4, 5]));
  assert.deepEqual(sub.publications.map((p) => p.offset), [1, 2, 3, 4, 5]);
});

test('recovery from an unknown epoch answers recovered false', async () => {
  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token: connToken('lee') } }));
  await r.reply(1);
  r.send(JSON.stringify({ id: 2, subscribe: { channel: 'hist:epoch', recover: true, offset: 3, epoch: 'not-the-epoch' } }));
  const reply = (await r.reply(2)).subscribe;
  assert.equal(reply.recoverable, true);
  assert.equal(reply.was_recovering, true);
  assert.equal(reply.recovered, undefined, 'false is omitted, as protobuf JSON does');
  assert.equal(typeof reply.epoch, 'string');
  r.ws.close();
});

test('history: limit, since and reverse; refused where the channel has none', async () => {
  const c = await connected(herald, 'mia');
  const sub = await subscribed(c, 'hist:h');
  for (let n = 1; n <= 4; n++) await sub.publish({ n });
  await eventually(() => sub.publications.length === 4);
  const all = await sub.history({ limit: -1 });
  assert.deepEqual(all.publications.map((p) => p.data.n), [1, 2, 3, 4]);
  assert.equal(all.offset, 4);
  const latest = await sub.history({ limit: 2, reverse: true });
  assert.deepEqual(latest.publications.map((p) => p.data.n), [4, 3]);
  const since = await sub.history({ limit: 10, since: { offset: 2, epoch: all.epoch } });
  assert.deepEqual(since.publications.map((p) => p.data.n), [3, 4]);
  await assert.rejects(sub.history({ limit: 10, since: { offset: 1, epoch: 'other' } }), (e) => e.code === 112);
  const plain = await subscribed(c, 'plain');
  await assert.rejects(plain.history({ limit: 1 }), (e) => e.code === 108);
});

test('token refresh: getToken before expiry keeps the connection; without refresh it closes with 3005', async () => {
  let refreshed = 0;
  const c = centrifuge(herald, {
    token: connToken('ned', { exp: now() + 3 }),
    getToken: async () => {
      refreshed++;
      return connToken('ned');
    },
  });
  const disconnects = [];
  c.on('disconnected', (ctx) => disconnects.push(ctx));
  await new Promise((resolve) => {
    c.once('connected', resolve);
    c.connect();
  });
  await eventually(() => refreshed >= 1, { timeout: 8000, message: 'refreshed' });
  const sub = await subscribed(c, 'after-refresh');
  await sdk(herald).trigger('after-refresh', 'e', { ok: 1 });
  await eventually(() => sub.publications.length === 1);
  assert.equal(c.state, 'connected');

  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token: connToken('olga', { exp: now() + 1 }) } }));
  const reply = (await r.reply(1)).connect;
  assert.equal(reply.expires, true);
  assert.ok(reply.ttl <= 1);
  // The pings are answered, so only the expiry can close it.
  r.ws.on('message', (m) => m.toString() === '{}' && r.send('{}'));
  assert.deepEqual(await r.waitClosed(6000), { code: 3005, reason: 'connection expired' });
});

test('subscription tokens: sub_refresh extends one; a token for another channel is an invalid token', async () => {
  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token: connToken('pia') } }));
  await r.reply(1);
  r.send(JSON.stringify({ id: 2, subscribe: { channel: 'private-x', token: subToken('pia', 'private-x', { exp: now() + 60 }) } }));
  const sub = (await r.reply(2)).subscribe;
  assert.equal(sub.expires, true);
  r.send(JSON.stringify({ id: 3, sub_refresh: { channel: 'private-x', token: subToken('pia', 'private-x', { exp: now() + 120 }) } }));
  const refreshed = (await r.reply(3)).sub_refresh;
  assert.ok(refreshed.expires && refreshed.ttl > 60);
  r.send(JSON.stringify({ id: 4, rpc: { method: 'm', data: {} } }));
  assert.equal((await r.reply(4)).error.code, 108);
  r.send(JSON.stringify({ id: 5, subscribe: { channel: 'private-y', token: subToken('pia', 'private-x') } }));
  assert.deepEqual(await r.waitClosed(), { code: 3500, reason: 'invalid token' });
});

test('join and leave pushes between centrifuge-js clients', async () => {
  const a = await connected(herald, 'quinn');
  const sa = await subscribed(a, 'room-jl', { joinLeave: true });
  const joins = [];
  const leaves = [];
  sa.on('join', (ctx) => joins.push(ctx.info.user));
  sa.on('leave', (ctx) => leaves.push(ctx.info.user));
  const b = await connected(herald, 'rhea');
  await subscribed(b, 'room-jl');
  await eventually(() => joins.includes('rhea'));
  b.disconnect();
  await eventually(() => leaves.includes('rhea'));
});

test('uni_websocket: a plain WebSocket sends its connect request and receives pushes only', async () => {
  const token = connToken('uma', { channels: ['uni-news'] });
  const received = [];
  const ws = new WebSocket(`ws://127.0.0.1:${herald.port}/connection/uni_websocket`);
  ws.on('message', (m) => received.push(JSON.parse(m.toString())));
  await new Promise((resolve) => ws.once('open', resolve));
  ws.send(JSON.stringify({ token, name: 'plain' }));
  await eventually(() => received.some((m) => m.connect), { message: 'connect push' });
  const connect = received.find((m) => m.connect).connect;
  assert.deepEqual(Object.keys(connect.subs).sort(), ['#uma', 'uni-news']);
  await sdk(herald).trigger('uni-news', 'e', { n: 1 });
  await sdk(herald).sendToUser('uma', 'note', { n: 2 });
  await eventually(() => received.filter((m) => m.pub).length === 2, { message: 'two pushes' });
  assert.deepEqual(
    received.filter((m) => m.pub).map((m) => [m.channel, m.pub.data.n]),
    [
      ['uni-news', 1],
      ['#uma', 2],
    ],
  );
  ws.close();

  // The connect request as the cf_connect URL parameter; a bad token closes with 3500.
  const url = (t) => `ws://127.0.0.1:${herald.port}/connection/uni_websocket?cf_connect=${encodeURIComponent(JSON.stringify({ token: t }))}`;
  const ok = new WebSocket(url(connToken('uma')));
  const first = await new Promise((resolve) => ok.once('message', (m) => resolve(JSON.parse(m.toString()))));
  assert.equal(typeof first.connect.client, 'string');
  ok.close();
  const bad = new WebSocket(url('not-a-token'));
  const closed = await new Promise((resolve) => bad.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  assert.deepEqual(closed, { code: 3500, reason: 'invalid token' });
});
