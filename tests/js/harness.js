// Test harness: starts a real `herald` process and a backend whose auth endpoints use the `pusher`
// server SDK (authorizeChannel / authenticateUser), as a real application would.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import PusherServer from 'pusher';
import PusherJs from 'pusher-js';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const HERALD_BIN = process.env.HERALD_BIN || path.join(here, '..', '..', 'target', 'debug', 'herald');

export const APPS = {
  main: { id: 'app-id', key: 'app-key', secret: 'app-secret' },
  stream: { id: 'stream-id', key: 'stream-key', secret: 'stream-secret' },
  tiny: { id: 'tiny-id', key: 'tiny-key', secret: 'tiny-secret' },
  off: { id: 'off-id', key: 'off-key', secret: 'off-secret' },
};

// 32 bytes, base64: the key the SDK derives per-channel encryption keys from.
/** The test config, for tests that add to it (e.g. an app with webhooks, appended last). */
export function baseConfig() {
  return CONFIG;
}

export const ENCRYPTION_MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

const CONFIG = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_client_messages = true
enable_user_authentication = true
client_events_per_second = 10

[[apps]]
id = "stream-id"
key = "stream-key"
secret = "stream-secret"
enable_subscription_count = true
enable_client_messages = true

[[apps]]
id = "tiny-id"
key = "tiny-key"
secret = "tiny-secret"
max_connections = 3
max_presence_members = 2
max_presence_member_size = 64
enable_client_messages = false

[[apps]]
id = "off-id"
key = "off-key"
secret = "off-secret"
enabled = false
`;

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `check` (sync or async) until it passes, and fails the test if it has not passed by the
 * deadline. This is the one way these tests wait for something to become true: never a fixed sleep
 * followed by a positive assertion.
 *
 * `check` passes when it returns without throwing and its result is either truthy or `undefined`, so
 * both styles work: a predicate (`() => seen.length === 3`; it must return a boolean, not the result of
 * `find`, which is `undefined` when nothing matched) and an assertion callback
 * (`() => assert.deepEqual(seen, [1, 2])`, retried until it stops throwing; the last assertion error is
 * reported, with its diff, at the deadline). `message` (a string, or a function called at the deadline
 * to describe what was seen) says what was awaited. Resolves with `check`'s last result.
 */
export async function eventually(check, { timeout = 3000, interval = 20, message = 'condition not reached' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let failure;
    try {
      const result = await check();
      if (result === undefined || result) return result;
    } catch (e) {
      failure = e;
    }
    if (Date.now() >= deadline) {
      const why = failure ? `: ${failure.message}` : '';
      const what = typeof message === 'function' ? message() : message;
      const error = new assert.AssertionError({ message: `${what} (within ${timeout} ms)${why}` });
      if (failure) error.cause = failure;
      throw error;
    }
    await sleep(interval);
  }
}

/** Starts herald with the test config; resolves once /up answers. */
export async function startHerald(extraArgs = [], { config = CONFIG } = {}) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-'));
  const configPath = path.join(dir, 'herald.toml');
  fs.writeFileSync(configPath, config);
  const proc = spawn(HERALD_BIN, ['--config', configPath, '--port', String(port), ...extraArgs], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  // A herald that exits (bad config, port taken) fails the start at once.
  const died = exited.then((r) => Promise.reject(new Error(`herald exited before answering /up: ${JSON.stringify(r)}`)));
  died.catch(() => {}); // the normal exit, at the end of the test, is not an error
  const up = async () => (await fetch(`http://127.0.0.1:${port}/up`)).ok;
  await Promise.race([eventually(up, { timeout: 10000, interval: 50, message: `herald answers /up on port ${port}` }), died]);
  return {
    port,
    proc,
    exited,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

/** A `redis-server` of the test's own on a free port (no persistence). */
export async function startRedis(fixedPort) {
  const port = fixedPort ?? (await freePort());
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  const accepts = () =>
    new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
  await eventually(accepts, { timeout: 5000, interval: 50, message: `redis-server accepts on port ${port}` });
  return {
    port,
    proc,
    url: `redis://127.0.0.1:${port}`,
    /** Freezes the server (SIGSTOP): connections stay open but nothing is answered, as in a stall. */
    pause() {
      proc.kill('SIGSTOP');
    },
    /** Undoes `pause` (SIGCONT). */
    resume() {
      if (proc.exitCode === null) proc.kill('SIGCONT');
    },
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGKILL');
        // A SIGKILLed stopped process dies too, but continue it so nothing is left waiting on it.
        proc.kill('SIGCONT');
      }
      await exited;
    },
  };
}

