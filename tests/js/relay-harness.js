// Shared by the relay tests: the receivers (pusher-js and centrifuge-js "devices" of one user) and the
// exactly-once check after a node was killed.
import assert from 'node:assert/strict';
import { collect, connect, eventually, next } from './harness.js';
import { connToken, connected } from './centrifugo-harness.js';

/**
 * Three pusher-js and three centrifuge-js devices of u1 on `herald` (device-a, -b, -c on each front).
 * Each has `.progress` (progress_update payloads received) and `.watchlist`.
 */
export async function devices(herald, backend) {
  const pusher = [];
  for (const device of ['device-a', 'device-b', 'device-c']) {
    const p = await connect(herald, backend, 'u1', { device });
    p.signin();
    await p.user.signinDonePromise;
    await eventually(() => p.user.serverToUserChannel?.subscribed === true, { message: 'user channel subscribed' });
    pusher.push({ name: `pusher ${device}`, client: p, progress: collect(p.user, 'progress_update'), watchlist: collect(p.user, 'watchlist_update') });
  }
  const centrifuge = [];
  for (const device of ['device-a', 'device-b', 'device-c']) {
    const c = await connected(herald, 'u1', { token: connToken('u1', { device }) });
    const d = { name: `centrifuge ${device}`, client: c, progress: [], watchlist: [], channels: new Set() };
    c.on('publication', (ctx) => {
      d.channels.add(ctx.channel);
      if (ctx.data.type === 'progress_update') d.progress.push(ctx.data);
      if (ctx.data.type === 'watchlist_update') d.watchlist.push(ctx.data);
    });
    centrifuge.push(d);
  }
  return { pusher, centrifuge, all: [...pusher, ...centrifuge] };
}

/**
 * Waits until every device but the origin (device-a) has all `n` positions, then sends a marker
 * (`sendMarker`) and waits for it on every non-origin device: a late duplicate would arrive before it.
 * Then: exactly `n` distinct positions on each, none on the origin devices.
 */
export async function assertExactlyOnce(devs, n, sendMarker) {
  const [pa, pb, pc] = devs.pusher;
  const [ca, cb, cc] = devs.centrifuge;
  const receivers = [pb, pc, cb, cc];
  await eventually(() => receivers.every((d) => d.progress.length >= n), {
    timeout: 90000,
    message: () => `all ${n} on every other device (${receivers.map((d) => `${d.name} ${d.progress.length}`).join(', ')})`,
  });
  const marker = next(pb.client.user, 'watchlist_update', 15000);
  await sendMarker();
  await marker;
  await eventually(() => receivers.every((d) => d.watchlist.length >= 1), { timeout: 15000, message: 'the marker on every other device' });
  for (const d of receivers) {
    const positions = d.progress.map((m) => m.position);
    assert.equal(new Set(positions).size, n, `${d.name}: ${n} distinct messages`);
    assert.equal(positions.length, n, `${d.name}: no duplicates`);
    assert.deepEqual(d.progress[0], { type: 'progress_update', content_id: 'c1', position: d.progress[0].position, duration: 7200 }, `${d.name}: the mapped payload`);
  }
  for (const d of [pa, ca]) {
    assert.equal(d.progress.length + d.watchlist.length, 0, `${d.name} is the origin device and got none`);
  }
  for (const d of [cb, cc]) assert.deepEqual([...d.channels], ['#u1'], `${d.name}: delivered on the personal channel`);
}

