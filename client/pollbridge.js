// pollbridge browser client: one feed, three transports (WebSocket, long-poll,
// server-sent events), resume without loss or duplicates.
//
// Dependency-free ES module (ES2020). Served by the gateway as `{prefix}/client.js`:
//
//   import {connect} from 'http://GATEWAY/rt/client.js';
//   const feed = connect('http://GATEWAY/rt', {channels: ['news']});
//   feed.subscribe('news', (data, envelope) => console.log(envelope.id, data));
//
// The wire protocol is in docs/protocol.md; client/README.md
// documents this API.

export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSING = 2;
export const CLOSED = 3;

const TRANSPORTS = ['auto', 'websocket', 'longpoll', 'sse'];
const WS_CONNECTING = 0;
const WS_OPEN = 1;

const DEFAULTS = {
  backoff: {base: 250, cap: 10000}, // ms; full jitter, see delayFor()
  connectTimeout: 5000, // ms a WebSocket may take to open
  pollTimeout: 25, // s a long-poll is held by the server
  closeTimeout: 1000, // ms close() waits for the WebSocket closing handshake
};

// Characters that a channel name may contain go into URLs unescaped (':' and
// '@' are legal in paths and queries), so the server never has to
// percent-decode a valid name; anything else is escaped.
function esc(value) {
  return String(value).replace(/[^A-Za-z0-9_.:@-]/gu, (c) => encodeURIComponent(c));
}

function query(pairs) {
  const parts = pairs
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${k}=${esc(v)}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

// `baseUrl` may be absolute (http, https, ws, wss) or relative to the page.
function resolveBase(baseUrl) {
  let url;
  try {
    url = new URL(baseUrl);
  } catch (_) {
    const here = globalThis.location && globalThis.location.href;
    if (!here) throw new TypeError(`pollbridge: baseUrl must be absolute here: ${baseUrl}`);
    url = new URL(baseUrl, here);
  }
  const scheme = {'ws:': 'http:', 'wss:': 'https:'}[url.protocol] || url.protocol;
  const http = `${scheme}//${url.host}${url.pathname.replace(/\/+$/, '')}`;
  return {http, ws: http.replace(/^http/, 'ws')};
}

/** `retry=MS` anywhere in a close reason, e.g. "restarting; retry=2500". */
export function parseRetryHint(reason) {
  const m = /(?:^|[\s;,])retry=(\d+)(?![\d])/.exec(String(reason || ''));
  return m ? Math.min(Number(m[1]), 3600000) : null;
}

const own = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);
const isIndex = (token) => /^(0|[1-9][0-9]*)$/u.test(token);

/** Sets a member without invoking setters (a `__proto__` key stays data). */
function setMember(obj, key, value) {
  Object.defineProperty(obj, key, {value, writable: true, enumerable: true, configurable: true});
}

/**
 * Applies the JSON Patch (RFC 6902) operations the gateway sends as deltas
 * (`add`, `remove`, `replace`) to `doc`, in place where it can; returns the
 * result. Throws on an operation that does not fit `doc`: the caller then
 * asks for a whole value.
 */
