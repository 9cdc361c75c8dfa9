// Tests of almanac.js against the real daemon on free ports, over the `ws`
// package's WebSocket (Node 20 has no global one): requests and their
// errors, subscriptions (snapshot → sync → live), resumption with `since`
// after a dropped socket and after a restart of the daemon (no change
// missed, none twice), a fresh snapshot after `history_gone`, history, and
// tokens. Run: node test.mjs --binary path/to/almanac
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Almanac, AlmanacError, valueOf } from './almanac.js';

const binary = process.argv[process.argv.indexOf('--binary') + 1];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const daemons = [];

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// The real daemon on a port chosen once, so that a restart is the same
// server to a client; `extra` are more `serve` options.
class Daemon {
  constructor(extra = [], env = {}) {
    this.extra = extra;
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), 'almanac-jsclient-'));
    this.port = 0;
    daemons.push(this);
  }
  async start() {
    if (!this.port) this.port = await freePort();
    await new Promise((resolve, reject) => {
      let log = '';
      this.proc = spawn(binary, ['serve', '--http_listen', `127.0.0.1:${this.port}`, '--tcp_listen', 'off',
        '--data_dir', join(this.dir, 'data'), ...this.extra], { env: { ...process.env, ...this.env } });
      this.proc.stderr.on('data', (d) => {
        log += d;
        if (/listening on http/.test(log) && /ready/.test(log)) resolve();
      });
      this.proc.on('exit', (code) => reject(new Error(`almanac exited ${code}:\n${log}`)));
    });
    return this;
  }
  async stop() {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((resolve) => p.on('exit', resolve));
    p.kill('SIGTERM');
    await gone;
  }
  get url() { return `ws://127.0.0.1:${this.port}`; }
  async http(method, path, body, headers = {}) {
    const r = await fetch(`http://127.0.0.1:${this.port}${path}`, { method, body, headers });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }
  async put(key, value) {
    const r = await this.http('PUT', `/api/v1/keys/${key}`, JSON.stringify(value), { 'Content-Type': 'application/json' });
    assert.ok(r.status === 200 || r.status === 201, `PUT ${key}: ${r.status}`);
    return r.body.rev;
  }
  async del(key) {
    const r = await this.http('DELETE', `/api/v1/keys/${key}`);
    assert.equal(r.status, 200);
    return r.body.rev;
  }
}

// Collects a subscription's messages through its callbacks.
function collector() {
  const got = [];
  let waiter = null;
  const push = (m) => {
    got.push(m);
    if (waiter && waiter.match(m)) { waiter.resolve(m); waiter = null; }
  };
  return {
    got,
    callbacks: { onEvent: push, onSync: push, onReset: push },
    until(match, ms = 10000) {
      const found = got.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiter = { match, resolve };
        setTimeout(() => reject(new Error(`no such message in ${ms} ms; got ${JSON.stringify(got)}`)), ms).unref();
      });
    },
  };
}

