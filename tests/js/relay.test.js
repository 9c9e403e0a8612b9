// Relaying from a bus: the shipped examples/relay/seed-sync.toml with a real redis-server, pusher-js
// devices signed in with a device_id and centrifuge-js devices with a `device` token claim; then two
// Redis-backed Herald nodes consuming one stream (and one PostgreSQL outbox, on a cluster of the test's
// own), one of them killed with SIGKILL mid-batch: its pending entries (rows) are taken over and every
// message reaches each pusher-js and centrifuge-js device exactly once (NATS and PubNub:
// relay-buses.test.js).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { collect, connect, disconnectAll, eventually, next, startBackend, startHerald, startPostgres, startRedis } from './harness.js';
import { connToken, connected, disconnectCentrifuges } from './centrifugo-harness.js';
import { assertExactlyOnce, devices as allDevices } from './relay-harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = fs.readFileSync(path.join(here, '..', '..', 'examples', 'relay', 'seed-sync.toml'), 'utf8');

after(() => {
  disconnectCentrifuges();
  disconnectAll();
});

/** Encodes one Redis command (RESP). */
function resp(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
  return out;
}

/** Parses one RESP reply at `i` of `buf`; `[value, next]`, or null while incomplete. */
function parse(buf, i = 0) {
  const eol = buf.indexOf('\r\n', i);
  if (eol < 0) return null;
  const kind = String.fromCharCode(buf[i]);
  const line = buf.toString('utf8', i + 1, eol);
  if (kind === '+' || kind === ':') return [kind === ':' ? Number(line) : line, eol + 2];
  if (kind === '-') return [new Error(line), eol + 2];
  if (kind === '$') {
    const n = Number(line);
    if (n < 0) return [null, eol + 2];
    if (buf.length < eol + 2 + n + 2) return null;
    return [buf.toString('utf8', eol + 2, eol + 2 + n), eol + 2 + n + 2];
  }
  if (kind === '*') {
    const n = Number(line);
    if (n < 0) return [null, eol + 2];
    const items = [];
    let at = eol + 2;
    for (let k = 0; k < n; k++) {
      const item = parse(buf, at);
      if (!item) return null;
      items.push(item[0]);
      at = item[1];
    }
    return [items, at];
  }
  throw new Error(`unexpected RESP type ${kind}`);
}

/** Sends `commands` to Redis on `port` in one pipeline; resolves with their replies. */
function redis(port, commands) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const replies = [];
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let at = 0;
      for (;;) {
        const r = parse(buf, at);
        if (!r) break;
        replies.push(r[0]);
        at = r[1];
      }
      buf = buf.subarray(at);
      if (replies.length === commands.length) {
        socket.end();
        resolve(replies);
      }
    });
    socket.on('error', reject);
    socket.write(commands.map(resp).join(''));
  });
}

const ts = { seconds: 1700000000, nanos: 0 };
const progress = (device, position) =>
  JSON.stringify({ type: 'progress_update', user_id: 'u1', device_id: device, content_id: 'c1', position_seconds: position, duration_seconds: 7200, timestamp: ts });
const watchlist = (device) =>
  JSON.stringify({ type: 'watchlist_update', user_id: 'u1', device_id: device, content_id: 'c2', operation: 'add', unique_tag: 't-1', timestamp: ts });
const handoff = (device) =>
  JSON.stringify({ type: 'device_handoff', user_id: 'u1', device_id: device, command: 'play', target_device: 'device-c', timestamp: ts });

/** The example with its Redis URL pointed at `url`, `extra` lines added to its redis_streams table. */
function exampleConfig(url, extra = '') {
  const config = EXAMPLE.replace('redis://127.0.0.1:6379', url).replace('group = "herald"\n', `group = "herald"\n${extra}\n`);
  assert.notEqual(config, EXAMPLE);
  return `log = "warn"\n${config}`;
}

