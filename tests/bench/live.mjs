// Live-session benchmarks, each against mosquitto in the same run:
//
//   fanout  one writer at a fixed rate, 100 WebSocket subscribers on '#':
//           delivered events/s and p50/p99 latency from write to receipt,
//           against mosquitto delivering the same stream to 100 MQTT
//           subscribers (QoS 0).
//   sync    a subscription whose pattern matches 100,000 keys: time until
//           its `sync`, against mosquitto delivering 100,000 retained
//           messages to a new '#' subscriber.
//   authfanout  access control on the live path, against auth off in the
//           same run: one writer at a fixed rate alternating keys
//           site/N/even/temp and site/N/odd/temp; 100 WebSocket subscribers
//           on '#', each authenticated (hello with a token of its own, made
//           with POST /api/v1/tokens, reading site/+/even/# only), against
//           100 on 'site/+/even/#' with auth off (no credential configured),
//           so both deliver the same volume: events/s and p50/p99 latency,
//           and the odd keys a token's subscriber received (must be 0).
//           Runs off, on, on, off and takes the best of each.
//
// Usage: node tests/bench/live.mjs --binary build-release/almanac [fanout] [sync] [authfanout]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import WebSocket from 'ws';
import mqtt from 'mqtt';

const args = process.argv.slice(2);
const binary = args[args.indexOf('--binary') + 1];
const which = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--binary');
const RATE = 500;       // writes per second: 50,000 events/s to one client process
const SECONDS = 10;
const SUBSCRIBERS = 100;
const SYNC_KEYS = 100000;
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startAlmanac(dir, env = {}) {
  const [http, tcp] = [await freePort(), await freePort()];
  const p = spawn(binary, ['serve', '--http_listen', `127.0.0.1:${http}`,
    '--tcp_listen', `127.0.0.1:${tcp}`, '--data_dir', dir, '--log_level', 'warn',
    '--sys_interval', '0', '--session_queue_bytes', '256MiB'],
  { stdio: 'inherit', env: { ...process.env, ...env } });
  for (;;) {
    try { if ((await fetch(`http://127.0.0.1:${http}/ready`)).ok) break; } catch { /* not yet */ }
    await sleep(20);
  }
  return { p, http, tcp };
}

async function startMosquitto(dir) {
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\n` +
    `max_queued_messages 0\nmax_inflight_messages 0\npersistence false\n`);
  const p = spawn('mosquitto', ['-c', conf], { stdio: 'ignore' });
  for (;;) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    });
    if (ok) break;
    await sleep(20);
  }
  return { p, port };
}

// The send time carried in a message ({"t":...}), read the same cheap way
// for both peers, so the client's parsing does not dominate the latency.
const sentAt = (text) => Number(/"t":([0-9.]+)/.exec(text)[1]);

function stats(latencies, delivered, seconds) {
  latencies.sort((a, b) => a - b);
  const q = (f) => latencies[Math.min(latencies.length - 1, Math.floor(f * latencies.length))];
  return { rate: delivered / seconds, p50: q(0.5), p99: q(0.99), n: delivered };
}

// Writes RATE per second for SECONDS with `send(i, payload)`.
async function drive(send) {
  const start = now();
  let i = 0;
  while (now() - start < SECONDS * 1000) {
    const due = Math.floor(((now() - start) / 1000) * RATE);
    for (; i < due; i++) send(i, JSON.stringify({ t: now() }));
    await sleep(2);
  }
  return i;
}

async function fanoutAlmanac(dir) {
  const a = await startAlmanac(join(dir, 'fan'));
  const lat = [];
  let delivered = 0;
  const subs = [];
  for (let s = 0; s < SUBSCRIBERS; s++) {
    const ws = new WebSocket(`ws://127.0.0.1:${a.http}/api/v1/ws`, 'almanac.v1');
    await new Promise((r) => ws.on('open', r));
    let synced;
    const ready = new Promise((r) => { synced = r; });
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('{"type":"sync"')) return synced();
      if (!text.startsWith('{"type":"event"')) return;
      lat.push(now() - sentAt(text));
      delivered++;
    });
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, pattern: '#', live_only: true }));
    await ready;
    subs.push(ws);
  }
  const writer = net.connect(a.tcp, '127.0.0.1');
  await new Promise((r) => writer.on('connect', r));
  writer.on('data', () => {});
  const t0 = now();
  const sent = await drive((i, payload) =>
    writer.write(`{"type":"set","id":${i},"key":"bench/${i % 100}","value":${payload}}\n`));
  while (delivered < sent * SUBSCRIBERS && now() - t0 < (SECONDS + 10) * 1000) await sleep(10);
  const seconds = (now() - t0) / 1000;
  subs.forEach((ws) => ws.terminate());
  writer.destroy();
  a.p.kill('SIGTERM');
  await new Promise((r) => a.p.on('exit', r));
  return { ...stats(lat, delivered, seconds), expected: sent * SUBSCRIBERS };
}

