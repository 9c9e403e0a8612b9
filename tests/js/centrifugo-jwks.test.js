// Centrifugo tokens verified with keys from a JWKS endpoint (`token_jwks_url`): a tiny HTTP server of
// the test serves RS256 and ES256 public keys made here; tokens name their key with `kid`. A key added
// to the set later is fetched when a token names it; tokens with unknown `kid`s don't make Herald
// fetch more than once per 10 s; a token naming a key it was not signed with is refused with 3500.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { eventually, startHerald } from './harness.js';
import { connected, disconnectCentrifuges, now, raw } from './centrifugo-harness.js';

const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const later = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });

const jwk = (pair, kid, alg) => ({ ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' });
const keys = [jwk(rsa, 'rsa-1', 'RS256'), jwk(ec, 'ec-1', 'ES256')];
let fetches = 0;
const jwksServer = http.createServer((req, res) => {
  if (req.url !== '/.well-known/jwks.json') {
    res.writeHead(404).end();
    return;
  }
  fetches++;
  res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ keys }));
});

const b64url = (buf) => Buffer.from(buf).toString('base64url');
/** A JWT whose header names its key (`kid`). */
function signed(claims, { alg, key, kid }) {
  const input = `${b64url(JSON.stringify({ alg, typ: 'JWT', kid }))}.${b64url(JSON.stringify(claims))}`;
  const sig = alg.startsWith('ES')
    ? crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
    : crypto.sign('sha256', Buffer.from(input), key);
  return `${input}.${b64url(sig)}`;
}
const claims = (user) => ({ sub: user, exp: now() + 600 });

let herald;
before(async () => {
  await new Promise((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  const config = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
token_jwks_url = "http://127.0.0.1:${jwksServer.address().port}/.well-known/jwks.json"
`;
  herald = await startHerald([], { config });
  await eventually(() => fetches >= 1, { message: 'the JWKS is fetched at start' });
});
after(async () => {
  disconnectCentrifuges();
  await herald.stop();
  jwksServer.close();
});

/** Connects raw with `token`: the connect reply, or how the socket closed. */
async function attempt(token) {
  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token } }));
  const outcome = await Promise.race([r.reply(1).then((x) => ({ reply: x })), r.waitClosed().then((c) => ({ closed: c }))]);
  r.ws.close();
  return outcome;
}
const refused = { closed: { code: 3500, reason: 'invalid token' } };

test('centrifuge-js connects with RS256 and ES256 tokens whose keys come from the JWKS', async () => {
  const a = await connected(herald, 'ann', { token: signed(claims('ann'), { alg: 'RS256', key: rsa.privateKey, kid: 'rsa-1' }) });
  assert.equal(a.state, 'connected');
  const b = await connected(herald, 'ben', { token: signed(claims('ben'), { alg: 'ES256', key: ec.privateKey, kid: 'ec-1' }) });
  assert.equal(b.state, 'connected');
});

test('a token naming a key it was not signed with, or the wrong family, is refused with 3500', async () => {
  assert.deepEqual(await attempt(signed(claims('eve'), { alg: 'RS256', key: later.privateKey, kid: 'rsa-1' })), refused);
  assert.deepEqual(await attempt(signed(claims('eve'), { alg: 'ES256', key: ec.privateKey, kid: 'rsa-1' })), refused);
  assert.deepEqual(await attempt(signed(claims('eve'), { alg: 'RS256', key: rsa.privateKey, kid: undefined })), refused, 'no kid, no PEM key');
});

test('a key added to the set is fetched when a token names it; unknown kids fetch at most once per 10 s', async () => {
  keys.push(jwk(later, 'rsa-2', 'RS256'));
  const before = fetches;
  const c = await connected(herald, 'cid', { token: signed(claims('cid'), { alg: 'RS256', key: later.privateKey, kid: 'rsa-2' }) });
  assert.equal(c.state, 'connected');
  assert.equal(fetches, before + 1, 'one fetch for the new kid');
  for (let i = 0; i < 20; i++) {
    assert.deepEqual(await attempt(signed(claims('eve'), { alg: 'RS256', key: rsa.privateKey, kid: `made-up-${i}` })), refused);
  }
  assert.equal(fetches, before + 1, 'tokens with made-up kids right after a fetch fetch nothing');
});
