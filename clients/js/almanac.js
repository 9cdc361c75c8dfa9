// almanac.js — a client of almanac's session protocol (API.md "Session
// protocol") over WebSocket (`/api/v1/ws`, subprotocol `almanac.v1`), for
// browsers and Node.js alike: one ES module, no dependencies.
//
//   import { Almanac } from './almanac.js';
//   const db = await Almanac.connect('ws://127.0.0.1:8480', { token });
//   await db.set('home/kitchen/temp', 21.5);
//   const sub = await db.subscribe('home/#');
//   for await (const m of sub) console.log(m.type, m.key, m.rev);
//
// What it does for its user:
// - Requests carry an id; each call returns a promise of the reply, or
//   rejects with an AlmanacError whose `code` is the server's `error`.
// - Subscriptions deliver the snapshot's events, `sync`, then live events,
//   to callbacks or as an async iterator.
// - After a dropped connection it reconnects (a backoff doubling from
//   `backoff` to `maxBackoff`), presents the token again (`auth`), and
//   resumes every subscription with `since` = the last rev it delivered, so
//   no change is missed or delivered twice; when history cannot serve that
//   (`history_gone`) the subscription gets a `reset` message, then a fresh
//   snapshot and `sync`.
//
// Invariants:
// 1. A subscription's `lastRev` is a rev every change up to which was
//    delivered: it moves with `sync` and with events of a replay or of the
//    live phase, never with a snapshot's events (they come in key order) nor
//    with transient publishes (they carry the rev of an earlier change).
// 2. A request is sent only while the connection is ready (welcome in, the
//    token presented); otherwise it is refused at once with code `offline`,
//    and a drop rejects every request in flight with that code.
// 3. A subscription is registered when its `ok` arrives, in the same message
//    handler, so the events that follow it always find it.

/** An error answered by the server (`code` is its `error`: `not_found`,
 * `forbidden`, …) or made here (`offline`, `closed`, `timeout`). */
export class AlmanacError extends Error {
  constructor(code, message, fields = {}) {
    super(message || code);
    this.name = 'AlmanacError';
    this.code = code;
    Object.assign(this, fields);
  }
}

/** The value an envelope carries: JSON as it is, a text as a string,
 * anything else as a Uint8Array; undefined for a deletion. */
export function valueOf(envelope) {
  if ('value' in envelope) return envelope.value;
  if ('text' in envelope) return envelope.text;
  if ('base64' in envelope) return fromBase64(envelope.base64);
  return undefined;
}

/** The fields of a `set` or `publish` for `value`: a string as `text`, bytes
 * (Uint8Array, ArrayBuffer) as `base64`, anything else as JSON `value`. */