export function applyJsonPatch(doc, ops) {
  if (!Array.isArray(ops)) throw new TypeError('pollbridge: a delta is a list of operations');
  for (const op of ops) {
    const path = op && op.path;
    if (typeof path !== 'string' || (path !== '' && path[0] !== '/')) throw new TypeError('pollbridge: bad delta path');
    if (path === '') {
      if (op.op !== 'add' && op.op !== 'replace') throw new TypeError(`pollbridge: cannot ${op.op} the whole value`);
      doc = op.value;
      continue;
    }
    const tokens = path.slice(1).split('/').map((t) => t.replace(/~1/gu, '/').replace(/~0/gu, '~'));
    const last = tokens.pop();
    let parent = doc;
    for (const t of tokens) {
      const ok = parent !== null && typeof parent === 'object'
        && (Array.isArray(parent) ? isIndex(t) && Number(t) < parent.length : own(parent, t));
      if (!ok) throw new TypeError(`pollbridge: delta path ${path} not in the value`);
      parent = parent[Array.isArray(parent) ? Number(t) : t];
    }
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : (isIndex(last) ? Number(last) : -1);
      if (op.op === 'add' && i >= 0 && i <= parent.length) parent.splice(i, 0, op.value);
      else if (op.op === 'replace' && i >= 0 && i < parent.length) parent[i] = op.value;
      else if (op.op === 'remove' && i >= 0 && i < parent.length) parent.splice(i, 1);
      else throw new TypeError(`pollbridge: cannot ${op.op} ${path}`);
    } else if (parent !== null && typeof parent === 'object') {
      if (op.op === 'add' || (op.op === 'replace' && own(parent, last))) setMember(parent, last, op.value);
      else if (op.op === 'remove' && own(parent, last)) delete parent[last];
      else throw new TypeError(`pollbridge: cannot ${op.op} ${path}`);
    } else {
      throw new TypeError(`pollbridge: delta path ${path} not in the value`);
    }
  }
  return doc;
}

const copyOf = (value) => (value === undefined ? value : JSON.parse(JSON.stringify(value)));

function reportLater(err) {
  // A throwing handler must not break delivery to the others, yet must not
  // vanish either: rethrow it outside our call stack.
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else queueMicrotask(() => { throw err; });
}

class Feed {
  constructor(baseUrl, options = {}) {
    const o = options || {};
    const mode = o.transport || 'auto';
    if (!TRANSPORTS.includes(mode)) throw new TypeError(`pollbridge: unknown transport ${mode}`);
    this._base = resolveBase(baseUrl);
    this._mode = mode;
    this._token = o.token;
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    this._EventSource = o.EventSource || globalThis.EventSource;
    this._fetch = o.fetch || ((...a) => globalThis.fetch(...a));
    // Wrapped so browsers don't throw "Illegal invocation" on an unbound call.
    this._setTimeout = o.setTimeout || ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = o.clearTimeout || ((id) => globalThis.clearTimeout(id));
    this._random = o.random || Math.random;
    this._backoff = {...DEFAULTS.backoff, ...(o.backoff || {})};
    this._connectTimeout = o.connectTimeout ?? DEFAULTS.connectTimeout;
    this._pollTimeout = o.pollTimeout ?? DEFAULTS.pollTimeout;
    this._closeTimeout = o.closeTimeout ?? DEFAULTS.closeTimeout;
    // Deltas on `state` channels: later values come as patches against the
    // previous one. channel -> {id, value}: the value held (a private copy,
    // so handlers may modify what they get).
    this._deltas = Boolean(o.deltas);
    this._values = new Map();
    this._resyncing = new Set(); // channels waiting for a whole value

    this._state = CONNECTING;
    this._transport = mode === 'auto' ? 'websocket' : mode;
    this._fallback = null; // why 'auto' left WebSocket, sent once as ?fallback=
    this._fallbackReported = false;
    // A random id for this page load, sent on polls so the gateway can count
    // distinct polling clients without identifying anyone.
    this._cid = Math.floor(Math.random() * 2 ** 52).toString(36);
    this._channels = new Map(); // channel -> Set of handlers
    this._cursor = new Map(); // channel -> last id delivered (or resumed from)
    // channel -> epoch of that id's sequence (hex), as the gateway tells it:
    // resuming with `N-E` lets any node see that the sequence was lost.
    this._epoch = new Map();
    this._listeners = new Map(); // event type -> Set of listeners
    this._timers = new Set(); // every pending timer, so close() can clear them all
    this._loops = new Map(); // long-poll / SSE: channel -> loop state

    // WebSocket state
    this._ws = null;
    this._wsEverOpened = false; // 'auto' falls back only if WebSocket never worked
    this._wsAttempt = 0;
    this._wsSent = []; // commands sent and not yet answered, oldest first
    this._wsQueue = []; // commands waiting for the socket to open

    this.onopen = this.onmessage = this.onerror = this.onclose = null;

    for (const [ch, id] of Object.entries(o.since || {})) {
      if (Number.isSafeInteger(id) && id >= 0) this._cursor.set(ch, id);
    }
    const initial = typeof o.channels === 'string' ? [o.channels] : o.channels || [];
    for (const ch of initial) this.subscribe(ch);

    // Start on a microtask: the caller can attach listeners and subscribe
    // first, and no event fires from inside connect().
    this._started = false;
    queueMicrotask(() => this._start());
  }

