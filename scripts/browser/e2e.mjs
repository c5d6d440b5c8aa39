// End-to-end tests of the demo page and the browser client in headless
// Chromium (Debian's `chromium`, driven by playwright-core over CDP).
//
// Normally started by scripts/browser/run.sh, which builds the gateway, starts
// two of them and passes their addresses:
//   PB_PUBLIC, PB_ADMIN            gateway started with --demo
//   PB_NOWS_PUBLIC, PB_NOWS_ADMIN  gateway started with --demo --ws-enabled false
//   PB_BRIDGE_PUBLIC, PB_BRIDGE_ADMIN  gateway bridging the toy backend's /api/scores
//                                  (interval 200ms, hold 25s)
//   PB_TOY                         the toy backend (examples/toy-backend/backend.py)
//   PB_ARTIFACTS                   where demo.png goes (default artifacts/browser)
//   CHROMIUM                       browser binary (default /usr/bin/chromium)
//
// Scenarios (one output line each, then `browser: N passed, M failed`):
//   order      both demo panels get the same 50 published messages, in order
//   screenshot the demo after `order`, with its bytes-per-message table filled
//   resume     admin POST /disconnect mid-stream: the WebSocket panel reconnects
//              and resumes with no gap and no duplicate
//   fallback   WebSocket upgrades refused: transport 'auto' falls back to
//              long-poll (fallback= on its poll URLs) and still gets everything
//   deflate    Chromium negotiates permessage-deflate with the gateway (the
//              101's Sec-WebSocket-Extensions as CDP saw it) and the client
//              library receives 2 KB scoreboards intact while the gateway
//              counts them compressed (pollbridge_compression_bytes_total)
//   tabs       the toy backend's legacy page, bridged with hold, in 4 tabs of
//              one browser for each legacy style (setInterval + fetch, jQuery
//              $.ajax cache:false, plain XMLHttpRequest, XMLHttpRequest sending
//              If-None-Match itself): every tab shows a change within one
//              interval and no poll stalls (the browser cache lock, issue 17)
// Every scenario also fails on console errors, page errors, entries in the
// demo's own error list, and requests to anything but loopback.

import assert from 'node:assert/strict';
import {mkdtemp, mkdir, rm} from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import {chromium} from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    console.error(`e2e.mjs: ${name} is not set (use scripts/browser/run.sh)`);
    process.exit(2);
  }
  return v;
};
const GW = {public: env('PB_PUBLIC'), admin: env('PB_ADMIN')};
const NOWS = {public: env('PB_NOWS_PUBLIC'), admin: env('PB_NOWS_ADMIN')};
const BRIDGE = {public: env('PB_BRIDGE_PUBLIC'), admin: env('PB_BRIDGE_ADMIN'), toy: env('PB_TOY')};
const ARTIFACTS = path.resolve(env('PB_ARTIFACTS', 'artifacts/browser'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const WAIT_MS = Number(env('PB_WAIT_MS', '10000')); // longest any single wait may take
const RUN = process.pid.toString(36); // channel suffix: fresh channels, ids from 1

// The issue's flags. Playwright itself also passes --headless when headless: true.
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const range = (a, b) => Array.from({length: b - a + 1}, (_, i) => a + i);

// ---- gateway helpers --------------------------------------------------------

async function publish(admin, channel, data) {
  const res = await fetch(`http://${admin}/publish/${channel}`, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(data),
  });
  const body = await res.text();
  assert.equal(res.status, 200, `publish to ${channel}: ${res.status} ${body}`);
  return JSON.parse(body).id;
}

/** One sample's value from a gateway's /metrics (the fallback gateway's). */
async function metricValue(series, admin = NOWS.admin) {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  assert.ok(line, `no ${series} in /metrics`);
  return Number(line.slice(series.length + 1));
}

async function adminPost(admin, p) {
  const res = await fetch(`http://${admin}${p}`, {method: 'POST'});
  const body = await res.text();
  assert.equal(res.status, 200, `POST ${p}: ${res.status} ${body}`);
  return JSON.parse(body);
}

/** Status of a raw WebSocket upgrade request (node's http client, outside the browser). */
function upgradeStatus(hostPort, p) {
  const [host, port] = [hostPort.slice(0, hostPort.lastIndexOf(':')), hostPort.slice(hostPort.lastIndexOf(':') + 1)];
  return new Promise((resolve, reject) => {
    const req = http.request({host, port, path: p, headers: {
      Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    }});
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve(res.statusCode); });
    req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('upgrade request timed out')));
    req.end();
  });
}

