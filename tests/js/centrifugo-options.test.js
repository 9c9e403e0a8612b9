// Centrifugo channel options and delivery guarantees with the unmodified centrifuge-js client, on two
// Redis-backed nodes: no publication lost or repeated between the engine subscribe and the subscribe
// reply (a publisher hammering the channel through one node while clients subscribe with recovery on
// the other), client publish rate limits (error 111), and join/leave pushes only to subscriptions
// that asked for them unless `force_push_join_leave`, and viewer counts (cluster-wide, coalesced
// above 100 subscribers).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, startHerald, startRedis } from './harness.js';
import { connected, disconnectCentrifuges, serverApi, subscribed } from './centrifugo-harness.js';

const CONFIG = `
log = "warn"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"

[apps.channel_options]
presence = true
join_leave = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true

[[apps.namespaces]]
name = "race"
history_size = 10000
history_ttl = "300s"
allow_recovery = true
allow_positioning = true
allow_subscribe_for_client = true

[[apps.namespaces]]
name = "limited"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
client_publish_limits = { per_connection = 3, per_user = 100, window = "10s" }

[[apps.namespaces]]
name = "live"
viewer_counts = true
allow_subscribe_for_client = true

[[apps.namespaces]]
name = "forced"
presence = true
join_leave = true
force_push_join_leave = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
`;

