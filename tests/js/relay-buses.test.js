// Relaying from NATS JetStream and PubNub with Herald killed by SIGKILL mid-batch. Two Redis-backed
// Herald nodes run the seed example's mapping on one source; the one consuming is killed while messages
// are in flight; the other takes over (JetStream redelivers the unacked messages after ack_wait; the
// PubNub leader lock expires and the new leader resumes from the last timetoken whose messages were all
// accepted) and the idempotency keys keep every device from seeing a message twice. The receivers are
// unmodified pusher-js and centrifuge-js clients, three "devices" each, signed in as the same user.
//
// nats-server -js runs on a free port with a store in a temp dir. PubNub's hosted service can't be
// reached from CI: a small HTTP server here implements the subscribe v2 endpoint's documented request
// and response shapes (`GET /v2/subscribe/{sub_key}/{channels}/0?tt=&tr=` answering
// `{"t":{"t","r"},"m":[{"c","d","p":{"t","r"}}]}`).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { disconnectAll, eventually, freePort, startBackend, startHerald, startRedis } from './harness.js';
import { disconnectCentrifuges } from './centrifugo-harness.js';
import { assertExactlyOnce, devices } from './relay-harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = fs.readFileSync(path.join(here, '..', '..', 'examples', 'relay', 'seed-sync.toml'), 'utf8');
const REDIS_TABLE = '[sources.redis_streams]\nurl = "redis://127.0.0.1:6379"\nstreams = ["sync"]\ngroup = "herald"\n';

after(() => {
  disconnectCentrifuges();
  disconnectAll();
});

/** The seed example with its Redis Streams table replaced by `table` (TOML), a larger outbox. */
function exampleWith(table) {
  assert.ok(EXAMPLE.includes(REDIS_TABLE), 'the example has the Redis Streams table this test replaces');
  return `log = "warn"\n${EXAMPLE}`
    .replace(REDIS_TABLE, table)
    .replace('enable_client_messages = true', 'enable_client_messages = true\nmax_outbox_messages = 20000');
}

const ts = { seconds: 1700000000, nanos: 0 };
const progress = (device, position) => ({
  type: 'progress_update', user_id: 'u1', device_id: device, content_id: 'c1', position_seconds: position, duration_seconds: 7200, timestamp: ts,
});
const watchlist = (device) => ({ type: 'watchlist_update', user_id: 'u1', device_id: device, content_id: 'c2', operation: 'add', unique_tag: 't-1', timestamp: ts });

// ---- NATS: nats-server -js of the test's own, and a minimal client of its text protocol ----------

/** `nats-server -js` on a free port, its store in a temp dir. */
async function startNats() {
  const port = await freePort();
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-nats-'));
  const bin = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => fs.existsSync(p)) ?? 'nats-server';
  const proc = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', store], { stdio: 'ignore' });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  // nats-server starts JetStream before it listens.
  await eventually(async () => {
    try {
      (await natsClient(port)).close();
      return true;
    } catch {
      return false;
    }
  }, { timeout: 10000, interval: 50, message: `nats-server accepts on port ${port}` });
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
      fs.rmSync(store, { recursive: true, force: true });
    },
  };
}

/**
 * A NATS connection speaking the text protocol (CONNECT, PUB, SUB, MSG, PING/PONG): enough for the
 * backend side of the test to create a stream through the JetStream API and publish into it.
 */
