// Webhooks: Pusher's format and signature (verified with the pusher SDK's webhook()), event filters,
// retries, and exactly-once delivery when two nodes share Redis.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { baseConfig, connect, disconnectAll, eventually, next, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

const HOOK_APP = { id: 'hook-id', key: 'hook-key', secret: 'hook-secret' };

/** An HTTP receiver that records every webhook request; `failNext` makes it answer 500 that often. */
async function startReceiver() {
  const r = { requests: [], failNext: 0 };
  r.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (r.failNext > 0) {
        r.failNext--;
        res.writeHead(500).end();
        return;
      }
      r.requests.push({ path: req.url, headers: req.headers, body });
      res.writeHead(200).end('ok');
    });
  });
  await new Promise((ok) => r.server.listen(0, '127.0.0.1', ok));
  r.url = `http://127.0.0.1:${r.server.address().port}`;
  r.events = (path) => r.requests.filter((q) => q.path === path).flatMap((q) => JSON.parse(q.body).events);
  r.close = () => new Promise((ok) => { r.server.close(ok); r.server.closeAllConnections(); });
  return r;
}

function configWithHooks(url) {
  return `${baseConfig()}
[[apps]]
id = "hook-id"
key = "hook-key"
secret = "hook-secret"
enable_client_messages = true
[[apps.webhooks]]
url = "${url}/all"
[[apps.webhooks]]
url = "${url}/occupancy"
event_types = ["channel_occupied", "channel_vacated"]
`;
}

const waitFor = (check, ms = 5000) => eventually(check, { timeout: ms, interval: 25, message: 'webhooks not received' });

const names = (events, channel) => events.filter((e) => e.channel === channel).map((e) => e.name + (e.user_id ? `:${e.user_id}` : ''));

let receiver, herald, backend, api;
before(async () => {
  receiver = await startReceiver();
  herald = await startHerald([], { config: configWithHooks(receiver.url) });
  backend = await startBackend(herald, HOOK_APP);
  api = sdk(herald, HOOK_APP);
});
after(async () => {
  disconnectAll();
  await backend.close();
  await herald.stop();
  await receiver.close();
});

test('presence lifecycle, client events and cache misses, signed as the SDK expects', async () => {
  const alice = await connect(herald, backend, 'alice', { app: HOOK_APP });
  const aliceSocket = alice.connection.socket_id;
  const ra = await subscribe(alice, 'presence-hooks');
  const bob = await connect(herald, backend, 'bob', { app: HOOK_APP });
  const rb = await subscribe(bob, 'presence-hooks');
  const whisper = next(rb, 'client-typing');
  ra.trigger('client-typing', { on: true });
  await whisper;
  await subscribe(alice, 'cache-scores');
  alice.disconnect();
  bob.disconnect();

  await waitFor(() => names(receiver.events('/all'), 'presence-hooks').includes('channel_vacated'));
  const all = receiver.events('/all');
  const lifecycle = names(all, 'presence-hooks').filter((n) => !n.startsWith('subscription_count'));
  assert.deepEqual(lifecycle.slice(0, 4), ['channel_occupied', 'member_added:alice', 'member_added:bob', 'client_event:alice']);
  // Both clients close at once: the server may see either go first.
  assert.deepEqual(lifecycle.slice(4, 6).sort(), ['member_removed:alice', 'member_removed:bob']);
  assert.deepEqual(lifecycle.slice(6), ['channel_vacated']);
  const client = all.find((e) => e.name === 'client_event');
  assert.equal(client.event, 'client-typing');
  assert.deepEqual(JSON.parse(client.data), { on: true });
  assert.equal(client.socket_id, aliceSocket);
  assert.ok(all.some((e) => e.name === 'cache_miss' && e.channel === 'cache-scores'));
  assert.ok(all.some((e) => e.name === 'subscription_count' && e.channel === 'presence-hooks' && e.subscription_count === 2));

  // The filtered target got only occupancy events.
  await waitFor(() => receiver.events('/occupancy').some((e) => e.name === 'channel_vacated' && e.channel === 'presence-hooks'));
  assert.ok(receiver.events('/occupancy').every((e) => ['channel_occupied', 'channel_vacated'].includes(e.name)));

  // Every request verifies with the pusher SDK (key, HMAC signature, exact content type).
  for (const req of receiver.requests) {
    assert.equal(req.headers['content-type'], 'application/json');
    const hook = api.webhook({ headers: req.headers, rawBody: req.body });
    assert.ok(hook.isValid(), `invalid webhook ${req.body}`);
    assert.ok(Number.isInteger(hook.getTime().getTime()));
  }
});

test('a failed delivery is retried', async () => {
  receiver.failNext = 2;
  const p = await connect(herald, backend, 'carol', { app: HOOK_APP });
  await subscribe(p, 'retry-me');
  await waitFor(() => names(receiver.events('/all'), 'retry-me').includes('channel_occupied'), 8000);
  assert.equal(receiver.failNext, 0);
});

test('with two nodes on Redis each webhook fires once for the cluster', async () => {
  const redis = await startRedis();
  const hooks = await startReceiver();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'hooks'];
  const config = { config: configWithHooks(hooks.url) };
  const [n1, n2] = await Promise.all([startHerald(args, config), startHerald(args, config)]);
  const [b1, b2] = await Promise.all([startBackend(n1, HOOK_APP), startBackend(n2, HOOK_APP)]);
  try {
    const tab1 = await connect(n1, b1, 'dana', { app: HOOK_APP });
    await subscribe(tab1, 'presence-cluster-hooks');
    const tab2 = await connect(n2, b2, 'dana', { app: HOOK_APP });
    await subscribe(tab2, 'presence-cluster-hooks');
    tab1.disconnect();
    // Tab 1's leave is counted by the cluster before tab 2 leaves.
    const subscriptions = async () =>
      (await (await sdk(n2, HOOK_APP).get({ path: '/channels/presence-cluster-hooks', params: { info: 'subscription_count' } })).json()).subscription_count;
    await eventually(async () => (await subscriptions()) === 1, { message: "tab 1's leave counted" });
    tab2.disconnect();
    await waitFor(() => names(hooks.events('/all'), 'presence-cluster-hooks').includes('channel_vacated'));
    // A barrier: each node's webhooks are sent in order, so once a channel occupied and vacated on
    // each node has been reported, every webhook either node queued before has arrived.
    for (const [node, backend, channel] of [[n1, b1, 'marker-hooks-1'], [n2, b2, 'marker-hooks-2']]) {
      const p = await connect(node, backend, 'marker', { app: HOOK_APP });
      await subscribe(p, channel);
      p.disconnect();
    }
    await waitFor(() => ['marker-hooks-1', 'marker-hooks-2'].every((c) => names(hooks.events('/all'), c).includes('channel_vacated')));
    assert.deepEqual(
      names(hooks.events('/all'), 'presence-cluster-hooks').filter((n) => !n.startsWith('subscription_count')),
      ['channel_occupied', 'member_added:dana', 'member_removed:dana', 'channel_vacated'],
    );
  } finally {
    disconnectAll();
    await Promise.all([b1.close(), b2.close()]);
    await Promise.all([n1.stop(), n2.stop()]);
    await hooks.close();
    await redis.stop();
  }
});