async function rejects(promise, code) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof AlmanacError, `an AlmanacError, not ${e}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.length > 0);
    return e;
  }
  assert.fail(`expected ${code}`);
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

let plain; // one daemon for most tests

test('get, set, delete, pattern get with cursors, ls, publish, errors', async () => {
  const db = await Almanac.connect(plain.url, { WebSocket });
  try {
    const a = await db.set('home/kitchen/temp', 21.5, { labels: { unit: 'C' } });
    assert.ok(a.rev > 0 && a.ts > 0);
    const e = await db.get('home/kitchen/temp');
    assert.equal(e.key, 'home/kitchen/temp');
    assert.equal(e.value, 21.5);
    assert.equal(e.content_type, 'application/json');
    assert.deepEqual(e.labels, { unit: 'C' });
    assert.equal(e.rev, a.rev);
    // The same as HTTP reads it.
    assert.equal((await plain.http('GET', '/api/v1/keys/home/kitchen/temp')).body, 21.5);

    await db.set('home/hall/name', 'hall');
    assert.equal(valueOf(await db.get('home/hall/name')), 'hall');
    const bytes = new Uint8Array([0, 1, 2, 255, 254]);
    await db.set('home/hall/raw', bytes);
    const raw = await db.get('home/hall/raw');
    assert.equal(raw.content_type, 'application/octet-stream');
    assert.deepEqual(valueOf(raw), bytes);

    // Compare-and-set: a stale rev and a create-only are refused.
    await rejects(db.set('home/kitchen/temp', 22, { if_rev: a.rev - 1 }), 'rev_mismatch');
    await rejects(db.set('home/kitchen/temp', 22, { if_rev: 0 }), 'rev_mismatch');
    assert.ok((await db.set('home/kitchen/temp', 22, { if_rev: a.rev })).rev > a.rev);

    for (let i = 0; i < 5; i++) await db.set(`home/lamp${i}/state`, { on: i % 2 === 0 });
    const page = await db.pget('home/+/state', { limit: 2 });
    assert.deepEqual(page.entries.map((x) => x.key), ['home/lamp0/state', 'home/lamp1/state']);
    assert.ok(page.next);
    const all = await db.pgetAll('home/+/state', { limit: 2 }); // three pages
    assert.deepEqual(all.map((x) => x.key), [0, 1, 2, 3, 4].map((i) => `home/lamp${i}/state`));
    assert.deepEqual(all.map((x) => x.value.on), [true, false, true, false, true]);
    assert.deepEqual((await db.pgetAll('home/#', { contains: 'KITCHEN' })).map((x) => x.key), ['home/kitchen/temp']);

    const root = await db.ls();
    assert.ok(root.some((c) => c.name === 'home' && c.children === true));
    const home = await db.ls('home');
    assert.deepEqual(home.map((c) => c.name), ['hall', 'kitchen', 'lamp0', 'lamp1', 'lamp2', 'lamp3', 'lamp4']);

    assert.equal(await db.delete('home/lamp4/state'), 1);
    await rejects(db.get('home/lamp4/state'), 'not_found');
    assert.equal(await db.delete('home/+/state'), 4);
    assert.deepEqual(await db.pgetAll('home/+/state'), []);

    await rejects(db.set('bad/+/key', 1), 'invalid_key');
    await rejects(db.get('$SYS/nothing/here'), 'not_found');
    await rejects(db.set('$SYS/version', 'x'), 'read_only');
    await rejects(db.request('get', { key: 'a', colour: 'red' }), 'bad_request');
    await db.ping();
  } finally {
    db.close();
  }
  // A closed client refuses requests at once.
  await rejects(db.get('home/kitchen/temp'), 'offline');
  // A server that is not there: connect() fails rather than waiting.
  await rejects(Almanac.connect(`ws://127.0.0.1:${await freePort()}`, { WebSocket }), 'offline');
});

test('subscribe: snapshot, sync, then live events, as an async iterator', async () => {
  await plain.put('sub/a', 1);
  await plain.put('sub/b', 2);
  const db = await Almanac.connect(plain.url, { WebSocket });
  try {
    const sub = await db.subscribe('sub/#');
    const it = sub[Symbol.asyncIterator]();
    const snap = [(await it.next()).value, (await it.next()).value];
    assert.deepEqual(snap.map((m) => [m.type, m.key, m.value]), [['event', 'sub/a', 1], ['event', 'sub/b', 2]]);
    const sync = (await it.next()).value;
    assert.equal(sync.type, 'sync');
    assert.ok(sync.rev >= snap[1].rev);
    const rev = await plain.put('sub/c', 3);
    const live = (await it.next()).value;
    assert.deepEqual([live.type, live.key, live.value, live.rev, live.created], ['event', 'sub/c', 3, rev, true]);
    const del = await plain.del('sub/a');
    const gone = (await it.next()).value;
    assert.deepEqual([gone.key, gone.deleted, gone.rev], ['sub/a', true, del]);
    await db.publish('sub/flash', 'now');
    const flash = (await it.next()).value;
    assert.deepEqual([flash.key, flash.text, flash.transient], ['sub/flash', 'now', true]);
    assert.equal(sub.lastRev, del); // a transient publish does not move it

    // Another loop over the same kind of subscription with for await, ended
    // by close().
    const sub2 = await db.subscribe('sub/#', { live_only: true });
    const seen = [];
    const loop = (async () => { for await (const m of sub2) { seen.push(m); if (m.type === 'event') break; } })();
    await plain.put('sub/d', 4);
    await loop; // break closed it
    assert.deepEqual(seen.map((m) => m.type === 'event' ? m.key : m.type), ['sync', 'sub/d']);
    await sub.close();
    assert.deepEqual(await it.next(), { value: undefined, done: true });
  } finally {
    db.close();
  }
});