/** A `pusher` SDK client for one app of the running herald. */
export function sdk(herald, app = APPS.main, extra = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(herald.port),
    useTLS: false,
    ...extra,
  });
}

function readBody(req) {
  return new Promise((resolve) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => resolve(body));
  });
}

/**
 * The application backend: `/pusher/auth` and `/pusher/user-auth`. The user is named by the
 * `x-user-id` header; channels containing `forbidden` are refused with 403, and channels containing
 * `forged` get a signature made with the wrong secret (so Herald must reject it). `routes` maps extra
 * paths to static `{ type, body }` responses (the browser test serves its page and pusher-js this way).
 */
export async function startBackend(herald, app = APPS.main, routes = {}) {
  const signer = sdk(herald, app, { encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY });
  const forger = new PusherServer({ appId: app.id, key: app.key, secret: 'not-the-secret', host: '127.0.0.1' });
  const server = http.createServer(async (req, res) => {
    const extra = routes[req.url];
    if (extra) {
      res.writeHead(200, { 'content-type': extra.type }).end(extra.body);
      return;
    }
    const params = new URLSearchParams(await readBody(req));
    const socketId = params.get('socket_id');
    const user = req.headers['x-user-id'] || 'anonymous';
    const name = req.headers['x-user-name'] || user;
    let reply;
    if (req.url === '/pusher/auth') {
      const channel = params.get('channel_name');
      if (channel.includes('forbidden')) {
        res.writeHead(403).end('forbidden');
        return;
      }
      const who = channel.startsWith('presence-') ? { user_id: user, user_info: { name } } : undefined;
      reply = (channel.includes('forged') ? forger : signer).authorizeChannel(socketId, channel, who);
    } else if (req.url === '/pusher/user-auth') {
      // `x-device-id` names the client's device: Herald excludes it from messages that originate there.
      const device = req.headers['x-device-id'];
      reply = signer.authenticateUser(socketId, device ? { id: user, name, device_id: device } : { id: user, name });
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    close: () =>
      new Promise((r) => {
        server.close(r);
        server.closeAllConnections();
      }),
  };
}

/** Options every pusher-js client here uses (unmodified pusher-js, pointed at herald). */
export function clientOptions(herald, backend, user, { userName, device, ...extra } = {}) {
  const headers = user ? { 'x-user-id': user } : {};
  if (userName) headers['x-user-name'] = userName;
  if (device) headers['x-device-id'] = device;
  return {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: backend ? { endpoint: `${backend.url}/pusher/auth`, transport: 'ajax', headers } : undefined,
    userAuthentication: backend ? { endpoint: `${backend.url}/pusher/user-auth`, transport: 'ajax', headers } : undefined,
    ...extra,
  };
}

const clients = new Set();

/** A connected pusher-js client. */
export async function connect(herald, backend, user, { app = APPS.main, ...extra } = {}) {
  const pusher = new PusherJs(app.key, clientOptions(herald, backend, user, extra));
  clients.add(pusher);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('connect timed out')), 5000);
    pusher.connection.bind('connected', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return pusher;
}

/** Disconnects every client made by `connect`. */
export function disconnectAll() {
  for (const c of clients) c.disconnect();
  clients.clear();
}

/** Resolves with the next `event` on `target` (a channel, connection or user facade). */
export function next(target, event, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.unbind(event, handler);
      reject(new Error(`timed out waiting for ${event}`));
    }, ms);
    function handler(data) {
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve(data);
    }
    target.bind(event, handler);
  });
}

/** Collects every `event` on `target` into an array. */
export function collect(target, event) {
  const seen = [];
  target.bind(event, (data) => seen.push(data));
  return seen;
}

/** Subscribes and waits for success (or rejects on subscription_error). */
export function subscribe(pusher, name) {
  const channel = pusher.subscribe(name);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`subscribe ${name} timed out`)), 3000);
    channel.bind('pusher:subscription_succeeded', () => {
      clearTimeout(timer);
      resolve(channel);
    });
    channel.bind('pusher:subscription_error', (err) => {
      clearTimeout(timer);
      const e = new Error(`subscription_error on ${name}`);
      e.detail = err;
      reject(e);
    });
  });
}