async function fanoutMosquitto(dir) {
  const m = await startMosquitto(dir);
  const lat = [];
  let delivered = 0;
  const subs = [];
  for (let s = 0; s < SUBSCRIBERS; s++) {
    const c = mqtt.connect(`mqtt://127.0.0.1:${m.port}`, { protocolVersion: 5 });
    await new Promise((r) => c.on('connect', r));
    c.on('message', (topic, payload) => {
      lat.push(now() - sentAt(payload.toString()));
      delivered++;
    });
    await c.subscribeAsync('#', { qos: 0 });
    subs.push(c);
  }
  const pub = mqtt.connect(`mqtt://127.0.0.1:${m.port}`, { protocolVersion: 5 });
  await new Promise((r) => pub.on('connect', r));
  const t0 = now();
  const sent = await drive((i, payload) => pub.publish(`bench/${i % 100}`, payload, { qos: 0 }));
  while (delivered < sent * SUBSCRIBERS && now() - t0 < (SECONDS + 10) * 1000) await sleep(10);
  const seconds = (now() - t0) / 1000;
  subs.forEach((c) => c.end(true));
  pub.end(true);
  m.p.kill('SIGTERM');
  return { ...stats(lat, delivered, seconds), expected: sent * SUBSCRIBERS };
}

// ---- authfanout ----

const ADMIN_TOKEN = `bench-admin-${Math.random().toString(36).slice(2)}${Date.now()}`;
const HALF_READ = 'site/+/even/#';
// Write i: even keys for even i, odd keys for odd i.
const authKey = (i) => `site/${(i >> 1) % 50}/${i % 2 ? 'odd' : 'even'}/temp`;
const keyOf = (text) => /"key":"([^"]*)"/.exec(text)[1];

async function createToken(a, name, read, write) {
  const r = await fetch(`http://127.0.0.1:${a.http}/api/v1/tokens`, {
    method: 'POST', headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
    body: JSON.stringify({ name, read, write }),
  });
  const body = await r.text();
  if (r.status !== 201) throw new Error(`token ${name}: ${r.status} ${body}`);
  return JSON.parse(body).token;
}

// The next message of `ws` (WebSocket) or line of a TCP socket, as text.
function firstReply(conn, isWs) {
  return new Promise((resolve) => {
    if (isWs) { conn.once('message', (d) => resolve(d.toString())); return; }
    let acc = '';
    const on = (d) => {
      acc += d.toString();
      const nl = acc.indexOf('\n');
      if (nl < 0) return;
      conn.off('data', on);
      resolve(acc.slice(0, nl));
    };
    conn.on('data', on);
  });
}

