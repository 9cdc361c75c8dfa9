// MQTT Explorer's everyday features in the dashboard (issue 14, item 2), in
// Debian's Chromium against the real daemon bridged to a real mosquitto:
// folder rows say how many keys are below them and how many changes were
// seen since the page opened, kept live without `ls` (a key made through
// HTTP or MQTT under a folder never listed counts too); a substring search
// beside patterns; the publish panel stores (retained on the broker) or
// publishes (transient) any key with its content type, and refuses what is
// not valid without sending it; copy buttons put the key and the value on
// the clipboard; the origin, retained and expiry facts are shown.
import { spawn, spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { fixture, run, expand, open, text, waitText, sleep } from './lib.mjs';

const f = fixture('explorer');
const mqtt = (...args) => spawnSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(f.mqttPort), ...args], { timeout: 5000 });
const rowCount = (page, path) => page.locator(`.node[data-path="${path}"] .cnt`).textContent();
const waitCount = (page, path, re) => page.waitForFunction(([p, src]) => {
  const el = document.querySelector(`.node[data-path="${p}"] .cnt`);
  return el && new RegExp(src).test(el.textContent);
}, [path, re.source]);
const lsSent = (ctx, mark) => ctx.sent.slice(mark).filter((m) => m.type === 'ls').length;

