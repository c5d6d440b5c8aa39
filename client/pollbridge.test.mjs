// Unit tests for the browser client: `node --test client/`.
// Everything the client touches (WebSocket, fetch, EventSource, timers,
// randomness) is a fake defined here, so each test drives time and the
// "server" by hand and can check exactly what went over the wire.

import test from 'node:test';
import assert from 'node:assert/strict';
import pollbridge, {connect, parseRetryHint, applyJsonPatch, CONNECTING, OPEN, CLOSING, CLOSED} from './pollbridge.js';

const BASE = 'http://gw.test/rt';

// Let promise chains (fetch answers, res.json(), the next poll) run.
async function flush() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, {fn, at: this.now + Math.max(0, Math.floor(ms || 0))});
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
  }

  get pending() { return this.timers.size; }

  /** Run, in time order, every timer due within `ms` from now. */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
      await flush();
    }
    this.now = end;
    await flush();
  }
}

function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      if (FakeWebSocket.throwOnConstruct) throw new Error('blocked by policy');
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closeCalls.push([code, reason]);
      if (this.readyState < 2) this.readyState = 2;
    }
    // the "server" side
    open() { this.readyState = 1; if (this.onopen) this.onopen({type: 'open'}); }
    receive(msg) { if (this.onmessage) this.onmessage({data: typeof msg === 'string' ? msg : JSON.stringify(msg)}); }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      if (this.onclose) this.onclose({code, reason, wasClean: code !== 1006});
    }
    fail() { if (this.onerror) this.onerror({type: 'error'}); this.drop(1006); }
  }
  FakeWebSocket.sockets = sockets;
  FakeWebSocket.throwOnConstruct = false;
  return FakeWebSocket;
}

function fakeFetch() {
  const calls = [];
  const fetch = (rawUrl, init = {}) => new Promise((resolve, reject) => {
    // The page-load id (cid) is random; keep it apart so URLs compare exactly.
    const cid = new URL(rawUrl).searchParams.get('cid');
    const url = rawUrl.replace(/([?&])cid=[^&]*(&|$)/, (_, lead, tail) => (tail ? lead : '')).replace(/\?$/, '');
    const u = new URL(url);
    const call = {
      url, cid, init, path: u.pathname, q: Object.fromEntries(u.searchParams), aborted: false, settled: false,
      respond(status, body, headers = {}) {
        call.settled = true;
        resolve({
          ok: status >= 200 && status < 300,
          status,
          headers: {get: (k) => headers[k] ?? null},
          json: async () => body,
          text: async () => (typeof body === 'string' ? body : JSON.stringify(body)),
        });
      },
      networkError() { call.settled = true; reject(new TypeError('Failed to fetch')); },
    };
    if (init.signal) {
      init.signal.addEventListener('abort', () => {
        call.aborted = true;
        call.settled = true;
        reject(new DOMException('aborted', 'AbortError'));
      });
    }
    calls.push(call);
  });
  fetch.calls = calls;
  fetch.open = () => calls.filter((c) => !c.settled);
  fetch.last = () => calls[calls.length - 1];
  return fetch;
}

function fakeEventSource() {
  const sources = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.closed = false;
      this.listeners = {};
      sources.push(this);
    }
    addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
    close() { this.closed = true; this.readyState = 2; }
    open() { this.readyState = 1; if (this.onopen) this.onopen({type: 'open'}); }
    emit(envelope) { if (this.onmessage) this.onmessage({data: JSON.stringify(envelope), lastEventId: String(envelope.id)}); }
    event(type, data) { for (const fn of this.listeners[type] || []) fn({type, data: JSON.stringify(data)}); }
    error() { this.readyState = 0; if (this.onerror) this.onerror({type: 'error'}); }
  }
  FakeEventSource.sources = sources;
  return FakeEventSource;
}

/** A feed wired to fakes; `events` records every event in order. */
async function setup(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocket();
  const fetch = fakeFetch();
  const EventSource = fakeEventSource();
  const feed = connect(options.base || BASE, {
    WebSocket, fetch, EventSource,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const type of ['open', 'message', 'error', 'close', 'transport', 'reconnecting', 'truncated', 'control']) {
    feed.addEventListener(type, (e) => events.push(e));
  }
  events.of = (type) => events.filter((e) => e.type === type);
  await flush(); // the feed starts on a microtask
  return {clock, WebSocket, fetch, EventSource, feed, events, sockets: WebSocket.sockets};
}

const env = (channel, id, data = `m${id}`) => ({channel, id, data});

// ---------------------------------------------------------------------------

test('module shape: named, default and constant exports', () => {
  assert.equal(typeof connect, 'function');
  assert.equal(pollbridge.connect, connect);
  assert.deepEqual([CONNECTING, OPEN, CLOSING, CLOSED], [0, 1, 2, 3]);
  assert.deepEqual([pollbridge.CONNECTING, pollbridge.OPEN, pollbridge.CLOSING, pollbridge.CLOSED], [0, 1, 2, 3]);
  assert.throws(() => connect(BASE, {transport: 'carrier-pigeon'}), /unknown transport/);
});

test('websocket: opens {base}/ws with the token and subscribes each channel with its since', async () => {
  const {sockets, feed} = await setup({transport: 'websocket', channels: ['a', 'b'], since: {b: 7}, token: 'se&cret'});
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].url, 'ws://gw.test/rt/ws?token=se%26cret');
  assert.equal(feed.readyState, CONNECTING);
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [
    {type: 'subscribe', channel: 'a'},
    {type: 'subscribe', channel: 'b', since: 7},
  ]);
  assert.equal(feed.readyState, OPEN);
  assert.equal(feed.transport, 'websocket');
  feed.close();
});