/** Three centrifuge-js devices of u1 (token claim `device`); each collects what reaches its personal channel. */
async function centrifugeDevices(herald) {
  const all = [];
  for (const device of ['device-a', 'device-b', 'device-c']) {
    const c = await connected(herald, 'u1', { token: connToken('u1', { device }) });
    const got = [];
    c.on('publication', (ctx) => got.push({ channel: ctx.channel, data: ctx.data }));
    all.push(got);
  }
  return all;
}

/** Three pusher-js devices of u1 on `herald`, signed in, user channel subscribed. */
async function devices(herald, backend) {
  const all = [];
  for (const device of ['device-a', 'device-b', 'device-c']) {
    const p = await connect(herald, backend, 'u1', { device });
    p.signin();
    await p.user.signinDonePromise;
    await eventually(() => p.user.serverToUserChannel?.subscribed === true, { message: 'user channel subscribed' });
    all.push(p);
  }
  return all;
}

test('the shipped seed-sync example delivers the mapped payloads to every device but the origin', async () => {
  const redisServer = await startRedis();
  const herald = await startHerald([], { config: exampleConfig(redisServer.url).replace('log = "warn"\n', 'log = "warn"\nadmin_token = "relay-admin-token-0123"\n') });
  const backend = await startBackend(herald);
  try {
    const [a, b, c] = await devices(herald, backend);
    const [ca, cb, cc] = await centrifugeDevices(herald);
    const up = async () => (await (await fetch(`http://127.0.0.1:${herald.port}/up`)).json());
    await eventually(async () => (await up()).sources?.sync?.bus === 'up', { timeout: 10000, message: 'source up' });
    const progressOnA = collect(a.user, 'progress_update');
    const watchlistOnB = collect(b.user, 'watchlist_update');
    const commandOnC = collect(c.user, 'device_command');
    const expected = {
      progress: { type: 'progress_update', content_id: 'c1', position: 1234, duration: 7200 },
      watchlist: { type: 'watchlist_update', content_id: 'c2', action: 'add' },
      command: { type: 'device_command', command: 'play', target_device: 'device-c' },
    };
    const got = {
      progressB: next(b.user, 'progress_update', 10000),
      progressC: next(c.user, 'progress_update', 10000),
      watchlistA: next(a.user, 'watchlist_update', 10000),
      watchlistC: next(c.user, 'watchlist_update', 10000),
      commandA: next(a.user, 'device_command', 10000),
      commandB: next(b.user, 'device_command', 10000),
    };
    await redis(redisServer.port, [
      ['XADD', 'sync', '*', 'data', progress('device-a', 1234)],
      ['XADD', 'sync', '*', 'data', watchlist('device-b')],
      ['XADD', 'sync', '*', 'data', handoff('device-c')],
    ]);
    assert.deepEqual(await got.progressB, expected.progress);
    assert.deepEqual(await got.progressC, expected.progress);
    assert.deepEqual(await got.watchlistA, expected.watchlist);
    assert.deepEqual(await got.watchlistC, expected.watchlist);
    assert.deepEqual(await got.commandA, expected.command);
    assert.deepEqual(await got.commandB, expected.command);
    // A marker to c after everything: each connection's frames arrive in order.
    const marker = next(c.user, 'progress_update', 10000);
    await redis(redisServer.port, [['XADD', 'sync', '*', 'data', progress('device-a', 1)]]);
    await marker;
    assert.equal(progressOnA.length, 0, 'device-a made the progress change and got none of it');
    assert.equal(watchlistOnB.length, 0, 'device-b made the watchlist change');
    assert.equal(commandOnC.length, 0, 'device-c made the handoff');
    // The centrifuge-js devices: the same payloads on the personal channel #u1, none of their own
    // changes (the marker, sent after everything, has reached device-b and -c on this front too).
    const on = (got, type) => got.filter((p) => p.data.type === type);
    const marked = { channel: '#u1', data: { ...expected.progress, position: 1 } };
    await eventually(() => {
      assert.deepEqual(on(cb, 'progress_update'), [{ channel: '#u1', data: expected.progress }, marked]);
      assert.deepEqual(on(cc, 'progress_update'), [{ channel: '#u1', data: expected.progress }, marked]);
      assert.deepEqual(on(ca, 'watchlist_update'), [{ channel: '#u1', data: expected.watchlist }]);
      assert.deepEqual(on(cc, 'watchlist_update'), [{ channel: '#u1', data: expected.watchlist }]);
      assert.deepEqual(on(ca, 'device_command'), [{ channel: '#u1', data: expected.command }]);
      assert.deepEqual(on(cb, 'device_command'), [{ channel: '#u1', data: expected.command }]);
    }, { timeout: 10000, message: 'the centrifuge-js devices got the mapped payloads on #u1' });
    // Each device got a message published after the one it made (frames arrive in order per connection).
    assert.equal(on(ca, 'progress_update').length, 0, 'centrifuge device-a made the progress changes');
    assert.equal(on(cb, 'watchlist_update').length, 0, 'centrifuge device-b made the watchlist change');
    assert.equal(on(cc, 'device_command').length, 0, 'centrifuge device-c made the handoff');

    // Relay latency is a Prometheus histogram (p50/p95/p99 by histogram_quantile), per source.
    const metrics = await (await fetch(`http://127.0.0.1:${herald.port}/metrics`)).text();
    assert.match(metrics, /herald_ingest_relay_latency_seconds_bucket\{[^}]*source="sync"[^}]*le="0.01"\} \d+/);
    assert.match(metrics, /herald_ingest_delivered_total\{[^}]*source="sync"[^}]*\} 4/);
    assert.match(metrics, /herald_ingest_position\{[^}]*source="sync"[^}]*\} \d+/);
    // The stats endpoint: the source's counters, position (the last entry's time, ms) and lag.
    const stats = await (await fetch(`http://127.0.0.1:${herald.port}/stats`, { headers: { authorization: 'Bearer relay-admin-token-0123' } })).json();
    const sync = stats.sources.sync;
    assert.deepEqual(
      { kind: sync.kind, consumed: sync.consumed, delivered: sync.delivered, repeats: sync.repeats, redelivered: sync.redelivered, skipped: sync.skipped },
      { kind: 'redis_streams', consumed: 4, delivered: 4, repeats: 0, redelivered: 0, skipped: {} },
    );
    assert.ok(Math.abs(sync.position - Date.now()) < 60000, `position is the last entry's time (${sync.position})`);
    assert.equal(sync.lag.count, 4);
    assert.ok(sync.lag.p99_ms >= sync.lag.p50_ms && sync.lag.p50_ms > 0, JSON.stringify(sync.lag));

    // Redis goes away: the source is degraded on /up, the devices stay connected.
    await redisServer.stop();
    await eventually(async () => {
      const body = await up();
      return body.status === 'degraded' && body.sources.sync.bus === 'down';
    }, { timeout: 10000, message: '/up degraded with the source down' });
    assert.deepEqual([a, b, c].map((p) => p.connection.state), ['connected', 'connected', 'connected']);
  } finally {
    await backend.close();
    await herald.stop();
    await redisServer.stop();
  }
});

