// Sessions at scale (issue 15, item 6), against mosquitto in the same run:
// CLIENTS WebSocket sessions on almanac, CLIENTS MQTT clients on mosquitto,
// opened by scale_load (tests/bench/scale_load.c: one epoll, the same code
// and the same cost per message for both protocols) split over PROCS
// processes, so that the clients are not what is measured.
//
//   idle   memory per idle session: VmRSS and RssAnon of the server
//          (/proc/PID/status) before and after CLIENTS sessions are open and
//          subscribed (measured in each of the runs below; the `sites` run's
//          is the headline).
//   sites  RATE writes/s for SECONDS to site/<n>/dev/temp, n over SITES
//          sites, each client subscribed to site/<its site>/#: every write
//          reaches CLIENTS/SITES clients.
//   all    RATE writes/s for SECONDS, every client subscribed to site/#:
//          every write reaches all CLIENTS (the issue's "fan-out to all
//          10,000").
//   Each: delivered events/s (events over the time from the first write to
//   the last receipt) and p50/p99 latency from write to receipt (the writer
//   stamps its wall-clock time in the value, {"t":ms}). On a 2-core machine
//   shared with the clients, `all` offers more (1,000,000 events/s) than
//   either server delivers: its events/s is each server's throughput, and
//   its latencies are mostly the queue.
//
// The subscribers are C, not Node's `ws` and `mqtt` (live.mjs's clients):
// one Node process takes apart about 50,000 events/s, and each library has a
// cost of its own; scale_load reads both protocols with the same few lines.
//
// almanac keeps its defaults but for --sys_interval 0 and --log_level warn
// (a session's $SYS/sessions keys are written: they are part of what a
// session costs); mosquitto runs with persistence off and TCP_NODELAY on
// (set_tcp_nodelay true: without it Nagle and delayed ACKs hold its small
// messages for up to 40 ms). Clients connect from SOURCES loopback addresses
// (127.0.1.x), so http_max_connections_per_ip keeps its default. Both
// servers get the hard descriptor limit as their soft one.
//
// Usage: node tests/bench/scale.mjs --binary build-release/almanac
//          [--load build-release/scale_load] [--clients 10000] [--procs 4]
//          [--seconds 10] [sites] [all]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import net from 'node:net';
import mqtt from 'mqtt';

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const binary = opt('--binary');
const load = opt('--load', join(dirname(binary ?? '.'), 'scale_load'));
const CLIENTS = Number(opt('--clients', 10000));
const PROCS = Number(opt('--procs', 4));
const SECONDS = Number(opt('--seconds', 10));
const which = args.filter((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
const RATE = 100; // writes per second
const SITES = 100;
const SOURCES = 50; // client addresses: CLIENTS / SOURCES each
const DRAIN = 60; // seconds after the writes that the last events are waited for
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The soft descriptor limit raised to the hard one, for a server we start.
const raised = (cmd) => ['sh', ['-c', 'ulimit -n "$(ulimit -Hn)"; exec "$@"', 'sh', ...cmd]];
// Every process started, ended if the benchmark stops early.
const children = new Set();
function started(p) {
  children.add(p);
  p.on('exit', () => children.delete(p));
  return p;
}
process.on('exit', () => children.forEach((p) => p.kill('SIGKILL')));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function listening(port) {
  for (;;) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    });
    if (ok) return;
    await sleep(20);
  }
}

function memory(pid) {
  const out = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const [name, value] = line.split(':');
    if (name === 'VmRSS' || name === 'RssAnon') out[name] = Number.parseInt(value, 10) * 1024;
  }
  return out;
}

async function startAlmanac(dir) {
  const [http, tcp] = [await freePort(), await freePort()];
  const [cmd, argv] = raised([binary, 'serve', '--http_listen', `127.0.0.1:${http}`,
    '--tcp_listen', `127.0.0.1:${tcp}`, '--data_dir', dir, '--log_level', 'warn',
    '--sys_interval', '0']);
  const p = started(spawn(cmd, argv, { stdio: 'inherit' }));
  for (;;) {
    try { if ((await fetch(`http://127.0.0.1:${http}/ready`)).ok) break; } catch { /* not yet */ }
    await sleep(20);
  }
  return { p, port: http, tcp };
}