  // ---- public API -------------------------------------------------------

  get readyState() { return this._state; }
  get transport() { return this._transport; }
  get lastIds() { return Object.freeze(Object.fromEntries(this._cursor)); }

  subscribe(channel, handler) {
    if (typeof channel !== 'string' || !channel) throw new TypeError('pollbridge: channel must be a non-empty string');
    if (handler != null && typeof handler !== 'function') throw new TypeError('pollbridge: handler must be a function');
    let handlers = this._channels.get(channel);
    const isNew = !handlers;
    if (isNew) this._channels.set(channel, (handlers = new Set()));
    if (handler) handlers.add(handler);
    if (isNew && this._started && this._state < CLOSING) this._activate(channel);
    return this;
  }

  /** Without `handler` the channel is dropped; with it, only that handler. */
  unsubscribe(channel, handler) {
    const handlers = this._channels.get(channel);
    if (!handlers) return this;
    if (handler) {
      handlers.delete(handler);
      return this;
    }
    this._channels.delete(channel);
    if (this._started && this._state < CLOSING) this._deactivate(channel);
    return this;
  }

  /** WebSocket only: resolves with the id from the `published` ack. */
  publish(channel, data) {
    if (this._state >= CLOSING) return Promise.reject(new Error('pollbridge: feed is closed'));
    if (this._transport !== 'websocket') {
      return Promise.reject(new Error(`pollbridge: publish needs the websocket transport (now ${this._transport})`));
    }
    return new Promise((resolve, reject) => {
      this._wsCommand({type: 'publish', channel, data: data === undefined ? null : data}, {resolve, reject});
    });
  }

  /** Raw JSON command over the WebSocket (queued until it is open). */
  send(command) {
    if (this._state >= CLOSING) throw new Error('pollbridge: feed is closed');
    if (this._transport !== 'websocket') throw new Error(`pollbridge: send needs the websocket transport (now ${this._transport})`);
    const cmd = typeof command === 'string' ? JSON.parse(command) : command;
    if (!cmd || typeof cmd !== 'object') throw new TypeError('pollbridge: a command is a JSON object');
    this._wsCommand(cmd);
  }

  close() {
    if (this._state >= CLOSING) return;
    this._state = CLOSING;
    for (const id of this._timers) this._clearTimeout(id);
    this._timers.clear();
    for (const ch of [...this._loops.keys()]) this._stopLoop(ch);
    this._failCommands(new Error('pollbridge: feed closed'), true);
    const ws = this._ws;
    if (ws && (ws.readyState === WS_CONNECTING || ws.readyState === WS_OPEN)) {
      // Wait for the closing handshake (bounded), like WebSocket.close().
      ws.onopen = ws.onmessage = ws.onerror = null;
      ws.onclose = (e) => this._finishClose(e.code, e.reason, e.wasClean);
      try { ws.close(1000, 'client closed'); } catch (_) { /* already closing */ }
      this._later(this._closeTimeout, () => this._finishClose(1006, '', false));
    } else {
      this._finishClose(1000, '', true);
    }
  }

  addEventListener(type, listener) {
    if (!listener) return;
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
  }

  removeEventListener(type, listener) {
    const set = this._listeners.get(type);
    if (set) set.delete(listener);
  }

  // ---- plumbing ---------------------------------------------------------