test('a node killed mid-batch: its pending entries are claimed and each message reaches the devices once', async () => {
  const redisServer = await startRedis();
  const N = 4000;
  const node = (consumer) => {
    const config = exampleConfig(redisServer.url, `consumer = "${consumer}"\nclaim_idle = 1\nblock = 0.5\nbatch = 50`).replace(
      'enable_client_messages = true',
      'enable_client_messages = true\nmax_outbox_messages = 20000',
    );
    return startHerald(['--engine', 'redis', '--redis-url', redisServer.url, '--redis-prefix', 'relay'], { config });
  };
  const doomed = await node('node-a');
  const survivor = await node('node-b');
  const backend = await startBackend(survivor);
  try {
    const devs = await allDevices(survivor, backend);
    const [, pb] = devs.pusher;
    const commands = [];
    for (let i = 1; i <= N; i++) commands.push(['XADD', 'sync', '*', 'data', progress('device-a', i)]);
    await redis(redisServer.port, commands);
    await eventually(() => pb.progress.length >= 300, { timeout: 20000, message: () => `300 relayed before the kill (${pb.progress.length})` });
    doomed.proc.kill('SIGKILL');
    await doomed.exited;
    const [pendingOfA] = await redis(redisServer.port, [['XPENDING', 'sync', 'herald', '-', '+', '1000', 'node-a']]);
    assert.ok(pendingOfA.length > 0, 'the killed node had read entries it had not acked');
    await assertExactlyOnce(devs, N, () => redis(redisServer.port, [['XADD', 'sync', '*', 'data', watchlist('device-a')]]));
    await eventually(async () => (await redis(redisServer.port, [['XPENDING', 'sync', 'herald']]))[0][0] === 0, {
      timeout: 20000,
      message: 'every entry acked (the dead node\'s claimed by the survivor)',
    });
  } finally {
    await backend.close();
    await survivor.stop();
    if (doomed.proc.exitCode === null && doomed.proc.signalCode === null) doomed.proc.kill('SIGKILL');
    await redisServer.stop();
  }
});