test('relative and ws:// base URLs are resolved', async () => {
  const saved = globalThis.location;
  globalThis.location = {href: 'https://app.example/page/index.html'};
  try {
    const {sockets, feed} = await setup({base: '/rt/', transport: 'websocket'});
    assert.equal(sockets[0].url, 'wss://app.example/rt/ws');
    feed.close();
  } finally {
    if (saved === undefined) delete globalThis.location; else globalThis.location = saved;
  }
  const {fetch, feed} = await setup({base: 'ws://gw.test:8080/rt', transport: 'longpoll', channels: ['x']});
  assert.equal(fetch.calls[0].url, 'http://gw.test:8080/rt/poll/x?timeout=0');
  feed.close();
});

test('reconnect after a drop resumes each channel from its last id', async () => {
  const {clock, sockets, feed, events} = await setup({transport: 'websocket', channels: ['news', 'quiet']});
  sockets[0].open();
  sockets[0].receive({type: 'subscribed', channel: 'news', last_id: 0, truncated: false});
  sockets[0].receive({type: 'subscribed', channel: 'quiet', last_id: 40, truncated: false});
  for (const id of [1, 2, 3]) sockets[0].receive(env('news', id));
  assert.deepEqual(feed.lastIds, {news: 3, quiet: 40});

  sockets[0].drop(1006);
  assert.equal(feed.readyState, CONNECTING);
  const [rec] = events.of('reconnecting');
  assert.equal(rec.attempt, 1);
  assert.equal(sockets.length, 1, 'no reconnect before the backoff delay');
  await clock.advance(rec.delay);
  assert.equal(sockets.length, 2);
  sockets[1].open();
  // 'quiet' had no message yet: resumes from the last_id of its ack, so
  // nothing published during the outage is lost.
  assert.deepEqual(sockets[1].sent, [
    {type: 'subscribe', channel: 'news', since: 3},
    {type: 'subscribe', channel: 'quiet', since: 40},
  ]);
  assert.equal(events.of('open').length, 2);
  feed.close();
});

test('replayed duplicates are dropped and order is kept', async () => {
  const {clock, sockets, feed, events} = await setup({transport: 'websocket'});
  const got = [];
  feed.subscribe('news', (data, envelope) => got.push([envelope.id, data]));
  sockets[0].open();
  for (const id of [1, 2, 3]) sockets[0].receive(env('news', id));
  sockets[0].receive(env('news', 2)); // stale copy on the same socket
  sockets[0].drop(1013, 'slow consumer');
  await clock.advance(events.of('reconnecting')[0].delay);
  sockets[1].open();
  // A server (or a proxy) that replays from before the cursor:
  for (const id of [2, 3, 4, 5]) sockets[1].receive(env('news', id));
  sockets[1].receive(env('news', 5));
  assert.deepEqual(got, [[1, 'm1'], [2, 'm2'], [3, 'm3'], [4, 'm4'], [5, 'm5']]);
  const messages = events.of('message');
  assert.deepEqual(messages.map((e) => e.id), [1, 2, 3, 4, 5]);
  assert.equal(messages[0].data, 'm1');
  assert.equal(messages[0].channel, 'news');
  assert.deepEqual(messages[0].envelope, env('news', 1));
  feed.close();
});

test('backoff grows, is capped, has full jitter within bounds, and resets after open', async () => {
  // A deterministic pseudo-random sequence in [0, 1).
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const {clock, sockets, feed, events} = await setup({transport: 'websocket', random, backoff: {base: 100, cap: 3000}});
  const bounds = [100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000, 3000];
  for (let n = 0; n < bounds.length; n++) {
    sockets[sockets.length - 1].fail(); // never opens
    const rec = events.of('reconnecting')[n];
    assert.equal(rec.attempt, n + 1);
    assert.ok(rec.delay >= 0 && rec.delay < bounds[n], `attempt ${n + 1}: ${rec.delay} within [0, ${bounds[n]})`);
    const before = sockets.length;
    if (rec.delay > 0) {
      await clock.advance(rec.delay - 1);
      assert.equal(sockets.length, before, 'the timer is really that long');
    }
    await clock.advance(1);
    assert.equal(sockets.length, before + 1);
  }
  const delays = events.of('reconnecting').map((e) => e.delay);
  assert.ok(new Set(delays.slice(5)).size > 1, `capped delays are jittered: ${delays}`);

  sockets[sockets.length - 1].open();
  sockets[sockets.length - 1].drop(1006);
  const after = events.of('reconnecting').at(-1);
  assert.equal(after.attempt, 1, 'attempts reset after a successful open');
  assert.ok(after.delay < 100);
  feed.close();
});

