// The dashboard in a real browser: Debian's Chromium driven by
// playwright-core, against the real daemon bridged to a real mosquitto
// broker. A value published with mosquitto_pub appears live; a value edited
// in the page reaches mosquitto_sub; the chart shows a key's history; a
// stale-rev edit is refused in the page; the tree stays small in the DOM
// with 100,000 keys, works by keyboard and in a narrow window.
// Screenshots go to --out (the build's test output).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const binary = arg('--binary');
const out = arg('--out', join(tmpdir(), 'almanac-e2e'));
mkdirSync(out, { recursive: true });
const dir = mkdtempSync(join(tmpdir(), 'almanac-e2e-'));
chmodSync(dir, 0o777); // mosquitto started as root runs as user mosquitto
const procs = [];
let port, mqttPort;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function startBroker() {
  mqttPort = await freePort();
  writeFileSync(join(dir, 'mosquitto.conf'), `listener ${mqttPort} 127.0.0.1\nallow_anonymous true\n`);
  procs.push(spawn('mosquitto', ['-c', join(dir, 'mosquitto.conf')], { stdio: 'ignore' }));
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(mqttPort, '127.0.0.1', () => { s.end(); resolve(true); }).on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('mosquitto did not start');
}

function startAlmanac() {
  return new Promise((resolve, reject) => {
    let log = '';
    const p = spawn(binary, ['serve', '--http_listen', '127.0.0.1:0', '--tcp_listen', 'off',
      '--data_dir', join(dir, 'data'), '--bridge_url', `mqtt://127.0.0.1:${mqttPort}`,
      '--bridge_client_id', 'almanac-e2e', '--sys_interval', '1']);
    procs.push(p);
    p.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m && /ready/.test(log)) { port = Number(m[1]); resolve(); }
    });
    p.on('exit', (code) => reject(new Error(`almanac exited ${code}:\n${log}`)));
  });
}

const api = (path, init) => fetch(`http://127.0.0.1:${port}${path}`, init);
const pub = (topic, payload) => spawnSync('mosquitto_pub', ['-p', String(mqttPort), '-t', topic, '-m', payload, '-r', '-q', '1']);

async function shot(page, name) {
  await page.screenshot({ path: join(out, `dashboard-${name}.png`), fullPage: true });
}