export function valueFields(value) {
  if (typeof value === 'string') return { text: value };
  if (value instanceof ArrayBuffer) return { base64: toBase64(new Uint8Array(value)) };
  if (ArrayBuffer.isView(value)) return { base64: toBase64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  if (value === undefined) throw new TypeError('a value is needed');
  return { value };
}

export function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

// ws://host/api/v1/ws from what the user gave: a ws(s) or http(s) URL, a
// bare origin, or nothing (in a page: its own server).
function sessionUrl(url) {
  if (url === undefined || url === null) {
    if (typeof location === 'undefined') throw new TypeError('a server URL is needed outside a browser');
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/ws';
  }
  const u = new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/api/v1/ws';
  return u.toString();
}

const OPEN = 1;

/**
 * A session with one almanac server. Options:
 * - `WebSocket`: the constructor to use (Node before 22: `ws`'s default
 *   export); default `globalThis.WebSocket`.
 * - `token`: a token or JWT, presented with `auth` on every connection; a
 *   function returning one is asked each time.
 * - `reconnect` (true): reconnect after a drop; `backoff` (1000 ms) doubling
 *   to `maxBackoff` (10000 ms), back to `backoff` after a welcome.
 * - `timeout` (0: none): ms after which a request rejects with `timeout`.
 *
 * Events (`on(name, fn)`): `connecting` (a connection is being opened),
 * `welcome` (the server's message, before the token is presented), `ready`
 * (requests may go), `close` (the connection dropped, failed or was closed), `error` (an AlmanacError about the session, not a request:
 * a revoked token's `unauthorized`, `too_slow`; one carrying `sub` ends that
 * subscription, which also gets it).
 */
export class Almanac {
  constructor(url, options = {}) {
    this.url = sessionUrl(url);
    this.options = { reconnect: true, backoff: 1000, maxBackoff: 10000, timeout: 0, ...options };
    this.WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('no WebSocket: pass one as the WebSocket option (the ws package on Node before 22)');
    this.token = this.options.token;
    this.ws = null;
    this.welcome = null; // the server's last welcome
    this.isReady = false;
    this.everReady = false;
    this.closed = false;
    this.nextId = 1;
    this.pending = new Map(); // id → {resolve, reject, type, timer}
    this.subscriptions = new Map(); // server sub id → Subscription
    this.resumable = new Set(); // subscriptions to renew after a drop
    this.listeners = new Map();
    this.backoff = this.options.backoff;
    this.timer = null;
    this.readyWaiters = [];
  }

  /** A connected client: resolves once the first connection is ready,
   * rejects if it fails before (or the token is refused). */
  static async connect(url, options = {}) {
    const client = new Almanac(url, options);
    client.open();
    try {
      await client.ready();
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  emit(name, arg) {
    for (const fn of this.listeners.get(name) || []) {
      try { fn(arg); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  /** Resolves when the connection is ready (at once if it is). Before the
   * first connection was ready, rejects when it fails (`offline`) or its
   * token is refused; later it waits across reconnections, and rejects
   * only when no connection will come (closed, or `reconnect` off). */
  ready() {
    if (this.isReady) return Promise.resolve(this);
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Opens the connection (done by connect()); again at once after a drop
   * if one is not on its way already. */
  open() {
    this.closed = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws && this.ws.readyState <= OPEN) return;
    this.isReady = false;
    this.emit('connecting', this.url);
    let ws;
    try {
      ws = new this.WebSocket(this.url, 'almanac.v1');
    } catch (e) {
      this.failWaiters(new AlmanacError('offline', e.message));
      throw e;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let m;
      try {
        m = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
      } catch (e) {
        return; // not the protocol: nothing to answer
      }
      this.receive(m);
    };
    ws.onerror = () => {}; // a close follows
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.dropped(ev && ev.reason ? ev.reason : 'the connection closed');
      if (this.closed) return;
      if (this.options.reconnect) this.schedule();
      else for (const sub of [...this.resumable]) sub.end(new AlmanacError('offline', 'the connection closed'));
    };
  }

  /** Ends the connection and opens a fresh one at once. */
  reconnect() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.dropped('reconnecting');
    this.open();
  }

  /** After a drop: try now instead of after the backoff. */
  retry() {
    if (this.ws && this.ws.readyState <= OPEN) return;
    this.backoff = this.options.backoff;
    this.open();
  }

  /** Ends the session for good: no reconnection; subscriptions end. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(1000); } catch (e) { /* already closing */ }
    }
    this.dropped('closed by the client');
    for (const sub of [...this.resumable]) sub.end(null);
    this.resumable.clear();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      try { this.open(); } catch (e) { this.schedule(); }
    }, this.backoff);
    this.backoff = Math.min(this.backoff * 2, this.options.maxBackoff);
  }

  // Those waiting for ready() fail when the first connection does
  // (connect() rejects), or when no other connection will come.
  failWaiters(err) {
    if (this.everReady && this.options.reconnect && !this.closed) return; // they wait for the next connection
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
  }

  dropped(why) {
    this.isReady = false;
    const err = new AlmanacError('offline', `disconnected: ${why}`);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    // Subscriptions of the old connection: resumable ones wait for the next
    // one, the others end.
    for (const sub of this.subscriptions.values()) if (!this.resumable.has(sub)) sub.end(this.closed ? null : err);
    this.subscriptions.clear();
    for (const sub of this.resumable) sub.serverId = null;
    this.failWaiters(err);
    this.emit('close', err);
  }

  receive(m) {
    if (m.type === 'welcome') {
      this.welcome = m;
      this.backoff = this.options.backoff;
      this.start(m);
      return;
    }
    if (m.type === 'event' || m.type === 'sync') {
      const sub = this.subscriptions.get(m.sub);
      if (sub) sub.deliver(m);
      return;
    }
    if (m.type === 'error' && (m.id === null || m.id === undefined)) {
      const err = new AlmanacError(m.error, m.message, m.sub !== undefined ? { sub: m.sub } : {});
      if (m.sub !== undefined) {
        const sub = this.subscriptions.get(m.sub);
        this.subscriptions.delete(m.sub);
        if (sub) {
          this.resumable.delete(sub);
          sub.end(err);
        }
      }
      this.emit('error', err);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.type === 'error') {
      p.reject(new AlmanacError(m.error, m.message));
      return;
    }
    if (p.onReply) p.onReply(m); // invariant 3
    p.resolve(m);
  }

  // After a welcome: the token first, then every resumable subscription,
  // then the connection is ready. With neither, it is ready at once, so the
  // `welcome` listeners may make requests.
  async start(welcome) {
    const ws = this.ws;
    const token = typeof this.token === 'function' ? this.token() : this.token;
    if (!token && this.resumable.size === 0) {
      this.isReady = true;
      this.everReady = true;
      this.emit('welcome', welcome);
      if (this.ws !== ws) return;
      this.emit('ready', this);
      for (const w of this.readyWaiters.splice(0)) w.resolve(this);
      return;
    }
    this.emit('welcome', welcome);
    if (token) {
      try {
        const ok = await this.send('auth', { token });
        this.principal = ok.principal;
      } catch (e) {
        if (this.ws !== ws || e.code === 'offline') return; // the next welcome starts again
        // A refused token (unauthorized, rate_limited…): no point in
        // reconnecting with it.
        this.emit('error', e);
        const waiters = this.readyWaiters.splice(0);
        this.close();
        for (const w of waiters) w.reject(e);
        return;
      }
    }
    // Each subscription again; one the principal may no longer read ends
    // with its error.
    for (const sub of [...this.resumable]) {
      try {
        await sub.renew();
      } catch (e) {
        if (this.ws !== ws || e.code === 'offline') return;
        sub.end(e);
      }
    }
    if (this.ws !== ws) return;
    this.isReady = true;
    this.everReady = true;
    this.emit('ready', this);
    for (const w of this.readyWaiters.splice(0)) w.resolve(this);
  }

  // Sends a request on the current connection, ready or not (start() uses
  // it before the connection is ready).
  send(type, fields, onReply) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== OPEN) {
        reject(new AlmanacError('offline', 'not connected'));
        return;
      }
      const id = this.nextId++;
      const p = { resolve, reject, type, onReply, timer: null };
      if (this.options.timeout > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new AlmanacError('timeout', `no answer to ${type} in ${this.options.timeout} ms`));
        }, this.options.timeout);
      }
      this.pending.set(id, p);
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  /** Any request of the protocol: resolves with the reply message. */
  request(type, fields = {}) {
    if (!this.isReady && type !== 'auth') return Promise.reject(new AlmanacError('offline', 'not connected'));
    return this.send(type, fields);
  }

  /** Replaces the session's principal; the token is presented again after
   * every reconnection. Resolves with the principal's name. */
  async auth(token) {
    const ok = await this.request('auth', { token });
    this.token = token;
    this.principal = ok.principal;
    return ok.principal;
  }

  /** The entry of `key` ({key, rev, ts, content_type, value|text|base64,
   * labels, origin}); rejects with `not_found` when it has none. */
  async get(key) {
    const m = await this.request('get', { key });
    delete m.type;
    delete m.id;
    return m;
  }

  /** One page of the entries matching `pattern`: {entries, next}. Options:
   * `limit`, `after` (a `next`), `contains`. */
  async pget(pattern, options = {}) {
    const m = await this.request('pget', { pattern, ...options });
    return { entries: m.entries, next: m.next };
  }

  /** Every entry matching `pattern`, page after page. */
  async pgetAll(pattern, options = {}) {
    const all = [];
    let after = options.after;
    for (;;) {
      const page = await this.pget(pattern, after === undefined || after === null ? options : { ...options, after });
      all.push(...page.entries);
      if (page.next === null || page.next === undefined) return all;
      after = page.next;
    }
  }

  /** Sets `key` to `value` (see valueFields). Options: `content_type`,
   * `labels`, `if_rev` (0: must not exist), `ttl`. Resolves with {rev, ts}. */
  async set(key, value, options = {}) {
    const m = await this.request('set', { key, ...valueFields(value), ...options });
    return { rev: m.rev, ts: m.ts };
  }

  /** A transient publish: subscribers and MQTT see it, nothing is stored. */
  async publish(key, value, options = {}) {
    await this.request('publish', { key, ...valueFields(value), ...options });
  }

  /** Deletes a key or every key matching a pattern; resolves with the
   * number deleted. Options: `if_rev`. */
  async delete(keyOrPattern, options = {}) {
    const m = await this.request('delete', { key: keyOrPattern, ...options });
    return m.deleted;
  }

  /** The children of `key` (the root without one): [{name, value,
   * children, keys?}]. */
  async ls(key) {
    const m = await this.request('ls', key === undefined || key === null || key === '' ? {} : { key });
    return m.children;
  }

  /** One page of history: {records, next}. Options: `start`, `stop`,
   * `limit`, `order`, `after`, `every`, `labels`, `exclude_labels`. */
  async history(pattern, options = {}) {
    const m = await this.request('history', { pattern, ...options });
    return { records: m.records, next: m.next };
  }

  /** Every history record matching, page after page. */
  async historyAll(pattern, options = {}) {
    const all = [];
    let after = options.after;
    for (;;) {
      const page = await this.history(pattern, after === undefined || after === null ? options : { ...options, after });
      all.push(...page.records);
      if (page.next === null || page.next === undefined) return all;
      after = page.next;
    }
  }

  async ping() {
    await this.request('ping');
  }

  /**
   * Subscribes to `pattern`. Options are the request's (`since`, `start`,
   * `live_only`, `unique`, `labels`, `exclude_labels`) and:
   * - `onEvent(m)`, `onSync(m)`, `onReset()`, `onError(err)`: callbacks;
   *   without `onEvent` the messages queue for the async iterator.
   * - `resume` (true): after a dropped connection, subscribe again with
   *   `since` (see the module's head); false ends the subscription with the
   *   connection.
   * Resolves, once the server said `ok`, with a Subscription.
   */
  async subscribe(pattern, options = {}) {
    const { onEvent, onSync, onReset, onError, resume = true, ...request } = options;
    const sub = new Subscription(this, pattern, request, { onEvent, onSync, onReset, onError });
    await sub.begin(request);
    if (resume) this.resumable.add(sub);
    return sub;
  }
}