test('backoff bounds with extreme random values', async () => {
  const {sockets, feed, events, clock} = await setup({transport: 'websocket', random: () => 0.999999});
  const expected = [249, 499, 999, 1999, 3999, 7999, 9999, 9999];
  for (let n = 0; n < expected.length; n++) {
    sockets.at(-1).fail();
    assert.equal(events.of('reconnecting')[n].delay, expected[n]);
    await clock.advance(expected[n]);
  }
  feed.close();
  const zero = await setup({transport: 'websocket', random: () => 0});
  zero.sockets[0].fail();
  assert.equal(zero.events.of('reconnecting')[0].delay, 0);
  zero.feed.close();
});

test('a retry=MS hint in the close reason replaces the backoff', async () => {
  assert.equal(parseRetryHint('restarting; retry=2500'), 2500);
  assert.equal(parseRetryHint('retry=10'), 10);
  assert.equal(parseRetryHint('no hint'), null);
  assert.equal(parseRetryHint('noretry=5'), null);
  assert.equal(parseRetryHint(''), null);
  assert.equal(parseRetryHint(undefined), null);

  const {clock, sockets, feed, events} = await setup({transport: 'websocket', random: () => 0.5});
  sockets[0].open();
  sockets[0].drop(1001, 'restarting; retry=2500');
  const rec = events.of('reconnecting')[0];
  // 2500 + 0.5 * max(base 250, 20% of 2500)
  assert.equal(rec.delay, 2750);
  assert.equal(rec.code, 1001);
  assert.equal(rec.reason, 'restarting; retry=2500');
  await clock.advance(2749);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);

  // A hint is honoured even when it is below the backoff it replaces.
  sockets[1].open();
  sockets[1].drop(1001, 'retry=10');
  assert.equal(events.of('reconnecting')[1].delay, 10 + 125);
  feed.close();
});

test('auto: a WebSocket error before open falls back to long-poll with fallback=ws_error', async () => {
  const {sockets, fetch, feed, events} = await setup({channels: ['news'], token: 't1'});
  assert.equal(feed.transport, 'websocket');
  assert.equal(fetch.calls.length, 0);
  sockets[0].fail();
  await flush();
  assert.equal(feed.transport, 'longpoll');
  const [tr] = events.of('transport');
  assert.equal(tr.transport, 'longpoll');
  assert.equal(tr.previous, 'websocket');
  assert.equal(tr.reason, 'ws_error');
  assert.equal(events.of('error').length, 0, 'a fallback is not an error');
  assert.equal(fetch.calls.length, 1);
  assert.equal(fetch.calls[0].url, 'http://gw.test/rt/poll/news?timeout=0&fallback=ws_error&token=t1');
  fetch.calls[0].respond(200, {messages: [], last_id: 5, truncated: false});
  await flush();
  assert.equal(feed.readyState, OPEN);
  // The reason is reported once; every poll carries the same page-load id.
  assert.deepEqual(fetch.calls[1].q, {since: '5', timeout: '25', token: 't1'});
  assert.ok(fetch.calls[0].cid && fetch.calls[0].cid === fetch.calls[1].cid, 'a stable cid on every poll');
  // Publishing needs a WebSocket.
  await assert.rejects(feed.publish('news', 1), /websocket transport/);
  assert.equal(sockets.length, 1, 'stays on long-poll');
  feed.close();
});

test('auto: the other fallback reasons', async () => {
  // Not open within the connect timeout.
  let s = await setup({channels: ['c'], connectTimeout: 3000});
  await s.clock.advance(2999);
  assert.equal(s.fetch.calls.length, 0);
  await s.clock.advance(1);
  assert.equal(s.fetch.calls[0].q.fallback, 'ws_timeout');
  assert.ok(s.sockets[0].closeCalls.length > 0, 'the slow socket is abandoned');
  s.feed.close();

  // Closed before open, without an error event.
  s = await setup({channels: ['c']});
  s.sockets[0].drop(1006);
  await flush();
  assert.equal(s.fetch.calls[0].q.fallback, 'ws_closed_before_open');
  s.feed.close();

  // The constructor throws (CSP, extension, old browser).
  const clock = new FakeClock();
  const WebSocket = fakeWebSocket();
  WebSocket.throwOnConstruct = true;
  const fetch = fakeFetch();
  const feed = connect(BASE, {channels: ['c'], WebSocket, fetch, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout});
  const seen = [];
  feed.addEventListener('transport', (e) => seen.push(e.reason));
  await flush();
  assert.deepEqual(seen, ['ws_blocked'], 'transport event fires after the caller could attach listeners');
  assert.equal(fetch.calls[0].q.fallback, 'ws_blocked');
  feed.close();
});

test('auto: once a WebSocket has worked, a failed reconnect is an outage, not a fallback', async () => {
  const {clock, sockets, fetch, feed, events} = await setup({channels: ['c']});
  sockets[0].open();
  sockets[0].drop(1001, 'going away');
  await clock.advance(events.of('reconnecting')[0].delay);
  sockets[1].fail();
  await flush();
  assert.equal(feed.transport, 'websocket');
  assert.equal(fetch.calls.length, 0);
  assert.equal(events.of('reconnecting').length, 2);
  feed.close();
});