  _emit(type, props) {
    const event = {type, target: this, timeStamp: Date.now(), ...props};
    const targets = [this[`on${type}`], ...(this._listeners.get(type) || [])];
    for (const fn of targets) {
      try {
        if (typeof fn === 'function') fn.call(this, event);
        else if (fn && typeof fn.handleEvent === 'function') fn.handleEvent(event);
      } catch (err) {
        reportLater(err);
      }
    }
  }

  _setState(state) {
    if (this._state === state || this._state >= CLOSING) return;
    this._state = state;
    if (state === OPEN) this._emit('open', {transport: this._transport});
  }

  _later(ms, fn) {
    const id = this._setTimeout(() => {
      this._timers.delete(id);
      fn();
    }, ms);
    this._timers.add(id);
    return id;
  }

  _cancel(id) {
    if (id != null && this._timers.delete(id)) this._clearTimeout(id);
  }

  /** Capped exponential backoff with full jitter, or the server's hint. */
  _delayFor(attempt, hintMs) {
    const {base, cap} = this._backoff;
    if (hintMs != null) {
      // At least what the server asked for; the jitter spreads a crowd of
      // clients that all got the same hint (20% of it, at least `base`).
      return Math.floor(hintMs + this._random() * Math.max(base, hintMs * 0.2));
    }
    return Math.floor(this._random() * Math.min(cap, base * 2 ** attempt));
  }

  _start() {
    if (this._started || this._state >= CLOSING) return;
    this._started = true;
    if (this._transport === 'websocket') this._openWs();
    else this._startLoops();
  }

  _activate(channel) {
    if (this._transport === 'websocket') {
      if (this._ws && this._ws.readyState === WS_OPEN && this._state === OPEN) {
        this._wsCommand(this._subscribeCommand(channel));
      } // else: every channel is subscribed when the socket opens
    } else {
      this._startLoop(channel);
    }
  }

  _deactivate(channel) {
    if (this._transport === 'websocket') {
      if (this._ws && this._ws.readyState === WS_OPEN && this._state === OPEN) {
        this._wsCommand({type: 'unsubscribe', channel});
      }
    } else {
      this._stopLoop(channel);
      this._updateLoopState();
    }
  }

  _subscribeCommand(channel) {
    const command = {type: 'subscribe', channel, since: this._since(channel)};
    if (this._deltas) command.delta = true;
    return command;
  }

  /** Long-poll: ask for a delta only when we hold the value at the cursor. */
  _pollDelta(channel) {
    const held = this._values.get(channel);
    return this._deltas && held && held.id === this._cursor.get(channel) ? 1 : undefined;
  }

  /**
   * The value an envelope carries: `data`, or its `delta` applied to the
   * value held — when that is the delta's `base`. Otherwise null: the
   * envelope is dropped and a whole value asked for.
   */
  _valueOf(channel, envelope) {
    if (!own(envelope, 'delta')) {
      this._resyncing.delete(channel);
      return {data: envelope.data};
    }
    const held = this._values.get(channel);
    if (held && held.id === envelope.base) {
      try {
        return {data: applyJsonPatch(copyOf(held.value), envelope.delta)};
      } catch (_) { /* a patch that doesn't fit: as a wrong base */ }
    }
    this._resync(channel, envelope);
    return null;
  }

  /** A delta we can't apply: forget the value and get a whole one. */
  _resync(channel, envelope) {
    this._values.delete(channel);
    // Deltas already in flight are dropped too, without asking again.
    if (this._resyncing.has(channel)) return;
    this._resyncing.add(channel);
    this._emit('error', {transport: this._transport, channel, code: 'delta_base_mismatch',
      message: `delta #${envelope.id} is against #${envelope.base}, which this client does not hold`});
    if (this._transport === 'websocket') {
      // A fresh subscription starts with a whole value.
      this._wsCommand({type: 'unsubscribe', channel});
      this._wsCommand(this._subscribeCommand(channel));
    } else if (this._transport === 'sse' && this._loops.has(channel)) {
      this._stopLoop(channel);
      this._startLoop(channel);
    } // long-poll: the next poll, without a held value, asks for no delta
  }