// ---- page instrumentation -----------------------------------------------------

/**
 * Everything a scenario asserts on besides the page's own state: console
 * errors, uncaught errors, every request URL, and each WebSocket as CDP saw it
 * (frames both ways, parsed).
 */
function watch(page) {
  const w = {console: [], pageErrors: [], requests: [], sockets: []};
  page.on('console', (m) => {
    if (m.type() === 'error') w.console.push(`${m.text()} @ ${m.location().url || '?'}`);
  });
  page.on('pageerror', (e) => w.pageErrors.push(String(e && e.stack || e)));
  page.on('request', (r) => w.requests.push(r.url()));
  page.on('websocket', (ws) => {
    const s = {url: ws.url(), received: [], sent: [], errors: [], closed: false};
    w.sockets.push(s);
    const parse = (payload) => { try { return JSON.parse(String(payload)); } catch (_) { return {raw: String(payload)}; } };
    ws.on('framereceived', (f) => s.received.push(parse(f.payload)));
    ws.on('framesent', (f) => s.sent.push(parse(f.payload)));
    ws.on('socketerror', (e) => s.errors.push(String(e)));
    ws.on('close', () => { s.closed = true; });
  });
  return w;
}

/** Shared checks: no console/page errors (bar `allowConsole`), loopback only, demo error list empty. */
async function hygiene(page, w, {allowConsole = []} = {}) {
  const unexpected = w.console.filter((t) => !allowConsole.some((re) => re.test(t)));
  assert.deepEqual(unexpected, [], 'console errors');
  assert.deepEqual(w.pageErrors, [], 'uncaught page errors');
  const foreign = [...w.requests, ...w.sockets.map((s) => s.url)].filter((u) => {
    const url = new URL(u);
    if (url.protocol === 'data:' || url.protocol === 'blob:' || url.protocol === 'about:') return false;
    return !LOOPBACK.has(url.hostname);
  });
  assert.deepEqual(foreign, [], 'requests to non-loopback hosts');
  const demoErrors = await page.evaluate(() => window.__demo.errors);
  assert.deepEqual(demoErrors, [], 'window.__demo.errors');
}

const demoState = (page) => page.evaluate(() => ({
  ws: window.__demo.ws.length, poll: window.__demo.poll.length, transport: window.__demo.transport,
  wsReady: window.__demo.wsReady, pollReady: window.__demo.pollReady, errors: window.__demo.errors,
  wsNote: document.getElementById('ws-note').textContent, pollNote: document.getElementById('poll-note').textContent,
}));

/** Poll the page (every 50 ms) until `fn(arg)` is truthy; on timeout say what the page looked like. */
async function until(page, what, fn, arg, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(fn, arg, {timeout, polling: 50});
  } catch (err) {
    let state = '';
    try { state = JSON.stringify(await demoState(page)); } catch (_) { /* page gone */ }
    throw new Error(`timed out after ${timeout} ms waiting for ${what}; page: ${state}`);
  }
}

/** Wait until both panels hold `n` messages; on timeout name the ids each one lacks. */
async function waitPanels(page, n, what, timeout = WAIT_MS) {
  try {
    await until(page, what, (k) => window.__demo.ws.length >= k && window.__demo.poll.length >= k, n, timeout);
  } catch (err) {
    const ids = await page.evaluate(() => ({ws: window.__demo.ws.map((e) => e.id), poll: window.__demo.poll.map((e) => e.id)}))
      .catch(() => ({ws: [], poll: []}));
    const lacks = (have) => range(1, n).filter((id) => !have.includes(id));
    throw new Error(`${err.message}; missing ids: client panel [${lacks(ids.ws)}], polling panel [${lacks(ids.poll)}]`);
  }
}

async function openDemo(context, gw, query) {
  const page = await context.newPage();
  ctx.current = page;
  const w = watch(page);
  const res = await page.goto(`http://${gw.public}/rt/demo?${query}`);
  assert.equal(res.status(), 200, 'GET /rt/demo');
  await until(page, 'both panels ready', () => window.__demo && window.__demo.ready);
  return {page, w};
}

