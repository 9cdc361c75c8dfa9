// Live-session benchmarks, each against mosquitto in the same run:
//
//   fanout  one writer at a fixed rate, 100 WebSocket subscribers on '#':
//           delivered events/s and p50/p99 latency from write to receipt,
//           against mosquitto delivering the same stream to 100 MQTT
//           subscribers (QoS 0).
//   sync    a subscription whose pattern matches 100,000 keys: time until
//           its `sync`, against mosquitto delivering 100,000 retained
//           messages to a new '#' subscriber.
//
// Usage: node tests/bench/live.mjs --binary build-release/almanac [fanout] [sync]
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

async function startAlmanac(dir) {
  const [http, tcp] = [await freePort(), await freePort()];
  const p = spawn(binary, ['serve', '--http_listen', `127.0.0.1:${http}`,
    '--tcp_listen', `127.0.0.1:${tcp}`, '--data_dir', dir, '--log_level', 'warn',
    '--sys_interval', '0', '--session_queue_bytes', '256MiB'], { stdio: 'inherit' });
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
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
