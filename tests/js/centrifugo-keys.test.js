// Centrifugo tokens signed with keys: RS256 and ES256 accepted with the app's PEM public keys; an
// HS256 token "signed" with the RSA public key as its secret (algorithm confusion), alg none, an
// RS256 token of another key and a wrong audience are all refused with 3500.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startHerald } from './harness.js';
import { disconnectCentrifuges, jwt, now, raw } from './centrifugo-harness.js';

const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const pem = (k) => k.export({ type: 'spki', format: 'pem' });

const CONFIG = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
token_rsa_public_key = """
${pem(rsa.publicKey)}"""
token_ecdsa_public_key = """
${pem(ec.publicKey)}"""
token_audience = "herald-tests"
`;

let herald;
before(async () => {
  herald = await startHerald([], { config: CONFIG });
});
after(async () => {
  disconnectCentrifuges();
  await herald.stop();
});

/** Connects raw with `token`: the connect reply, or how the socket closed. */
async function attempt(token) {
  const r = await raw(herald);
  r.send(JSON.stringify({ id: 1, connect: { token } }));
  const outcome = await Promise.race([r.reply(1).then((x) => ({ reply: x })), r.waitClosed().then((c) => ({ closed: c }))]);
  r.ws.close();
  return outcome;
}

const claims = (extra = {}) => ({ sub: 'kay', exp: now() + 60, aud: 'herald-tests', ...extra });

test('RS256 and ES256 tokens verify with the configured public keys', async () => {
  for (const [alg, key] of [
    ['RS256', rsa.privateKey],
    ['RS512', rsa.privateKey],
    ['ES256', ec.privateKey],
  ]) {
    const outcome = await attempt(jwt(claims(), { alg, key }));
    assert.equal(typeof outcome.reply?.connect?.client, 'string', `${alg}: ${JSON.stringify(outcome)}`);
  }
});

test('algorithm confusion, alg none, another key and a wrong audience close with 3500', async () => {
  const refused = { closed: { code: 3500, reason: 'invalid token' } };
  const publicPem = pem(rsa.publicKey);
  assert.deepEqual(await attempt(jwt(claims(), { alg: 'HS256', key: publicPem })), refused, 'HS256 with the RSA public key as secret');
  assert.deepEqual(await attempt(jwt(claims(), { alg: 'none' })), refused, 'alg none');
  assert.deepEqual(await attempt(jwt(claims(), { alg: 'RS256', key: other.privateKey })), refused, 'another RSA key');
  assert.deepEqual(await attempt(jwt(claims({ aud: 'someone-else' }), { alg: 'RS256', key: rsa.privateKey })), refused, 'wrong audience');
  assert.deepEqual(await attempt('a.b.c'), refused, 'garbage');
  // The HMAC secret still works (with the audience).
  const hs = await attempt(jwt(claims()));
  assert.equal(typeof hs.reply?.connect?.client, 'string');
});