  /** The cursor to resume `channel` from: `N-E` once the epoch is known, else `N`. */
  _since(channel) {
    const id = this._cursor.get(channel);
    const epoch = this._epoch.get(channel);
    return id !== undefined && epoch ? `${id}-${epoch}` : id;
  }

  /** Remembers the epoch in a cursor `N-E` the gateway handed out. */
  _learnEpoch(channel, cursor) {
    if (typeof cursor !== 'string') return;
    const dash = cursor.indexOf('-');
    if (dash > 0) this._epoch.set(channel, cursor.slice(dash + 1));
  }

  _deliver(envelope) {
    if (!envelope || typeof envelope !== 'object') return;
    const {channel, id} = envelope;
    const handlers = this._channels.get(channel);
    if (!handlers || !Number.isSafeInteger(id)) return; // not ours (e.g. in flight after unsubscribe)
    const last = this._cursor.get(channel);
    if (last !== undefined && id <= last) return; // replayed after a resume: already delivered
    if (this._deltas) {
      const value = this._valueOf(channel, envelope);
      if (!value) return;
      this._values.set(channel, {id, value: copyOf(value.data)});
      if (own(envelope, 'delta')) {
        envelope = {channel, id, data: value.data};
      }
    }
    this._cursor.set(channel, id);
    for (const fn of [...handlers]) {
      try { fn(envelope.data, envelope); } catch (err) { reportLater(err); }
    }
    this._emit('message', {data: envelope.data, envelope, channel, id});
  }

  /**
   * The server's history no longer reaches our cursor, or its ids restarted
   * (cursor greater than its last id). Either way it replays from its oldest
   * kept message, so the cursor must drop to 0 or that replay would be taken
   * for duplicates.
   */
  _truncated(channel, info) {
    this._cursor.set(channel, 0);
    this._values.delete(channel);
    this._emit('truncated', {channel, ...info});
  }

  // ---- WebSocket --------------------------------------------------------

  _openWs() {
    // No channels in the URL: each is subscribed by command, with its own
    // `since` (the URL's `since` works for one channel only).
    const url = `${this._base.ws}/ws${query([['token', this._token]])}`;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (error) {
      this._wsFailed('ws_blocked', null, error);
      return;
    }
    this._ws = ws;
    let opened = false;
    const timer = this._later(this._connectTimeout, () => {
      if (this._ws === ws) this._wsFailed('ws_timeout', null);
    });
    ws.onopen = () => {
      if (this._ws !== ws) return;
      opened = true;
      this._cancel(timer);
      this._wsOpened();
    };
    ws.onmessage = (e) => {
      if (this._ws === ws) this._wsMessage(e.data);
    };
    ws.onerror = (error) => {
      if (this._ws !== ws) return;
      this._cancel(timer);
      if (opened) {
        this._emit('error', {transport: 'websocket', error});
        this._wsLost(1006, '');
      } else {
        this._wsFailed('ws_error', null, error);
      }
    };
    ws.onclose = (e) => {
      if (this._ws !== ws) return;
      this._cancel(timer);
      if (opened) this._wsLost(e.code, e.reason);
      else this._wsFailed('ws_closed_before_open', e);
    };
  }

  _dropWs() {
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try { ws.close(); } catch (_) { /* never opened */ }
  }

  _wsOpened() {
    this._wsEverOpened = true;
    this._wsAttempt = 0;
    this._wsSent = [];
    for (const channel of this._channels.keys()) {
      this._wsWrite(this._subscribeCommand(channel), {});
    }
    const queued = this._wsQueue;
    this._wsQueue = [];
    for (const {command, pending} of queued) this._wsWrite(command, pending);
    this._setState(OPEN);
  }