async function expand(page, path) {
  // Opens each level of `path` in the tree by clicking its row.
  const parts = path.split('/');
  for (let i = 1; i < parts.length; i++) {
    const p = parts.slice(0, i).join('/');
    const row = page.locator(`.node[data-path="${p}"]`);
    await row.waitFor();
    if ((await row.getAttribute('aria-expanded')) !== 'true') await row.click();
  }
  const leaf = page.locator(`.node[data-path="${path}"]`);
  await leaf.waitFor();
  return leaf;
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('loads, connects and shows the server and the bridge', async (page) => {
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.locator('#conn[data-state="online"]').waitFor();
  await page.waitForFunction(() => /almanac \S+ · /.test(document.getElementById('server').textContent));
  await page.waitForFunction(() => /MQTT bridge: connected/.test(document.getElementById('bridge').textContent));
  await shot(page, 'loaded');
});

test('a value published with mosquitto_pub appears live', async (page) => {
  pub('home/e2e/temp', '20.5');
  const row = await expand(page, 'home/e2e/temp');
  await page.waitForFunction(() => document.querySelector('.node[data-path="home/e2e/temp"] .val').textContent === '20.5');
  pub('home/e2e/temp', '21.5');
  await page.waitForFunction(() => document.querySelector('.node[data-path="home/e2e/temp"] .val').textContent === '21.5');
  assert.match(await row.getAttribute('class'), /flash/);
  await row.click();
  await page.waitForFunction(() => document.getElementById('value').textContent === '21.5');
  assert.equal(await page.locator('#m-origin').textContent(), 'mqtt');
  await shot(page, 'live');
});

test('the chart shows points for a key with history', async (page) => {
  for (const v of ['22', '23.5', '22.75']) pub('home/e2e/temp', v);
  await page.waitForFunction(() => document.getElementById('value').textContent === '22.75');
  await page.selectOption('#range', '86400'); // reload the history
  await page.waitForFunction(() => /points/.test(document.getElementById('chart-info').textContent));
  const n = Number(await page.locator('#chart').getAttribute('data-points'));
  assert.ok(n >= 1, `points: ${n}`);
  pub('home/e2e/temp', '25');
  await page.waitForFunction((before) => Number(document.getElementById('chart').dataset.points) > before, n);
  await shot(page, 'chart');
});

test('a value edited in the page reaches mosquitto_sub', async (page) => {
  const sub = spawn('mosquitto_sub', ['-p', String(mqttPort), '-t', 'home/e2e/temp', '-C', '1', '-R', '-W', '20']);
  const exited = new Promise((resolve) => sub.on('exit', resolve));
  let got = '';
  sub.stdout.on('data', (d) => { got += d; });
  await new Promise((r) => setTimeout(r, 500)); // subscribed
  await page.fill('#edit-value', '42');
  await page.selectOption('#edit-as', 'json');
  await page.click('#save');
  await page.waitForFunction(() => /Saved at rev/.test(document.getElementById('edit-msg').textContent));
  await exited;
  assert.equal(got.trim(), '42');
  await shot(page, 'edited');
});

test('a stale-rev edit is refused in the page', async (page) => {
  await page.waitForFunction(() => document.getElementById('value').textContent === '42');
  await page.fill('#edit-value', '43'); // the edit starts from what the page read
  // Someone else changes the key meanwhile; the page shows it live.
  const r = await api('/api/v1/keys/home/e2e/temp', { method: 'PUT', body: '99', headers: { 'Content-Type': 'application/json' } });
  assert.equal(r.status, 200);
  await page.waitForFunction(() => document.getElementById('value').textContent === '99');
  assert.equal(await page.inputValue('#edit-value'), '43'); // the edit is kept
  await page.click('#save');
  await page.waitForFunction(() => /Not saved: .* changed since you read it/.test(document.getElementById('edit-msg').textContent));
  assert.equal(await (await api('/api/v1/keys/home/e2e/temp')).text(), '99'); // not overwritten
  await shot(page, 'stale');
  await page.click('#save'); // knowingly, over the new value
  await page.waitForFunction(() => /Saved at rev/.test(document.getElementById('edit-msg').textContent));
  assert.equal(await (await api('/api/v1/keys/home/e2e/temp')).text(), '43');
});

test('after a dropped connection it reconnects and resumes with since', async (page) => {
  await page.evaluate(() => session.ws.close()); // the page's own connection drops
  await page.locator('#conn[data-state="offline"]').waitFor();
  // A change while the page is away: it must arrive through the replay.
  const r = await api('/api/v1/keys/home/e2e/temp', { method: 'PUT', body: '77', headers: { 'Content-Type': 'application/json' } });
  assert.equal(r.status, 200);
  await page.locator('#conn[data-state="online"]').waitFor();
  await page.waitForFunction(() => document.querySelector('.node[data-path="home/e2e/temp"] .val').textContent === '77');
  await page.waitForFunction(() => document.getElementById('value').textContent === '77');
  await shot(page, 'resumed');
});

test('100,000 keys: only the rows in view are in the DOM; a pattern filter', async (page) => {
  for (let b = 0; b < 10; b++) {
    const ops = [];
    for (let i = 0; i < 10000; i++) ops.push({ op: 'set', key: `big/k${String(b * 10000 + i).padStart(6, '0')}`, value: i });
    const r = await api('/api/v1/batch', { method: 'POST', body: JSON.stringify({ ops }), headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 200);
  }
  await page.reload();
  await page.locator('#conn[data-state="online"]').waitFor();
  await page.locator('.node[data-path="big"]').click();
  await page.locator('.node[data-path="big/k000000"]').waitFor();
  const inDom = await page.locator('.node:not([hidden])').count();
  assert.ok(inDom < 80, `rows in the DOM: ${inDom}`);
  await page.fill('#filter', 'big/+');
  await page.click('#filter-form button');
  await page.waitForFunction(() => /100,000 keys match/.test(document.getElementById('tree-count').textContent));
  await page.locator('#tree').evaluate((t) => { t.scrollTop = t.scrollHeight; });
  await page.locator('.node[data-path="big/k099999"]').waitFor();
  await shot(page, 'filtered');
  await page.fill('#filter', '');
  await page.click('#filter-form button');
});

test('keyboard and a narrow window', async (page) => {
  await page.setViewportSize({ width: 420, height: 800 });
  await page.locator('#tree').focus();
  await page.keyboard.press('Home');
  const first = await page.locator('.node[data-index="0"]').getAttribute('data-path');
  await page.keyboard.press('ArrowDown');
  const active = await page.locator('#tree').getAttribute('aria-activedescendant');
  assert.equal(active, 'row-1');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('ArrowRight'); // opens the first node
  await page.waitForFunction((p) => document.querySelector(`.node[data-path="${p}"]`).getAttribute('aria-expanded') === 'true', first);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 420, `no sideways scrolling: ${width}`);
  await shot(page, 'narrow');
});

let browser, failed = 0;
try {
  await startBroker();
  await startAlmanac();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  for (const t of tests) {
    try {
      await t.fn(page);
      console.log(`ok   ${t.name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}\n${e.stack}`);
      await shot(page, 'failure').catch(() => {});
    }
  }
  assert.deepEqual(errors, [], 'no JavaScript errors in the page');
} catch (e) {
  failed++;
  console.log(e.stack);
} finally {
  if (browser) await browser.close();
  for (const p of procs) p.kill();
  rmSync(dir, { recursive: true, force: true });
}
console.log(`${tests.length - failed}/${tests.length} passed; screenshots in ${out}`);
process.exit(failed ? 1 : 0);
