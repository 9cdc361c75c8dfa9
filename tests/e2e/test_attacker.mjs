// The daemon attacked as a hostile web page on a second origin would, in
// Debian's Chromium driven by playwright-core. The daemon listens on
// 127.0.0.1:<port>; the attacker's pages come from a tiny node server on
// 127.0.0.1:<other port> (same site, another origin: Chromium sends
// `Sec-Fetch-Site: same-site`). Every attack is judged as a user would judge
// it: afterwards a trusted client (node's http, no Origin) reads the store and
// finds nothing written or changed, and a trusted subscriber to `pwned/#`
// receives nothing. Attacks: a cross-origin WebSocket, no-cors text/plain
// POSTs (batch, import, publish), a plain HTML form, stored text/html and SVG
// values opened as pages, DNS rebinding (Chromium's --host-resolver-rules),
// framing the dashboard; then the dashboard under its own CSP, and CORS
// (refused by default, granted with --cors_origin).
// One line per check; `N passed, M failed` last; non-zero exit on a failure.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { chromium } from 'playwright-core';

const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const binary = arg('--binary');
const dir = mkdtempSync(join(tmpdir(), 'almanac-attacker-'));
const procs = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let passed = 0, failed = 0;

setTimeout(() => {
  console.log('FAIL the whole test took more than 120 s');
  for (const p of procs) p.kill('SIGKILL');
  process.exit(1);
}, 120000).unref();

// ---- checks: each returns what it saw (ok) or throws what it saw (FAIL) ----

class Seen extends Error {}
const fail = (what) => { throw new Seen(what); };
async function check(name, fn) {
  try {
    const seen = await fn();
    passed++;
    console.log(`ok   ${name}${seen ? ` (${seen})` : ''}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e instanceof Seen ? e.message : e.stack}`);
  }
}

// ---- the daemon ----

let seq = 0;
function startAlmanac(extra = []) {
  return new Promise((resolve, reject) => {
    let log = '';
    const p = spawn(binary, ['serve', '--http_listen', '127.0.0.1:0', '--tcp_listen', 'off',
      '--data_dir', join(dir, `data${seq++}`), ...extra]);
    procs.push(p);
    p.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m && /ready/.test(log)) resolve(Number(m[1]));
    });
    p.on('exit', (code) => reject(new Seen(`almanac ${extra.join(' ')} exited ${code}: ${log.trim().split('\n').pop()}`)));
    setTimeout(() => reject(new Seen(`almanac ${extra.join(' ')} not ready in 10 s`)), 10000);
  });
}

// A trusted client: node's http, no Origin unless given; the Host header can
// be set (fetch cannot).
function raw(port, method, path, { headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    r.on('error', reject);
    r.setTimeout(5000, () => r.destroy(new Error(`${method} ${path}: no answer in 5 s`)));
    if (body !== undefined) r.write(body);
    r.end();
  });
}

// A WebSocket upgrade by hand: 101, or the status and body of the refusal.
function upgrade(port, headers = {}) {
  return new Promise((resolve, reject) => {
    const r = http.request({
      host: '127.0.0.1', port, path: '/api/v1/ws', agent: false,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'), 'Sec-WebSocket-Protocol': 'almanac.v1', ...headers },
    });
    r.on('upgrade', (res, sock) => { sock.destroy(); resolve({ status: res.statusCode, body: '' }); });
    r.on('response', (res) => {
      let d = '';
      res.on('data', (c) => { d += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: d }));
    });
    r.on('error', reject);
    r.setTimeout(5000, () => r.destroy(new Error('upgrade: no answer in 5 s')));
    r.end();
  });
}