function natsClient(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let ready = false;
    const waiting = new Map(); // sid -> resolve
    const pongs = [];
    let sid = 0;
    const client = {
      publish(subject, payload) {
        const body = Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload));
        socket.write(`PUB ${subject} ${body.length}\r\n`);
        socket.write(body);
        socket.write('\r\n');
      },
      /** Request/reply: resolves with the JSON reply. */
      request(subject, payload) {
        const id = ++sid;
        const inbox = `_INBOX.herald.${id}`;
        const body = Buffer.from(JSON.stringify(payload));
        const reply = new Promise((r) => waiting.set(String(id), r));
        socket.write(`SUB ${inbox} ${id}\r\nPUB ${subject} ${inbox} ${body.length}\r\n`);
        socket.write(body);
        socket.write('\r\n');
        return reply.then((text) => JSON.parse(text));
      },
      /** Resolves once the server has processed everything sent before. */
      flush() {
        return new Promise((r) => {
          pongs.push(r);
          socket.write('PING\r\n');
        });
      },
      close() {
        socket.destroy();
      },
    };
    socket.on('error', (e) => (ready ? undefined : reject(e)));
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const eol = buf.indexOf('\r\n');
        if (eol < 0) return;
        const line = buf.toString('utf8', 0, eol);
        if (line.startsWith('MSG ')) {
          const parts = line.split(' ');
          const size = Number(parts[parts.length - 1]);
          if (buf.length < eol + 2 + size + 2) return;
          const payload = buf.toString('utf8', eol + 2, eol + 2 + size);
          buf = buf.subarray(eol + 2 + size + 2);
          waiting.get(parts[2])?.(payload);
          waiting.delete(parts[2]);
          continue;
        }
        buf = buf.subarray(eol + 2);
        if (line.startsWith('INFO ')) {
          socket.write('CONNECT {"verbose":false,"pedantic":false,"headers":false,"lang":"node-test","version":"0"}\r\nPING\r\n');
        } else if (line === 'PONG') {
          if (!ready) {
            ready = true;
            resolve(client);
          } else {
            pongs.shift()?.();
          }
        } else if (line === 'PING') {
          socket.write('PONG\r\n');
        } else if (line.startsWith('-ERR')) {
          if (!ready) reject(new Error(line));
        }
      }
    });
  });
}

test('NATS JetStream: a node killed mid-batch; its unacked messages are redelivered and each reaches the devices once', async () => {
  const redisServer = await startRedis();
  const nats = await startNats();
  const backendBus = await natsClient(nats.port);
  const N = 3000;
  const created = await backendBus.request('$JS.API.STREAM.CREATE.SYNC', { name: 'SYNC', subjects: ['user.*.sync'], storage: 'file' });
  assert.equal(created.error, undefined, JSON.stringify(created.error));
  const config = exampleWith(`[sources.nats]\nurl = "${nats.url}"\nstream = "SYNC"\ndurable = "herald"\nbatch = 50\nack_wait = 1\ntimeout = 2\n`);
  const args = ['--engine', 'redis', '--redis-url', redisServer.url, '--redis-prefix', 'relaynats'];
  const doomed = await startHerald(args, { config });
  const survivor = await startHerald(args, { config });
  const backend = await startBackend(survivor);
  try {
    const devs = await devices(survivor, backend);
    const [, pb] = devs.pusher;
    for (let i = 1; i <= N; i++) backendBus.publish('user.u1.sync', progress('device-a', i));
    await backendBus.flush();
    const info = async () => (await backendBus.request('$JS.API.CONSUMER.INFO.SYNC.herald', {}));
    await eventually(() => pb.progress.length >= 300, { timeout: 30000, message: () => `300 relayed before the kill (${pb.progress.length})` });
    doomed.proc.kill('SIGKILL');
    await doomed.exited;
    await assertExactlyOnce(devs, N, async () => {
      backendBus.publish('user.u1.sync', watchlist('device-a'));
      await backendBus.flush();
    });
    await eventually(async () => {
      const i = await info();
      return i.num_pending === 0 && i.num_ack_pending === 0;
    }, { timeout: 20000, message: 'every message acked' });
    // Each node pulled batches: the killed one had some in flight, which the server redelivered.
    const metrics = await (await fetch(`http://127.0.0.1:${survivor.port}/metrics`)).text();
    const redelivered = Number(metrics.match(/herald_ingest_redelivered_total\{[^}]*source="sync"[^}]*\} (\d+)/)?.[1] ?? 0);
    const repeats = Number(metrics.match(/herald_ingest_repeats_total\{[^}]*source="sync"[^}]*\} (\d+)/)?.[1] ?? 0);
    assert.ok(redelivered > 0, `the survivor saw redeliveries of the killed node's messages (metrics: ${redelivered})`);
    assert.ok(repeats <= redelivered, 'repeats are redelivered messages');
  } finally {
    backendBus.close();
    await backend.close();
    await survivor.stop();
    if (doomed.proc.exitCode === null && doomed.proc.signalCode === null) doomed.proc.kill('SIGKILL');
    await nats.stop();
    await redisServer.stop();
  }
});

// ---- PubNub: the subscribe v2 endpoint, as documented ---------------------------------------------

/**
 * The subscribe endpoint: a handshake (`tt=0`) answers the current timetoken at once; a poll answers
 * up to `perResponse` messages published after `tt` (on any requested channel, `user.*` matching
 * `user.<x>.<y>`), or an empty response with the same timetoken after `hold` ms. Records each request
 * (uuid, tt, channels) and each answer's timetoken.
 */
