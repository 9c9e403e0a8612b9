// The dashboard in a real browser (Debian's headless Chromium, driven by playwright-core): sign in with
// the admin token through the login form, watch live numbers change under load (pusher-js clients and
// SDK publishes), use the test console (subscribe, publish, see events), and save a screenshot into
// the test artifacts (target/test-artifacts/dashboard.png, or $HERALD_ARTIFACTS).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { connect, disconnectAll, sdk, startBackend, startHerald, startRedis, subscribe } from './harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const skip = process.env.HERALD_SKIP_BROWSER ? 'HERALD_SKIP_BROWSER is set' : false;
const ARTIFACTS = process.env.HERALD_ARTIFACTS || path.join(here, '..', '..', 'target', 'test-artifacts');
const TOKEN = 'dashboard-admin-token-for-tests';

let herald, browser, page;
const requested = [];
before(async () => {
  if (skip) return;
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: install Debian's chromium (scripts/test does) or set HERALD_SKIP_BROWSER=1`);
  herald = await startHerald(['--admin-token', TOKEN]);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--headless=new'] });
  page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
  page.on('request', (r) => requested.push(r.url()));
  await page.goto(`http://127.0.0.1:${herald.port}/dashboard`);
});
after(async () => {
  disconnectAll();
  await browser?.close();
  await herald?.stop();
});

const text = (id) => page.textContent(`#${id}`);

test('a wrong token is refused at the login form', { skip }, async () => {
  await page.fill('#token', 'not-the-token-at-all');
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#login-error:not([hidden])', { timeout: 5000 });
  assert.match(await text('login-error'), /not accepted/);
  assert.equal(await page.isHidden('#board'), true);
});

