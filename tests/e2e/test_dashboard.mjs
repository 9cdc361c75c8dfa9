// The dashboard in a real browser: Debian's Chromium driven by
// playwright-core, against the real daemon bridged to a real mosquitto
// broker. A value published with mosquitto_pub appears live; a value edited
// in the page reaches mosquitto_sub; the chart shows a key's history; a
// stale-rev edit is refused in the page; the tree stays small in the DOM
// with 100,000 keys, works by keyboard and in a narrow window.
// Screenshots go to --out (the build's test output).
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { fixture, run, out, expand } from './lib.mjs';

const f = fixture('e2e');
const { api } = f;
const pub = (topic, payload) => spawnSync('mosquitto_pub', ['-p', String(f.mqttPort), '-t', topic, '-m', payload, '-r', '-q', '1']);
const shot = (page, name) => page.screenshot({ path: join(out, `dashboard-${name}.png`), fullPage: true });

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('loads, connects and shows the server and the bridge', async (page) => {
  await page.goto(f.url());
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
  assert.match(await page.locator('#m-origin').textContent(), /^mqtt \(a message from the broker/);
  await shot(page, 'live');
});

test('the chart shows points for a key with history', async (page) => {
  for (const v of ['22', '23.5', '22.75']) pub('home/e2e/temp', v);
  await page.waitForFunction(() => document.getElementById('value').textContent === '22.75');
  await page.selectOption('#range', '86400'); // reload the history
  await page.waitForFunction(() => /points/.test(document.getElementById('chart-info').textContent));
  assert.equal(await page.locator('#chart .uplot canvas').count(), 1, 'drawn by uPlot');
  const n = Number(await page.locator('#chart').getAttribute('data-points'));
  assert.ok(n >= 1, `points: ${n}`);
  pub('home/e2e/temp', '25');
  await page.waitForFunction((before) => Number(document.getElementById('chart').dataset.points) > before, n);
  await shot(page, 'chart');
});

test('a value edited in the page reaches mosquitto_sub', async (page) => {
  const sub = spawn('mosquitto_sub', ['-p', String(f.mqttPort), '-t', 'home/e2e/temp', '-C', '1', '-R', '-W', '20']);
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

await run(f, 'dashboard', tests.map(({ name, fn }) => [name, fn]), {
  setup: async () => {
    await f.startBroker();
    await f.startAlmanac();
  },
});