test('a dropped socket: the subscription resumes with since, no change missed or repeated', async () => {
  await plain.put('drop/untouched', 0);
  await plain.put('drop/x', 1);
  const db = await Almanac.connect(plain.url, { WebSocket, backoff: 1500 });
  const states = [];
  db.on('close', () => states.push('close'));
  db.on('ready', () => states.push('ready'));
  try {
    const c = collector();
    const sub = await db.subscribe('drop/#', c.callbacks);
    const sync1 = await c.until((m) => m.type === 'sync');
    assert.deepEqual(c.got.filter((m) => m.type === 'event').map((m) => m.key), ['drop/untouched', 'drop/x']);
    const before = c.got.length;

    db.ws.terminate(); // the socket dies without a close handshake
    await sleep(100);
    await rejects(db.get('drop/x'), 'offline'); // while away, requests are refused at once
    // Changes while the client is away (it reconnects after 1.5 s).
    const missed = [];
    for (let i = 2; i <= 6; i++) missed.push(['drop/x', await plain.put('drop/x', i)]);
    missed.push(['drop/new', await plain.put('drop/new', 'n')]);
    missed.push(['drop/x', await plain.del('drop/x')]);

    const sync2 = await c.until((m) => m.type === 'sync' && m.rev > sync1.rev);
    const replay = c.got.slice(before, c.got.indexOf(sync2));
    // Exactly the changes made while away, in rev order: no snapshot of the
    // untouched key, no gap, nothing twice.
    assert.deepEqual(replay.map((m) => [m.key, m.rev]), missed);
    assert.equal(replay.at(-1).deleted, true);
    assert.ok(sync2.rev >= missed.at(-1)[1]); // the store's rev ($SYS keys change too)
    await db.ready();
    assert.deepEqual(states, ['close', 'ready']);

    const after = await plain.put('drop/x', 7);
    const live = await c.until((m) => m.rev === after);
    assert.equal(live.value, 7);
    assert.equal(sub.lastRev, after);
    assert.equal((await db.get('drop/x')).value, 7); // requests work again
  } finally {
    db.close();
  }
});

test('a restart of the daemon: reconnects and resumes; every change once, in order', async () => {
  const db = await Almanac.connect(plain.url, { WebSocket, backoff: 200, maxBackoff: 400 });
  try {
    const c = collector();
    await db.subscribe('restart/#', { live_only: true, ...c.callbacks });
    await c.until((m) => m.type === 'sync');
    const writes = [await plain.put('restart/k', 1), await plain.put('restart/k', 2)];
    await c.until((m) => m.rev === writes[1]);
    await plain.stop();
    await plain.start();
    // Written as soon as the daemon is back: before or after the client is
    // back, each must arrive once.
    for (let i = 3; i <= 6; i++) writes.push(await plain.put('restart/k', i));
    await c.until((m) => m.rev === writes.at(-1), 15000);
    const events = c.got.filter((m) => m.type === 'event');
    assert.deepEqual(events.map((m) => m.rev), writes);
    assert.deepEqual(events.map((m) => m.value), [1, 2, 3, 4, 5, 6]);
  } finally {
    db.close();
  }
});

test('history: records of a key, newest first, and every page by cursor', async () => {
  const db = await Almanac.connect(plain.url, { WebSocket });
  try {
    const revs = [];
    for (const v of [10, 11, 12]) revs.push((await db.set('hist/t', v)).rev);
    revs.push(await plain.del('hist/t'));
    const page = await db.history('hist/t');
    assert.deepEqual(page.records.map((r) => r.rev), revs);
    assert.deepEqual(page.records.slice(0, 3).map((r) => r.value), [10, 11, 12]);
    assert.equal(page.records[3].deleted, true);
    assert.equal(page.next, null);
    const desc = await db.history('hist/t', { order: 'desc', limit: 2 });
    assert.deepEqual(desc.records.map((r) => r.rev), [revs[3], revs[2]]);
    assert.ok(desc.next);
    assert.deepEqual((await db.historyAll('hist/t', { limit: 1 })).map((r) => r.rev), revs);
    const ts = page.records[1].ts;
    assert.deepEqual((await db.history('hist/t', { start: ts })).records.map((r) => r.rev), revs.slice(1));
    // A subscription with since replays from history, then syncs.
    const c = collector();
    await db.subscribe('hist/#', { since: revs[1], ...c.callbacks });
    await c.until((m) => m.type === 'sync');
    assert.deepEqual(c.got.map((m) => m.type === 'sync' ? 'sync' : m.rev), [revs[2], revs[3], 'sync']);
  } finally {
    db.close();
  }
});