/** ids 1..n exactly once, in order; `data` as published. */
function assertSequence(list, n, channel, label) {
  const ids = list.map((e) => e.id);
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  const missing = range(1, n).filter((id) => !ids.includes(id));
  assert.deepEqual(ids, range(1, n),
    `${label}: ids must be 1..${n} in order (duplicates: [${dupes}], missing: [${missing}], got ${ids.length})`);
  for (const e of list) {
    assert.equal(e.channel, channel, `${label}: channel of #${e.id}`);
    assert.deepEqual(e.data, payload(e.id), `${label}: data of #${e.id}`);
  }
}
const payload = (i) => ({seq: i, text: `message ${i}`});

/** Envelopes (no `type`) per WebSocket connection, as CDP saw them on the wire. */
const wireIds = (socket, channel) => socket.received.filter((m) => m.type === undefined && m.channel === channel).map((m) => m.id);

// ---- scenarios ------------------------------------------------------------------

const ctx = {};

async function scenarioOrder(context) {
  const channel = `e2e-order-${RUN}`;
  const {page, w} = await openDemo(context, GW, `transport=websocket&channel=${channel}`);
  ctx.orderPage = page;
  const t0 = Date.now();
  for (let i = 1; i <= 50; i += 1) {
    assert.equal(await publish(GW.admin, channel, payload(i)), i, 'admin publish id');
    await sleep(20);
  }
  await waitPanels(page, 50, 'both panels to have 50 messages');
  const took = Date.now() - t0;
  // Late duplicates would show up within the legacy panel's next polls: wait for two more.
  const polls = Number(await page.textContent('#poll-requests'));
  await until(page, 'two more legacy polls', (n) => Number(document.getElementById('poll-requests').textContent) >= n + 2, polls);

  const {ws, poll, transport} = await page.evaluate(() => window.__demo);
  assert.equal(transport, 'websocket', 'left panel transport');
  assertSequence(ws, 50, channel, 'WebSocket panel');
  assertSequence(poll, 50, channel, 'polling panel');
  assert.deepEqual(ws, poll, 'both panels hold the same envelopes');
  assert.equal(await page.textContent('#ws-count'), '50');
  assert.equal(await page.textContent('#poll-count'), '50');
  assert.equal(await page.textContent('#ws-transport'), 'websocket');
  assert.equal(w.sockets.length, 1, 'one WebSocket connection');
  assert.deepEqual(wireIds(w.sockets[0], channel), range(1, 50), 'envelopes on the wire');
  await hygiene(page, w);
  return `both panels: ids 1..50 in order, same data, no duplicate (${took} ms from first publish)`;
}