test('long-poll: the loop resumes from last_id and never skips', async () => {
  const {fetch, feed, events} = await setup({transport: 'longpoll', channels: ['scores:eu@1']});
  const got = [];
  feed.subscribe('scores:eu@1', (data, e) => got.push(e.id));
  // Channel names go into the path unescaped (':' and '@' are legal there).
  assert.equal(fetch.calls[0].url, 'http://gw.test/rt/poll/scores:eu@1?timeout=0');
  assert.equal(feed.readyState, CONNECTING);
  fetch.calls[0].respond(200, {messages: [], last_id: 7, truncated: false});
  await flush();
  assert.equal(feed.readyState, OPEN);
  assert.equal(events.of('open').length, 1);
  assert.deepEqual(fetch.calls[1].q, {since: '7', timeout: '25'});

  fetch.calls[1].respond(200, {messages: [env('scores:eu@1', 8), env('scores:eu@1', 9)], last_id: 9, truncated: false});
  await flush();
  assert.equal(fetch.calls[2].q.since, '9');
  // A duplicate in the answer is dropped.
  fetch.calls[2].respond(200, {messages: [env('scores:eu@1', 9), env('scores:eu@1', 10)], last_id: 10, truncated: false});
  await flush();
  assert.equal(fetch.calls[3].q.since, '10');
  // An answer capped by the server's max_messages: resume after the last
  // message received, not after the channel's last id.
  fetch.calls[3].respond(200, {messages: [env('scores:eu@1', 11), env('scores:eu@1', 12)], last_id: 20, truncated: false});
  await flush();
  assert.equal(fetch.calls[4].q.since, '12');
  // An empty held poll keeps the cursor.
  fetch.calls[4].respond(200, {messages: [], last_id: 12, truncated: false});
  await flush();
  assert.equal(fetch.calls[5].q.since, '12');
  assert.deepEqual(got, [8, 9, 10, 11, 12]);
  assert.equal(fetch.open().length, 1, 'exactly one poll in flight per channel');
  feed.close();
  assert.ok(fetch.calls[5].aborted);
});

test('long-poll: an error backs off, keeps the cursor, honours Retry-After, and surfaces', async () => {
  const {clock, fetch, feed, events} = await setup({transport: 'longpoll', channels: ['c'], since: {c: 3}});
  assert.deepEqual(fetch.calls[0].q, {since: '3', timeout: '0'});
  fetch.calls[0].respond(503, {error: 'bus_unavailable', message: 'bus down'}, {'Retry-After': '2'});
  await flush();
  const [err] = events.of('error');
  assert.equal(err.status, 503);
  assert.equal(err.message, 'bus down');
  assert.equal(err.channel, 'c');
  assert.equal(feed.readyState, CONNECTING);
  const [rec] = events.of('reconnecting');
  assert.equal(rec.delay, 2000 + 200); // 2 s + 0.5 * max(250, 20% of 2000)
  await clock.advance(rec.delay - 1);
  assert.equal(fetch.calls.length, 1);
  await clock.advance(1);
  assert.deepEqual(fetch.calls[1].q, {since: '3', timeout: '0'});
  fetch.calls[1].networkError();
  await flush();
  assert.equal(events.of('reconnecting')[1].attempt, 2);
  assert.equal(events.of('reconnecting')[1].delay, 250); // 0.5 * min(cap, 250 * 2)
  await clock.advance(250);
  fetch.calls[2].respond(200, {messages: [env('c', 4)], last_id: 4, truncated: false});
  await flush();
  assert.equal(feed.readyState, OPEN);
  assert.deepEqual(feed.lastIds, {c: 4});
  feed.close();
});

test('long-poll: a hung request is aborted by the watchdog and retried', async () => {
  const {clock, fetch, feed, events} = await setup({transport: 'longpoll', channels: ['c'], pollTimeout: 25});
  fetch.calls[0].respond(200, {messages: [], last_id: 1, truncated: false});
  await flush();
  await clock.advance(35000);
  assert.ok(fetch.calls[1].aborted);
  assert.equal(events.of('error').length, 1);
  await clock.advance(events.of('reconnecting')[0].delay);
  assert.equal(fetch.calls[2].q.since, '1');
  feed.close();
});