// One run: auth on (tokens, subscribers on '#') or off (no credential,
// subscribers on site/+/even/#).
async function authFanoutRun(dir, auth) {
  const a = await startAlmanac(dir, auth ? { ALMANAC_ADMIN_TOKEN: ADMIN_TOKEN } : {});
  const lat = [];
  let delivered = 0, violations = 0, writerErrors = 0;
  const subs = [];
  for (let s = 0; s < SUBSCRIBERS; s++) {
    const token = auth ? await createToken(a, `sub${s}`, [HALF_READ], []) : null;
    const ws = new WebSocket(`ws://127.0.0.1:${a.http}/api/v1/ws`, 'almanac.v1');
    const welcome = firstReply(ws, true);
    await new Promise((r) => ws.on('open', r));
    const w = JSON.parse(await welcome);
    if (w.auth_required !== auth) throw new Error(`welcome: ${JSON.stringify(w)}`);
    if (auth) {
      const hello = firstReply(ws, true);
      ws.send(JSON.stringify({ type: 'hello', id: 0, protocol: '1.0', token }));
      const h = await hello;
      if (!h.startsWith('{"type":"ok"')) throw new Error(`hello: ${h}`);
    }
    let synced, failed;
    const ready = new Promise((r, j) => { synced = r; failed = j; });
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('{"type":"sync"')) return synced();
      if (text.startsWith('{"type":"error"')) return failed(new Error(text));
      if (!text.startsWith('{"type":"event"')) return;
      if (keyOf(text).includes('/odd/')) { violations++; return; }
      lat.push(now() - sentAt(text));
      delivered++;
    });
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, pattern: auth ? '#' : HALF_READ,
      live_only: true }));
    await ready;
    subs.push(ws);
  }
  const writer = net.connect(a.tcp, '127.0.0.1');
  await new Promise((r) => writer.on('connect', r));
  await firstReply(writer, false); // welcome
  if (auth) {
    const token = await createToken(a, 'writer', ['site/#'], ['site/#']);
    const hello = firstReply(writer, false);
    writer.write(`${JSON.stringify({ type: 'hello', id: 0, protocol: '1.0', token })}\n`);
    const h = await hello;
    if (!h.startsWith('{"type":"ok"')) throw new Error(`writer hello: ${h}`);
  }
  writer.on('data', (d) => {
    for (let i = d.indexOf('"type":"error"'); i >= 0; i = d.indexOf('"type":"error"', i + 1)) {
      writerErrors++;
    }
  });
  const t0 = now();
  const sent = await drive((i, payload) =>
    writer.write(`{"type":"set","id":${i},"key":"${authKey(i)}","value":${payload}}\n`));
  const expected = Math.ceil(sent / 2) * SUBSCRIBERS;
  while (delivered < expected && now() - t0 < (SECONDS + 10) * 1000) await sleep(10);
  const seconds = (now() - t0) / 1000;
  await sleep(200); // a late odd key would still be counted
  subs.forEach((ws) => ws.terminate());
  writer.destroy();
  a.p.kill('SIGTERM');
  await new Promise((r) => a.p.on('exit', r));
  if (writerErrors) throw new Error(`the writer got ${writerErrors} errors`);
  return { ...stats(lat, delivered, seconds), expected, violations };
}

async function syncAlmanac(dir) {
  const a = await startAlmanac(join(dir, 'sync'));
  for (let b = 0; b < SYNC_KEYS; b += 10000) {
    const ops = [];
    for (let i = b; i < b + 10000; i++) ops.push({ op: 'set', key: `big/${i}`, value: { v: i } });
    const r = await fetch(`http://127.0.0.1:${a.http}/api/v1/batch`,
      { method: 'POST', body: JSON.stringify({ ops }) });
    if (!r.ok) throw new Error(`batch: ${r.status}`);
  }
  const times = [];
  for (let round = 0; round < 3; round++) {
    const s = net.connect(a.tcp, '127.0.0.1');
    await new Promise((r) => s.on('connect', r));
    // Counts lines in the raw bytes and looks for the sync in the tail, so
    // the client's own parsing stays out of the figure.
    let lines = 0, t0, tail = Buffer.alloc(0);
    const done = new Promise((resolve) => s.on('data', (d) => {
      for (let i = d.indexOf(10); i >= 0; i = d.indexOf(10, i + 1)) lines++;
      tail = Buffer.concat([tail, d]).subarray(-300);
      if (tail.includes('{"type":"sync"')) resolve(now() - t0);
    }));
    await sleep(50);
    t0 = now();
    s.write('{"type":"subscribe","id":1,"pattern":"big/#"}\n');
    times.push(await done);
    if (lines !== SYNC_KEYS + 3) throw new Error(`${lines} lines, not ok, snapshot, sync`);
    s.destroy();
  }
  a.p.kill('SIGTERM');
  await new Promise((r) => a.p.on('exit', r));
  return Math.min(...times);
}