test('history_gone after a drop: a reset, then a fresh snapshot and sync', async () => {
  // History keeps only kept/#: a replay of other/# cannot be served.
  const d = await new Daemon(['--history_keys', 'kept/#']).start();
  const db = await Almanac.connect(d.url, { WebSocket, backoff: 1000 });
  try {
    await d.put('other/a', 1);
    const c = collector();
    const sub = await db.subscribe('other/#', c.callbacks);
    await c.until((m) => m.type === 'sync');
    db.ws.terminate();
    await d.put('other/a', 2);
    await d.put('other/b', 3);
    await c.until((m) => m.type === 'reset');
    const reset = c.got.findIndex((m) => m.type === 'reset');
    const sync = await c.until((m, i) => m.type === 'sync' && c.got.indexOf(m) > reset);
    const fresh = c.got.slice(reset + 1, c.got.indexOf(sync));
    assert.deepEqual(fresh.map((m) => [m.key, m.value]), [['other/a', 2], ['other/b', 3]]);
    assert.equal(sub.lastRev, sync.rev);
  } finally {
    db.close();
    await d.stop();
  }
});

test('tokens: auth on connect and again after a reconnection; forbidden beyond privileges', async () => {
  const admin = 'admin-secret-for-the-js-client-test';
  const d = await new Daemon([], { ALMANAC_ADMIN_TOKEN: admin }).start();
  try {
    const created = await d.http('POST', '/api/v1/tokens',
      JSON.stringify({ name: 'kitchen', read: ['kitchen/#'], write: ['kitchen/#'] }),
      { Authorization: `Bearer ${admin}`, 'Content-Type': 'application/json' });
    assert.equal(created.status, 201);
    const token = created.body.token;

    // Anonymous may do nothing here.
    const anon = await Almanac.connect(d.url, { WebSocket });
    assert.equal(anon.welcome.auth_required, true);
    await rejects(anon.get('kitchen/temp'), 'unauthorized');
    // A bad token refuses the connection.
    await rejects(Almanac.connect(d.url, { WebSocket, token: 'wrong' }), 'unauthorized');
    // auth on an open session.
    assert.equal(await anon.auth(token), 'kitchen');
    await anon.set('kitchen/temp', 20);
    anon.close();

    const db = await Almanac.connect(d.url, { WebSocket, token, backoff: 300 });
    try {
      assert.equal(db.principal, 'kitchen');
      await db.set('kitchen/temp', 21);
      await rejects(db.set('hall/temp', 1), 'forbidden');
      await rejects(db.get('hall/temp'), 'forbidden');
      await rejects(db.subscribe('hall/#'), 'forbidden');
      await rejects(db.delete('#'), 'forbidden');
      const c = collector();
      await db.subscribe('#', c.callbacks); // filtered to what it may read
      await c.until((m) => m.type === 'sync');
      assert.deepEqual(c.got.filter((m) => m.type === 'event').map((m) => m.key), ['kitchen/temp']);

      // After a drop the token is presented again: the subscription resumes
      // and writes are still allowed.
      const closed = new Promise((resolve) => db.on('close', resolve));
      db.ws.terminate();
      await closed;
      await db.ready();
      const rev = (await db.set('kitchen/temp', 22)).rev;
      const ev = await c.until((m) => m.rev === rev);
      assert.equal(ev.value, 22);
      await rejects(db.set('hall/temp', 1), 'forbidden');

      // Revoked: the server ends the session with unauthorized.
      const errors = [];
      db.on('error', (e) => errors.push(e.code));
      const r = await d.http('DELETE', '/api/v1/tokens/kitchen', undefined, { Authorization: `Bearer ${admin}` });
      assert.equal(r.status, 200);
      for (let i = 0; i < 100 && !errors.includes('unauthorized'); i++) await sleep(50);
      assert.ok(errors.includes('unauthorized'), `errors: ${errors}`);
    } finally {
      db.close();
    }
  } finally {
    await d.stop();
  }
});

let failed = 0;
try {
  plain = await new Daemon().start();
  for (const t of tests) {
    const t0 = Date.now();
    try {
      await t.fn();
      console.log(`ok - ${t.name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`not ok - ${t.name}\n${e.stack}`);
    }
  }
} finally {
  for (const d of daemons) {
    await d.stop().catch(() => {});
    rmSync(d.dir, { recursive: true, force: true });
  }
}
console.log(`${tests.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