/** One subscription: its messages (`event`, `sync`, and `reset` before a
 * fresh snapshot) go to its callbacks or to `for await`. */
export class Subscription {
  constructor(client, pattern, request, callbacks) {
    this.client = client;
    this.pattern = pattern;
    this.request = request;
    this.callbacks = callbacks;
    this.serverId = null;
    this.lastRev = request.since || 0;
    this.inSnapshot = false;
    this.synced = false;
    this.queue = [];
    this.waiters = [];
    this.done = false;
    this.error = null;
  }

  // Sends `subscribe` with `fields`; registers the subscription when its
  // `ok` comes (invariant 3).
  begin(fields) {
    // A snapshot comes when neither `since`, `start` nor `live_only` is given.
    const snapshot = fields.since === undefined && fields.start === undefined && !fields.live_only;
    return this.client.send('subscribe', { pattern: this.pattern, ...fields }, (ok) => {
      this.serverId = ok.sub;
      this.inSnapshot = snapshot;
      this.client.subscriptions.set(ok.sub, this);
    });
  }

  // After a reconnection: `since` the last rev delivered, or the original
  // request when none was (a drop during the snapshot); a fresh snapshot,
  // after a `reset`, when history cannot serve it.
  async renew() {
    if (this.done) return;
    const { since, start, ...rest } = this.request;
    if (this.lastRev > 0) {
      const { live_only, ...filters } = rest;
      try {
        await this.begin({ ...filters, since: this.lastRev });
        return;
      } catch (e) {
        if (e.code !== 'history_gone') throw e;
        this.put({ type: 'reset', sub: null, rev: this.lastRev });
        this.lastRev = 0;
        await this.begin(rest);
        return;
      }
    }
    await this.begin(this.request);
  }

