// The session protocol over WebSocket (GET /api/v1/ws, subprotocol
// almanac.v1) against the real daemon, with the `ws` client from the npm
// registry, plus raw sockets for what a well-behaved client never sends:
// unmasked and fragmented frames, and a frame cut off midway.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import crypto from 'node:crypto';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

const binary = process.argv[process.argv.indexOf('--binary') + 1];
const dataDir = mkdtempSync(join(tmpdir(), 'almanac-ws-'));
let daemon, port, daemonLog = '';

function start() {
  return new Promise((resolve, reject) => {
    daemon = spawn(binary, ['serve', '--http_listen', '127.0.0.1:0', '--tcp_listen', 'off',
      '--data_dir', dataDir, '--max_message_bytes', '64KiB', '--session_queue_bytes', '256KiB']);
    daemon.stderr.on('data', (d) => {
      daemonLog += d;
      const m = daemonLog.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m && /ready/.test(daemonLog)) { port = Number(m[1]); resolve(); }
    });
    daemon.on('exit', (code, signal) => {
      if (!stopping) {
        console.log(`almanac exited (${code ?? signal}) during the tests:\n${daemonLog}`);
        process.exit(1);
      }
      reject(new Error(`almanac exited ${code}`));
    });
  });
}

// A ws client that collects messages and answers requests by id.
class Client {
  constructor(ws) {
    this.ws = ws; this.queue = []; this.waiters = []; this.nextId = 1;
    ws.on('message', (data, binary) => {
      assert.equal(binary, false);
      const m = JSON.parse(data.toString());
      const w = this.waiters.findIndex((f) => f.match(m));
      if (w >= 0) this.waiters.splice(w, 1)[0].resolve(m); else this.queue.push(m);
    });
  }
  static open(protocols = 'almanac.v1', options = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/ws`, protocols, options);
      const c = new Client(ws);
      ws.on('open', () => resolve(c));
      ws.on('error', reject);
      ws.on('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
  }
  next(match = () => true, ms = 10000) {
    const i = this.queue.findIndex(match);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      this.waiters.push(waiter);
      setTimeout(() => reject(new Error('no message in time')), ms).unref();
    });
  }
  request(type, fields = {}) {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ type, id, ...fields }));
    return this.next((m) => m.id === id && m.type !== 'event');
  }
  closed() {
    return new Promise((resolve) => this.ws.on('close', (code) => resolve(code)));
  }
}

async function http(method, path, body) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { method, body });
  return r;
}

// A raw WebSocket: the handshake, then frames written by hand.
function rawSocket() {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const key = crypto.randomBytes(16).toString('base64');
    let buf = Buffer.alloc(0);
    s.on('error', reject);
    s.on('data', function onData(d) {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      assert.match(buf.subarray(0, end).toString(), /^HTTP\/1\.1 101/);
      s.rest = buf.subarray(end + 4);
      resolve(s);
    });
    s.write(`GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
      `Sec-WebSocket-Protocol: almanac.v1\r\n\r\n`);
  });
}

function frame(opcode, payload, { fin = true, mask = true } = {}) {
  const p = Buffer.from(payload);
  const head = [((fin ? 0x80 : 0) | opcode), (mask ? 0x80 : 0) | p.length];
  assert.ok(p.length < 126);
  if (!mask) return Buffer.concat([Buffer.from(head), p]);
  const m = crypto.randomBytes(4);
  const masked = Buffer.from(p.map((b, i) => b ^ m[i % 4]));
  return Buffer.concat([Buffer.from(head), m, masked]);
}

// Reads frames from a raw socket until a close frame; returns its code.
function closeCode(s) {
  return new Promise((resolve) => {
    let buf = s.rest;
    const scan = () => {
      while (buf.length >= 2) {
        const len = buf[1] & 0x7f;
        const hdr = len === 126 ? 4 : len === 127 ? 10 : 2;
        const size = len === 126 ? buf.readUInt16BE(2) : len === 127 ? Number(buf.readBigUInt64BE(2)) : len;
        if (buf.length < hdr + size) return;
        if ((buf[0] & 0x0f) === 8) return resolve(size >= 2 ? buf.readUInt16BE(hdr) : 1005);
        buf = buf.subarray(hdr + size);
      }
    };
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); scan(); });
    s.on('close', () => resolve(null));
    scan();
  });
}

