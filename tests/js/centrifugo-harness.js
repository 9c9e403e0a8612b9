// Helpers for the Centrifugo front's tests: HS256/RS256 JWTs made with node:crypto (as a backend
// would with any JWT library), unmodified centrifuge-js clients over `ws`, and a raw WebSocket client
// for protocol-level checks.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Centrifuge } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';
import { eventually } from './harness.js';

export const SECRET = 'app-secret';

/**
 * A server API call to `herald` (`{ port }`) with the default app's key (its secret): `body` as an
 * object, or as the exact JSON text to send. Asserts HTTP 200; resolves with the reply.
 */
export async function serverApi(herald, method, body) {
  const res = await fetch(`http://127.0.0.1:${herald.port}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': SECRET },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  assert.equal(res.status, 200, `${method}: HTTP ${res.status}`);
  return res.json();
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** A JWT with `claims`, signed with `alg` (HMAC algorithms with `key` as the secret, RSA and ECDSA ones with a private key). */
export function jwt(claims, { key = SECRET, alg = 'HS256' } = {}) {
  const head = b64url(JSON.stringify({ alg, typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const input = `${head}.${body}`;
  let sig;
  if (alg === 'none') sig = '';
  else if (alg.startsWith('HS')) sig = crypto.createHmac(`sha${alg.slice(2)}`, key).update(input).digest();
  else if (alg.startsWith('RS')) sig = crypto.sign(`sha${alg.slice(2)}`, Buffer.from(input), key);
  else if (alg.startsWith('ES')) sig = crypto.sign(`sha${alg.slice(2)}`, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** A connection token for `user` (valid for an hour unless `exp` is given). */
export function connToken(user, extra = {}) {
  return jwt({ sub: user, exp: now() + 3600, ...extra });
}

/** A subscription token for `user` on `channel`. */
export function subToken(user, channel, extra = {}) {
  return jwt({ sub: user, channel, exp: now() + 3600, ...extra });
}

export function wsUrl(herald, app) {
  return app ? `ws://127.0.0.1:${herald.port}/apps/${app}/connection/websocket` : `ws://127.0.0.1:${herald.port}/connection/websocket`;
}

const clients = new Set();

/** A centrifuge-js client (not yet connected). */
export function centrifuge(herald, options = {}, app) {
  const { protobuf, ...rest } = options;
  const Client = protobuf ? CentrifugeProtobuf : Centrifuge;
  const c = new Client(wsUrl(herald, app), { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300, ...rest });
  clients.add(c);
  return c;
}

/** A connected centrifuge-js client of `user`. */
export async function connected(herald, user, options = {}, app) {
  const c = centrifuge(herald, { token: connToken(user), ...options }, app);
  const ready = new Promise((resolve, reject) => {
    c.once('connected', resolve);
    c.once('disconnected', (ctx) => reject(new Error(`disconnected: ${JSON.stringify(ctx)}`)));
  });
  c.connect();
  await ready;
  return c;
}

/** A subscribed subscription of `client` to `channel`. */
export async function subscribed(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  const publications = [];
  sub.on('publication', (ctx) => publications.push(ctx));
  sub.publications = publications;
  sub.subscribe();
  await sub.ready(3000);
  return sub;
}

export function disconnectCentrifuges() {
  for (const c of clients) c.disconnect();
  clients.clear();
}

/** A raw WebSocket to the Centrifugo endpoint that collects what the server sends. */
export async function raw(herald, { app, protocols } = {}) {
  const ws = new WebSocket(wsUrl(herald, app), protocols);
  const frames = [];
  let closed = null;
  ws.on('message', (data, isBinary) => frames.push(isBinary ? data : data.toString()));
  ws.on('close', (code, reason) => (closed = { code, reason: reason.toString() }));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return {
    ws,
    frames,
    closed: () => closed,
    send: (text) => ws.send(text),
    /** Replies (JSON) seen so far. */
    json: () => frames.filter((f) => typeof f === 'string').flatMap((f) => f.split('\n').filter(Boolean).map((l) => JSON.parse(l))),
    async reply(id) {
      return eventually(() => this.json().find((r) => r.id === id) || false, { message: `reply ${id}` });
    },
    async waitClosed(timeout = 3000) {
      return eventually(() => closed || false, { timeout, message: 'socket closed' });
    },
  };
}