async function startMosquitto(dir) {
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\n` +
    'max_queued_messages 0\nmax_inflight_messages 0\npersistence false\n' +
    'set_tcp_nodelay true\n');
  const [cmd, argv] = raised(['mosquitto', '-c', conf]);
  const p = started(spawn(cmd, argv, { stdio: 'ignore' }));
  await listening(port);
  return { p, port };
}

// One scale_load process: its lines, one command at a time.
function loader(proto, port, first, count, pattern) {
  const p = started(spawn(load, [proto, String(port), String(first), String(count), pattern,
    String(SITES), String(SOURCES)], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const lines = [];
  let waiting = null;
  createInterface({ input: p.stdout }).on('line', (line) => {
    if (line.startsWith('fail ')) {
      console.error(`scale_load: ${line}`);
      process.exit(1);
    }
    if (waiting) { const w = waiting; waiting = null; w(line); } else lines.push(line);
  });
  const next = () => (lines.length ? Promise.resolve(lines.shift())
    : new Promise((r) => { waiting = r; }));
  return {
    p,
    next,
    ask: (cmd) => { p.stdin.write(`${cmd}\n`); return next(); },
  };
}

// CLIENTS clients over PROCS processes, each subscribed; resolves once all are.
async function openClients(proto, port, pattern) {
  const loaders = [];
  for (let k = 0, first = 0; k < PROCS; k++) {
    const n = Math.floor(CLIENTS / PROCS) + (k < CLIENTS % PROCS ? 1 : 0);
    loaders.push(loader(proto, port, first, n, pattern));
    first += n;
  }
  const t0 = now();
  await Promise.all(loaders.map(async (l) => {
    const line = await l.next();
    if (!line.startsWith('ready ')) throw new Error(`scale_load: ${line}`);
  }));
  return { loaders, seconds: (now() - t0) / 1000 };
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

// The run's figures, once every event came, none came for 5 s, or DRAIN
// seconds passed after the writes (a server far behind is not waited for:
// its rate is what it delivered until then).
async function collect(loaders, t0, expected) {
  let total = 0, last = 0, closed = 0, stalled = now(), before = -1;
  for (;;) {
    const stats = await Promise.all(loaders.map((l) => l.ask('stat')));
    total = 0; last = 0; closed = 0;
    for (const s of stats) {
      const [, n, at, c] = s.split(' ');
      total += Number(n);
      last = Math.max(last, Number(at));
      closed += Number(c);
    }
    if (total !== before) { before = total; stalled = now(); }
    const late = now() - t0 > (SECONDS + DRAIN) * 1000;
    if (total >= expected || now() - stalled > 5000 || late) break;
    await sleep(100);
  }
  const hist = new Map();
  for (const h of await Promise.all(loaders.map((l) => l.ask('hist')))) {
    for (const pair of h.split(' ').slice(1)) {
      const [us, n] = pair.split(':').map(Number);
      hist.set(us, (hist.get(us) ?? 0) + n);
    }
  }
  const buckets = [...hist.entries()].sort((a, b) => a[0] - b[0]);
  const q = (f) => {
    let seen = 0;
    for (const [us, n] of buckets) { seen += n; if (seen > f * total) return us / 1000; }
    return NaN;
  };
  return { rate: total / ((last - t0) / 1000), n: total, expected, p50: q(0.5), p99: q(0.99),
    closed };
}

function closeAll(loaders) {
  return Promise.all(loaders.map((l) => new Promise((r) => {
    l.p.on('exit', r);
    l.p.stdin.write('quit\n');
  })));
}

async function stop(p) {
  p.kill('SIGTERM');
  await new Promise((r) => p.on('exit', r));
}

// One run on a fresh server: idle memory, then the fan-out.
async function run(peer, dir, variant) {
  const pattern = variant === 'sites' ? 'site/%d/#' : 'site/#';
  const perWrite = variant === 'sites' ? CLIENTS / SITES : CLIENTS;
  const server = peer === 'almanac' ? await startAlmanac(dir) : await startMosquitto(dir);
  const pid = server.p.pid; // sh exec's the server: the same process
  await sleep(500);
  const m0 = memory(pid);
  const { loaders, seconds: opened } =
    await openClients(peer === 'almanac' ? 'ws' : 'mqtt', server.port, pattern);
  await sleep(3000); // $SYS/sessions/... committed, allocations settled
  const m1 = memory(pid);
  const idle = { rss: (m1.VmRSS - m0.VmRSS) / CLIENTS, anon: (m1.RssAnon - m0.RssAnon) / CLIENTS,
    opened };

  await Promise.all(loaders.map((l) => l.ask('go')));
  let send, end;
  if (peer === 'almanac') {
    const writer = net.connect(server.tcp, '127.0.0.1');
    await new Promise((r) => writer.on('connect', r));
    let errors = 0, error = '';
    writer.on('data', (d) => {
      const i = d.indexOf('{"type":"error"');
      if (i >= 0) { errors++; error ||= d.subarray(i, i + 300).toString(); }
    });
    send = (i, payload) => writer.write(
      `{"type":"set","id":${i},"key":"site/${i % SITES}/dev/temp","value":${payload}}\n`);
    end = () => {
      writer.destroy();
      if (errors) throw new Error(`the writer got ${errors} errors, the first: ${error}`);
    };
  } else {
    // No keep-alive: a broker far behind must not end the publisher's
    // connection for a PINGRESP that waits in its queue.
    const pub = mqtt.connect(`mqtt://127.0.0.1:${server.port}`, { protocolVersion: 4,
      keepalive: 0 });
    await new Promise((r) => pub.on('connect', r));
    send = (i, payload) => pub.publish(`site/${i % SITES}/dev/temp`, payload, { qos: 0 });
    end = () => pub.end(true);
  }
  const t0 = now();
  const sent = await drive(send);
  const fan = await collect(loaders, t0, sent * perWrite);
  end();
  await closeAll(loaders);
  await stop(server.p);
  return { idle, fan };
}

