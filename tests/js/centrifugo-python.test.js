// The Centrifugo front with unmodified PyPI clients: `centrifuge-python` (JSON and protobuf) connects
// with a JWT, subscribes, publishes, asks presence and history and recovers what it missed, and the
// server-API SDK `cent` calls every server API method, with centrifuge-python receiving. The checks
// are Python scripts in tests/python (each exits non-zero on a failed check and prints a JSON summary);
// scripts/test makes the virtualenv with both packages and sets HERALD_PYTHON.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startHerald } from './harness.js';

const PYTHON = process.env.HERALD_PYTHON;
const skip = PYTHON ? false : 'HERALD_PYTHON is not set (scripts/test makes a virtualenv with centrifuge-python and cent)';
const run = promisify(execFile);
const SCRIPTS = fileURLToPath(new URL('../python/', import.meta.url));
const API_KEY = 'python-api-key';
const CONFIG = `
log = "warn"
centrifugo_expired_grace = 1
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
api_key = "${API_KEY}"
[apps.channel_options]
presence = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
[[apps.namespaces]]
name = "hist"
presence = true
history_size = 100
history_ttl = "300s"
allow_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

let herald;
before(async () => {
  if (skip) return;
  herald = await startHerald([], { config: CONFIG });
});
after(async () => {
  if (herald) await herald.stop();
});

/** Runs tests/python/`script` against the server; its JSON summary (stderr shown on failure). */
async function python(script, env = {}) {
  try {
    const { stdout } = await run(PYTHON, [script], {
      cwd: SCRIPTS,
      timeout: 120000,
      env: { ...process.env, HERALD_URL: `http://127.0.0.1:${herald.port}`, HERALD_API_KEY: API_KEY, HERALD_SECRET: 'app-secret', ...env },
    });
    return JSON.parse(stdout.trim().split('\n').pop());
  } catch (e) {
    assert.fail(`${script} failed:\n${e.stderr || e.message}`);
  }
}

for (const protobuf of [false, true]) {
  test(`centrifuge-python (${protobuf ? 'protobuf' : 'JSON'}): JWT connect, subscribe, publish, presence, history, recovery after reconnect`, { skip }, async () => {
    const summary = await python('test_centrifuge_client.py', { HERALD_PROTOBUF: protobuf ? '1' : '0' });
    assert.equal(summary.protobuf, protobuf);
    assert.deepEqual(summary.recovered, [3, 4, 5]);
  });
}

test('cent (PyPI): every server API method, with centrifuge-python receiving; a wrong key is refused', { skip }, async () => {
  const summary = await python('test_cent_api.py');
  assert.deepEqual(summary.checked, [
    'publish', 'history', 'broadcast', 'presence', 'presence_stats', 'channels', 'info', 'history_remove',
    'subscribe', 'unsubscribe', 'refresh', 'disconnect', 'unauthorized',
  ]);
});