test('truncated surfaces on every transport and resets the cursor', async () => {
  // Long-poll: the bus restarted, ids began again at 1.
  let s = await setup({transport: 'longpoll', channels: ['c'], since: {c: 50}});
  s.fetch.calls[0].respond(200, {messages: [env('c', 1), env('c', 2)], last_id: 2, truncated: true});
  await flush();
  assert.deepEqual(s.events.of('truncated').map((e) => [e.channel, e.since]), [['c', 50]]);
  assert.deepEqual(s.events.of('message').map((e) => e.id), [1, 2], 'restarted ids are not taken for duplicates');
  assert.equal(s.fetch.calls[1].q.since, '2');
  s.feed.close();

  // WebSocket: the subscribed ack says so.
  s = await setup({transport: 'websocket', channels: ['c'], since: {c: 900}});
  s.sockets[0].open();
  s.sockets[0].receive({type: 'subscribed', channel: 'c', last_id: 5000, truncated: true});
  s.sockets[0].receive(env('c', 3000));
  const t = s.events.of('truncated');
  assert.equal(t.length, 1);
  assert.equal(t[0].channel, 'c');
  assert.equal(t[0].since, 900);
  assert.equal(t[0].last_id, 5000);
  assert.deepEqual(s.feed.lastIds, {c: 3000});
  s.feed.close();

  // SSE: an `event: truncated` first.
  s = await setup({transport: 'sse', channels: ['c'], since: {c: 10}});
  const es = s.EventSource.sources[0];
  es.open();
  es.event('truncated', {channel: 'c', since: 10});
  es.emit(env('c', 1));
  assert.deepEqual(s.events.of('truncated').map((e) => [e.channel, e.since]), [['c', 10]]);
  assert.deepEqual(s.events.of('message').map((e) => e.id), [1]);
  s.feed.close();
});

test('publish resolves with the acked id and rejects with the error message', async () => {
  const {clock, sockets, feed, events} = await setup({transport: 'websocket', channels: ['chat']});
  // Issued while connecting: queued, sent once open (after the subscriptions).
  const early = feed.publish('chat', {text: 'hi'});
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [
    {type: 'subscribe', channel: 'chat'},
    {type: 'publish', channel: 'chat', data: {text: 'hi'}},
  ]);
  sockets[0].receive({type: 'subscribed', channel: 'chat', last_id: 0, truncated: false});
  sockets[0].receive({type: 'published', channel: 'chat', id: 1});
  sockets[0].receive(env('chat', 1, {text: 'hi'})); // a publisher that subscribes gets its own message
  assert.equal(await early, 1);

  const denied = feed.publish('prices', 1);
  const ok = feed.publish('chat', 'second');
  sockets[0].receive({type: 'error', code: 'forbidden', message: 'publishing to prices is not allowed', channel: 'prices'});
  sockets[0].receive({type: 'published', channel: 'chat', id: 2});
  await assert.rejects(denied, (err) => err.message === 'publishing to prices is not allowed' && err.code === 'forbidden');
  sockets[0].receive(env('chat', 2, 'second'));
  assert.equal(await ok, 2);
  assert.equal(events.of('error').length, 0, 'an error that answers a publish rejects it only');

  // Unanswered when the socket drops: rejected, not left hanging.
  const lost = feed.publish('chat', 'third');
  sockets[0].drop(1006);
  await assert.rejects(lost, /connection lost/);
  await clock.advance(events.of('reconnecting')[0].delay);
  assert.equal(sockets.length, 2);
  // Queued while reconnecting: sent on the new socket, after the subscriptions.
  const queued = feed.publish('chat', 'fourth');
  sockets[1].open();
  assert.deepEqual(sockets[1].sent.map((c) => c.type), ['subscribe', 'publish']);
  assert.equal(sockets[1].sent[0].since, 2);
  sockets[1].receive({type: 'subscribed', channel: 'chat', last_id: 3, truncated: false});
  sockets[1].receive({type: 'published', channel: 'chat', id: 4});
  assert.equal(await queued, 4);
  // Still waiting when close() is called: rejected.
  const orphan = feed.publish('chat', 'fifth');
  feed.close();
  await assert.rejects(orphan, /closed/);
  await assert.rejects(feed.publish('chat', 'after'), /closed/);
});

test('server errors that answer no publish become error events; raw send works', async () => {
  const {sockets, feed, events} = await setup({transport: 'websocket'});
  sockets[0].open();
  feed.send({type: 'bogus'});
  assert.deepEqual(sockets[0].sent.at(-1), {type: 'bogus'});
  sockets[0].receive({type: 'error', code: 'unknown_command', message: 'unknown command bogus'});
  const [err] = events.of('error');
  assert.equal(err.code, 'unknown_command');
  assert.equal(err.message, 'unknown command bogus');
  assert.equal(events.of('control').length, 1);
  assert.throws(() => feed.send(42), TypeError);
  feed.close();
});

test('readyState: CONNECTING -> OPEN -> CONNECTING -> OPEN -> CLOSING -> CLOSED', async () => {
  const {clock, sockets, feed, events} = await setup({transport: 'websocket', channels: ['c']});
  const states = [];
  feed.onopen = () => states.push(['open', feed.readyState]);
  feed.onclose = (e) => states.push(['close', feed.readyState, e.code]);
  assert.equal(feed.CONNECTING, 0);
  assert.equal(feed.CLOSED, 3);
  assert.equal(feed.constructor.OPEN, 1);
  assert.equal(feed.readyState, CONNECTING);
  sockets[0].open();
  assert.equal(feed.readyState, OPEN);
  sockets[0].drop(1006);
  assert.equal(feed.readyState, CONNECTING);
  await clock.advance(events.of('reconnecting')[0].delay);
  sockets[1].open();
  assert.equal(feed.readyState, OPEN);
  feed.close();
  assert.equal(feed.readyState, CLOSING);
  assert.deepEqual(sockets[1].closeCalls, [[1000, 'client closed']]);
  sockets[1].drop(1000, 'client closed');
  assert.equal(feed.readyState, CLOSED);
  assert.deepEqual(states, [['open', OPEN], ['open', OPEN], ['close', CLOSED, 1000]]);
  feed.close(); // idempotent
  assert.equal(events.of('close').length, 1);
  assert.equal(clock.pending, 0);
});