async function scenarioScreenshot() {
  const page = ctx.orderPage;
  assert.ok(page, 'no demo page from the order scenario');
  // The stats table refreshes every 2 s; wait until it counts deliveries on both transports.
  await until(page, 'the stats table to show deliveries', () => {
    const rows = [...document.querySelectorAll('#stats-body tr')].map((tr) => [...tr.children].map((td) => td.textContent));
    const delivered = (name) => Number((rows.find((r) => r[0] === name) || [])[2]?.replace(/,/g, ''));
    return delivered('websocket') >= 50 && delivered('longpoll') >= 50 && rows.every((r) => r.slice(1, 6).every((c) => /^[\d,]+$/.test(c)));
  });
  await mkdir(ARTIFACTS, {recursive: true});
  const file = path.join(ARTIFACTS, 'demo.png');
  await page.screenshot({path: file, fullPage: true});
  // Read right after the shot (the table refreshes every 2 s, so the two may still differ slightly).
  const rows = await page.$$eval('#stats-body tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const perMessage = rows.filter((r) => r[6] !== '–').map((r) => `${r[0]} ${r[6]} B/msg`).join(', ');
  return `${path.relative(process.cwd(), file)} (wire bytes per message: ${perMessage})`;
}

async function scenarioResume(context) {
  const channel = `e2e-resume-${RUN}`;
  const {page, w} = await openDemo(context, GW, `transport=websocket&channel=${channel}`);
  await page.evaluate(() => {
    const d = window.__demo;
    d.reconnects = [];
    d.opens = 0;
    d.feed.addEventListener('reconnecting', (e) => d.reconnects.push({code: e.code, reason: e.reason, delay: e.delay, attempt: e.attempt}));
    d.feed.addEventListener('open', () => { d.opens += 1; });
  });
  const N = 60;
  const DROP_AFTER = 25;
  let disconnected = null;
  for (let i = 1; i <= N; i += 1) {
    assert.equal(await publish(GW.admin, channel, payload(i)), i, 'admin publish id');
    if (i === DROP_AFTER) disconnected = await adminPost(GW.admin, '/disconnect');
    else await sleep(30);
  }
  // The 1012 close carries the gateway's retry=<ms> hint (spread over its
  // reconnect window) and the client waits at least that long, so the wait
  // for the resumed messages starts from the delay the client announced.
  await until(page, 'the reconnecting event', () => window.__demo.reconnects.length >= 1);
  const hinted = await page.evaluate(() => Math.max(0, ...window.__demo.reconnects.map((r) => r.delay)));
  await waitPanels(page, N, `both panels to have ${N} messages after the reconnect (hinted delay ${hinted} ms)`,
    hinted + WAIT_MS);
  const polls = Number(await page.textContent('#poll-requests'));
  await until(page, 'two more legacy polls', (n) => Number(document.getElementById('poll-requests').textContent) >= n + 2, polls);

  const d = await page.evaluate(() => ({ws: window.__demo.ws, poll: window.__demo.poll, reconnects: window.__demo.reconnects,
    opens: window.__demo.opens, transport: window.__demo.feed.transport, lastIds: window.__demo.feed.lastIds}));
  assert.ok(disconnected && disconnected.disconnected >= 1, `POST /disconnect ended no session: ${JSON.stringify(disconnected)}`);
  assertSequence(d.ws, N, channel, 'WebSocket panel');
  assertSequence(d.poll, N, channel, 'polling panel');
  assert.equal(d.transport, 'websocket', 'still on WebSocket after the reconnect');
  assert.ok(d.reconnects.length >= 1, 'the client emitted no reconnecting event');
  assert.equal(d.reconnects[0].code, 1012, `close code of the dropped connection (reason "${d.reconnects[0].reason}")`);
  assert.ok(d.opens >= 1, 'no open event after the reconnect');
  assert.ok(w.sockets.length >= 2, `CDP saw ${w.sockets.length} WebSocket connection(s), expected a second one`);
  assert.ok(w.sockets[0].closed, 'the first WebSocket was not closed');

  // On the wire: each connection carries each id at most once, together they
  // carry every id, and the reconnect's subscribe resumes from the last id
  // the first connection delivered.
  const perConn = w.sockets.map((s) => wireIds(s, channel));
  const all = perConn.flat();
  const dupes = all.filter((id, i) => all.indexOf(id) !== i);
  assert.deepEqual(dupes, [], `ids sent twice on the wire across connections: ${JSON.stringify(perConn)}`);
  assert.deepEqual([...all].sort((a, b) => a - b), range(1, N), 'ids on the wire');
  const isSubscribe = (m) => m.type === 'subscribe' && m.channel === channel;
  const k = w.sockets.findIndex((s, i) => i > 0 && s.sent.some(isSubscribe)); // the connection that resumed
  assert.ok(k > 0, 'no later connection subscribed again');
  const lastBefore = Math.max(0, ...perConn.slice(0, k).flat());
  const resubscribe = w.sockets[k].sent.find(isSubscribe);
  // The cursor is `N-E` once the gateway told the epoch (it does in every
  // `subscribed` ack): the last id delivered, and its sequence's epoch.
  const resumedId = typeof resubscribe.since === 'string' ? Number(resubscribe.since.split('-')[0]) : resubscribe.since;
  assert.equal(resumedId, lastBefore, 'resume cursor of the reconnected WebSocket');
  if (typeof resubscribe.since === 'string') {
    assert.match(resubscribe.since, /^\d+-[0-9a-f]+$/, 'the resume cursor carries the epoch');
  }
  const ack = w.sockets[k].received.find((m) => m.type === 'subscribed' && m.channel === channel);
  assert.ok(ack && ack.truncated === false, `subscribed ack on resume: ${JSON.stringify(ack)}`);
  const replayed = ack.last_id - lastBefore;
  await hygiene(page, w);
  await page.close();
  return `dropped with 1012 after #${lastBefore}, ${w.sockets.length} connections, resumed since=${lastBefore}` +
    ` (${replayed} replayed from history), panel ids 1..${N} exactly once`;
}

async function scenarioFallback(context) {
  const channel = `e2e-fallback-${RUN}`;
  // Precondition, outside the browser: the switch really refuses upgrades.
  const status = await upgradeStatus(NOWS.public, '/rt/ws');
  assert.equal(status, 403, 'WebSocket upgrade on the --ws-enabled false gateway');
  const {page, w} = await openDemo(context, NOWS, `transport=auto&channel=${channel}`);
  const t0 = Date.now();
  for (let i = 1; i <= 50; i += 1) {
    assert.equal(await publish(NOWS.admin, channel, payload(i)), i, 'admin publish id');
    await sleep(20);
  }
  await waitPanels(page, 50, 'both panels to have 50 messages');
  const took = Date.now() - t0;
  const polls = Number(await page.textContent('#poll-requests'));
  await until(page, 'two more legacy polls', (n) => Number(document.getElementById('poll-requests').textContent) >= n + 2, polls);

  const d = await page.evaluate(() => ({ws: window.__demo.ws, poll: window.__demo.poll, transport: window.__demo.feed.transport,
    fallbackNote: document.getElementById('ws-fallback').textContent}));
  assertSequence(d.ws, 50, channel, 'client panel (long-poll)');
  assertSequence(d.poll, 50, channel, 'polling panel');
  assert.equal(d.transport, 'longpoll', 'feed.transport');
  assert.equal(await page.textContent('#ws-transport'), 'longpoll');
  const reason = (/fallback: (\w+)/.exec(d.fallbackNote) || [])[1];
  assert.ok(reason, `no fallback reason shown: "${d.fallbackNote}"`);

  // The browser tried one WebSocket, and it never opened.
  assert.equal(w.sockets.length, 1, 'WebSocket attempts');
  assert.equal(w.sockets[0].received.length, 0, 'frames received on the refused WebSocket');
  // The client reports why on its first poll after the fallback (the gateway
  // counts each report), and sends its page-load id (cid) on every poll;
  // the legacy panel's plain polls carry neither.
  const pollUrls = w.requests.map((u) => new URL(u)).filter((u) => u.pathname === `/rt/poll/${channel}`);
  const clientPolls = pollUrls.filter((u) => u.searchParams.has('cid'));
  assert.ok(clientPolls.length >= 2, `client polls: ${clientPolls.length} of ${pollUrls.length}`);
  const reports = clientPolls.filter((u) => u.searchParams.has('fallback'));
  assert.equal(reports.length, 1, `polls carrying fallback=: ${reports.map(String)}`);
  assert.equal(reports[0].searchParams.get('fallback'), reason, `fallback= in ${reports[0]}`);
  assert.equal(new Set(clientPolls.map((u) => u.searchParams.get('cid'))).size, 1, 'one cid per page load');
  const fallbacks = await metricValue(`pollbridge_transport_fallbacks_total{reason="${reason}"}`);
  assert.equal(fallbacks, 1, 'the gateway counted the fallback once');

  // Chromium itself logs the refused handshake; the page cannot silence that one.
  const wsUrl = w.sockets[0].url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const expected = new RegExp(`^WebSocket connection to '${wsUrl}' failed: Error during WebSocket handshake: Unexpected response code: 403`);
  await hygiene(page, w, {allowConsole: [expected]});
  await page.close();
  return `WebSocket refused (403), fell back (${reason}), counted once, ${clientPolls.length} client polls,` +
    ` ids 1..50 in order on both panels (${took} ms)`;
}

/** The legacy page's own polling interval (examples/toy-backend/backend.py) and the bridge's (run.sh). */
const PAGE_INTERVAL_MS = 1000;
const BRIDGE_INTERVAL_MS = 200;
const TABS = 4;

/** The sum of a metric's samples whose labels include every `labels` pair. */
async function metricSum(admin, name, labels) {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  return text.split('\n')
    .filter((l) => l.startsWith(name + '{') && labels.every((p) => l.includes(p)))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

const scoreboard = (round) => ({round, table: range(1, 24).map((i) => ({team: `Team ${i}`, points: (i * 13 + round) % 97, form: 'WWLDW'}))});

async function scenarioDeflate(context) {
  const channel = `e2e-deflate-${RUN}`;
  const page = await context.newPage();
  ctx.current = page;
  const w = watch(page);
  // The handshake answer as the browser's network stack saw it.
  const cdp = await context.newCDPSession(page);
  const answers = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => answers.push(e.response));
  await cdp.send('Network.enable');
  const res = await page.goto(`http://${GW.public}/rt/demo?transport=websocket&channel=${channel}`);
  assert.equal(res.status(), 200, 'GET /rt/demo');
  await until(page, 'both panels ready', () => window.__demo && window.__demo.ready);
  assert.equal(answers.length, 1, 'one WebSocket handshake');
  const headers = Object.fromEntries(Object.entries(answers[0].headers).map(([k, v]) => [k.toLowerCase(), v]));
  const ext = headers['sec-websocket-extensions'] || '';
  assert.match(ext, /^permessage-deflate; server_no_context_takeover/, `Sec-WebSocket-Extensions: ${ext}`);

  const labels = ['transport="websocket"', 'stage="after"'];
  const before = await metricSum(GW.admin, 'pollbridge_compression_bytes_total', labels);
  const N = 5;
  for (let i = 1; i <= N; i += 1) await publish(GW.admin, channel, scoreboard(i));
  await waitPanels(page, N, `both panels to have ${N} scoreboards`);
  const {ws} = await page.evaluate(() => window.__demo);
  assert.deepEqual(ws.map((e) => e.data), range(1, N).map(scoreboard), 'client library got the scoreboards intact');
  const compressed = await metricSum(GW.admin, 'pollbridge_compression_bytes_total', labels) - before;
  const plain = JSON.stringify({channel, id: 1, data: scoreboard(1)}).length;
  assert.ok(compressed > 0 && compressed < N * plain / 2,
    `compressed bytes sent: ${compressed} for ${N} messages of ~${plain} bytes`);
  await hygiene(page, w);
  await page.close();
  return `negotiated "${ext}"; ${N} scoreboards of ~${plain} B went out as ${compressed} B compressed`;
}

async function setScores(scores) {
  const res = await fetch(`http://${BRIDGE.toy}/api/scores`, {method: 'POST', body: JSON.stringify(scores)});
  assert.equal(res.status, 200, `POST /api/scores to the toy backend: ${res.status}`);
}

/** Scenario: TABS tabs of one browser per legacy polling style, bridged with hold. */
async function scenarioTabs(context) {
  const styles = ['fetch', 'jquery', 'xhr', 'etag'];
  const held = async () => metricValue('pollbridge_bridge_client_polls_total{bridge="scores",result="held"}', BRIDGE.admin);
  const notes = [];
  let round = 0;
  for (const style of styles) {
    round += 1;
    const tabs = [];
    for (let i = 0; i < TABS; i += 1) {
      const page = await context.newPage();
      ctx.current = page;
      const w = watch(page);
      const res = await page.goto(`http://${BRIDGE.public}/?style=${style}`);
      assert.equal(res.status(), 200, `GET /?style=${style}`);
      tabs.push({page, w});
    }
    // Every tab shows the current score and has had two answers since (the
    // etag page: one answer, and its next poll is out, held by the gateway).
    for (const [i, {page}] of tabs.entries()) {
      await until(page, `${style} tab ${i + 1}: polling`, (etag) => window.__legacy &&
        (etag ? window.__legacy.completed >= 1 && window.__legacy.sent >= 2 : window.__legacy.completed >= 2), style === 'etag');
    }
    const heldBefore = await held();
    const scores = {home: 10 + round, away: round};
    const text = `${scores.home} : ${scores.away}`;
    const changedAt = Date.now();
    await setScores(scores);
    // A tab sees a change within its own interval plus the bridge's (and
    // some scheduling slack); a stalled tab (cache lock) would take 20 s.
    const bound = PAGE_INTERVAL_MS + BRIDGE_INTERVAL_MS + 800;
    const seen = [];
    for (const [i, {page}] of tabs.entries()) {
      await until(page, `${style} tab ${i + 1} to show ${text}`, (t) => document.getElementById('score').textContent === t,
        text, bound + 2000);
      const at = await page.evaluate((t) => (window.__legacy.shown.find((x) => x.text === t) || {}).at, text);
      seen.push(at - changedAt);
    }
    // No poll is stuck: every tab keeps getting answers after the change
    // (but the etag page's next poll is held, as it should be, until the
    // next change).
    if (style !== 'etag') {
      const counts = await Promise.all(tabs.map(({page}) => page.evaluate(() => window.__legacy.completed)));
      for (const [i, {page}] of tabs.entries()) {
        await until(page, `${style} tab ${i + 1}: answers after the change`, (n) => window.__legacy.completed >= n + 1,
          counts[i], 2 * PAGE_INTERVAL_MS + 1000);
      }
    }
    const states = await Promise.all(tabs.map(({page}) => page.evaluate(() => window.__legacy)));
    for (const [i, {page, w}] of tabs.entries()) {
      assert.ok(seen[i] <= bound, `${style} tab ${i + 1} showed the change after ${seen[i]} ms (bound ${bound} ms); all: ${seen}`);
      assert.equal(states[i].failed, 0, `${style} tab ${i + 1}: failed polls`);
      assert.deepEqual(w.console, [], `${style} tab ${i + 1}: console errors`);
      assert.deepEqual(w.pageErrors, [], `${style} tab ${i + 1}: page errors`);
      const foreign = w.requests.filter((u) => !LOOPBACK.has(new URL(u).hostname) && !u.startsWith('data:'));
      assert.deepEqual(foreign, [], `${style} tab ${i + 1}: requests to non-loopback hosts (jQuery must be local)`);
      await page.close();
    }
    const heldNow = (await held()) - heldBefore;
    // Only the page that sends If-None-Match itself is held (the others get
    // no-store answers, so their browser never revalidates on its own).
    if (style === 'etag') assert.ok(heldNow >= TABS, `held polls during the etag round: ${heldNow}`);
    const sent = states.map((st) => `${st.completed}/${st.sent}`).join(' ');
    notes.push(`${style}: change seen after ${seen.join('/')} ms, answered/sent ${sent}${style === 'etag' ? `, ${heldNow} held` : ''}`);
  }
  return `${TABS} tabs per style, hold 25s; ${notes.join('; ')}`;
}

/** After a failure: say so if a gateway no longer answers (it crashed, or was stopped from outside). */
async function gatewaysDown() {
  const notes = [];
  for (const [name, gw] of [['gateway', GW], ['gateway_nows', NOWS], ['gateway_bridge', BRIDGE]]) {
    try {
      const res = await fetch(`http://${gw.admin}/healthz`, {signal: AbortSignal.timeout(2000)});
      if (!res.ok) notes.push(`${name} /healthz answered ${res.status}`);
    } catch (err) {
      notes.push(`${name} at ${gw.admin} is not answering (${err.cause && err.cause.code || err.message})`);
    }
  }
  return notes.length ? ` [NOTE: ${notes.join('; ')}]` : '';
}

// ---- runner ---------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const profile = await mkdtemp(path.join(os.tmpdir(), 'pollbridge-e2e-profile-'));
  let context;
  let passed = 0;
  let failed = 0;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: {width: 1200, height: 900},
    });
    const scenarios = [
      ['order', scenarioOrder], ['screenshot', scenarioScreenshot], ['resume', scenarioResume], ['fallback', scenarioFallback],
      ['deflate', scenarioDeflate], ['tabs', scenarioTabs],
    ];
    for (const [name, fn] of scenarios) {
      const t0 = Date.now();
      try {
        const detail = await fn(context);
        passed += 1;
        console.log(`ok   ${name}: ${detail} [${((Date.now() - t0) / 1000).toFixed(1)} s]`);
      } catch (err) {
        failed += 1;
        const down = await gatewaysDown();
        console.log(`FAIL ${name}: ${String(err && err.message || err).replace(/\s*\n\s*/g, ' ')}${down} [${((Date.now() - t0) / 1000).toFixed(1)} s]`);
        if (process.env.PB_VERBOSE) console.error(err);
        const page = ctx.current;
        if (page && !page.isClosed()) {
          await mkdir(ARTIFACTS, {recursive: true});
          await page.screenshot({path: path.join(ARTIFACTS, `fail-${name}.png`), fullPage: true}).catch(() => {});
          if (page !== ctx.orderPage) await page.close().catch(() => {});
        }
      }
      if (name === 'screenshot' && ctx.orderPage) { await ctx.orderPage.close(); ctx.orderPage = null; }
    }
  } catch (err) {
    failed += 1;
    console.log(`FAIL browser: ${String(err && err.message || err).split('\n')[0]}`);
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(profile, {recursive: true, force: true});
  }
  if (process.env.PB_VERBOSE) console.error(`e2e.mjs took ${Date.now() - started} ms`);
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

await main();
