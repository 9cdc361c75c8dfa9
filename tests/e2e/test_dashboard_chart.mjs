// The dashboard's history chart (uPlot, web/chart.js) in Debian's Chromium
// driven by playwright-core, against the real daemon, in a browser whose
// time zone is Asia/Kolkata (UTC+5:30, so neither UTC nor a whole-hour
// zone passes by accident). What a user would check: the chart is drawn
// with every point written; the x range fits the data (seconds, not the
// hour picked) and the y range the values; the axis labels and the legend
// are in the page's time zone; hovering shows the time and the value; a
// deletion makes a gap; a write over HTTP extends the chart at once, with no
// history read again; a numeric field of a JSON value is picked and the
// chart changes to it, and the pick stays when the chart is read again; the
// chart fits a narrow window. Screenshots go to --out (the build's test
// output).
import assert from 'node:assert/strict';
import { fixture, run, open, sleep } from './lib.mjs';

const f = fixture('chart');
const ZONE = 'Asia/Kolkata', LOCALE = 'en-GB';
const NUM = 'home/chart/temp', OBJ = 'home/chart/climate';

// What the page should show, computed here in the same zone and locale.
const clock = (ms, seconds) => new Intl.DateTimeFormat(LOCALE, {
  timeZone: ZONE, hour: '2-digit', minute: '2-digit', ...(seconds ? { second: '2-digit' } : {}) }).format(new Date(ms));
const timeText = (ms) => new Date(ms).toLocaleString(LOCALE, { timeZone: ZONE,
  year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });

// The key's history over HTTP: what was written, with the server's times.
async function history(key) {
  const r = await f.api(`/api/v1/history/${key}?limit=1000`);
  assert.equal(r.status, 200);
  return (await r.json()).records;
}

// Writes `values` to `key`, a little apart.
async function write(key, values) {
  for (const v of values) {
    await f.put(key, v);
    await sleep(150);
  }
}

// What the chart plots, and its scales and x-axis labels.
const plot = (page) => page.evaluate(() => {
  const u = window.chart.u;
  return { xs: [...u.data[0]], ys: [...u.data[1]], x: { ...u.scales.x }, y: { ...u.scales.y },
    splits: u.axes[0]._splits, labels: u.axes[0]._values, field: window.chart.field };
});
const historyRequests = (ctx) => ctx.sent.filter((m) => m.type === 'history').length;

const values = [20, 20.5, 21, 22.5, 21.75];
let written; // the records of NUM written first (ts in µs)

