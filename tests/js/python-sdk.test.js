// The documented dev app works with the Python server SDK (PyPI `pusher`, which accepts only numeric
// app ids) out of the box: `herald` with no config, the SDK publishing, querying and signing a private
// channel, pusher-js receiving. scripts/test makes the virtualenv and sets HERALD_PYTHON.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { HERALD_BIN, PusherJs, eventually, freePort, next } from './harness.js';

const PYTHON = process.env.HERALD_PYTHON;
const skip = PYTHON ? false : 'HERALD_PYTHON is not set (scripts/test makes a virtualenv with PyPI pusher)';
const run = promisify(execFile);

let herald;
before(async () => {
  if (skip) return;
  const port = await freePort();
  // No config file and no flags but the port: the dev app exactly as the README's first command serves it.
  const proc = spawn(HERALD_BIN, ['--port', String(port), '--log', 'warn'], { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  await eventually(async () => (await fetch(`http://127.0.0.1:${port}/up`).catch(() => ({ ok: false }))).ok, {
    timeout: 10000,
    message: 'herald answers /up',
  });
  herald = { port, proc, exited };
});
after(async () => {
  if (!herald) return;
  herald.proc.kill('SIGTERM');
  await herald.exited;
});

/** Runs `code` with the SDK client `c` made for the dev app; returns what it printed, as JSON. */
async function python(code) {
  const script = `
import json, pusher
c = pusher.Pusher(app_id='1', key='app-key', secret='app-secret', host='127.0.0.1', port=${herald.port}, ssl=False)
${code}
`;
  const { stdout } = await run(PYTHON, ['-c', script]);
  return JSON.parse(stdout);
}

test('the Python SDK publishes to, queries and authorizes for the default dev app', { skip }, async () => {
  const client = new PusherJs('app-key', {
    cluster: 'mt1', wsHost: '127.0.0.1', wsPort: herald.port, forceTLS: false, enabledTransports: ['ws'], disableStats: true,
    channelAuthorization: {
      // The backend's auth endpoint, done by the Python SDK.
      customHandler: ({ socketId, channelName }, callback) => {
        python(`print(json.dumps(c.authenticate(channel='${channelName}', socket_id='${socketId}')))`).then(
          (auth) => callback(null, auth),
          (e) => callback(e, null),
        );
      },
    },
  });
  try {
    const news = client.subscribe('news');
    await next(news, 'pusher:subscription_succeeded', 5000);
    const secret = client.subscribe('private-python');
    await next(secret, 'pusher:subscription_succeeded', 10000);

    const got = next(news, 'from-python', 5000);
    const sent = await python(`print(json.dumps(c.trigger('news', 'from-python', {'n': 1})))`);
    assert.deepEqual(sent, {});
    assert.deepEqual(await got, { n: 1 });

    const info = await python(`print(json.dumps(c.channel_info('news', ['subscription_count'])))`);
    assert.deepEqual(info, { occupied: true, subscription_count: 1 });
    const channels = await python(`print(json.dumps(c.channels_info()))`);
    assert.deepEqual(Object.keys(channels.channels).sort(), ['news', 'private-python']);
  } finally {
    client.disconnect();
  }
});