const tests = [
  ['folder rows: the keys below and the changes seen, kept live without ls', async (page, ctx) => {
    await page.goto(f.url());
    await page.locator('#bridge[data-state="connected"]').waitFor();
    await waitCount(page, 'z2m', /^3 keys$/);
    assert.equal(await rowCount(page, 'bulk'), '200 keys');
    assert.equal(await rowCount(page, 'home'), '1 key');
    assert.equal(await rowCount(page, 'office'), '1 key');
    assert.match(await page.locator('.node[data-path="bulk"] .cnt').getAttribute('title'), /200 keys below; 0 changes seen/);
    await expand(page, 'z2m/kitchen/light');
    assert.equal(await rowCount(page, 'z2m/kitchen'), '2 keys');
    const mark = ctx.sent.length;
    // Updates of keys that exist: the changes go up, the number of keys does not.
    for (let i = 0; i < 5; i++) await f.put(`bulk/${i}`, String(100 + i));
    await waitCount(page, 'bulk', /^200 keys · 5 Δ$/);
    // A key made under a folder never listed (bulk), and one under a listed one.
    await f.put('bulk/new/deep', '1');
    await waitCount(page, 'bulk', /^201 keys · 6 Δ$/);
    await f.put('z2m/kitchen/kettle', '"off"');
    await waitCount(page, 'z2m/kitchen', /^3 keys · 1 Δ$/);
    await waitCount(page, 'z2m', /^4 keys · 1 Δ$/);
    // Through MQTT, under a folder of z2m that did not exist.
    assert.equal(mqtt('-r', '-t', 'z2m/garage/door', '-m', 'open').status, 0);
    await waitCount(page, 'z2m', /^5 keys · 2 Δ$/);
    await waitCount(page, 'z2m/garage', /^1 key · 1 Δ$/);
    // Deletions take keys off; a pattern delete of a folder never listed too.
    assert.equal((await f.api('/api/v1/keys/z2m/kitchen/kettle', { method: 'DELETE' })).status, 200);
    await waitCount(page, 'z2m/kitchen', /^2 keys · 2 Δ$/);
    assert.equal((await f.api('/api/v1/keys/bulk/1%2B%2B', { method: 'DELETE' })).status, 400); // a key cannot hold +
    const del = await f.api('/api/v1/keys/bulk/%2B', { method: 'DELETE' });
    assert.equal((await del.json()).deleted, 200);
    await waitCount(page, 'bulk', /^1 key · 206 Δ$/);
    assert.equal(lsSent(ctx, mark), 0, 'no ls for live changes');
    // What the server says agrees with the page.
    const ls = await (await f.api('/api/v1/ls')).json();
    assert.deepEqual(ls.children.filter((c) => c.name === 'z2m').map((c) => c.keys), [4]);
    await ctx.shot('counts');
  }],

  ['search: a substring in any case, or a pattern; the matches marked', async (page, ctx) => {
    await page.fill('#filter', 'kitchen');
    await page.press('#filter', 'Enter');
    await waitText(page, 'tree-count', /^3 keys containing “kitchen”$/);
    const rows = await page.locator('.node:visible').evaluateAll((els) => els.map((e) => e.dataset.path));
    assert.deepEqual(rows, ['home/kitchen/temp', 'z2m/kitchen/light', 'z2m/kitchen/sensor']);
    assert.deepEqual(await page.locator('.node:visible mark').allTextContents(), ['kitchen', 'kitchen', 'kitchen']);
    await ctx.shot('search-substring');
    await page.fill('#filter', 'KITCHEN/T');
    await page.press('#filter', 'Enter');
    await waitText(page, 'tree-count', /^1 key containing “KITCHEN\/T”$/);
    assert.equal(await page.locator('.node:visible mark').textContent(), 'kitchen/t');
    await page.fill('#filter', 'z2m/+/sensor');
    await page.press('#filter', 'Enter');
    await waitText(page, 'tree-count', /^1 key matching z2m\/\+\/sensor$/);
    assert.equal(await page.locator('.node:visible mark').count(), 0);
    await page.fill('#filter', 'nothing-like-it');
    await page.press('#filter', 'Enter');
    await waitText(page, 'tree-count', /^0 keys containing/);
    await page.fill('#filter', '');
    await page.press('#filter', 'Enter');
    await page.locator('.node[data-path="z2m"]').waitFor();
    assert.equal(await text(page, 'tree-count'), '');
  }],

  ['publish panel: store with retain, or publish transient, with a content type', async (page, ctx) => {
    await page.locator('#publish-panel summary').click();
    // Stored: the key keeps it, and the broker has it retained.
    await page.fill('#pub-key', 'made/here/lamp');
    await page.fill('#pub-value', '{"on": true, "level": 40}');
    assert.equal(await page.locator('#pub-retain').isChecked(), true);
    assert.equal(await text(page, 'pub-send'), 'Store and publish');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Stored made\/here\/lamp at rev \d+\. Show it$/);
    const lamp = await f.raw('made/here/lamp');
    assert.equal(lamp.type, 'application/json');
    assert.deepEqual(JSON.parse(lamp.bytes), { on: true, level: 40 });
    const retained = spawnSync('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(f.mqttPort), '-t', 'made/here/lamp',
      '--retained-only', '-C', '1', '-W', '5'], { timeout: 8000 });
    assert.deepEqual(JSON.parse(retained.stdout), { on: true, level: 40 }, 'retained on the broker');
    await page.locator('.node[data-path="made"]').waitFor(); // the tree shows it live
    await page.locator('#pub-msg button').click();
    await page.waitForFunction(() => document.getElementById('details').dataset.key === 'made/here/lamp');
    // A content type of the user's, as text.
    await page.fill('#pub-key', 'made/here/table');
    await page.selectOption('#pub-as', 'text');
    await page.fill('#pub-value', 'a,b\n1,2');
    await page.fill('#pub-type', 'text/csv');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Stored made\/here\/table/);
    const table = await f.raw('made/here/table');
    assert.equal(table.type, 'text/csv');
    assert.equal(table.bytes.toString(), 'a,b\n1,2');
    // Bytes typed as hex.
    await page.fill('#pub-key', 'made/here/blob');
    await page.selectOption('#pub-as', 'hex');
    await page.fill('#pub-value', '00 ff 7f');
    await page.fill('#pub-type', '');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Stored made\/here\/blob/);
    assert.deepEqual([...(await f.raw('made/here/blob')).bytes], [0, 255, 127]);
    // Transient: MQTT sees it, nothing is stored, nothing retained.
    const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(f.mqttPort), '-t', 'cmd/light', '-C', '1', '-W', '8']);
    let got = '';
    sub.stdout.on('data', (d) => { got += d; });
    const subDone = new Promise((resolve) => sub.on('exit', resolve));
    await sleep(500);
    await page.fill('#pub-key', 'cmd/light');
    await page.selectOption('#pub-as', 'text');
    await page.fill('#pub-value', 'ON');
    await page.locator('#pub-retain').uncheck();
    assert.equal(await text(page, 'pub-send'), 'Publish (transient)');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Published to cmd\/light \(transient/);
    await subDone;
    assert.equal(got.trim(), 'ON');
    assert.equal((await f.api('/api/v1/keys/cmd/light')).status, 404, 'not stored');
    await ctx.shot('publish');
    // Refused without sending: bad JSON, bad hex, a wildcard in the key.
    await page.locator('#pub-retain').check();
    await page.selectOption('#pub-as', 'json');
    await page.fill('#pub-key', 'made/bad');
    await page.fill('#pub-value', '{on: true}');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Not sent: the value is not valid JSON/);
    await page.selectOption('#pub-as', 'hex');
    await page.fill('#pub-value', '0g');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Not sent: the value is not hex/);
    await page.selectOption('#pub-as', 'text');
    await page.fill('#pub-key', 'made/+/bad');
    await page.click('#pub-send');
    await waitText(page, 'pub-msg', /^Not sent: .*(wildcard|\+)/);
    assert.deepEqual((await (await f.api('/api/v1/ls/made')).json()).children.map((c) => c.name), ['here'],
      'nothing was written');
    assert.equal((await f.api('/api/v1/keys/made/bad')).status, 404);
    assert.equal(await page.inputValue('#pub-key'), 'made/+/bad', 'the form is kept');
  }],

  ['copy buttons put the key and the value on the clipboard', async (page) => {
    await page.fill('#filter', '');
    await page.press('#filter', 'Enter');
    await open(page, 'z2m/kitchen/sensor');
    await page.click('#copy-key');
    await waitText(page, 'copy-msg', /^Copied the key\.$/);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'z2m/kitchen/sensor');
    await page.click('#copy-value');
    await waitText(page, 'copy-msg', /^Copied the value\.$/);
    assert.deepEqual(JSON.parse(await page.evaluate(() => navigator.clipboard.readText())),
      { temperature: 20.5, humidity: 41, state: 'ON' });
  }],

  ['the facts of a value: origin, retained, expiry', async (page, ctx) => {
    await open(page, 'z2m/garage/door');
    assert.match(await text(page, 'm-origin'), /^mqtt \(a message from the broker/);
    assert.match(await text(page, 'm-retained'), /^yes: stored/);
    assert.equal(await text(page, 'm-expires'), 'never');
    await f.put('z2m/garage/light', '"on"', 'application/json', { 'X-Almanac-TTL': '1h' });
    await open(page, 'z2m/garage/light');
    assert.match(await text(page, 'm-origin'), /^http /);
    const expires = Number((await f.api('/api/v1/keys/z2m/garage/light')).headers.get('x-almanac-expires'));
    const shown = await page.evaluate((us) => new Date(us / 1000).toLocaleString(undefined, {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }), expires);
    assert.equal(await text(page, 'm-expires'), shown, 'the expiry in the page\'s one time format');
    await ctx.shot('facts');
  }],

  ['after a reconnection the numbers are read again: a key made meanwhile is counted', async (page) => {
    await waitCount(page, 'z2m', /^5 keys/);
    await f.stopAlmanac();
    await page.locator('#stale-bar').waitFor();
    // Kept by the broker, taken by almanac as it starts, under a folder the
    // page never listed: the replay cannot say it is new, the numbers can.
    assert.equal(mqtt('-r', '-t', 'z2m/living/humidity', '-m', '55').status, 0);
    await f.startAlmanac();
    await page.click('#retry');
    await page.locator('#conn[data-state="online"]').waitFor();
    await waitCount(page, 'z2m', /^6 keys/);
    await waitCount(page, 'z2m/living', /^2 keys/);
  }],
];

await run(f, 'explorer', tests, {
  contextOptions: { permissions: ['clipboard-read', 'clipboard-write'] },
  setup: async () => {
    await f.startBroker();
    await f.startAlmanac();
    await f.put('z2m/living/temp', '21.5');
    await f.put('z2m/kitchen/sensor', { temperature: 20.5, humidity: 41, state: 'ON' });
    await f.put('z2m/kitchen/light', '"OFF"');
    await f.put('home/kitchen/temp', '19');
    await f.put('office/desk', 'busy', 'text/plain');
    await Promise.all(Array.from({ length: 200 }, (_, i) => f.put(`bulk/${i}`, String(i))));
  },
});