test('close() stops everything and leaves no timer behind', async () => {
  // WebSocket waiting in backoff.
  let s = await setup({transport: 'websocket', channels: ['c']});
  s.sockets[0].open();
  s.sockets[0].drop(1006);
  assert.equal(s.clock.pending, 1, 'the reconnect timer');
  s.feed.close();
  assert.equal(s.feed.readyState, CLOSED);
  assert.equal(s.clock.pending, 0);
  await s.clock.advance(60000);
  assert.equal(s.sockets.length, 1, 'no reconnect after close');
  assert.equal(s.events.of('close').length, 1);

  // WebSocket whose server never completes the closing handshake.
  s = await setup({transport: 'websocket'});
  s.sockets[0].open();
  s.feed.close();
  assert.equal(s.feed.readyState, CLOSING);
  await s.clock.advance(1000);
  assert.equal(s.feed.readyState, CLOSED);
  assert.equal(s.events.at(-1).wasClean, false);
  assert.equal(s.clock.pending, 0);

  // Long-poll with two channels in flight, one in backoff.
  s = await setup({transport: 'longpoll', channels: ['a', 'b']});
  s.fetch.calls[0].respond(200, {messages: [], last_id: 0, truncated: false});
  s.fetch.calls[1].respond(500, 'boom');
  await flush();
  assert.equal(s.fetch.open().length, 1);
  assert.ok(s.clock.pending >= 2, 'a watchdog and a retry timer');
  s.feed.close();
  assert.equal(s.feed.readyState, CLOSED);
  assert.equal(s.clock.pending, 0);
  assert.equal(s.fetch.open().length, 0, 'the poll in flight is aborted');
  const count = s.fetch.calls.length;
  await s.clock.advance(60000);
  assert.equal(s.fetch.calls.length, count, 'no poll after close');

  // SSE.
  s = await setup({transport: 'sse', channels: ['a']});
  s.EventSource.sources[0].open();
  s.feed.close();
  assert.ok(s.EventSource.sources[0].closed);
  assert.equal(s.clock.pending, 0);
});

test('sse: one EventSource per channel, resumes with since after an error', async () => {
  const {clock, EventSource, feed, events} = await setup({transport: 'sse', channels: ['a', 'b'], token: 'tk', since: {a: 5}});
  const [a, b] = EventSource.sources;
  assert.equal(a.url, 'http://gw.test/rt/sse/a?since=5&token=tk');
  assert.equal(b.url, 'http://gw.test/rt/sse/b?token=tk');
  a.open();
  assert.equal(feed.readyState, OPEN, 'open once a stream works and none fails');
  a.emit(env('a', 6));
  a.emit(env('a', 6));
  a.emit(env('a', 7));
  b.open();
  b.emit(env('b', 1));
  a.error();
  assert.ok(a.closed, 'the EventSource is closed: we do the reconnecting');
  assert.equal(feed.readyState, CONNECTING);
  await clock.advance(events.of('reconnecting')[0].delay);
  const a2 = EventSource.sources[2];
  assert.equal(a2.url, 'http://gw.test/rt/sse/a?since=7&token=tk');
  a2.open();
  a2.emit(env('a', 7));
  a2.emit(env('a', 8));
  assert.equal(feed.readyState, OPEN);
  assert.deepEqual(events.of('message').map((e) => `${e.channel}${e.id}`), ['a6', 'a7', 'b1', 'a8']);
  feed.close();
});

test('subscribe and unsubscribe while connected', async () => {
  const {sockets, feed} = await setup({transport: 'websocket', since: {late: 4}});
  sockets[0].open();
  const got = [];
  const h1 = (d, e) => got.push(`h1:${e.id}`);
  const h2 = (d, e) => got.push(`h2:${e.id}`);
  feed.subscribe('late', h1).subscribe('late', h2);
  assert.deepEqual(sockets[0].sent, [{type: 'subscribe', channel: 'late', since: 4}], 'one subscribe per channel');
  sockets[0].receive(env('late', 5));
  feed.unsubscribe('late', h1);
  sockets[0].receive(env('late', 6));
  feed.unsubscribe('late');
  assert.deepEqual(sockets[0].sent.at(-1), {type: 'unsubscribe', channel: 'late'});
  sockets[0].receive(env('late', 7)); // in flight before the server saw it
  assert.deepEqual(got, ['h1:5', 'h2:5', 'h2:6']);
  feed.close();

  // Long-poll: unsubscribing aborts that channel's loop only.
  const s = await setup({transport: 'longpoll', channels: ['x', 'y']});
  s.feed.unsubscribe('x');
  assert.ok(s.fetch.calls[0].aborted);
  assert.ok(!s.fetch.calls[1].aborted);
  s.feed.close();
});