test('signed in, the dashboard shows live numbers that change under load', { skip }, async () => {
  await page.fill('#token', TOKEN);
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => window.heraldDashboard.updates >= 1, null, { timeout: 5000 });
  assert.equal(await page.isVisible('#board'), true);
  const before = Number((await text('connections')).replace(/\D/g, ''));

  // Load: pusher-js clients on a few channels and a stream of SDK publishes.
  const clients = [];
  for (let i = 0; i < 5; i++) {
    const c = await connect(herald);
    await subscribe(c, `room-${i % 2}`);
    clients.push(c);
  }
  const publisher = sdk(herald);
  let publishing = true;
  const load = (async () => {
    while (publishing) {
      await publisher.trigger('room-0', 'tick', { at: Date.now() });
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    await page.waitForFunction(
      (n) => {
        const u = window.heraldDashboard.last;
        return u && u.stats.connections.active >= n && u.rates.messages_out_per_second > 0 && u.latency_interval !== undefined;
      },
      before + 5,
      { timeout: 10000 },
    );
    assert.ok(Number((await text('connections')).replace(/\D/g, '')) >= before + 5, 'the connections card went up');
    assert.notEqual(await text('rate-out'), '0', 'messages out per second is shown');
    await page.waitForFunction(() => document.querySelector('#top-rate tr td:nth-child(2)')?.textContent === 'room-0', null, { timeout: 5000 });
    assert.match(await page.textContent('#top-subscribers'), /room-[01]/);
    // The charts are uPlot canvases with data.
    assert.equal(await page.locator('#chart-messages canvas').count() > 0, true);
    const updates = await page.evaluate(() => window.heraldDashboard.updates);
    await page.waitForFunction((n) => window.heraldDashboard.updates > n + 1, updates, { timeout: 5000 });
  } finally {
    publishing = false;
    await load;
  }

  // The token never travelled in a URL.
  assert.ok(requested.length > 0);
  for (const url of requested) assert.ok(!url.includes(TOKEN), `token in a URL: ${url}`);
  assert.ok(!page.url().includes(TOKEN));
});

test('the test console subscribes, publishes and shows events', { skip }, async () => {
  await page.waitForFunction(() => document.querySelectorAll('#console-app option').length > 0, null, { timeout: 5000 });
  await page.selectOption('#console-app', 'app-id');
  await page.fill('#console-channel', 'private-console');
  await page.click('#console-subscribe');
  await page.waitForFunction(() => document.querySelector('#console-state').textContent.startsWith('subscribed'), null, { timeout: 5000 });

  await page.fill('#publish-event', 'from-console');
  await page.fill('#publish-data', '{"text":"hello from the console"}');
  await page.click('#publish');
  await page.waitForFunction(() => window.heraldDashboard.received.some((f) => f.event === 'from-console'), null, { timeout: 5000 });
  assert.match(await text('publish-result'), /delivered to 1 connection/);

  // An event from the application's backend shows up in the console too.
  await sdk(herald).trigger('private-console', 'from-backend', { n: 1 });
  await page.waitForFunction(() => window.heraldDashboard.received.some((f) => f.event === 'from-backend'), null, { timeout: 5000 });
  assert.match(await page.textContent('#console-log'), /from-backend/);

  // A presence channel: the server signs for the console (as herald-dashboard); a pusher-js client
  // joining is shown as a member, and events reach the console.
  await page.fill('#console-channel', 'presence-console');
  await page.click('#console-subscribe');
  await page.waitForFunction(() => document.querySelector('#console-state').textContent.startsWith('subscribed to presence-console'), null, { timeout: 5000 });
  assert.match(await text('console-members'), /^1 member\(s\): herald-dashboard$/);
  const backend = await startBackend(herald);
  try {
    const alice = await connect(herald, backend, 'alice');
    await subscribe(alice, 'presence-console');
    await page.waitForFunction(() => document.querySelector('#console-members').textContent.startsWith('2 member'), null, { timeout: 5000 });
    assert.match(await text('console-members'), /alice, herald-dashboard/);
    await sdk(herald).trigger('presence-console', 'to-presence', { n: 2 });
    await page.waitForFunction(() => window.heraldDashboard.received.some((f) => f.event === 'to-presence'), null, { timeout: 5000 });
    alice.disconnect();
    await page.waitForFunction(() => document.querySelector('#console-members').textContent.startsWith('1 member'), null, { timeout: 5000 });
  } finally {
    await backend.close();
  }

  // The Redis / cluster and webhook panels and each front's latency are filled in.
  assert.match(await page.textContent('#cluster-status'), /memory: a single node/);
  assert.match(await page.textContent('#webhook-status'), /Failed requests/);
  assert.match(await page.textContent('#latency-fronts'), /pusher/);

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const shot = path.join(ARTIFACTS, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(fs.statSync(shot).size > 10_000, 'the screenshot has content');
  console.log(`dashboard screenshot: ${shot}`);
});

test('with the Redis engine, the Redis / cluster panel shows the link and counts a reconnect', { skip }, async () => {
  const redis = await startRedis();
  const node = await startHerald(['--admin-token', TOKEN, '--engine', 'redis', '--redis-url', redis.url, '--redis-prefix', 'dashjs']);
  const other = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
  try {
    await other.goto(`http://127.0.0.1:${node.port}/dashboard`);
    await other.fill('#token', TOKEN);
    await other.click('#login-form button[type=submit]');
    await other.waitForFunction(() => /Pub\/sub connection\s*up/.test(document.querySelector('#cluster-status')?.textContent || ''), null, { timeout: 10000 });
    assert.match(await other.textContent('#cluster-status'), /Commands \(circuit\)\s*up/);
    assert.match(await other.textContent('#cluster-status'), /redis \(up\)/);
    // A subscriber makes the node's pub/sub connection a pub/sub client; Redis drops it, it comes back.
    const c = await connect(node);
    await subscribe(c, 'watched');
    const { execFileSync } = await import('node:child_process');
    execFileSync('redis-cli', ['-p', String(redis.port), 'CLIENT', 'KILL', 'TYPE', 'pubsub']);
    await other.waitForFunction(() => /subscriber [1-9]/.test(document.querySelector('#cluster-status')?.textContent || ''), null, { timeout: 10000 });
    await other.screenshot({ path: path.join(ARTIFACTS, 'dashboard-redis.png'), fullPage: true });
  } finally {
    await other.close();
    disconnectAll();
    await node.stop();
    await redis.stop();
  }
});