async function syncMosquitto(dir) {
  const m = await startMosquitto(dir);
  const pub = mqtt.connect(`mqtt://127.0.0.1:${m.port}`, { protocolVersion: 5 });
  await new Promise((r) => pub.on('connect', r));
  for (let i = 0; i < SYNC_KEYS; i++) {
    pub.publish(`big/${i}`, JSON.stringify({ v: i }), { qos: 0, retain: true });
    if (i % 1000 === 999) await sleep(1);
  }
  await pub.publishAsync('big/last-marker', 'x', { qos: 1, retain: false });
  await sleep(500);
  const times = [];
  for (let round = 0; round < 3; round++) {
    const c = mqtt.connect(`mqtt://127.0.0.1:${m.port}`, { protocolVersion: 5 });
    await new Promise((r) => c.on('connect', r));
    let n = 0;
    const t0 = now();
    const done = new Promise((resolve) => c.on('message', () => {
      if (++n === SYNC_KEYS) resolve(now() - t0);
    }));
    c.subscribe('big/#', { qos: 0 });
    times.push(await done);
    c.end(true);
  }
  pub.end(true);
  m.p.kill('SIGTERM');
  return Math.min(...times);
}

const dir = mkdtempSync(join(tmpdir(), 'almanac-live-'));
try {
  if (which.length === 0 || which.includes('fanout')) {
    const a = await fanoutAlmanac(dir);
    const m = await fanoutMosquitto(dir);
    const f = (x) => x.toFixed(2);
    console.log(`fanout: ${RATE} writes/s to ${SUBSCRIBERS} subscribers for ${SECONDS} s: ` +
      `almanac (WebSocket) ${Math.round(a.rate)} events/s (${a.n}/${a.expected}), ` +
      `p50 ${f(a.p50)} ms, p99 ${f(a.p99)} ms; mosquitto (MQTT QoS 0) ${Math.round(m.rate)} ` +
      `events/s (${m.n}/${m.expected}), p50 ${f(m.p50)} ms, p99 ${f(m.p99)} ms: ` +
      `ratio ${f(a.rate / m.rate)} (goal >= 1.0; p99 goal <= 10 ms)`);
  }
  if (which.length === 0 || which.includes('sync')) {
    const a = await syncAlmanac(dir);
    const m = await syncMosquitto(dir);
    console.log(`sync: subscription over ${SYNC_KEYS} keys: almanac ${a.toFixed(0)} ms to sync; ` +
      `mosquitto ${m.toFixed(0)} ms to deliver as many retained messages: ratio ` +
      `${(a / m).toFixed(2)} (goal < 150 ms)`);
  }
  if (which.length === 0 || which.includes('authfanout')) {
    const runs = { on: [], off: [] };
    let n = 0;
    for (const mode of ['off', 'on', 'on', 'off']) {
      runs[mode].push(await authFanoutRun(join(dir, `authfan${n++}`), mode === 'on'));
    }
    const f = (x) => x.toFixed(2);
    const best = (rs) => ({
      rate: Math.max(...rs.map((r) => r.rate)), p50: Math.min(...rs.map((r) => r.p50)),
      p99: Math.min(...rs.map((r) => r.p99)), violations: rs.reduce((v, r) => v + r.violations, 0),
    });
    const [on, off] = [best(runs.on), best(runs.off)];
    const each = (rs) => rs.map((r) => `${Math.round(r.rate)}/s ${r.n}/${r.expected} ` +
      `p50 ${f(r.p50)} p99 ${f(r.p99)}`).join(', ');
    const ratio = on.rate / off.rate;
    console.log(`authfanout: ${RATE} writes/s (half of them to keys the tokens may read) to ` +
      `${SUBSCRIBERS} subscribers for ${SECONDS} s, best of 2 each: tokens (read ${HALF_READ}, ` +
      `subscribed to #) ${Math.round(on.rate)} events/s, p50 ${f(on.p50)} ms, p99 ${f(on.p99)} ms; ` +
      `auth off (subscribed to ${HALF_READ}) ${Math.round(off.rate)} events/s, p50 ` +
      `${f(off.p50)} ms, p99 ${f(off.p99)} ms: ratio ${f(ratio)} (goal >= 0.95: ` +
      `${ratio >= 0.95 ? 'PASS' : 'short'}), p99 ${f(on.p99 / off.p99)}x; odd keys delivered to ` +
      `token subscribers: ${on.violations} (must be 0: ${on.violations === 0 ? 'PASS' : 'FAIL'}) ` +
      `[runs on: ${each(runs.on)}; off: ${each(runs.off)}]`);
    if (on.violations || off.violations) process.exitCode = 1;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(process.exitCode ?? 0);