test('a throwing handler does not stop delivery to the others', async () => {
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    const {sockets, feed} = await setup({transport: 'websocket'});
    const got = [];
    feed.subscribe('c', () => { throw new Error('handler bug'); });
    feed.subscribe('c', (d, e) => got.push(e.id));
    feed.onmessage = () => { throw new Error('onmessage bug'); };
    sockets[0].open();
    sockets[0].receive(env('c', 1));
    sockets[0].receive(env('c', 2));
    assert.deepEqual(got, [1, 2]);
    assert.deepEqual(reported, ['handler bug', 'onmessage bug', 'handler bug', 'onmessage bug']);
    feed.close();
  } finally {
    if (saved === undefined) delete globalThis.reportError; else globalThis.reportError = saved;
  }
});

test('epochs: cursors resume as N-E once known, and an in-band truncated restarts the ids', async () => {
  // WebSocket: the ack carries the epoch; a reconnect resumes with N-E.
  let s = await setup({transport: 'websocket', channels: ['c']});
  s.sockets[0].open();
  s.sockets[0].receive({type: 'subscribed', channel: 'c', last_id: 0, epoch: 'a1', cursor: '0-a1', truncated: false});
  for (const id of [1, 2, 3]) s.sockets[0].receive(env('c', id));
  // The bus lost the channel: the gateway says so, then ids start again.
  s.sockets[0].receive({type: 'truncated', channel: 'c', epoch: 'b2'});
  for (const id of [1, 2]) s.sockets[0].receive(env('c', id));
  assert.deepEqual(s.events.of('message').map((e) => e.id), [1, 2, 3, 1, 2], 'the new sequence is not taken for duplicates');
  const t = s.events.of('truncated');
  assert.equal(t.length, 1);
  assert.equal(t[0].epoch, 'b2');
  s.sockets[0].drop(1006);
  await s.clock.advance(s.events.of('reconnecting')[0].delay);
  s.sockets[1].open();
  assert.deepEqual(s.sockets[1].sent, [{type: 'subscribe', channel: 'c', since: '2-b2'}]);
  s.feed.close();

  // Long-poll: the answer's cursor carries the epoch to the next poll.
  s = await setup({transport: 'longpoll', channels: ['c']});
  s.fetch.calls[0].respond(200, {messages: [env('c', 7)], last_id: 7, truncated: false, cursor: '7-c3'});
  await flush();
  assert.equal(s.fetch.calls[1].q.since, '7-c3');
  s.feed.close();
});

// ---- deltas on state channels (JSON Patch against the value held) ---------

test('applyJsonPatch: add, remove, replace on objects, arrays, nulls, unicode; misfits throw', () => {
  const doc = {a: 1, list: [1, 2, 3], deep: {x: {y: 'é'}}, 'sl/ash': {'ti~lde': 0}};
  const out = applyJsonPatch(doc, [
    {op: 'replace', path: '/a', value: null},
    {op: 'remove', path: '/list/2'},
    {op: 'add', path: '/list/2', value: {n: [0]}},
    {op: 'add', path: '/list/-', value: '日本'},
    {op: 'replace', path: '/deep/x/y', value: '😀'},
    {op: 'replace', path: '/sl~1ash/ti~0lde', value: 1},
    {op: 'add', path: '/__proto__', value: {polluted: true}},
  ]);
  assert.deepEqual(JSON.parse(JSON.stringify(out)), JSON.parse(
    '{"a":null,"list":[1,2,{"n":[0]},"日本"],"deep":{"x":{"y":"😀"}},"sl/ash":{"ti~lde":1},"__proto__":{"polluted":true}}',
  ));
  assert.equal({}.polluted, undefined, 'a __proto__ member is data, not a prototype');
  assert.deepEqual(applyJsonPatch({a: 1}, [{op: 'replace', path: '', value: [1]}]), [1]);
  for (const bad of [
    [{op: 'replace', path: '/missing', value: 1}],
    [{op: 'remove', path: '/list/9'}],
    [{op: 'add', path: '/nope/x', value: 1}],
    [{op: 'add', path: '/list/x', value: 1}],
    [{op: 'remove', path: ''}],
    {not: 'a list'},
  ]) {
    assert.throws(() => applyJsonPatch({list: [1]}, bad), TypeError, JSON.stringify(bad));
  }
  assert.equal(pollbridge.applyJsonPatch, applyJsonPatch);
});

const delta = (channel, id, base, ops) => ({channel, id, base, delta: ops});

test('deltas over WebSocket: asked per subscribe, rebuilt into whole values, handlers may mutate', async () => {
  const {sockets, feed, events} = await setup({transport: 'websocket', deltas: true});
  const got = [];
  feed.subscribe('score', (data, envelope) => {
    got.push([envelope.id, JSON.parse(JSON.stringify(data)), 'delta' in envelope]);
    data.home = 'scribbled'; // a handler's copy: must not change what the next delta applies to
  });
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [{type: 'subscribe', channel: 'score', delta: true}]);
  sockets[0].receive({type: 'subscribed', channel: 'score', last_id: 0, truncated: false});
  sockets[0].receive(env('score', 1, {home: 0, away: 0, events: []}));
  sockets[0].receive(delta('score', 2, 1, [{op: 'replace', path: '/home', value: 1}, {op: 'add', path: '/events/0', value: 'goal'}]));
  sockets[0].receive(delta('score', 3, 2, [{op: 'replace', path: '/away', value: null}]));
  assert.deepEqual(got, [
    [1, {home: 0, away: 0, events: []}, false],
    [2, {home: 1, away: 0, events: ['goal']}, false],
    [3, {home: 1, away: null, events: ['goal']}, false],
  ]);
  assert.deepEqual(events.of('message').map((e) => e.envelope), [
    env('score', 1, {home: 'scribbled', away: 0, events: []}),
    {channel: 'score', id: 2, data: {home: 'scribbled', away: 0, events: ['goal']}},
    {channel: 'score', id: 3, data: {home: 'scribbled', away: null, events: ['goal']}},
  ]);
  feed.close();
});