// Every stored entry but the server's own ($SYS), key -> rev.
async function snapshot(port) {
  const r = await raw(port, 'GET', '/api/v1/export');
  if (r.status !== 200) fail(`export answered ${r.status}`);
  const m = new Map();
  for (const line of r.body.split('\n')) {
    if (!line.trim()) continue;
    const e = JSON.parse(line);
    if (!e.key.startsWith('$')) m.set(e.key, e.rev);
  }
  return m;
}
function changes(before, after) {
  const out = [];
  for (const [k, rev] of after) {
    if (!before.has(k)) out.push(`written ${k}`);
    else if (before.get(k) !== rev) out.push(`changed ${k}`);
  }
  for (const k of before.keys()) if (!after.has(k)) out.push(`deleted ${k}`);
  return out;
}
// Fails when the store changed since `before`, naming what changed.
async function unchanged(port, before, note = '') {
  const c = changes(before, await snapshot(port));
  if (c.length) fail(`${c.join(', ')}${note ? `; ${note}` : ''}`);
}
// Waits up to `ms` for a key to appear; true if it did.
async function appears(port, key, ms) {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100))
    if ((await raw(port, 'GET', `/api/v1/keys/${key}`)).status === 200) return true;
  return false;
}

// A trusted SSE subscriber: the events (not sync) it received.
function subscribe(port, pattern) {
  const events = [];
  let buf = '', req;
  const ready = new Promise((resolve, reject) => {
    req = http.get({ host: '127.0.0.1', port, path: `/api/v1/events/${pattern}?live_only=1`, agent: false }, (res) => {
      if (res.statusCode !== 200) reject(new Seen(`SSE answered ${res.statusCode}`));
      res.setEncoding('utf8');
      res.on('data', (d) => {
        buf += d;
        for (let i; (i = buf.indexOf('\n\n')) >= 0;) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: ?(.*)$/m.exec(block)?.[1];
          const data = /^data: ?(.*)$/m.exec(block)?.[1] ?? '';
          if (ev === 'sync') resolve();
          else if (ev) events.push(`${ev} ${(/"key":"([^"]*)"/.exec(data) || [])[1] ?? data}`);
        }
      });
    });
    req.on('error', reject);
    setTimeout(() => reject(new Seen('SSE: no sync in 5 s')), 5000);
  });
  return { events, ready, close: () => req.destroy() };
}

// ---- the attacker's web server, another origin on the same host ----