const bytes = (b) => `${Math.round(b)} B`;
const f = (x) => x.toFixed(2);
const dir = mkdtempSync(join(tmpdir(), 'almanac-scale-'));
try {
  const variants = which.length ? which : ['sites', 'all'];
  for (const variant of variants) {
    const a = await run('almanac', join(dir, `a-${variant}`), variant);
    const m = await run('mosquitto', dir, variant);
    const reach = variant === 'sites' ? `${CLIENTS / SITES} clients (site/<n>/#, ${SITES} sites)`
      : `all ${CLIENTS} clients (site/#)`;
    console.log(`scale ${variant}: ${CLIENTS} sessions over ${PROCS} client processes: idle ` +
      `memory per session: almanac (WebSocket) ${bytes(a.idle.rss)} RSS, ${bytes(a.idle.anon)} ` +
      `anonymous (opened in ${f(a.idle.opened)} s); mosquitto (MQTT) ${bytes(m.idle.rss)} RSS, ` +
      `${bytes(m.idle.anon)} anonymous (${f(m.idle.opened)} s): ratio ${f(a.idle.rss / m.idle.rss)} ` +
      `RSS, ${f(a.idle.anon / m.idle.anon)} anonymous (goal <= 1.0)`);
    console.log(`scale ${variant}: ${RATE} writes/s for ${SECONDS} s, each to ${reach}: almanac ` +
      `${Math.round(a.fan.rate)} events/s (${a.fan.n}/${a.fan.expected}, ${a.fan.closed} closed), ` +
      `p50 ${f(a.fan.p50)} ms, p99 ${f(a.fan.p99)} ms; mosquitto ${Math.round(m.fan.rate)} ` +
      `events/s (${m.fan.n}/${m.fan.expected}, ${m.fan.closed} closed), p50 ${f(m.fan.p50)} ms, ` +
      `p99 ${f(m.fan.p99)} ms: ratio ${f(a.fan.rate / m.fan.rate)} (goal >= 1.0), p99 ` +
      `${f(a.fan.p99 / m.fan.p99)}x`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(process.exitCode ?? 0);