const tests = {
  async welcome_and_requests() {
    const c = await Client.open();
    assert.equal(c.ws.protocol, 'almanac.v1');
    const welcome = await c.next();
    assert.equal(welcome.type, 'welcome');
    assert.deepEqual(welcome.protocols, ['1.0']);
    assert.equal((await c.request('hello', { protocol: '1.0' })).type, 'ok');
    const ok = await c.request('set', { key: 'ws/a', value: [1, 2] });
    assert.equal(ok.type, 'ok');
    const e = await c.request('get', { key: 'ws/a' });
    assert.deepEqual(e.value, [1, 2]);
    assert.equal(e.origin, 'ws');
    assert.equal((await c.request('ping')).type, 'pong');
    c.ws.close();
  },

  async subscribe_sees_http_writes() {
    const c = await Client.open();
    await c.next((m) => m.type === 'welcome');
    await http('PUT', '/api/v1/keys/wsub/1', 'one');
    const ok = await c.request('subscribe', { pattern: 'wsub/#' });
    const snap = await c.next((m) => m.type === 'event');
    assert.equal(snap.text, 'one');
    const sync = await c.next((m) => m.type === 'sync');
    assert.equal(sync.sub, ok.sub);
    await http('PUT', '/api/v1/keys/wsub/2', '2');
    const live = await c.next((m) => m.type === 'event');
    assert.equal(live.key, 'wsub/2');
    assert.equal(live.text, '2'); // fetch sends a string as text/plain
    assert.ok(live.rev > sync.rev);
    c.ws.close();
  },

  // API.md "Live filters": labels / exclude_labels, a deletion judged by
  // the value it deleted, and start: a replay from a time, sync, live.
  async subscribe_with_label_filters_and_start() {
    const c = await Client.open();
    await c.next((m) => m.type === 'welcome');
    const set = async (key, text, labels) => {
      const ok = await c.request('set', { key, text, ...(labels ? { labels } : {}) });
      assert.equal(ok.type, 'ok', JSON.stringify(ok));
      return ok;
    };
    const first = await set('wlf/a', 'a1', { unit: 'C', room: 'hall' });
    await set('wlf/b', 'b1', { unit: 'C', room: 'attic' });
    await set('wlf/c', 'c1', { unit: 'F' });
    await set('wlf/d', 'd1');
    await c.request('delete', { key: 'wlf/b' }); // its value was excluded
    await c.request('delete', { key: 'wlf/a' }); // its value matched

    const s = await Client.open();
    await s.next((m) => m.type === 'welcome');
    const upToSync = async (sub) => {
      const got = [];
      for (;;) {
        const m = await s.next((x) => x.sub === sub && (x.type === 'event' || x.type === 'sync'));
        if (m.type === 'sync') return got;
        got.push(m);
      }
    };
    const shape = (evs) => evs.map((e) => [e.key, e.deleted === true]);
    // The replay from the first write, through the filters.
    const replay = await s.request('subscribe', {
      pattern: 'wlf/#', start: first.ts, labels: { unit: 'C' }, exclude_labels: { room: 'attic' },
    });
    assert.equal(replay.type, 'ok', JSON.stringify(replay));
    assert.deepEqual(shape(await upToSync(replay.sub)), [['wlf/a', false], ['wlf/a', true]]);
    // A snapshot through exclude_labels alone: no labels is no exclusion.
    const snap = await s.request('subscribe', { pattern: 'wlf/#', exclude_labels: { unit: 'F' } });
    assert.deepEqual(shape(await upToSync(snap.sub)), [['wlf/d', false]]);
    // Live: only what passes reaches each subscription.
    await set('wlf/e', 'e1', { unit: 'C' });
    await set('wlf/f', 'f1', { unit: 'F' });
    await c.request('delete', { key: 'wlf/c' }); // its value was unit F
    await c.request('delete', { key: 'wlf/e' }); // its value was unit C
    await set('wlf/z', 'z1'); // no labels: the last, for both
    const seen = [];
    for (;;) {
      const m = await s.next((x) => x.type === 'event');
      seen.push([m.sub, m.key, m.deleted === true]);
      if (m.key === 'wlf/z' && m.sub === snap.sub) break;
    }
    const of = (sub) => seen.filter(([x]) => x === sub).map(([, k, d]) => [k, d]);
    assert.deepEqual(of(replay.sub), [['wlf/e', false], ['wlf/e', true]]);
    assert.deepEqual(of(snap.sub), [['wlf/e', false], ['wlf/e', true], ['wlf/z', false]]);
    // An RFC 3339 start, and wrong types refused naming the field.
    const t = new Date(Math.floor(first.ts / 1000)).toISOString();
    const rfc = await s.request('subscribe', { pattern: 'wlf/a', start: t });
    assert.equal(rfc.type, 'ok', JSON.stringify(rfc));
    assert.deepEqual(shape(await upToSync(rfc.sub)), [['wlf/a', false], ['wlf/a', true]]);
    for (const [fields, name] of [
      [{ labels: ['unit'] }, 'labels'], [{ exclude_labels: { unit: 7 } }, 'exclude_labels'],
      [{ start: 'soon' }, 'start'], [{ start: false }, 'start'],
      [{ start: first.ts, since: 0 }, 'since and start'],
    ]) {
      const e = await s.request('subscribe', { pattern: 'wlf/#', ...fields });
      assert.equal(e.error, 'bad_request', JSON.stringify(e));
      assert.ok(e.message.includes(name), e.message);
    }
    c.ws.close();
    s.ws.close();
  },

  async ping_pong_control_frames() {
    const c = await Client.open();
    const pong = new Promise((resolve) => c.ws.on('pong', (d) => resolve(d.toString())));
    c.ws.ping('hello');
    assert.equal(await pong, 'hello');
    c.ws.close();
  },

  async protocol_errors_keep_the_session() {
    const c = await Client.open();
    await c.next((m) => m.type === 'welcome');
    c.ws.send('{not json');
    assert.equal((await c.next((m) => m.type === 'error')).error, 'bad_request');
    c.ws.send(JSON.stringify({ type: 'nope', id: 5 }));
    assert.equal((await c.next((m) => m.id === 5)).error, 'bad_request');
    c.ws.send(JSON.stringify({ type: 'get', key: 'x' }));
    assert.match((await c.next((m) => m.type === 'error')).message, /id/);
    assert.equal((await c.request('ping')).type, 'pong');
    c.ws.close();
  },

  async binary_frame_closes_1003() {
    const c = await Client.open();
    const closed = c.closed();
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.equal(await closed, 1003);
  },

  async oversized_message_closes_1009() {
    const c = await Client.open();
    const closed = c.closed();
    c.ws.send(JSON.stringify({ type: 'set', id: 1, key: 'big', text: 'x'.repeat(70000) }));
    assert.equal(await closed, 1009);
    assert.equal((await http('GET', '/api/v1/keys/big')).status, 404);
  },

  async unsupported_protocol_closes() {
    const c = await Client.open();
    const closed = c.closed();
    c.ws.send(JSON.stringify({ type: 'hello', id: 1, protocol: '9.0' }));
    const err = await c.next((m) => m.type === 'error');
    assert.equal(err.error, 'protocol_unsupported');
    assert.equal(await closed, 1008);
  },

  async hello_minor_above_the_servers_closes() {
    const c = await Client.open();
    await c.next((m) => m.type === 'welcome');
    const closed = c.closed();
    c.ws.send(JSON.stringify({ type: 'hello', id: 2, protocol: '1.9' })); // the server speaks 1.0
    const err = await c.next((m) => m.type === 'error');
    assert.equal(err.id, 2);
    assert.equal(err.error, 'protocol_unsupported');
    assert.match(err.message, /1\.9/);
    assert.equal(await closed, 1008);
  },

  // API.md "Strictness": a field a request does not take is refused by
  // name, for every request type, and nothing is done.
  async unknown_fields_are_refused_and_nothing_is_done() {
    const c = await Client.open();
    await c.next((m) => m.type === 'welcome');
    assert.equal((await c.request('set', { key: 'wstrict/a', text: 'kept' })).type, 'ok');
    const watch = await Client.open();
    await watch.next((m) => m.type === 'welcome');
    await watch.request('subscribe', { pattern: 'wstrict/#', live_only: true });
    await watch.next((m) => m.type === 'sync');
    const cases = [
      ['hello', { protocol: '1.0', tokn: 'x' }, 'tokn'],
      ['get', { key: 'wstrict/a', envelope: true }, 'envelope'],
      ['pget', { pattern: 'wstrict/#', limt: 1 }, 'limt'],
      ['set', { key: 'wstrict/new', text: 'x', lables: { u: 'C' } }, 'lables'],
      ['set', { key: 'wstrict/a', text: 'changed', ifrev: 1 }, 'ifrev'],
      ['publish', { key: 'wstrict/p', text: 'x', if_rev: 0 }, 'if_rev'],
      ['delete', { key: 'wstrict/a', recursive: true }, 'recursive'],
      ['ls', { key: 'wstrict', depth: 1 }, 'depth'],
      ['history', { pattern: 'wstrict/a', lables: { u: 'C' } }, 'lables'],
      ['subscribe', { pattern: 'wstrict/#', limt: 1 }, 'limt'],
      ['unsubscribe', { sub: 1, all: true }, 'all'],
      ['auth', { token: 'not-a-token', user: 'me' }, 'user'],
      ['ping', { payload: 1 }, 'payload'],
    ];
    for (const [type, fields, name] of cases) {
      const m = await c.request(type, fields);
      assert.equal(m.type, 'error', `${type}: ${JSON.stringify(m)}`);
      assert.equal(m.error, 'bad_request', `${type}: ${m.message}`);
      assert.ok(m.message.includes(`unknown field '${name}' in ${type}`), `${type}: ${m.message}`);
    }
    assert.equal((await c.request('ping')).type, 'pong'); // the session goes on
    assert.equal((await c.request('get', { key: 'wstrict/a' })).text, 'kept');
    assert.equal((await c.request('get', { key: 'wstrict/new' })).error, 'not_found');
    const keys = await (await http('GET', '/api/v1/keys/wstrict/%23')).json();
    assert.deepEqual(keys.entries.map((e) => e.key), ['wstrict/a']);
    await http('PUT', '/api/v1/keys/wstrict/after', '1');
    const first = await watch.next((m) => m.type === 'event'); // nothing before it
    assert.equal(first.key, 'wstrict/after');
    assert.deepEqual(c.queue.filter((m) => m.type === 'event'), []); // c subscribed nothing
    c.ws.close();
    watch.ws.close();
  },

  async wrong_subprotocol_is_refused() {
    await assert.rejects(Client.open('mqtt'), /HTTP 400/);
    // Without any subprotocol the handshake still succeeds.
    const c = await Client.open([]);
    assert.equal((await c.next()).type, 'welcome');
    c.ws.close();
    const plain = await http('GET', '/api/v1/ws');
    assert.equal(plain.status, 400);
  },

  async unmasked_client_frame_closes_1002() {
    const s = await rawSocket();
    const code = closeCode(s);
    s.write(frame(1, '{"type":"ping","id":1}', { mask: false }));
    assert.equal(await code, 1002);
    s.destroy();
  },

  async fragmented_message_is_reassembled() {
    const s = await rawSocket();
    let text = s.rest.toString('latin1');
    const pong = new Promise((resolve) => s.on('data', (d) => {
      text += d.toString('latin1');
      if (text.includes('"pong"')) resolve(true);
    }));
    s.write(frame(1, '{"type":"pi', { fin: false }));
    s.write(frame(0, 'ng","id":7}', { fin: true }));
    assert.ok(await pong);
    s.destroy();
  },

  async client_vanishing_mid_frame() {
    const s = await rawSocket();
    const f = frame(1, '{"type":"set","id":1,"key":"cut","text":"x"}');
    s.write(f.subarray(0, 10));
    s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal((await http('GET', '/api/v1/keys/cut')).status, 404);
    const c = await Client.open();
    assert.equal((await c.request('ping')).type, 'pong');
    c.ws.close();
  },

  async pings_not_read_do_not_pile_up() {
    // A client that pings and never reads: its pongs wait in the server no
    // more than data does (session_queue_bytes, 256 KiB here). They piled
    // up without end (200 MB of pings unread, 200 MB of memory held), from
    // anyone who may open a WebSocket; such a client is closed now.
    const s = await rawSocket();
    s.pause(); // never reads
    const pings = Buffer.concat(Array.from({ length: 512 }, () => frame(9, 'p'.repeat(125))));
    let sent = 0, ended = false;
    s.on('error', () => { ended = true; });
    s.on('close', () => { ended = true; });
    const deadline = Date.now() + 30000;
    while (!ended && sent < 256 << 20 && Date.now() < deadline) {
      if (!s.write(pings)) await new Promise((r) => { s.once('drain', r); setTimeout(r, 200); });
      sent += pings.length;
    }
    s.destroy();
    assert.ok(ended, `still open after ${sent} bytes of pings not read`);
    const c = await Client.open(); // the others go on
    assert.equal((await c.request('ping')).type, 'pong');
    c.ws.close();
  },

  async too_slow_closes_1008() {
    const c = await Client.open();
    await c.request('subscribe', { pattern: 'slowws/#', live_only: true });
    c.ws._socket.pause(); // stop reading
    const closed = c.closed();
    const big = 'y'.repeat(50000);
    for (let i = 0; i < 500; i++) {
      const r = await http('PUT', `/api/v1/keys/slowws/${i % 10}`, big);
      assert.ok(r.ok);
    }
    c.ws._socket.resume();
    assert.equal(await closed, 1008);
    const tail = c.queue.filter((m) => m.type === 'error');
    assert.equal(tail.at(-1).error, 'too_slow');
  },
};

let passed = 0, failed = 0, stopping = false;
try {
  await start();
  for (const [name, fn] of Object.entries(tests)) {
    try {
      await fn();
      passed++;
      console.log(`ok ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}: ${e.stack}`);
    }
  }
} finally {
  stopping = true;
  const exited = new Promise((r) => daemon?.on('exit', (code) => r(code)) ?? r(0));
  daemon?.kill('SIGTERM');
  // A clean stop exits 0; under LeakSanitizer a leak makes it fail.
  const code = await exited;
  if (code !== 0) {
    failed++;
    console.log(`FAIL almanac exited ${code} on SIGTERM:\n${daemonLog.slice(-3000)}`);
  }
  rmSync(dataDir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