  deliver(m) {
    if (m.type === 'sync') {
      this.inSnapshot = false;
      this.synced = true;
      if (m.rev > this.lastRev) this.lastRev = m.rev;
    } else if (!this.inSnapshot && !m.transient && m.rev > this.lastRev) {
      this.lastRev = m.rev; // invariant 1
    }
    this.put(m);
  }

  put(m) {
    const cb = this.callbacks;
    if (m.type === 'event' && cb.onEvent) return cb.onEvent(m);
    if (m.type === 'sync' && cb.onSync) return cb.onSync(m);
    if (m.type === 'reset' && cb.onReset) return cb.onReset(m);
    if (cb.onEvent) return; // callbacks chosen: nothing queues
    const w = this.waiters.shift();
    if (w) w.resolve({ value: m, done: false });
    else this.queue.push(m);
  }

  // The subscription is over: `err` (an AlmanacError) or null for a close.
  end(err) {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.client.resumable.delete(this);
    if (this.serverId !== null) this.client.subscriptions.delete(this.serverId);
    if (err && this.callbacks.onError) this.callbacks.onError(err);
    for (const w of this.waiters.splice(0)) {
      if (err && !this.callbacks.onError) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** Unsubscribes (if connected) and ends the iteration: messages not yet
   * taken are dropped. */
  async close() {
    const id = this.serverId;
    this.queue.length = 0;
    this.end(null);
    if (id !== null && this.client.isReady) {
      try {
        await this.client.request('unsubscribe', { sub: id });
      } catch (e) {
        if (e.code !== 'offline') throw e;
      }
    }
  }

  /** The next message: {type: 'event'|'sync'|'reset', …}, or undefined once
   * the subscription ended; rejects with the error that ended it. */
  async next() {
    if (this.queue.length) return { value: this.queue.shift(), done: false };
    if (this.done) {
      if (this.error && !this.callbacks.onError) {
        const err = this.error;
        this.error = null;
        throw err;
      }
      return { value: undefined, done: true };
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

export default Almanac;