async function startFakePubNub({ perResponse = 100, hold = 300 } = {}) {
  const messages = []; // { tt, channel, message }
  const requests = [];
  let last = BigInt(Date.now()) * 10000n;
  const matches = (pattern, channel) => {
    if (pattern.endsWith('.*')) return channel.startsWith(pattern.slice(0, -1));
    return pattern === channel;
  };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const m = url.pathname.match(/^\/v2\/subscribe\/([^/]+)\/([^/]+)\/0$/);
    if (!m || m[1] !== 'sub-key') {
      res.writeHead(400).end('{"error":"unexpected request"}');
      return;
    }
    const channels = decodeURIComponent(m[2]).split(',').filter(Boolean);
    const tt = BigInt(url.searchParams.get('tt') ?? '0');
    const request = { uuid: url.searchParams.get('uuid'), tt, channels, answered: null };
    requests.push(request);
    const answer = (t, found) => {
      request.answered = t;
      const body = {
        t: { t: String(t), r: 1 },
        m: found.map((x) => ({ a: '1', f: 0, i: 'backend', p: { t: String(x.tt), r: 1 }, k: 'sub-key', c: x.channel, d: x.message })),
      };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (tt === 0n) {
      answer(last, []);
      return;
    }
    const deadline = Date.now() + hold;
    for (;;) {
      const found = messages.filter((x) => x.tt > tt && channels.some((c) => matches(c, x.channel))).slice(0, perResponse);
      if (found.length > 0 || Date.now() >= deadline || res.destroyed) {
        answer(found.length ? found[found.length - 1].tt : tt, found);
        return;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    requests,
    publish(channel, message) {
      last += 1n;
      messages.push({ tt: last, channel, message });
    },
    close: () =>
      new Promise((r) => {
        server.close(r);
        server.closeAllConnections();
      }),
  };
}

test('PubNub: the leader killed mid-batch; the next leader resumes from the last fully accepted timetoken, each message once', async () => {
  const redisServer = await startRedis();
  const pubnub = await startFakePubNub({ perResponse: 50 });
  const N = 2000;
  const config = (uuid) =>
    exampleWith(
      `[sources.pubnub]\norigin = "${pubnub.origin}"\nsubscribe_key = "sub-key"\nchannels = ["user.*"]\nuuid = "${uuid}"\n` +
        `lock_url = "${redisServer.url}"\nlock_ttl = 1\ntimeout = 5\n`,
    );
  const args = ['--engine', 'redis', '--redis-url', redisServer.url, '--redis-prefix', 'relaypn'];
  const doomed = await startHerald(args, { config: config('node-a') });
  // node-a leads (it polls) before node-b starts.
  await eventually(() => pubnub.requests.some((r) => r.uuid === 'node-a' && r.tt > 0n), { timeout: 10000, message: 'node-a leads' });
  const survivor = await startHerald(args, { config: config('node-b') });
  const backend = await startBackend(survivor);
  try {
    const devs = await devices(survivor, backend);
    const [, pb] = devs.pusher;
    for (let i = 1; i <= N; i++) pubnub.publish('user.u1.sync', progress('device-a', i));
    await eventually(() => pb.progress.length >= 300, { timeout: 30000, message: () => `300 relayed before the kill (${pb.progress.length})` });
    doomed.proc.kill('SIGKILL');
    await doomed.exited;
    const answeredToA = new Set(pubnub.requests.filter((r) => r.uuid === 'node-a' && r.answered !== null).map((r) => r.answered));
    await assertExactlyOnce(devs, N, async () => pubnub.publish('user.u1.sync', watchlist('device-a')));
    const firstOfB = pubnub.requests.find((r) => r.uuid === 'node-b');
    assert.ok(firstOfB, 'node-b took over');
    assert.notEqual(firstOfB.tt, 0n, 'node-b resumed from a saved timetoken (no new handshake that would skip messages)');
    assert.ok(answeredToA.has(firstOfB.tt), `node-b resumed at a timetoken node-a was answered (${firstOfB.tt})`);
  } finally {
    await backend.close();
    await survivor.stop();
    if (doomed.proc.exitCode === null && doomed.proc.signalCode === null) doomed.proc.kill('SIGKILL');
    await pubnub.close();
    await redisServer.stop();
  }
});