  /**
   * The socket never opened. 'auto' falls back to long-poll then, unless a
   * WebSocket has worked before: then this is an outage, not a blocked path.
   */
  _wsFailed(reason, closeEvent, error) {
    this._dropWs();
    if (this._mode === 'auto' && !this._wsEverOpened) {
      this._fallBack(reason);
      return;
    }
    this._emit('error', {transport: 'websocket', error, message: reason});
    this._wsReconnect(closeEvent ? closeEvent.code : 1006, closeEvent ? closeEvent.reason : '');
  }

  /** An open socket was lost. */
  _wsLost(code, reason) {
    this._dropWs();
    this._setState(CONNECTING);
    // The server may or may not have accepted these: say so rather than guess.
    this._failCommands(new Error('pollbridge: connection lost before the server answered'), false);
    this._wsReconnect(code, reason);
  }

  _wsReconnect(code, reason) {
    const delay = this._delayFor(this._wsAttempt, parseRetryHint(reason));
    this._wsAttempt += 1;
    this._emit('reconnecting', {transport: 'websocket', attempt: this._wsAttempt, delay, code, reason});
    this._later(delay, () => this._openWs());
  }

  _fallBack(reason) {
    this._fallback = reason;
    const previous = this._transport;
    this._transport = 'longpoll';
    this._failCommands(new Error(`pollbridge: fell back to long-poll (${reason}); no WebSocket for commands`), true);
    this._emit('transport', {transport: 'longpoll', previous, reason});
    this._startLoops();
  }

  /** Send now if open, else queue for the next open. */
  _wsCommand(command, pending = {}) {
    if (this._ws && this._ws.readyState === WS_OPEN && this._state === OPEN) this._wsWrite(command, pending);
    else this._wsQueue.push({command, pending});
  }

  _wsWrite(command, pending) {
    this._ws.send(JSON.stringify(command));
    this._wsSent.push({kind: command.type, channel: command.channel, since: command.since, ...pending});
  }

  /** Reject publishes in flight (and, if `queued`, those not yet sent). */
  _failCommands(error, queued) {
    const sent = this._wsSent;
    this._wsSent = [];
    const waiting = queued ? this._wsQueue.map((q) => q.pending) : [];
    if (queued) this._wsQueue = [];
    for (const p of [...sent, ...waiting]) if (p.reject) p.reject(error);
  }

  /**
   * Match a reply to the command it answers. The server answers commands in
   * order, so the oldest matching one is it; matching on kind and channel
   * keeps a stray reply from settling the wrong publish.
   */
  _takeSent(kind, channel) {
    const i = this._wsSent.findIndex((p) => (kind === null || p.kind === kind)
      && (channel === undefined || p.channel === undefined || p.channel === channel));
    return i < 0 ? null : this._wsSent.splice(i, 1)[0];
  }