/**
 * A round trip through the server: sends `pusher:ping` and resolves on the `pusher:pong`. The server
 * handles a connection's frames in order, so once the pong is back every frame this client sent
 * before has been handled (its relays queued to other connections), and everything queued to this
 * client before the pong has been delivered. Tests use it as a barrier before negative assertions.
 */
export function roundTrip(pusher, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pusher.connection.unbind('message', onMessage);
      reject(new Error('timed out waiting for pusher:pong'));
    }, ms);
    function onMessage(m) {
      if (m.event !== 'pusher:pong') return;
      clearTimeout(timer);
      pusher.connection.unbind('message', onMessage);
      resolve();
    }
    pusher.connection.bind('message', onMessage);
    pusher.send_event('pusher:ping', {});
  });
}

/**
 * A plain WebSocket client (the `ws` package) speaking the Pusher protocol by hand, for what
 * pusher-js hides: raw frames, ordering of replies, close codes. Resolves once
 * `pusher:connection_established` arrived. Every received frame is kept in `frames` (with `data`
 * parsed when it is a JSON string); `closed` resolves with `{ code, reason }`.
 */
export async function rawClient(herald, { key = APPS.main.key, protocol = 7 } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${herald.port}/app/${key}?protocol=${protocol}&client=js&version=8.4.0`);
  const waiters = new Set();
  const c = {
    ws,
    frames: [],
    closed: new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))),
    /** Sends one Pusher message. */
    send(event, data = {}, channel) {
      ws.send(JSON.stringify(channel === undefined ? { event, data } : { event, data, channel }));
    },
    /** Resolves with the first frame (received so far or later) for which `match` is true. */
    frame(match, ms = 3000, what = 'frame') {
      const seen = c.frames.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          match,
          resolve(f) {
            clearTimeout(timer);
            resolve(f);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`timed out waiting for ${what}`));
        }, ms);
        waiters.add(waiter);
      });
    },
    close() {
      ws.terminate();
    },
  };
  ws.on('error', () => {}); // reported through `closed` (code 1006)
  ws.on('message', (raw) => {
    let f;
    try {
      f = JSON.parse(raw.toString());
    } catch {
      f = { event: null, raw: raw.toString() }; // kept, so a test can see the server sent garbage
    }
    if (typeof f.data === 'string') {
      try {
        f.data = JSON.parse(f.data);
      } catch {}
    }
    c.frames.push(f);
    for (const w of waiters) {
      if (w.match(f)) {
        waiters.delete(w);
        w.resolve(f);
      }
    }
  });
  c.established = (await Promise.race([c.frame((f) => f.event === 'pusher:connection_established', 5000, 'connection_established'), c.closed.then((e) => Promise.reject(new Error(`closed ${e.code} before connection_established`)))])).data;
  return c;
}

export { PusherJs, WebSocket };

/** A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin. */
function pgBin(name) {
  for (const dir of (process.env.PATH || '').split(':')) {
    if (dir && fs.existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root) ? fs.readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const p = path.join(root, v, 'bin', name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found: install PostgreSQL (Debian: apt-get install postgresql)`);
}

/**
 * A PostgreSQL cluster of the test's own: initdb in a temp dir and pg_ctl on a free port (never a shared
 * server). As root, it runs as the `postgres` user (PostgreSQL refuses root). `sql(text)` runs psql.
 */
export async function startPostgres() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-pg-'));
  const asPostgres = process.getuid?.() === 0;
  if (asPostgres) {
    const ids = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    fs.chownSync(dir, Number(ids.stdout.trim()), Number(gid.stdout.trim()));
  }
  const run = (program, args) => {
    const [cmd, all] = asPostgres ? ['runuser', ['-u', 'postgres', '--', pgBin(program), ...args]] : [pgBin(program), args];
    const r = spawnSync(cmd, all, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${program} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const data = path.join(dir, 'data');
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'herald', '--no-sync', '-E', 'UTF8']);
  let port;
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    try {
      run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-t', '30', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
      break;
    } catch (e) {
      if (attempt >= 4) throw e;
    }
  }
  return {
    port,
    url: `host=127.0.0.1 port=${port} user=herald dbname=postgres`,
    /** Runs `text` with psql; its output (unaligned, tuples only). */
    sql(text) {
      const r = spawnSync(pgBin('psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'herald', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-qAt', '-c', text], {
        encoding: 'utf8',
      });
      if (r.status !== 0) throw new Error(`psql: ${r.stderr}`);
      return r.stdout.trim();
    },
    stop() {
      try {
        run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
      } catch {
        // already stopped
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