test('PostgreSQL outbox: a node killed mid-batch; its rows are claimed by the other and each reaches the devices once', async () => {
  const redisServer = await startRedis();
  const pg = await startPostgres();
  const N = 2000;
  pg.sql('CREATE TABLE herald_outbox (id bigserial PRIMARY KEY, channel text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())');
  const redisTable = 'url = "redis://127.0.0.1:6379"\nstreams = ["sync"]\ngroup = "herald"\n';
  assert.ok(EXAMPLE.includes(`[sources.redis_streams]\n${redisTable}`));
  const config = `log = "warn"\n${EXAMPLE}`
    .replace(`[sources.redis_streams]\n${redisTable}`, `[sources.postgres]\nurl = "${pg.url}"\nbatch = 50\npoll = 0.2\n`)
    .replace('enable_client_messages = true', 'enable_client_messages = true\nmax_outbox_messages = 20000');
  const args = ['--engine', 'redis', '--redis-url', redisServer.url, '--redis-prefix', 'relaypg'];
  const doomed = await startHerald(args, { config });
  const survivor = await startHerald(args, { config });
  const backend = await startBackend(survivor);
  try {
    const devs = await allDevices(survivor, backend);
    const [, pb] = devs.pusher;
    pg.sql(
      `INSERT INTO herald_outbox (channel, payload) SELECT 'sync', json_build_object('type', 'progress_update', 'user_id', 'u1', ` +
        `'device_id', 'device-a', 'content_id', 'c1', 'position_seconds', i, 'duration_seconds', 7200)::jsonb FROM generate_series(1, ${N}) i; ` +
        'NOTIFY herald_outbox;',
    );
    await eventually(() => pb.progress.length >= 200, { timeout: 20000, message: () => `200 relayed before the kill (${pb.progress.length})` });
    doomed.proc.kill('SIGKILL');
    await doomed.exited;
    await assertExactlyOnce(devs, N, () =>
      pg.sql(`INSERT INTO herald_outbox (channel, payload) VALUES ('sync', '${watchlist('device-a')}'); NOTIFY herald_outbox;`),
    );
    await eventually(() => pg.sql('SELECT count(*) FROM herald_outbox') === '0', { timeout: 20000, message: 'every row deleted' });
  } finally {
    await backend.close();
    await survivor.stop();
    if (doomed.proc.exitCode === null && doomed.proc.signalCode === null) doomed.proc.kill('SIGKILL');
    pg.stop();
    await redisServer.stop();
  }
});