let port, aport;
function startAttacker() {
  const pages = {
    '/': () => '<!doctype html><title>attacker</title><p>nothing to see',
    // text/plain form encoding sends `name=value\r\n`: a JSON line whose `=`
    // falls inside the text.
    '/form.html': () => `<!doctype html><title>form</title>
<form id="f" method="POST" enctype="text/plain" action="http://127.0.0.1:${port}/api/v1/import">
<input type="hidden" name='{"key":"pwned/form","text":"x' value='y"}'></form>
<script>document.getElementById('f').submit()</script>`,
    '/frame.html': () => `<!doctype html><title>frame</title>
<iframe id="f" src="http://127.0.0.1:${port}/" width="800" height="600"></iframe>`,
  };
  const server = http.createServer((req, res) => {
    const page = pages[new URL(req.url, 'http://x').pathname];
    res.writeHead(page ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page ? page() : 'not found');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// ---- in the attacker's page ----

// A WebSocket from the page: what it saw (open, messages, error, close).
const wsAttack = (p) => new Promise((resolve) => {
  const log = [];
  const done = () => resolve(log);
  let ws;
  try { ws = new WebSocket(`ws://127.0.0.1:${p}/api/v1/ws`, 'almanac.v1'); } catch (e) { resolve([`throws ${e.message}`]); return; }
  ws.onopen = () => {
    log.push('open');
    ws.send(JSON.stringify({ type: 'pget', id: 1, pattern: '#' }));
    ws.send(JSON.stringify({ type: 'set', id: 2, key: 'pwned/ws', text: 'x' }));
  };
  ws.onmessage = (m) => {
    log.push(`message ${String(m.data).slice(0, 60)}`);
    if (/"id":2\b/.test(m.data)) ws.close();
  };
  ws.onerror = () => log.push('error');
  ws.onclose = (e) => { log.push(`close ${e.code}`); done(); };
  setTimeout(() => { log.push('timeout'); done(); }, 4000);
});

const noCorsAttack = async (p) => {
  const u = `http://127.0.0.1:${p}/api/v1`;
  const post = (path, body) => fetch(u + path, { method: 'POST', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body })
    .then((r) => r.type, (e) => `rejected ${e.message}`);
  return [
    await post('/batch', JSON.stringify({ ops: [{ op: 'set', key: 'pwned/batch', text: 'x' }] })),
    await post('/import', `${JSON.stringify({ key: 'pwned/import', text: 'x' })}\n`),
    await post('/publish/pwned/publish', 'x'),
  ];
};

const corsAttack = async ({ p, key }) => {
  const out = {};
  try {
    const r = await fetch(`http://127.0.0.1:${p}/api/v1/export`);
    out.read = `${r.status} ${(await r.text()).length} bytes`;
  } catch (e) { out.read = `rejected ${e.message}`; }
  try {
    const r = await fetch(`http://127.0.0.1:${p}/api/v1/keys/${key}`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: '{"via":"cors"}' });
    out.write = `${r.status}`;
  } catch (e) { out.write = `rejected ${e.message}`; }
  return out;
};

// What a stored page does when it runs: reads everything, writes it back.
const stealer = (key) => `document.title='ran';fetch('/api/v1/export').then(r=>r.text()).then(t=>fetch('/api/v1/keys/${key}',{method:'PUT',headers:{'Content-Type':'text/plain'},body:t}))`;
const evilHtml = `<!doctype html><html><head><title>innocent</title></head><body><p>hello</p><script>${stealer('pwned/stolen')}</script></body></html>`;
const evilSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" onload="${stealer('pwned/stolen-svg').replace(/'/g, '&apos;').replace(/"/g, '&quot;')}"><script>/* also here */ document.title='ran'</script><rect width="10" height="10"/></svg>`;

// ---- the run ----

let browser, sub;
try {
  port = await startAlmanac();
  const attacker = await startAttacker();
  aport = attacker.address().port;
  procs.push({ kill: () => attacker.close() });
  const own = `http://127.0.0.1:${port}`, foreign = `http://127.0.0.1:${aport}`;
  console.log(`# almanac on ${own}, attacker on ${foreign}`);

  // Something worth stealing, and a subscriber that must hear nothing.
  await raw(port, 'PUT', '/api/v1/keys/home/secret', { body: 's3cret', headers: { 'Content-Type': 'text/plain' } });
  sub = subscribe(port, 'pwned/%23');
  await sub.ready;

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-features=HttpsUpgrades', '--host-resolver-rules=MAP rebind.test 127.0.0.1'],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${foreign}/`);

  // 1. Cross-origin WebSocket.
  await check('1 a WebSocket from the attacker page never opens and writes nothing', async () => {
    const before = await snapshot(port);
    const log = await page.evaluate(wsAttack, port);
    const note = `page saw: ${log.join(' | ')}`;
    await unchanged(port, before, note);
    if (log.includes('open')) fail(note);
    return note;
  });
  const expectUpgrade = (name, headers, status) => check(name, async () => {
    const r = await upgrade(port, headers);
    if (r.status !== status) fail(`got ${r.status} ${r.body.trim()}`);
    return `${r.status}`;
  });
  await expectUpgrade('1 an upgrade with Origin: http://evil.example gets 403', { Origin: 'http://evil.example' }, 403);
  await expectUpgrade(`1 an upgrade with the same-site Origin ${foreign} gets 403`, { Origin: foreign }, 403);
  await expectUpgrade('1 an upgrade with Origin: null (a sandboxed page) gets 403', { Origin: 'null' }, 403);
  await expectUpgrade(`1 an upgrade with the server's own Origin ${own} is accepted`, { Origin: own }, 101);
  await expectUpgrade('1 an upgrade without Origin (scripts, the CLI) is accepted', {}, 101);
  await expectUpgrade(`1 an upgrade to Host localhost:${port} with Origin http://localhost:${port} is accepted`,
    { Host: `localhost:${port}`, Origin: `http://localhost:${port}` }, 101);

  // 2. no-cors text/plain POSTs.
  {
    const before = await snapshot(port);
    const nEvents = sub.events.length;
    const types = await page.evaluate(noCorsAttack, port);
    await sleep(500); // for a publish to reach the subscriber
    const after = await snapshot(port);
    const c = changes(before, after);
    for (const key of ['pwned/batch', 'pwned/import']) {
      await check(`2 a no-cors text/plain POST to /api/v1/${key.split('/')[1]} writes nothing`, async () => {
        if (after.has(key)) fail(`written ${key} (page saw ${types.join(', ')})`);
      });
    }
    await check('2 a no-cors text/plain POST to /api/v1/publish reaches no subscriber', async () => {
      const got = sub.events.slice(nEvents).filter((e) => e.endsWith('pwned/publish'));
      if (got.length) fail(`the pwned/# subscriber got: ${got.join(', ')}`);
    });
    await check('2 the no-cors POSTs changed nothing at all', async () => { if (c.length) fail(c.join(', ')); });
  }
  const posts = [
    ['/api/v1/batch', (k) => JSON.stringify({ ops: [{ op: 'set', key: k, text: 'x' }] }), [200]],
    ['/api/v1/import', (k) => `${JSON.stringify({ key: k, text: 'x' })}\n`, [200]],
    ['/api/v1/publish/', () => 'x', [202]],
  ];
  for (const [label, origin, site] of [[foreign, foreign, 'same-site'], ['null (a sandboxed page)', 'null', 'cross-site']]) {
    await check(`2 POSTs with Origin ${label} and Sec-Fetch-Site: ${site} get 403 forbidden`, async () => {
      const before = await snapshot(port), seen = [];
      for (const [path, body] of posts) {
        const key = 'pwned/curl';
        const r = await raw(port, 'POST', path.endsWith('/') ? path + key : path, {
          body: body(key), headers: { 'Content-Type': 'text/plain', Origin: origin, 'Sec-Fetch-Site': site, 'Sec-Fetch-Mode': 'no-cors' } });
        let code;
        try { code = JSON.parse(r.body).error; } catch { code = r.body.slice(0, 60); }
        seen.push(`${path} ${r.status} ${code}`);
      }
      await unchanged(port, before, seen.join('; '));
      if (!seen.every((s) => / 403 forbidden$/.test(s))) fail(seen.join('; '));
      return seen.join('; ');
    });
  }
  await check('2 look-alike Origins of the server get 403 for a POST and an upgrade', async () => {
    const before = await snapshot(port), seen = [];
    for (const origin of [`${own}.evil.example`, `${own}0`, `http://127.0.0.1.nip.io:${port}`]) {
      const r = await raw(port, 'POST', '/api/v1/batch', { body: JSON.stringify({ ops: [{ op: 'set', key: 'pwned/lookalike', text: 'x' }] }),
        headers: { 'Content-Type': 'text/plain', Origin: origin } });
      const u = await upgrade(port, { Origin: origin });
      seen.push(`${origin}: POST ${r.status}, upgrade ${u.status}`);
    }
    await unchanged(port, before, seen.join('; '));
    if (!seen.every((x) => /POST 403, upgrade 403$/.test(x))) fail(seen.join('; '));
    return seen.join('; ');
  });
  for (const [label, headers] of [['no Origin', {}], [`the server's own Origin ${own}`, { Origin: own, 'Sec-Fetch-Site': 'same-origin' }]]) {
    await check(`2 POSTs with ${label} still work (batch, import, publish)`, async () => {
      const seen = [];
      for (const [path, body, ok] of posts) {
        const key = `script/${path.split('/')[3]}`;
        const r = await raw(port, 'POST', path.endsWith('/') ? path + key : path, { body: body(key), headers: { 'Content-Type': 'text/plain', ...headers } });
        seen.push(`${path} ${r.status}`);
        if (!ok.includes(r.status)) fail(`${seen.join('; ')} ${r.body.trim()}`);
      }
      return seen.join('; ');
    });
  }

  // 3. A plain HTML form (text/plain enctype) composing a JSON line.
  await check('3 an auto-submitting text/plain form to /api/v1/import writes nothing', async () => {
    const before = await snapshot(port);
    await Promise.all([
      page.waitForURL((u) => u.port === String(port), { timeout: 5000 }),
      page.goto(`${foreign}/form.html`),
    ]);
    await page.waitForLoadState('load');
    const shown = (await page.textContent('body').catch(() => '')).trim().slice(0, 80);
    await unchanged(port, before, `page shows: ${shown}`);
    return `page shows: ${shown}`;
  });

  // 4. Stored active content opened as a page.
  for (const [key, type, body, stolen] of [
    ['page/evil', 'text/html', evilHtml, 'pwned/stolen'],
    ['page/evil-svg', 'image/svg+xml', evilSvg, 'pwned/stolen-svg'],
  ]) {
    const put = await raw(port, 'PUT', `/api/v1/keys/${key}`, { body, headers: { 'Content-Type': type } });
    await check(`4 ${key} (${type}) is served with nosniff and a sandboxing CSP`, async () => {
      if (put.status !== 201 && put.status !== 200) fail(`the trusted PUT got ${put.status} ${put.body}`);
      const r = await raw(port, 'GET', `/api/v1/keys/${key}`);
      const nosniff = r.headers['x-content-type-options'], csp = r.headers['content-security-policy'];
      const seen = `${r.status}, X-Content-Type-Options: ${nosniff}, Content-Security-Policy: ${csp}`;
      if (r.status !== 200 || nosniff !== 'nosniff' || !/(^|;)\s*sandbox\b/.test(csp || '')) fail(seen);
      return seen;
    });
    await check(`4 opening ${own}/api/v1/keys/${key} in the browser runs no script`, async () => {
      const before = await snapshot(port);
      const victim = await context.newPage();
      let nav;
      try {
        const resp = await victim.goto(`${own}/api/v1/keys/${key}`, { waitUntil: 'load' });
        nav = `${resp.status()} ${resp.headers()['content-type']}`;
      } catch (e) { nav = `navigation: ${e.message.split('\n')[0]}`; }
      const ran = await appears(port, stolen, 1500);
      const title = await victim.title().catch(() => '');
      await victim.close();
      const seen = `${nav}, title '${title}'${ran ? `, ${stolen} written` : ''}`;
      await unchanged(port, before, seen);
      if (title === 'ran') fail(seen);
      return seen;
    });
  }

  // 5. DNS rebinding: rebind.test resolves to 127.0.0.1 in the browser.
  const rebind = `http://rebind.test:${port}`;
  await check(`5 navigating to ${rebind}/api/v1/export gets 421 misdirected, no data`, async () => {
    const p = await context.newPage();
    try {
      let resp;
      try { resp = await p.goto(`${rebind}/api/v1/export`); } catch (e) {
        if (/Download is starting/.test(e.message)) fail('200: the export was downloaded');
        throw e;
      }
      const text = await p.textContent('body');
      const seen = `${resp.status()} ${text.slice(0, 80)}`;
      if (resp.status() !== 421 || !/"error":"misdirected"/.test(text) || text.includes('s3cret')) fail(seen);
      return seen;
    } finally { await p.close(); }
  });
  await check(`5 a page on ${rebind} can neither read nor write the store`, async () => {
    const before = await snapshot(port);
    const p = await context.newPage();
    try {
      // Any document of the origin http://rebind.test:<port> will do for the
      // attacker's script. (One served by playwright's page.route would count
      // as public and Chromium's Local Network Access would block its fetches
      // itself, which would test Chromium, not the daemon.)
      await p.goto(`${rebind}/`);
      const got = await p.evaluate(async () => {
        const r = await fetch('/api/v1/export');
        const text = await r.text();
        const w = await fetch('/api/v1/keys/pwned/rebind', { method: 'PUT', headers: { 'Content-Type': 'text/plain' }, body: 'x' });
        return { status: r.status, secret: text.includes('s3cret'), text: text.slice(0, 60), write: w.status };
      });
      const seen = `read ${got.status} ${got.secret ? '(saw the secret) ' : ''}${got.text}; write ${got.write}`;
      await unchanged(port, before, seen);
      if (got.status !== 421 || got.secret) fail(seen);
      return seen;
    } finally { await p.close(); }
  });
  const hostIs = async (p, host, want) => {
    const r = await raw(p, 'GET', '/api/v1/keys/home/secret', { headers: { Host: host } });
    let code = '';
    try { code = JSON.parse(r.body).error || ''; } catch { /* the value */ }
    const seen = `${host} -> ${r.status}${code ? ` ${code}` : ''}`;
    if (want === 200 ? r.status !== 200 : r.status !== 421 || code !== 'misdirected') fail(seen);
    return seen;
  };
  await check(`5 Host: rebind.test:${port} gets 421 misdirected`, () => hostIs(port, `rebind.test:${port}`, 421));
  await check('5 Host: evil.example (no port) gets 421 misdirected', () => hostIs(port, 'evil.example', 421));
  await check('5 look-alike Hosts (localhost.evil.example, 127.0.0.1.nip.io) get 421 misdirected', async () =>
    [await hostIs(port, `localhost.evil.example:${port}`, 421), await hostIs(port, `127.0.0.1.nip.io:${port}`, 421)].join(', '));
  await check('5 Host: 127.0.0.1, localhost, [::1] and other IP literals are accepted', async () => {
    const seen = [];
    for (const h of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, 'localhost', `192.168.7.20:${port}`, `[2001:db8::1]:${port}`])
      seen.push(await hostIs(port, h, 200));
    return seen.join(', ');
  });
  await check('5 a daemon started with --http_host rebind.test accepts Host: rebind.test', async () => {
    const p = await startAlmanac(['--http_host', 'rebind.test']);
    await raw(p, 'PUT', '/api/v1/keys/home/secret', { body: 's3cret', headers: { 'Content-Type': 'text/plain' } });
    return [await hostIs(p, `rebind.test:${p}`, 200), await hostIs(p, `127.0.0.1:${p}`, 200),
      await hostIs(p, `evil.example:${p}`, 421)].join(', ');
  });

  // 6. The dashboard still works from its own origin, under its CSP, and
  //    cannot be framed by the attacker.
  await check('6 the dashboard loads and connects with no CSP violation, frame-ancestors \'none\'', async () => {
    const p = await context.newPage();
    const errors = [];
    p.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    p.on('pageerror', (e) => errors.push(e.message));
    await p.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
    });
    try {
      const resp = await p.goto(`${own}/`);
      const csp = resp.headers()['content-security-policy'] || '';
      await p.locator('#conn[data-state="online"]').waitFor({ timeout: 10000 })
        .catch(() => fail(`the dashboard did not connect; errors: ${errors.join(' | ')}`));
      await sleep(500);
      const seen = `CSP: ${csp}`;
      if (errors.length) fail(`errors: ${errors.join(' | ')}; ${seen}`);
      if (!/frame-ancestors\s+'none'/.test(csp)) fail(seen);
      return seen;
    } finally { await p.close(); }
  });
  await check('6 the attacker page cannot frame the dashboard', async () => {
    const p = await context.newPage();
    try {
      await p.goto(`${foreign}/frame.html`);
      await sleep(1500);
      const framed = [];
      for (const f of p.frames()) {
        if (f === p.mainFrame()) continue;
        const has = await f.evaluate(() => document.getElementById('tree') !== null).catch(() => false);
        framed.push(`${f.url()}${has ? ' (the dashboard rendered)' : ''}`);
      }
      if (framed.some((f) => f.includes('rendered'))) fail(framed.join(', '));
      return framed.join(', ');
    } finally { await p.close(); }
  });

  // 7. Cross-origin reads stay blocked by the browser unless --cors_origin.
  await page.goto(`${foreign}/`); // the form attack left the page on the daemon
  await check('7 without --cors_origin the attacker page can neither read nor PUT (CORS)', async () => {
    const before = await snapshot(port);
    const got = await page.evaluate(corsAttack, { p: port, key: 'pwned/cors' }).catch((e) => ({ read: e.message }));
    const seen = `read: ${got.read}; write: ${got.write}`;
    await unchanged(port, before, seen);
    if (!/^rejected/.test(got.read) || !/^rejected/.test(got.write)) fail(seen);
    return seen;
  });
  await check('7 without --cors_origin a preflight gets no Access-Control-Allow-Origin', async () => {
    const r = await raw(port, 'OPTIONS', '/api/v1/keys/pwned/cors', {
      headers: { Origin: foreign, 'Access-Control-Request-Method': 'PUT', 'Access-Control-Request-Headers': 'content-type' } });
    const acao = r.headers['access-control-allow-origin'];
    if (acao) fail(`${r.status} Access-Control-Allow-Origin: ${acao}`);
    return `${r.status}`;
  });
  let cport;
  await check(`7 a daemon with --cors_origin ${foreign} answers its preflight with 204 and the CORS headers`, async () => {
    cport = await startAlmanac(['--cors_origin', foreign]);
    await raw(cport, 'PUT', '/api/v1/keys/home/secret', { body: 's3cret', headers: { 'Content-Type': 'text/plain' } });
    const r = await raw(cport, 'OPTIONS', '/api/v1/keys/cors/ok', {
      headers: { Origin: foreign, 'Access-Control-Request-Method': 'PUT', 'Access-Control-Request-Headers': 'content-type' } });
    const h = (n) => r.headers[n] || '';
    const seen = `${r.status}, Allow-Origin: ${h('access-control-allow-origin')}, Allow-Methods: ${h('access-control-allow-methods')}, Allow-Headers: ${h('access-control-allow-headers')}`;
    if (r.status !== 204 || (h('access-control-allow-origin') !== foreign && h('access-control-allow-origin') !== '*')
      || !/\bPUT\b/i.test(h('access-control-allow-methods'))
      || !/content-type|^\s*\*\s*(,|$)/i.test(h('access-control-allow-headers'))
      || !/authorization/i.test(h('access-control-allow-headers'))) fail(seen);
    return seen;
  });
  await check('7 ... and the allowed page reads the export and writes with a PUT', async () => {
    if (!cport) fail('no daemon with --cors_origin');
    const got = await page.evaluate(corsAttack, { p: cport, key: 'cors/ok' });
    const stored = await raw(cport, 'GET', '/api/v1/keys/cors/ok');
    const seen = `read: ${got.read}; write: ${got.write}; stored: ${stored.status} ${stored.body}`;
    if (!/^200 /.test(got.read) || !/^20[01]$/.test(got.write) || stored.body !== '{"via":"cors"}') fail(seen);
    return seen;
  });
  await check('7 ... and takes the allowed page\'s no-cors POSTs (a control: the attacks of 2 reach the daemon)', async () => {
    if (!cport) fail('no daemon with --cors_origin');
    const types = await page.evaluate(noCorsAttack, cport);
    const after = await snapshot(cport);
    const seen = `page saw ${types.join(', ')}; stored: ${['pwned/batch', 'pwned/import'].filter((k) => after.has(k)).join(', ')}`;
    if (!after.has('pwned/batch') || !after.has('pwned/import')) fail(seen);
    return seen;
  });
  await check('7 ... and accepts a WebSocket from the allowed page', async () => {
    if (!cport) fail('no daemon with --cors_origin');
    const log = await page.evaluate(wsAttack, cport);
    const seen = log.join(' | ');
    if (!log.includes('open') || !log.some((l) => /"type":"welcome"/.test(l))) fail(seen);
    return seen;
  });
  await check('7 ... but still refuses an upgrade and a preflight from http://evil.example', async () => {
    if (!cport) fail('no daemon with --cors_origin');
    const u = await upgrade(cport, { Origin: 'http://evil.example' });
    const r = await raw(cport, 'OPTIONS', '/api/v1/export', { headers: { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'GET' } });
    const acao = r.headers['access-control-allow-origin'];
    const seen = `upgrade ${u.status}; preflight ${r.status} Allow-Origin: ${acao}`;
    if (u.status !== 403 || (acao && acao !== foreign)) fail(seen);
    return seen;
  });

  await check('the trusted pwned/# subscriber heard nothing during all the attacks', async () => {
    await sleep(200);
    if (sub.events.length) fail(sub.events.join(', '));
  });
} catch (e) {
  failed++;
  console.log(`FAIL ${e instanceof Seen ? e.message : e.stack}`);
} finally {
  if (sub) sub.close();
  if (browser) await browser.close().catch(() => {});
  for (const p of procs) p.kill();
  rmSync(dir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
