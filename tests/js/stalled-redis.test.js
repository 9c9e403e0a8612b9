// A stalled Redis: the test's own redis-server frozen with SIGSTOP, so its connections stay open and
// nothing is answered (unlike a stopped server, which refuses at once). A connection waiting on a
// cluster step (a subscribe needs Redis) must keep receiving its other channels, keep answering pings,
// and not be closed as a slow consumer; shutdown must still finish within the grace.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { collect, connect, disconnectAll, eventually, rawClient, roundTrip, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

/** Seconds SIGTERM may take to drain (`shutdown_grace`), and what the process may take beyond it. */
const GRACE = 3;
const MARGIN = 2;
/** A small outbox: a session that stops writing while it waits overflows it (and closes 4100). */
const OUTBOX = 30;

const CONFIG = `
log = "warn"
shutdown_grace = ${GRACE}
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
max_outbox_messages = ${OUTBOX}
`;

let redis, herald, backend, api, client, channelA, raw;
before(async () => {
  redis = await startRedis();
  herald = await startHerald(['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'stall'], { config: CONFIG });
  backend = await startBackend(herald);
  api = sdk(herald);
  // Connected and subscribed while Redis answers.
  client = await connect(herald, backend, 'reader');
  channelA = await subscribe(client, 'stall-a');
  raw = await rawClient(herald);
  redis.pause();
});
after(async () => {
  redis?.resume(); // always, even when a test failed
  disconnectAll();
  raw?.close();
  await backend?.close();
  if (herald && herald.proc.exitCode === null && herald.proc.signalCode === null) {
    herald.proc.kill('SIGKILL'); // a herald that failed the shutdown test is not waited for again
  }
  await herald?.exited;
  await redis?.stop();
});

const isSettled = (f) => f.event === 'pusher_internal:subscription_succeeded' || f.event === 'pusher:subscription_error';

// Both clients start their cluster steps the moment Redis freezes, before Herald can have noticed the
// stall (a call has to time out first): what follows holds however Herald then rates Redis's health.
test('stalled Redis: a client whose subscribe waits on the cluster keeps receiving its other channel, in order, answers pings, and is not closed 4100', { timeout: 20000 }, async () => {
  // The raw client: 6 subscribes, then a ping. Pings are answered while cluster steps are pending, so
  // the pong comes before the 6th subscription is answered (today: after 6 waits of ~2.5 s each).
  for (let i = 1; i <= 6; i++) raw.send('pusher:subscribe', { channel: `stall-many-${i}` });
  raw.send('pusher:ping', {});
  const rawPong = raw.frame((f) => f.event === 'pusher:pong', 5000, 'pusher:pong').then(
    (f) => f,
    () => undefined,
  );

  const log = [];
  const errors = collect(client.connection, 'error');
  const states = collect(client.connection, 'state_change');
  channelA.bind('tick', (d) => log.push(`A${d.n}`));
  const b = client.subscribe('stall-b');
  b.bind('pusher:subscription_succeeded', () => log.push('B'));
  b.bind('pusher:subscription_error', () => log.push('B'));
  // The server reads frames in order: once this ping's pong is back, it has read the subscribe and its
  // cluster step is under way (it cannot finish while Redis is frozen).
  const pong = roundTrip(client, 5000).then(
    () => log.push('pong'),
    () => log.push('no pong'),
  );
  // Events published through this node's HTTP API (local delivery needs no Redis), in batches that each
  // fit the outbox: a session that keeps writing never overflows it, one that waits overflows it after
  // 30 events (4100). The first round is published at once (it may reach the server before the
  // subscribe does); the second after the pong, so certainly while the subscribe waits.
  const perRound = 2 * OUTBOX;
  let published = 0;
  const publishRound = async () => {
    for (let i = 0; i < perRound; i += 10) {
      const batch = Array.from({ length: 10 }, (_, j) => ({ channel: 'stall-a', name: 'tick', data: JSON.stringify({ n: published + j }) }));
      assert.equal((await api.triggerBatch(batch)).status, 200);
      published += 10;
    }
  };
  await publishRound();
  await pong;
  const codes = () => errors.map((e) => e.data?.code ?? e.error?.data?.code);
  assert.ok(log.includes('pong'), `no pusher:pong within 5 s while a subscribe waits on the stalled Redis (pusher:error codes: ${codes()}; states: ${states.map((s) => s.current)}; ${log.length} events)`);
  await publishRound();
  await eventually(() => log.filter((e) => e.startsWith('A')).length === published, {
    timeout: 5000,
    message: () => `all ${published} events on stall-a arrived (got ${log.filter((e) => e.startsWith('A')).length}; pusher:error codes: ${codes()})`,
  });
  const ticks = log.filter((e) => e.startsWith('A'));
  assert.deepEqual(ticks, Array.from({ length: published }, (_, n) => `A${n}`), 'in publish order');
  // Ordering, not timing: the events and the pong came before the subscribe waiting on Redis was answered.
  const settledAt = log.indexOf('B');
  if (settledAt !== -1) {
    assert.ok(settledAt > log.lastIndexOf(`A${published - 1}`), `stall-b settled before the events: ${log}`);
    assert.ok(log.indexOf('pong') < settledAt, `pong after stall-b settled: ${log}`);
  }
  assert.deepEqual(codes(), [], 'no pusher:error (4100 is a slow-consumer close)');
  assert.deepEqual(states, [], 'the connection never left connected');

  const pongFrame = await rawPong;
  const events = () => raw.frames.map((f) => f.event);
  assert.ok(pongFrame, `raw client: no pusher:pong within 5 s while 6 subscribes wait on the stalled Redis (frames: ${events()})`);
  const settledBefore = raw.frames.slice(0, raw.frames.indexOf(pongFrame)).filter(isSettled);
  assert.ok(settledBefore.length < 6, `raw client: the pong came after all 6 subscriptions were answered: ${events()}`);
  assert.equal(raw.ws.readyState, raw.ws.OPEN, 'raw client still open');
  assert.deepEqual(raw.frames.filter((f) => f.event === 'pusher:error'), [], 'raw client: no pusher:error');
});

test(`stalled Redis: SIGTERM while subscribes wait on Redis: clients get 4200 at once, the process exits 0 within the grace (${GRACE} s) + ${MARGIN} s`, { timeout: 20000 }, async () => {
  // Fresh cluster steps pending at the moment of the signal.
  raw.send('pusher:subscribe', { channel: 'stall-at-shutdown' });
  client.subscribe('stall-at-shutdown');
  // pusher-js leaves `connected` when its connection closes (4200: to reconnect at once).
  const left = new Promise((resolve) => client.connection.bind('state_change', (s) => s.previous === 'connected' && resolve({ state: s.current, at: Date.now() })));
  const rawClosed = raw.closed.then((c) => ({ ...c, at: Date.now() }));
  await roundTrip(client, 5000).catch(() => assert.fail('no pusher:pong while a subscribe waits on the stalled Redis'));
  assert.equal(client.connection.state, 'connected');
  const started = Date.now();
  herald.proc.kill('SIGTERM');
  let timer;
  const late = new Promise((resolve) => (timer = setTimeout(() => resolve('still running'), (GRACE + MARGIN) * 1000)));
  const result = await Promise.race([herald.exited, late]).finally(() => clearTimeout(timer));
  assert.deepEqual(result, { code: 0, signal: null }, `after ${Date.now() - started} ms`);
  // The shutdown is one more thing the session watches while it waits on the cluster: the close is
  // sent at once, not when the wait ends.
  // Both have resolved by now: the process has exited.
  const closed = await rawClosed;
  assert.equal(closed.code, 4200, 'raw client told to reconnect elsewhere (never 4100)');
  assert.ok(closed.at - started < 1000, `raw client closed only after ${closed.at - started} ms`);
  const pusherJs = await left;
  assert.notEqual(pusherJs.state, 'failed', 'pusher-js was told to reconnect, not to give up');
  assert.ok(pusherJs.at - started < 1000, `pusher-js client disconnected only after ${pusherJs.at - started} ms`);
});