const tests = [
  ['a numeric key: the uPlot chart is drawn with every point written', async (page, ctx) => {
    await page.goto(f.url('/'));
    await page.locator('#conn[data-state="online"]').waitFor();
    await open(page, NUM);
    await page.waitForFunction((n) => document.getElementById('chart').dataset.points === String(n), values.length);
    assert.equal(await page.locator('#chart .uplot canvas').count(), 1, 'one uPlot canvas');
    assert.equal(await page.locator('#chart-box').isVisible(), true);
    assert.equal(await page.locator('#chart-field-box').isVisible(), false, 'no field to pick for a number');
    const p = await plot(page);
    assert.deepEqual(p.ys, values);
    assert.deepEqual(p.xs, written.map((r) => r.ts / 1e6));
    assert.match(await page.locator('#chart-info').textContent(), /^5 points from /);
    await ctx.shot('number');
  }],

  ['the x range fits the data, not the hour; the y range fits the values', async (page) => {
    const p = await plot(page);
    const first = written[0].ts / 1e6, last = written[written.length - 1].ts / 1e6;
    assert.ok(Math.abs(p.x.min - first) < 0.001, `x starts at the first point: ${p.x.min} vs ${first}`);
    assert.ok(p.x.max >= last, 'x reaches the last point');
    assert.ok(p.x.max - p.x.min < last - first + 30, `x spans the data (${last - first} s): ${p.x.max - p.x.min} s`);
    assert.ok(p.y.min < 20 && p.y.min > 15, `y min padded below 20: ${p.y.min}`);
    assert.ok(p.y.max > 22.5 && p.y.max < 27, `y max padded above 22.5: ${p.y.max}`);
  }],

  ['the axis labels are in the page\'s time zone', async (page) => {
    // The page's zone (ICU may name it by its old alias, Asia/Calcutta).
    assert.equal(await page.evaluate(() => new Date().getTimezoneOffset()), -330);
    const p = await plot(page);
    assert.ok(p.labels.length >= 1, `x labels: ${p.labels}`);
    // Each tick's label is its time in Kolkata (hour:minute, with seconds
    // when ticks are seconds apart), the date under the first.
    p.splits.forEach((s, i) => {
      const line = p.labels[i].split('\n')[0];
      assert.ok(line === clock(s * 1000, true) || line === clock(s * 1000, false),
        `label ${JSON.stringify(p.labels[i])} is ${clock(s * 1000, true)} in ${ZONE}`);
    });
    // The hour:minute of the data's time in Kolkata is on the axis (the
    // minutes from the first point to the range's end, a few seconds), and
    // UTC's is not.
    const hm = new Set();
    for (let ms = written[0].ts / 1000; ms < p.x.max * 1000; ms += 60000) hm.add(clock(ms, false));
    hm.add(clock(p.x.max * 1000, false));
    assert.ok(p.labels.some((l) => hm.has(l.slice(0, 5))), `a label ${p.labels} shows ${[...hm]}`);
    const utc = new Intl.DateTimeFormat(LOCALE, { timeZone: 'UTC', hour: '2-digit', minute: '2-digit' })
      .format(new Date(written[0].ts / 1000));
    assert.ok(!p.labels.some((l) => l.startsWith(utc)), `no label in UTC (${utc}): ${p.labels}`);
  }],

  ['hovering over the plot shows the time and the value in the legend', async (page, ctx) => {
    const i = 3; // 22.5
    const at = await page.evaluate((x) => {
      const u = window.chart.u, r = u.over.getBoundingClientRect();
      return { x: r.left + u.valToPos(x, 'x'), y: r.top + u.valToPos(22.5, 'y') };
    }, written[i].ts / 1e6);
    await page.mouse.move(at.x, at.y);
    const legend = page.locator('#chart .u-legend .u-series');
    await page.waitForFunction(() => document.querySelectorAll('#chart .u-legend .u-series .u-value')[1].textContent === '22.5');
    assert.equal(await legend.nth(0).locator('.u-value').textContent(), timeText(written[i].ts / 1000));
    assert.equal(await legend.nth(1).locator('th').textContent(), 'value');
    await ctx.shot('hover');
    // Off the plot: the last point.
    await page.mouse.move(5, 5);
    await page.waitForFunction(() => document.querySelectorAll('#chart .u-legend .u-series .u-value')[1].textContent === '21.75');
    assert.equal(await legend.nth(0).locator('.u-value').textContent(), timeText(written.at(-1).ts / 1000));
  }],

  ['a deletion in the middle makes a gap', async (page, ctx) => {
    const r = await f.api(`/api/v1/keys/${NUM}`, { method: 'DELETE' });
    assert.equal(r.status, 200);
    await sleep(300);
    await write(NUM, [24, 23.5]);
    // Shown again with the history read afresh: the points, a null between.
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '7' &&
      !document.getElementById('chart-box').hidden);
    const p = await plot(page);
    const gap = p.ys.indexOf(null);
    assert.ok(gap > 0 && gap < p.ys.length - 1, `a null between the points: ${JSON.stringify(p.ys)}`);
    assert.deepEqual(p.ys.slice(0, gap), values);
    assert.deepEqual(p.ys.slice(gap + 1), [24, 23.5]);
    const deletion = (await history(NUM)).find((h) => h.deleted);
    assert.equal(p.xs[gap], deletion.ts / 1e6, 'the gap is at the deletion');
    assert.match(await page.locator('#chart-info').textContent(), /7 points .*; 1 gap/);
    // Hovering the gap says why (the window's shot: a full-page one resizes
    // the window, which moves the cursor off).
    await page.locator('#chart-box').scrollIntoViewIfNeeded();
    const at = await page.evaluate((x) => {
      const u = window.chart.u, r = u.over.getBoundingClientRect();
      return { x: r.left + u.valToPos(x, 'x'), y: r.top + r.height / 2 };
    }, p.xs[gap]);
    await page.mouse.move(at.x, at.y);
    await page.waitForFunction(() => document.querySelectorAll('#chart .u-legend .u-series .u-value')[1].textContent === 'deleted');
    await ctx.shot('gap', false);
    await page.mouse.move(5, 5);
  }],

  ['a write over HTTP extends the chart at once, without reading history again', async (page, ctx) => {
    const before = await plot(page);
    const reads = historyRequests(ctx);
    await page.evaluate(() => { window.chart.u.sameChart = true; });
    await f.put(NUM, 26.25);
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '8');
    const p = await plot(page);
    assert.equal(p.ys[p.ys.length - 1], 26.25);
    const ts = (await history(NUM)).at(-1).ts / 1e6;
    assert.equal(p.xs[p.xs.length - 1], ts);
    assert.ok(p.x.max >= ts && p.x.max >= before.x.max, 'the x range reaches the new point');
    assert.ok(p.y.max > 26.25, 'the y range takes the new value');
    assert.equal(historyRequests(ctx), reads, 'no history request');
    assert.equal(await page.evaluate(() => window.chart.u.sameChart), true, 'the same chart, extended');
    await ctx.shot('live');
  }],

  ['a drag zooms, kept while live points come in; a double click fits again', async (page) => {
    await page.locator('#chart-box').scrollIntoViewIfNeeded();
    const before = await plot(page);
    const box = await page.locator('#chart .u-over').boundingBox();
    await page.mouse.move(box.x + box.width * 0.1, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2, { steps: 5 });
    await page.mouse.up();
    let p = await plot(page);
    assert.ok(p.x.max - p.x.min < (before.x.max - before.x.min) * 0.6, 'zoomed in');
    const zoom = [p.x.min, p.x.max];
    await f.put(NUM, 25);
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '9');
    p = await plot(page);
    assert.deepEqual([p.x.min, p.x.max], zoom, 'the zoom stays');
    await page.mouse.dblclick(box.x + box.width / 2, box.y + box.height / 2);
    p = await plot(page);
    assert.equal(p.x.min, p.xs[0], 'fits the data again');
    assert.ok(p.x.max >= p.xs[p.xs.length - 1]);
    await page.mouse.move(5, 5);
  }],

  ['a numeric field of a JSON value is picked and the chart changes to it', async (page, ctx) => {
    const objs = [0, 1, 2, 3].map((i) => ({ temp: 20 + i, humidity: 40 + 2 * i, on: i % 2 === 0,
      name: 'kitchen', sensor: { battery: 90 - i } }));
    await write(OBJ, objs);
    await open(page, OBJ);
    await page.locator('#chart-field-box').waitFor();
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '4');
    const options = await page.locator('#chart-field option').allTextContents();
    assert.deepEqual(options, ['temp', 'humidity', 'on', 'sensor.battery'], 'the numeric fields, booleans too');
    assert.equal(await page.inputValue('#chart-field'), await page.locator('#chart-field option').first().getAttribute('value'));
    assert.deepEqual((await plot(page)).ys, [20, 21, 22, 23], 'the first field by default');
    await page.selectOption('#chart-field', { label: 'humidity' });
    await page.waitForFunction(() => window.chart.u.data[1][0] === 40);
    let p = await plot(page);
    assert.deepEqual(p.ys, [40, 42, 44, 46]);
    assert.ok(p.y.min < 40 && p.y.max > 46 && p.y.max < 60, `y fits humidity: ${p.y.min}..${p.y.max}`);
    assert.equal(await page.locator('#chart .u-legend .u-series').nth(1).locator('th').textContent(), 'humidity');
    await ctx.shot('field');
    // Read again (another range): the pick stays.
    const reads = historyRequests(ctx);
    await page.selectOption('#range', '86400');
    for (let i = 0; i < 100 && historyRequests(ctx) === reads; i++) await sleep(50);
    assert.ok(historyRequests(ctx) > reads, 'read again');
    await page.waitForFunction(() => /points/.test(document.getElementById('chart-info').textContent));
    assert.equal(await page.locator('#chart-field option:checked').textContent(), 'humidity');
    p = await plot(page);
    assert.deepEqual(p.ys, [40, 42, 44, 46]);
    // Live: the new object's humidity.
    await f.put(OBJ, { temp: 30, humidity: 55, on: true, name: 'kitchen', sensor: { battery: 80 } });
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '5');
    assert.deepEqual((await plot(page)).ys, [40, 42, 44, 46, 55]);
    await page.selectOption('#chart-field', { label: 'sensor.battery' });
    await page.waitForFunction(() => window.chart.u.data[1][0] === 90);
    assert.deepEqual((await plot(page)).ys, [90, 89, 88, 87, 80]);
  }],

  ['a text value that is a number is charted; a word is not', async (page) => {
    await write('home/chart/level', ['7', '8.5']);
    await f.put('home/chart/word', 'on', 'text/plain; charset=utf-8');
    await open(page, 'home/chart/level');
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '2');
    assert.deepEqual((await plot(page)).ys, [7, 8.5]);
    await open(page, 'home/chart/word');
    await page.waitForFunction(() => document.getElementById('value').textContent === 'on');
    assert.equal(await page.locator('#chart-box').isVisible(), false);
  }],

  ['the chart fits a narrow window', async (page, ctx) => {
    await open(page, OBJ);
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '5');
    await page.setViewportSize({ width: 420, height: 900 });
    await page.waitForFunction(() => window.chart.u.width <= 400);
    const w = await page.evaluate(() => ({
      page: document.documentElement.scrollWidth, chart: window.chart.u.root.getBoundingClientRect().right }));
    assert.ok(w.page <= 420, `no sideways scrolling: ${w.page}`);
    assert.ok(w.chart <= 420, `the chart inside the window: ${w.chart}`);
    await page.locator('#chart-box').scrollIntoViewIfNeeded();
    await ctx.shot('narrow', false);
    await page.setViewportSize({ width: 1200, height: 900 });
  }],
];

run(f, 'chart', tests, {
  contextOptions: { timezoneId: ZONE, locale: LOCALE },
  setup: async () => {
    await f.startAlmanac();
    await write(NUM, values);
    written = await history(NUM);
    assert.deepEqual(written.map((r) => r.value), values);
  },
});