// `herald` serves the clients; `publisher` (the other node) takes the API publishes.
let redis, herald, publisher;
before(async () => {
  redis = await startRedis();
  const args = ['--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'cfopt'];
  [herald, publisher] = await Promise.all([startHerald(args, { config: CONFIG }), startHerald(args, { config: CONFIG })]);
});
after(async () => {
  disconnectCentrifuges();
  await Promise.all([herald.stop(), publisher.stop()]);
  await redis.stop();
});

test('subscribing with recovery while a publisher hammers the channel: every offset once, in order', async () => {
  const channel = 'race:hammer';
  const first = await serverApi(publisher, 'publish', { channel, data: { n: 0 } });
  const epoch = first.result.epoch;
  let running = true;
  let last = first.result.offset;
  // Four publishers in parallel, each publishing as fast as the API answers.
  const publishers = Array.from({ length: 8 }, async () => {
    while (running) {
      const r = await serverApi(publisher, 'publish', { channel, data: { n: 1 } });
      last = Math.max(last, r.result.offset);
    }
  });
  // Clients subscribe one after another mid-stream, each recovering from the offset published just
  // before (so the engine subscribe, the history read and the reply all race the publications).
  const subs = [];
  for (let i = 0; i < 30; i++) {
    const since = last;
    const client = await connected(herald, `racer-${i}`);
    const sub = await subscribed(client, channel, { since: { offset: since, epoch } });
    subs.push({ sub, since });
    await new Promise((r) => setTimeout(r, 10));
  }
  running = false;
  await Promise.all(publishers);
  const end = last;
  for (const { sub, since } of subs) {
    await eventually(() => sub.publications.length > 0 && sub.publications.at(-1).offset >= end, {
      timeout: 10000,
      message: `subscriber from ${since} reached ${end}`,
    });
    const offsets = sub.publications.map((p) => p.offset);
    const expected = Array.from({ length: end - since }, (_, k) => since + 1 + k);
    assert.deepEqual(offsets, expected, `subscriber from offset ${since}: every offset once, in order`);
  }
});

test('a positioned subscription without recovery starts right after its reply position', async () => {
  const channel = 'race:positioned';
  let running = true;
  let last = (await serverApi(publisher, 'publish', { channel, data: {} })).result.offset;
  const publishing = (async () => {
    while (running) last = (await serverApi(publisher, 'publish', { channel, data: {} })).result.offset;
  })();
  const subs = [];
  for (let i = 0; i < 6; i++) {
    const client = await connected(herald, `pos-${i}`);
    const sub = client.newSubscription(channel, { positioned: true });
    const publications = [];
    sub.on('publication', (ctx) => publications.push(ctx.offset));
    const reply = new Promise((resolve) => sub.once('subscribed', resolve));
    sub.subscribe();
    const ctx = await reply;
    subs.push({ publications, start: ctx.streamPosition.offset });
  }
  running = false;
  await publishing;
  const end = last;
  for (const { publications, start } of subs) {
    await eventually(() => publications.at(-1) >= end || start >= end, { timeout: 10000, message: 'caught up' });
    const expected = Array.from({ length: end - start }, (_, k) => start + 1 + k);
    assert.deepEqual(publications, expected, `after position ${start}: every later offset once, in order`);
  }
});

test('client publishes beyond the namespace limit are refused with 111 "too many requests"', async () => {
  const client = await connected(herald, 'chatty');
  const sub = await subscribed(client, 'limited:room');
  for (let i = 0; i < 3; i++) await sub.publish({ i });
  await assert.rejects(sub.publish({ i: 4 }), (e) => e.code === 111 && e.message === 'too many requests');
  // Another connection of another user has its own window.
  const other = await connected(herald, 'quiet');
  const sub2 = await subscribed(other, 'limited:room');
  await sub2.publish({ ok: true });
});

test('join/leave go only to subscriptions that asked, unless force_push_join_leave', async () => {
  const asked = await subscribed(await connected(herald, 'ann'), 'room-jl2', { joinLeave: true });
  const silent = await subscribed(await connected(herald, 'bob'), 'room-jl2');
  const forced = await subscribed(await connected(herald, 'cat'), 'forced:room');
  const joins = { asked: [], silent: [], forced: [] };
  asked.on('join', (ctx) => joins.asked.push(ctx.info.user));
  silent.on('join', (ctx) => joins.silent.push(ctx.info.user));
  forced.on('join', (ctx) => joins.forced.push(ctx.info.user));
  const dan = await connected(herald, 'dan');
  await subscribed(dan, 'room-jl2');
  await subscribed(dan, 'forced:room');
  await eventually(() => joins.asked.includes('dan'), { message: 'the subscription that asked got the join' });
  await eventually(() => joins.forced.includes('dan'), { message: 'force_push_join_leave: a join without asking' });
  // A publication after the join reaches `silent` after the join would have: it had none.
  await serverApi(publisher, 'publish', { channel: 'room-jl2', data: { after: 'join' } });
  await eventually(() => silent.publications.length === 1, { message: 'the publication after the join' });
  assert.deepEqual(joins.silent, [], 'no join for a subscription that did not ask');
});

const counts = (sub) => sub.publications.filter((p) => p.data && 'viewer_count' in p.data).map((p) => p.data);

test('viewer_counts: every subscriber gets the cluster-wide count and the peak as a publication', async () => {
  const channel = 'live:show';
  const a = await subscribed(await connected(herald, 'viewer-a'), channel);
  await eventually(() => counts(a).at(-1)?.viewer_count === 1, { message: 'the first viewer sees 1' });
  assert.deepEqual(counts(a).at(-1), { viewer_count: 1, peak_viewers: 1 });
  // A viewer on the other node: both see 2.
  const bClient = await connected(publisher, 'viewer-b');
  const b = await subscribed(bClient, channel);
  await eventually(() => counts(a).at(-1)?.viewer_count === 2, { message: 'a sees 2' });
  await eventually(() => counts(b).at(-1)?.viewer_count === 2, { message: 'b sees 2 after its subscribe reply' });
  assert.equal(b.publications[0].offset, undefined, 'no stream position: not history');
  bClient.disconnect();
  await eventually(() => counts(a).at(-1)?.viewer_count === 1, { message: 'a sees 1 after b left' });
  assert.deepEqual(counts(a).at(-1), { viewer_count: 1, peak_viewers: 2 });
});

test('viewer_counts: above 100 subscribers the pushes are coalesced to one a second', async () => {
  const channel = 'live:crowd';
  const watcher = await subscribed(await connected(herald, 'watcher'), channel);
  const started = Date.now();
  const joiners = [];
  for (let i = 0; i < 140; i++) joiners.push(connected(herald, `crowd-${i}`).then((c) => subscribed(c, channel)));
  await Promise.all(joiners);
  await eventually(() => counts(watcher).at(-1)?.viewer_count === 141, { timeout: 10000, message: 'the last count reaches 141' });
  const seconds = Math.ceil((Date.now() - started) / 1000);
  const above = counts(watcher).filter((c) => c.viewer_count > 100);
  assert.ok(above.length <= seconds + 1, `${above.length} pushes above 100 in ${seconds} s`);
  assert.equal(counts(watcher).at(-1).peak_viewers, 141);
});