test('deltas over WebSocket: a delta on another base is dropped and the channel resubscribed for a whole value', async () => {
  const {sockets, feed, events} = await setup({transport: 'websocket', deltas: true, channels: ['s']});
  sockets[0].open();
  sockets[0].receive({type: 'subscribed', channel: 's', last_id: 0, truncated: false});
  sockets[0].receive(env('s', 1, {v: 1}));
  sockets[0].sent.length = 0;
  sockets[0].receive(delta('s', 3, 2, [{op: 'replace', path: '/v', value: 3}])); // we hold #1, not #2
  sockets[0].receive(delta('s', 4, 3, [{op: 'replace', path: '/v', value: 4}])); // in flight: dropped quietly
  assert.deepEqual(feed.lastIds, {s: 1}, 'the cursor stays at the value held');
  assert.deepEqual(sockets[0].sent, [
    {type: 'unsubscribe', channel: 's'},
    {type: 'subscribe', channel: 's', since: 1, delta: true},
  ]);
  const [err] = events.of('error');
  assert.equal(err.code, 'delta_base_mismatch');
  assert.equal(events.of('error').length, 1);
  // The new subscription starts with a whole value, then deltas again.
  sockets[0].receive(env('s', 4, {v: 4}));
  sockets[0].receive(delta('s', 5, 4, [{op: 'replace', path: '/v', value: 5}]));
  assert.deepEqual(events.of('message').map((e) => [e.id, e.data.v]), [[1, 1], [4, 4], [5, 5]]);
  // A patch that does not fit the value held counts as a wrong base.
  sockets[0].receive(delta('s', 6, 5, [{op: 'remove', path: '/nope'}]));
  assert.equal(events.of('error').length, 2);
  assert.deepEqual(feed.lastIds, {s: 5});
  feed.close();
});

test('deltas over long-poll: delta=1 only while the value at the cursor is held', async () => {
  const {fetch, feed} = await setup({transport: 'longpoll', deltas: true, channels: ['p']});
  const got = [];
  feed.subscribe('p', (data, e) => got.push([e.id, data.n]));
  assert.deepEqual(fetch.calls[0].q, {timeout: '0'});
  fetch.calls[0].respond(200, {messages: [env('p', 1, {n: 1, pad: 'x'})], last_id: 1, cursor: '1-e7'});
  await flush();
  assert.deepEqual(fetch.calls[1].q, {since: '1-e7', delta: '1', timeout: '25'});
  fetch.calls[1].respond(200, {messages: [delta('p', 2, 1, [{op: 'replace', path: '/n', value: 2}])], last_id: 2, cursor: '2-e7'});
  await flush();
  // A delta on a base we don't hold: dropped; the next poll asks for a whole value.
  fetch.calls[2].respond(200, {messages: [delta('p', 4, 3, [{op: 'replace', path: '/n', value: 4}])], last_id: 4, cursor: '4-e7'});
  await flush();
  assert.deepEqual(fetch.calls[3].q, {since: '2-e7', timeout: '25'});
  fetch.calls[3].respond(200, {messages: [env('p', 4, {n: 4, pad: 'x'})], last_id: 4, cursor: '4-e7', conflated: true});
  await flush();
  assert.equal(fetch.calls[4].q.delta, '1');
  assert.deepEqual(got, [[1, 1], [2, 2], [4, 4]]);
  feed.close();
});

test('deltas over SSE: ?delta=1, and a wrong base reopens the stream from the cursor', async () => {
  const {EventSource, feed, events} = await setup({transport: 'sse', deltas: true, channels: ['t']});
  const [first] = EventSource.sources;
  assert.equal(first.url, 'http://gw.test/rt/sse/t?delta=1');
  first.open();
  first.emit(env('t', 1, {n: 1}));
  first.emit(delta('t', 2, 1, [{op: 'replace', path: '/n', value: 2}]));
  first.emit(delta('t', 4, 3, [{op: 'replace', path: '/n', value: 4}]));
  assert.ok(first.closed, 'the stream on the wrong base is closed');
  const second = EventSource.sources[1];
  assert.equal(second.url, 'http://gw.test/rt/sse/t?since=2&delta=1');
  second.open();
  second.emit(env('t', 4, {n: 4}));
  assert.deepEqual(events.of('message').map((e) => [e.id, e.data.n]), [[1, 1], [2, 2], [4, 4]]);
  feed.close();
});