  _wsMessage(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) {
      this._emit('error', {transport: 'websocket', message: 'frame is not JSON'});
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === undefined) {
      this._deliver(msg);
      return;
    }
    this._emit('control', {data: msg});
    switch (msg.type) {
      case 'subscribed': {
        const sent = this._takeSent('subscribe', msg.channel);
        if (typeof msg.epoch === 'string') this._epoch.set(msg.channel, msg.epoch);
        if (msg.truncated) {
          this._truncated(msg.channel, {since: sent ? sent.since : undefined, last_id: msg.last_id});
        } else if (!this._cursor.has(msg.channel) && Number.isSafeInteger(msg.last_id)) {
          // Subscribed "from now": remember where now is, so a reconnect
          // before the first message still resumes without a gap.
          this._cursor.set(msg.channel, msg.last_id);
        }
        break;
      }
      case 'unsubscribed':
        this._takeSent('unsubscribe', msg.channel);
        break;
      case 'truncated':
        // The channel's sequence was lost (the bus restarted empty): the
        // messages that follow start again at id 1 in a new epoch.
        if (typeof msg.epoch === 'string') this._epoch.set(msg.channel, msg.epoch);
        this._truncated(msg.channel, {since: this._cursor.get(msg.channel), epoch: msg.epoch});
        break;
      case 'published': {
        const sent = this._takeSent('publish', msg.channel);
        if (sent && sent.resolve) sent.resolve(msg.id);
        break;
      }
      case 'error': {
        const sent = this._takeSent(null, msg.channel);
        if (sent && sent.reject) {
          const err = new Error(msg.message || msg.code || 'publish failed');
          err.code = msg.code;
          sent.reject(err);
        } else {
          this._emit('error', {transport: 'websocket', code: msg.code, message: msg.message, channel: msg.channel});
        }
        break;
      }
      default:
        break;
    }
  }

  // ---- long-poll and SSE: one loop per channel ----------------------------

  _startLoops() {
    for (const channel of this._channels.keys()) this._startLoop(channel);
    this._updateLoopState();
  }

  _startLoop(channel) {
    // ok: null until the first answer, then whether the last request worked.
    const loop = {channel, ok: null, attempt: 0, first: true, timer: null, abort: null, es: null, stopped: false};
    this._loops.set(channel, loop);
    if (this._transport === 'sse') this._openSse(loop);
    else this._poll(loop);
  }

  _stopLoop(channel) {
    const loop = this._loops.get(channel);
    if (!loop) return;
    this._loops.delete(channel);
    loop.stopped = true;
    this._cancel(loop.timer);
    if (loop.abort) loop.abort.abort();
    if (loop.es) loop.es.close();
  }

  /** OPEN while no channel is failing and at least one works. */
  _updateLoopState() {
    const loops = [...this._loops.values()];
    const failing = loops.some((l) => l.ok === false);
    const working = loops.length === 0 || loops.some((l) => l.ok === true);
    this._setState(!failing && working ? OPEN : CONNECTING);
  }

  _loopResult(loop, ok) {
    loop.ok = ok;
    if (ok) loop.attempt = 0;
    this._updateLoopState();
  }

  _retryLoop(loop, hintMs, next) {
    const delay = this._delayFor(loop.attempt, hintMs);
    loop.attempt += 1;
    this._emit('reconnecting', {transport: this._transport, channel: loop.channel, attempt: loop.attempt, delay});
    loop.timer = this._later(delay, () => {
      loop.timer = null;
      if (!loop.stopped) next();
    });
  }

  _poll(loop) {
    this._pollOnce(loop).catch(reportLater);
  }

  async _pollOnce(loop) {
    const {channel} = loop;
    const since = this._since(channel);
    // The first request of a loop is answered at once (timeout=0): the feed
    // learns quickly that it is connected and, starting "from now", where
    // now is (`last_id`). Later requests are held by the server.
    const timeout = loop.first ? 0 : this._pollTimeout;
    // The fallback reason goes on the first poll after the fallback only:
    // the gateway counts each one it sees.
    const fallback = this._fallback && !this._fallbackReported ? this._fallback : null;
    if (fallback) this._fallbackReported = true;
    const url = `${this._base.http}/poll/${esc(channel)}${query([
      ['since', since], ['delta', this._pollDelta(channel)], ['timeout', timeout], ['fallback', fallback], ['cid', this._cid], ['token', this._token],
    ])}`;
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    loop.abort = controller;
    // A request the network silently dropped would otherwise hang forever.
    const watchdog = this._later((timeout + 10) * 1000, () => controller && controller.abort());
    let body = null;
    let failure = null;
    try {
      const res = await this._fetch(url, {signal: controller ? controller.signal : undefined, cache: 'no-store'});
      if (res.ok) {
        body = await res.json();
        if (!body || typeof body !== 'object') throw new Error('long-poll answer is not a JSON object');
      } else {
        const text = await res.text().catch(() => '');
        let message = text;
        try { message = JSON.parse(text).message || text; } catch (_) { /* plain text */ }
        const retryAfter = res.headers && res.headers.get ? Number(res.headers.get('Retry-After')) : NaN;
        failure = {status: res.status, message, hint: retryAfter > 0 ? retryAfter * 1000 : null};
      }
    } catch (error) {
      failure = {error, message: String(error && error.message || error), hint: null};
    } finally {
      this._cancel(watchdog);
      if (loop.abort === controller) loop.abort = null;
    }
    if (loop.stopped || this._state >= CLOSING) return;
    if (failure) {
      loop.first = true;
      this._emit('error', {transport: 'longpoll', channel, status: failure.status, message: failure.message, error: failure.error});
      this._loopResult(loop, false);
      this._retryLoop(loop, failure.hint, () => this._poll(loop));
      return;
    }
    loop.first = false;
    this._pollAnswer(channel, since, body);
    this._loopResult(loop, true);
    if (!loop.stopped && this._state < CLOSING) this._poll(loop);
  }

  _pollAnswer(channel, since, body) {
    this._learnEpoch(channel, body.cursor);
    if (body.truncated) this._truncated(channel, {since, last_id: body.last_id});
    const messages = Array.isArray(body.messages) ? body.messages : [];
    for (const m of messages) this._deliver(m && m.channel === undefined ? {...m, channel} : m);
    // With messages, the cursor is the last one delivered: an answer capped
    // at the server's max_messages must not skip the rest. Without, the
    // answer tells where "now" is, which matters when we had no cursor.
    if (!messages.length && Number.isSafeInteger(body.last_id) && (since === undefined || body.truncated)) {
      this._cursor.set(channel, body.last_id);
    }
  }

  _openSse(loop) {
    const {channel} = loop;
    // We reconnect ourselves (not EventSource's own retry) so that the
    // cursor, backoff and events are the same as for the other transports.
    const url = `${this._base.http}/sse/${esc(channel)}${query([
      ['since', this._since(channel)], ['delta', this._deltas ? 1 : undefined], ['token', this._token],
    ])}`;
    let es;
    try {
      es = new this._EventSource(url);
    } catch (error) {
      this._emit('error', {transport: 'sse', channel, error, message: String(error && error.message || error)});
      this._loopResult(loop, false);
      this._retryLoop(loop, null, () => this._openSse(loop));
      return;
    }
    loop.es = es;
    const live = () => loop.es === es && !loop.stopped;
    es.onopen = () => {
      if (live()) this._loopResult(loop, true);
    };
    es.onmessage = (e) => {
      if (!live()) return;
      let envelope;
      try { envelope = JSON.parse(e.data); } catch (_) {
        this._emit('error', {transport: 'sse', channel, message: 'event data is not JSON'});
        return;
      }
      this._learnEpoch(channel, e.lastEventId);
      this._deliver(envelope);
    };
    es.addEventListener('truncated', (e) => {
      if (!live()) return;
      let info = {};
      try { info = JSON.parse(e.data) || {}; } catch (_) { /* keep {} */ }
      if (typeof info.epoch === 'string') this._epoch.set(channel, info.epoch);
      this._truncated(channel, {since: info.since});
    });
    es.onerror = (error) => {
      if (!live()) return;
      es.close();
      loop.es = null;
      this._emit('error', {transport: 'sse', channel, error});
      this._loopResult(loop, false);
      this._retryLoop(loop, null, () => this._openSse(loop));
    };
  }

  _finishClose(code, reason, wasClean) {
    if (this._state === CLOSED) return;
    for (const id of this._timers) this._clearTimeout(id);
    this._timers.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this._state = CLOSED;
    this._emit('close', {code, reason, wasClean});
  }
}

for (const [name, value] of Object.entries({CONNECTING, OPEN, CLOSING, CLOSED})) {
  Object.defineProperty(Feed, name, {value, enumerable: true});
  Object.defineProperty(Feed.prototype, name, {value, enumerable: true});
}

/** Open a feed on the gateway at `baseUrl` (origin + prefix, e.g. `/rt`). */
export function connect(baseUrl, options) {
  return new Feed(baseUrl, options);
}

export default {connect, applyJsonPatch, CONNECTING, OPEN, CLOSING, CLOSED};
