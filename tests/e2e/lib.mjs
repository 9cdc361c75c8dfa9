// What the dashboard's end-to-end tests share: the real daemon on a free
// port beside a real mosquitto started here, HTTP helpers, Debian's
// Chromium driven by playwright-core, the tree's clicks, and a small runner
// that takes a screenshot on failure and fails on any JavaScript error in
// the page. Each test file states what it checks; this holds the plumbing.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
export const binary = arg('--binary');
export const out = arg('--out', join(tmpdir(), 'almanac-e2e'));
mkdirSync(out, { recursive: true });

// A scratch directory, a broker and a daemon per test file.
export function fixture(name) {
  const dir = mkdtempSync(join(tmpdir(), `almanac-${name}-`));
  chmodSync(dir, 0o777); // mosquitto started as root runs as user mosquitto
  const procs = [];
  const f = {
    dir, procs, port: 0, mqttPort: 0, almanac: null,

    async startBroker() {
      f.mqttPort = await freePort();
      writeFileSync(join(dir, 'mosquitto.conf'), `listener ${f.mqttPort} 127.0.0.1\nallow_anonymous true\n`);
      procs.push(spawn('mosquitto', ['-c', join(dir, 'mosquitto.conf')], { stdio: 'ignore' }));
      for (let i = 0; i < 100; i++) {
        if (await reachable(f.mqttPort)) return;
        await sleep(50);
      }
      throw new Error('mosquitto did not start');
    },

    // On a fixed port once chosen, so that a restart is the same server to
    // the page; `extra` are more `serve` options.
    async startAlmanac(extra = []) {
      if (!f.port) f.port = await freePort();
      const bridge = f.mqttPort ? ['--bridge_url', `mqtt://127.0.0.1:${f.mqttPort}`,
        '--bridge_client_id', `almanac-e2e-${name}`] : [];
      await new Promise((resolve, reject) => {
        let log = '';
        const p = spawn(binary, ['serve', '--http_listen', `127.0.0.1:${f.port}`, '--tcp_listen', 'off',
          '--data_dir', join(dir, 'data'), '--sys_interval', '1', ...bridge, ...extra]);
        procs.push(p);
        f.almanac = p;
        p.stderr.on('data', (d) => {
          log += d;
          if (/listening on http/.test(log) && /ready/.test(log)) resolve();
        });
        p.on('exit', (code) => reject(new Error(`almanac exited ${code}:\n${log}`)));
      });
    },

    async stopAlmanac() {
      const p = f.almanac;
      const gone = new Promise((resolve) => p.on('exit', resolve));
      p.kill('SIGTERM');
      await gone;
    },

    url: (path = '/') => `http://127.0.0.1:${f.port}${path}`,
    api: (path, init) => fetch(`http://127.0.0.1:${f.port}${path}`, init),

    // PUT a value (a string, a Buffer, or anything else as JSON); its rev.
    async put(key, body, type = 'application/json', headers = {}) {
      const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
      const r = await f.api(`/api/v1/keys/${key}`, { method: 'PUT', body: data, headers: { 'Content-Type': type, ...headers } });
      assert.ok(r.status === 200 || r.status === 201, `PUT ${key}: ${r.status} ${await r.clone().text()}`);
      return (await r.json()).rev;
    },
    async revOf(key) {
      return Number((await f.api(`/api/v1/keys/${key}`, { method: 'HEAD' })).headers.get('x-almanac-rev'));
    },
    async raw(key) {
      const r = await f.api(`/api/v1/keys/${key}`);
      return { status: r.status, type: r.headers.get('content-type'), bytes: Buffer.from(await r.arrayBuffer()),
        rev: Number(r.headers.get('x-almanac-rev')) };
    },
  };
  return f;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function reachable(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); }).on('error', () => resolve(false));
  });
}

// ---- the page ----

export const text = (page, id) => page.locator(`#${id}`).textContent();
export const waitText = (page, id, re) => page.waitForFunction(
  ([i, src]) => new RegExp(src).test(document.getElementById(i).textContent), [id, re.source]);

// Expands the folders down to `path` in the tree; its row.
export async function expand(page, path) {
  const parts = path.split('/');
  for (let i = 1; i < parts.length; i++) {
    const row = page.locator(`.node[data-path="${parts.slice(0, i).join('/')}"]`);
    await row.waitFor();
    if ((await row.getAttribute('aria-expanded')) !== 'true') await row.click();
  }
  const leaf = page.locator(`.node[data-path="${path}"]`);
  await leaf.waitFor();
  return leaf;
}

// Selects `key` in the tree and waits for its details.
export async function open(page, key) {
  await (await expand(page, key)).click();
  await page.waitForFunction((k) => document.getElementById('details').dataset.key === k, key);
}

// Debian's Chromium (or $CHROMIUM), quiet: nothing fetched from the internet.
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// WCAG contrast of an element's text against the first opaque background;
// run in the page (page.evaluate(contrastOf, selector)).
export function contrastOf(selector) {
  const el = document.querySelector(selector);
  if (!el || el.offsetParent === null) return null;
  const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const fg = rgb(getComputedStyle(el).color);
  let bg = [255, 255, 255];
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] > 0.9)) { bg = c; break; }
  }
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return Math.round(((a + 0.05) / (b + 0.05)) * 100) / 100;
}

// Runs `tests` ([name, fn(page, ctx)]) in order on one page of Chromium;
// ctx: { bad: failed HTTP responses, sent: WebSocket frames the page sent,
// shot(name) }. A failed test leaves a screenshot; a JavaScript error in
// the page fails the run. `limitMs` bounds the whole file; `contextOptions`
// go to playwright's newContext (timezoneId, permissions…). Exits.
export async function run(f, prefix, tests, { setup = async () => {}, limitMs = 100000, viewport = { width: 1200, height: 900 },
  contextOptions = {} } = {}) {
  setTimeout(() => {
    console.log(`FAIL the whole test took more than ${limitMs / 1000} s`);
    for (const p of f.procs) p.kill('SIGKILL');
    process.exit(1);
  }, limitMs).unref();
  let browser, failed = 0;
  const shot = (page, name, full = true) => page.screenshot({ path: join(out, `${prefix}-${name}.png`), fullPage: full });
  try {
    await setup();
    browser = await launch();
    const context = await browser.newContext({ viewport, ...contextOptions });
    const page = await context.newPage();
    const errors = [];
    const ctx = { bad: [], sent: [], context, shot: (name, full) => shot(page, name, full) };
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('response', (r) => { if (r.status() >= 400) ctx.bad.push(`${r.status()} ${r.url()}`); });
    page.on('websocket', (ws) => ws.on('framesent', (fr) => ctx.sent.push(JSON.parse(fr.payload))));
    for (const [name, fn] of tests) {
      const t0 = Date.now();
      try {
        await fn(page, ctx);
        console.log(`ok   ${name} (${Date.now() - t0} ms)`);
      } catch (e) {
        failed++;
        console.log(`FAIL ${name}\n${e.stack}`);
        await shot(page, 'failure').catch(() => {});
      }
    }
    assert.deepEqual(errors, [], 'no JavaScript errors in the page');
  } catch (e) {
    failed++;
    console.log(e.stack);
  } finally {
    if (browser) await browser.close();
    for (const p of f.procs) p.kill();
    rmSync(f.dir, { recursive: true, force: true });
  }
  console.log(`${tests.length - failed}/${tests.length} passed; screenshots in ${out}`);
  process.exit(failed ? 1 : 0);
}
