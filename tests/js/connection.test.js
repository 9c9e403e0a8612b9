// Connecting with unmodified pusher-js: handshake, refusals, keep-alive, graceful shutdown.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, PusherJs, clientOptions, connect, disconnectAll, next, startHerald, sleep } from './harness.js';

let herald;
before(async () => (herald = await startHerald()));
after(async () => {
  disconnectAll();
  await herald.stop();
});

test('pusher-js connects and gets a Pusher-shaped socket_id', async () => {
  const pusher = await connect(herald);
  assert.match(pusher.connection.socket_id, /^\d+\.\d+$/);
  assert.equal(pusher.connection.state, 'connected');
  // activity_timeout from the server is adopted by pusher-js (120 s, capped by its own default).
  assert.ok(pusher.connection.activityTimeout > 0);
});

async function refusal(key) {
  const pusher = new PusherJs(key, clientOptions(herald));
  try {
    const err = await next(pusher.connection, 'error');
    // pusher-js wraps errors that arrive during the handshake: {type:'WebSocketError', error:{data}}.
    const code = (err.error ?? err).data.code;
    await sleep(100);
    // 4000-4099 means "do not reconnect": pusher-js stops instead of retrying.
    assert.ok(['disconnected', 'failed'].includes(pusher.connection.state), pusher.connection.state);
    return code;
  } finally {
    pusher.disconnect();
  }
}

test('unknown app key is refused with 4001', async () => {
  assert.equal(await refusal('no-such-key'), 4001);
});

test('disabled app is refused with 4003', async () => {
  assert.equal(await refusal(APPS.off.key), 4003);
});

test('app over its connection quota is refused with 4004, others unaffected', async () => {
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await connect(herald, null, null, { app: APPS.tiny }));
  assert.equal(await refusal(APPS.tiny.key), 4004);
  const other = await connect(herald);
  assert.equal(other.connection.state, 'connected');
  held.forEach((p) => p.disconnect());
});

test('/up and /metrics report live state', async () => {
  const pusher = await connect(herald);
  const up = await (await fetch(`http://127.0.0.1:${herald.port}/up`)).json();
  assert.equal(up.status, 'ok');
  assert.ok(up.connections >= 1);
  const metrics = await (await fetch(`http://127.0.0.1:${herald.port}/metrics`)).text();
  assert.match(metrics, /herald_connections\{app="app-id"\} [1-9]/);
  assert.match(metrics, /herald_connections_refused_total\{code="4001"\} [1-9]/);
  pusher.disconnect();
});

test('SIGTERM drains: clients are told to reconnect (4200) and the process exits 0', async () => {
  const own = await startHerald();
  const pusher = await connect(own);
  const states = [];
  pusher.connection.bind('state_change', (s) => states.push(s.current));
  const result = await own.stop();
  assert.deepEqual(result, { code: 0, signal: null });
  await sleep(200);
  // 4200 means "reconnect now": pusher-js goes straight back to connecting, not failed.
  assert.ok(states.includes('connecting') || states.includes('unavailable'), `states: ${states}`);
  assert.ok(!states.includes('failed'));
  pusher.disconnect();
});
