// TLS with unmodified clients: Herald serves wss:// and https:// with a self-signed certificate this
// test makes with openssl. pusher-js (in a child Node process that trusts the certificate through
// NODE_EXTRA_CA_CERTS, as an operator's client would trust their CA) connects over wss://, and the
// `pusher` server SDK publishes over https:// trusting the same certificate. SIGHUP reloads a renewed
// certificate without dropping the connected client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { APPS, HERALD_BIN, eventually, freePort, sdk } from './harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-tls-'));
const certPath = path.join(dir, 'cert.pem');
const keyPath = path.join(dir, 'key.pem');

/** A self-signed certificate for 127.0.0.1, written to the served paths; returns its PEM. */
function makeCert(name) {
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth',
    '-keyout', keyPath, '-out', certPath,
  ], { stdio: 'ignore' });
  return fs.readFileSync(certPath, 'utf8');
}

/** The certificate the server presents now (its SHA-256 fingerprint). */
function servedFingerprint(port, ca) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: undefined }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
}

function fingerprint(pem) {
  return new crypto.X509Certificate(pem).fingerprint256;
}

let herald;
let firstPem;

before(async () => {
  firstPem = makeCert('first');
  const port = await freePort();
  const proc = spawn(HERALD_BIN, ['--port', String(port), '--app-id', APPS.main.id, '--tls-cert', certPath, '--tls-key', keyPath, '--log', 'warn'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  const agent = new https.Agent({ ca: firstPem });
  const up = () =>
    new Promise((resolve) => {
      https.get({ host: '127.0.0.1', port, path: '/up', agent }, (res) => resolve(res.statusCode === 200)).on('error', () => resolve(false));
    });
  await eventually(up, { timeout: 10000, interval: 50, message: 'herald answers https://127.0.0.1/up' });
  herald = { port, proc, exited };
});

after(async () => {
  if (herald.proc.exitCode === null) herald.proc.kill('SIGTERM');
  await herald.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

/** pusher-js over wss:// in a child Node that trusts `caPath`; reports its events as JSON lines. */
function pusherJsChild(caPath) {
  const script = `
    import PusherJs from 'pusher-js';
    const pusher = new PusherJs(${JSON.stringify(APPS.main.key)}, {
      cluster: 'mt1', wsHost: '127.0.0.1', wssPort: ${herald.port}, forceTLS: true,
      enabledTransports: ['ws'], disableStats: true,
    });
    const say = (o) => console.log(JSON.stringify(o));
    pusher.connection.bind('state_change', (s) => say({ state: s.current }));
    pusher.connection.bind('error', (e) => say({ error: String(e && e.error && e.error.data ? JSON.stringify(e.error.data) : e) }));
    pusher.subscribe('news').bind('pusher:subscription_succeeded', () => say({ subscribed: true }))
      .bind('hello', (data) => say({ event: data }));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: here,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: caPath },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const seen = [];
  let buffer = '';
  child.stdout.on('data', (chunk) => {
    buffer += chunk;
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      seen.push(JSON.parse(buffer.slice(0, i)));
      buffer = buffer.slice(i + 1);
    }
  });
  return { child, seen };
}

test('pusher-js connects over wss:// and receives events published over https://, across a certificate reload', async () => {
  const caPath = path.join(dir, 'trusted-first.pem');
  fs.writeFileSync(caPath, firstPem);
  const { child, seen } = pusherJsChild(caPath);
  try {
    await eventually(() => seen.some((s) => s.subscribed), {
      timeout: 10000,
      message: () => `pusher-js subscribed over wss:// (saw ${JSON.stringify(seen)})`,
    });
    assert.ok(seen.some((s) => s.state === 'connected'));

    const publisher = (ca) => sdk(herald, APPS.main, { useTLS: true, agent: new https.Agent({ ca }) });
    const first = await publisher(firstPem).trigger('news', 'hello', { n: 1 });
    assert.equal(first.status, 200);
    await eventually(() => seen.some((s) => s.event && s.event.n === 1), { message: 'the first event arrived over wss://' });

    // Renew the certificate and reload with SIGHUP: new handshakes get it, the connected client stays.
    const secondPem = makeCert('second');
    herald.proc.kill('SIGHUP');
    await eventually(async () => (await servedFingerprint(herald.port, secondPem)) === fingerprint(secondPem), {
      timeout: 5000,
      message: 'the renewed certificate is served after SIGHUP',
    });
    const second = await publisher(secondPem).trigger('news', 'hello', { n: 2 });
    assert.equal(second.status, 200);
    await eventually(() => seen.some((s) => s.event && s.event.n === 2), { message: 'the client connected before the reload still gets events' });
    const states = seen.filter((s) => s.state).map((s) => s.state);
    assert.deepEqual(states.slice(states.indexOf('connected')), ['connected'], `the client was never disconnected: ${states}`);
  } finally {
    child.kill();
  }
});
