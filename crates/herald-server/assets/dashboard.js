// Herald's dashboard: sign in with the admin token (kept in this tab's sessionStorage, sent only as an
// Authorization header), follow /dashboard/api/stream (Server-Sent Events read with fetch, so the
// token never goes into a URL), draw the charts with uPlot, and run the test console.
'use strict';

const $ = (id) => document.getElementById(id);
const KEEP = 120; // points per chart (two minutes)
const state = { token: sessionStorage.getItem('herald-admin-token'), abort: null, charts: {}, series: null, socket: null, apps: [] };
window.heraldDashboard = { updates: 0, last: null, received: [] };

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${state.token}`, ...extra };
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return '–';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function showBoard(on) {
  $('login').hidden = on;
  $('board').hidden = !on;
  $('logout').hidden = !on;
  $('status').textContent = on ? 'live' : 'signed out';
}

function signOut(message) {
  if (state.abort) state.abort.abort();
  state.token = null;
  sessionStorage.removeItem('herald-admin-token');
  showBoard(false);
  if (message) {
    $('login-error').textContent = message;
    $('login-error').hidden = false;
  }
}

function makeChart(el, labels, colors) {
  const width = Math.max(320, el.clientWidth || el.parentElement.clientWidth - 20);
  const opts = {
    width, height: 180,
    scales: { x: { time: true } },
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))],
    axes: [{}, { size: 60 }],
    legend: { live: false },
  };
  return new uPlot(opts, [[], ...labels.map(() => [])], el);
}

function initCharts() {
  if (state.charts.connections) return;
  state.series = { t: [], connections: [], out: [], in: [], p50: [], p95: [], p99: [] };
  state.charts.connections = makeChart($('chart-connections'), ['connections'], ['#2563eb']);
  state.charts.messages = makeChart($('chart-messages'), ['out', 'in'], ['#16a34a', '#9333ea']);
  state.charts.latency = makeChart($('chart-latency'), ['p50', 'p95', 'p99'], ['#0891b2', '#ea580c', '#dc2626']);
}

function push(name, value) {
  const s = state.series[name];
  s.push(value);
  if (s.length > KEEP) s.shift();
}

function rows(el, list) {
  el.replaceChildren(...list.map((cells) => {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.append(td);
    }
    return tr;
  }));
}

function render(u) {
  const s = u.stats;
  $('connections').textContent = fmt(s.connections.active);
  $('connections-total').textContent = `${fmt(s.connections.total)} since start, peak ${fmt(s.connections.peak)}`;
  $('channels').textContent = fmt(s.channels);
  $('users').textContent = `${fmt(s.users)} signed-in users`;
  $('rate-out').textContent = fmt(u.rates.messages_out_per_second, 1);
  $('rate-in').textContent = `${fmt(u.rates.messages_in_per_second, 1)} in / s`;
  const l = u.latency_interval;
  $('latency').textContent = l.count ? `${fmt(l.p50_ms, 2)} / ${fmt(l.p95_ms, 2)} / ${fmt(l.p99_ms, 2)} ms` : '–';
  $('latency-count').textContent = `${fmt(l.count)} deliveries this second (${fmt(s.latency.count)} since start)`;
  $('engine').textContent = s.engine + (s.backend ? ` (${s.backend})` : '');
  $('uptime').textContent = `up ${fmt(s.uptime_secs)} s`;
  $('errors').textContent = fmt(s.errors);
  const recent = Object.entries(u.recent_errors);
  $('recent-errors').textContent = recent.length ? recent.map(([k, n]) => `${k}: +${n}`).join(', ') : 'none this second';
  if (recent.length) {
    const log = $('error-log');
    const when = new Date(u.time_ms).toLocaleTimeString();
    for (const [kind, n] of recent) {
      const tr = document.createElement('tr');
      for (const c of [when, kind, fmt(n)]) {
        const td = document.createElement('td');
        td.textContent = c;
        tr.append(td);
      }
      log.prepend(tr);
    }
    while (log.children.length > 50) log.lastChild.remove();
  }
  const bySubs = [];
  const byRate = [];
  for (const [app, t] of Object.entries(u.top_channels)) {
    for (const c of t.by_subscribers) bySubs.push([app, c.channel, c.subscribers]);
    for (const c of t.by_messages_per_second) byRate.push([app, c.channel, c.messages_per_second]);
  }
  bySubs.sort((a, b) => b[2] - a[2]);
  byRate.sort((a, b) => b[2] - a[2]);
  renderStatus(s);
  rows($('top-subscribers'), bySubs.slice(0, 10).map(([a, c, n]) => [a, c, fmt(n)]));
  rows($('top-rate'), byRate.slice(0, 10).map(([a, c, n]) => [a, c, fmt(n, 1)]));

  initCharts();
  push('t', u.time_ms / 1000);
  push('connections', s.connections.active);
  push('out', u.rates.messages_out_per_second);
  push('in', u.rates.messages_in_per_second);
  push('p50', l.p50_ms);
  push('p95', l.p95_ms);
  push('p99', l.p99_ms);
  const t = state.series.t;
  state.charts.connections.setData([t, state.series.connections]);
  state.charts.messages.setData([t, state.series.out, state.series.in]);
  state.charts.latency.setData([t, state.series.p50, state.series.p95, state.series.p99]);
  window.heraldDashboard.updates += 1;
  window.heraldDashboard.last = u;
}

/** The Redis / cluster panel, the webhook panel and each front's latency. */
function renderStatus(s) {
  const r = s.redis;
  const yes = (b) => (b ? 'up' : 'DOWN');
  const cluster = r
    ? [
      ['Engine', `redis (${s.backend || '?'})`],
      ['Commands (circuit)', yes(r.reachable)],
      ['Pub/sub connection', yes(r.subscriber_connected)],
      ['Lease round trip', r.probe_ms > 0 ? `${fmt(r.probe_ms, 3)} ms` : 'not measured yet'],
      ['Reconnects', `command ${fmt(r.reconnects.command)}, subscriber ${fmt(r.reconnects.subscriber)}`],
      ['Command errors', `timeout ${fmt(r.command_errors.timeout)}, link ${fmt(r.command_errors.link)}, refused ${fmt(r.command_errors.refused)}`],
      ['Failed fast (circuit open)', fmt(r.fail_fast)],
      ['Envelopes', `published ${fmt(r.published)}, received ${fmt(r.received)}, dropped ${fmt(r.publish_dropped)}`],
    ]
    : [['Engine', `${s.engine}: a single node, no cluster link`]];
  rows($('cluster-status'), cluster);
  const w = s.webhooks || {};
  rows($('webhook-status'), [
    ['Sent', fmt(w.sent)], ['Failed requests', fmt(w.failed)], ['Retried', fmt(w.retried)],
    ['Dropped', fmt(w.dropped)], ['Queued now', fmt(w.queue_depth)],
  ]);
  rows($('latency-fronts'), Object.entries(s.latency_by_front || {}).map(([front, l]) => [
    front, fmt(l.count), l.count ? `${fmt(l.p50_ms, 2)} / ${fmt(l.p95_ms, 2)} / ${fmt(l.p99_ms, 2)}` : '–',
  ]));
}

/** Reads the SSE stream with fetch (headers, not a URL, carry the token); reconnects on a break. */
async function follow() {
  state.abort = new AbortController();
  let response;
  try {
    response = await fetch('/dashboard/api/stream', { headers: authHeaders(), signal: state.abort.signal });
  } catch (e) {
    if (state.token) setTimeout(follow, 2000);
    return;
  }
  if (response.status === 401) return signOut('That token was not accepted.');
  if (!response.ok) {
    $('status').textContent = `stream unavailable (${response.status}); retrying`;
    if (state.token) setTimeout(follow, 2000);
    return;
  }
  showBoard(true);
  loadApps();
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    // aborted or broken: reconnect below if still signed in
  }
  $('status').textContent = 'reconnecting';
  if (state.token) setTimeout(follow, 1000);
}

async function loadApps() {
  const response = await fetch('/dashboard/api/apps', { headers: authHeaders() });
  if (!response.ok) return;
  state.apps = (await response.json()).apps;
  const select = $('console-app');
  select.replaceChildren(...state.apps.map((a) => {
    const o = document.createElement('option');
    o.value = a.id;
    o.textContent = a.id;
    return o;
  }));
}

function log(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('console-log').prepend(li);
}

/** The test console's own Pusher connection (the browser's WebSocket, the Pusher protocol). */
function consoleSubscribe() {
  const app = state.apps.find((a) => a.id === $('console-app').value);
  const channel = $('console-channel').value.trim();
  if (!app || !channel) return;
  if (state.socket) state.socket.close();
  state.members = new Set();
  $('console-members').textContent = '';
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/app/${encodeURIComponent(app.key)}?protocol=7&client=herald-dashboard&version=1`);
  state.socket = socket;
  $('console-state').textContent = 'connecting';
  socket.onmessage = async (message) => {
    const frame = JSON.parse(message.data);
    if (frame.event === 'pusher:connection_established') {
      const { socket_id } = JSON.parse(frame.data);
      const data = { channel };
      if (channel.startsWith('private-') || channel.startsWith('presence-')) {
        const r = await fetch('/dashboard/api/auth', {
          method: 'POST', headers: authHeaders({ 'Content-Type': 'application/json' }),
          body: JSON.stringify({ app: app.id, socket_id, channel }),
        });
        const body = await r.json();
        if (!r.ok) return log(`auth refused: ${body.error}`);
        data.auth = body.auth;
        if (body.channel_data) data.channel_data = body.channel_data;
      }
      socket.send(JSON.stringify({ event: 'pusher:subscribe', data }));
    } else if (frame.event === 'pusher_internal:subscription_succeeded') {
      $('console-state').textContent = `subscribed to ${frame.channel} (${app.id})`;
      log(`subscribed to ${frame.channel}`);
      const presence = frame.data && JSON.parse(frame.data).presence;
      if (presence) {
        state.members = new Set(presence.ids);
        showMembers();
      }
    } else if (frame.event === 'pusher_internal:member_added' || frame.event === 'pusher_internal:member_removed') {
      const { user_id } = JSON.parse(frame.data);
      if (frame.event.endsWith('added')) state.members.add(user_id); else state.members.delete(user_id);
      showMembers();
      log(`${frame.channel} ${frame.event.slice('pusher_internal:'.length)} ${user_id}`);
    } else if (frame.event === 'pusher:ping') {
      socket.send(JSON.stringify({ event: 'pusher:pong', data: {} }));
    } else if (!frame.event.startsWith('pusher_internal:')) {
      window.heraldDashboard.received.push(frame);
      log(`${frame.channel || ''} ${frame.event} ${typeof frame.data === 'string' ? frame.data : JSON.stringify(frame.data)}`);
    }
  };
  socket.onclose = (e) => {
    $('console-state').textContent = `closed (${e.code})`;
  };
}

function showMembers() {
  const ids = [...state.members].sort();
  $('console-members').textContent = `${ids.length} member(s): ${ids.join(', ')}`;
}

async function consolePublish(event) {
  event.preventDefault();
  const body = { app: $('console-app').value, channel: $('console-channel').value.trim(), event: $('publish-event').value, data: $('publish-data').value };
  const r = await fetch('/dashboard/api/publish', { method: 'POST', headers: authHeaders({ 'Content-Type': 'application/json' }), body: JSON.stringify(body) });
  const result = await r.json();
  $('publish-result').textContent = r.ok ? `delivered to ${result.delivered} connection(s) here` : `refused: ${result.error}`;
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.token = $('token').value;
    $('token').value = '';
    $('login-error').hidden = true;
    sessionStorage.setItem('herald-admin-token', state.token);
    follow();
  });
  $('logout').addEventListener('click', () => signOut());
  $('console-subscribe').addEventListener('click', consoleSubscribe);
  $('publish-form').addEventListener('submit', consolePublish);
  if (state.token) follow();
});
