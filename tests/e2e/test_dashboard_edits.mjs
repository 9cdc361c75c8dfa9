// The dashboard's safe edits, honest state, efficiency and accessibility
// (issue 14, items 1, 4, 5 and 6), in Debian's Chromium driven by
// playwright-core against the real daemon bridged to a real mosquitto.
// What a user would check: Save stays disabled until the value is changed,
// and Save on an untouched binary, JSON or text key changes nothing (the rev,
// read over HTTP, stays); binary values are edited as hex or base64 or
// replaced from a file, keeping their content type; a transient publish is
// not shown as the stored value; an invalid filter's error stays; pattern
// delete answers beside its own button; favicon.ico is served. Live changes
// under an expanded folder send no `ls` (the frames the page sends are
// counted). The WAI-ARIA tree pattern, a keyboard walk with a visible
// cursor, AA contrast, one column in a narrow window. The daemon stopped:
// every view stale, edits disabled, a Retry button, the bridge in another
// colour; started again on the same port and data: fresh.
// Screenshots go to --out (the build's test output).
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { fixture, run, out, expand, open, text, waitText, contrastOf } from './lib.mjs';

const f = fixture('edits');
const { api, revOf } = f;
const put = (key, body, type) => f.put(key, body, type);
const raw = async (key) => { const r = await f.raw(key); return { ...r, bytes: [...r.bytes] }; };
const shot = (page, name, fullPage = true) => page.screenshot({ path: join(out, `edits-${name}.png`), fullPage });
const saveDisabled = (page) => page.locator('#save').isDisabled();
// A submit however it is made (Enter, a script): the page must refuse it.
const forceSubmit = (page) => page.evaluate(() => document.getElementById('edit').requestSubmit());

// Every WebSocket frame the page sends, as JSON (the runner's).
let sent = [];
const lsSince = (mark) => sent.slice(mark).filter((m) => m.type === 'ls');

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let connectedColour;

test('loads; favicon.ico is served, and no request fails', async (page, bad) => {
  await page.goto(f.url());
  await page.locator('#conn[data-state="online"]').waitFor();
  await page.locator('#bridge[data-state="connected"]').waitFor();
  connectedColour = await page.locator('#bridge').evaluate((e) => getComputedStyle(e).color);
  const r = await api('/favicon.ico');
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'image/x-icon');
  assert.equal((await r.arrayBuffer()).byteLength > 0, true);
  for (const js of ['main.js', 'tree.js', 'details.js']) {
    assert.match((await api(`/web/${js}`)).headers.get('content-type'), /^text\/javascript/);
  }
  await page.waitForTimeout(300);
  assert.deepEqual(bad, [], 'no failed requests');
});

test('Save is disabled until an edit; Save on an untouched binary, JSON or text key changes nothing', async (page) => {
  for (const [key, type] of [['edits/bin', 'application/x-e2e'], ['edits/json', 'application/json'], ['edits/text', 'text/csv']]) {
    await open(page, key);
    const before = await revOf(key);
    assert.equal(await saveDisabled(page), true, `${key}: Save disabled before an edit`);
    assert.equal(await page.inputValue('#edit-type'), type, `${key}: the stored content type`);
    await forceSubmit(page);
    await page.locator('#edit-value').press('End'); // moving the caret is no edit
    await page.waitForTimeout(300);
    assert.equal(await revOf(key), before, `${key}: the rev stays`);
    assert.equal(await text(page, 'edit-msg'), '');
    // An edit enables Save; undoing it disables it again.
    const was = await page.inputValue('#edit-value');
    await page.locator('#edit-value').pressSequentially('9');
    assert.equal(await saveDisabled(page), false, `${key}: Save enabled after an edit`);
    await page.fill('#edit-value', was);
    assert.equal(await saveDisabled(page), true, `${key}: Save disabled when the text is back`);
    await forceSubmit(page);
    await page.waitForTimeout(200);
    assert.equal(await revOf(key), before, `${key}: still the same rev`);
  }
  // The binary key: shown and edited as hex, or base64, the same bytes.
  await open(page, 'edits/bin');
  assert.equal(await page.inputValue('#edit-as'), 'hex');
  assert.equal(await page.inputValue('#edit-value'), '00 ff 10 41 fe');
  await page.selectOption('#edit-as', 'base64');
  assert.equal(await page.inputValue('#edit-value'), 'AP8QQf4=');
  assert.equal(await saveDisabled(page), true, 'another representation is no edit');
  await shot(page, 'untouched-binary');
});

test('binary edited as hex or replaced from a file keeps its content type; text and JSON keep theirs', async (page) => {
  await page.selectOption('#edit-as', 'hex');
  await page.fill('#edit-value', '00 ff 10 42');
  assert.equal(await saveDisabled(page), false);
  await shot(page, 'hex-edit');
  await page.click('#save');
  await waitText(page, 'edit-msg', /Saved at rev/);
  let got = await raw('edits/bin');
  assert.deepEqual(got.bytes, [0, 255, 16, 0x42]);
  assert.equal(got.type, 'application/x-e2e');
  await page.waitForFunction(() => document.getElementById('value').textContent === '00 ff 10 42'); // live
  assert.equal(await saveDisabled(page), true, 'nothing left to save');
  await page.setInputFiles('#edit-file', { name: 'blob.bin', mimeType: 'application/octet-stream', buffer: Buffer.from([1, 2, 3, 0, 200]) });
  await waitText(page, 'edit-msg', /Loaded blob\.bin \(5 bytes\)/);
  assert.equal(await saveDisabled(page), false);
  await page.click('#save');
  await waitText(page, 'edit-msg', /Saved at rev/);
  got = await raw('edits/bin');
  assert.deepEqual(got.bytes, [1, 2, 3, 0, 200]);
  assert.equal(got.type, 'application/x-e2e');
  await page.waitForFunction(() => document.getElementById('value').textContent === '01 02 03 00 c8');
  // Another content type only when the user picks it.
  await page.fill('#edit-type', 'application/x-other');
  await page.click('#save');
  await waitText(page, 'edit-msg', /Saved at rev/);
  assert.equal((await raw('edits/bin')).type, 'application/x-other');

  await open(page, 'edits/text');
  await page.fill('#edit-value', 'a,b\n3,4');
  await page.click('#save');
  await waitText(page, 'edit-msg', /Saved at rev/);
  got = await raw('edits/text');
  assert.equal(Buffer.from(got.bytes).toString(), 'a,b\n3,4');
  assert.equal(got.type, 'text/csv');

  await open(page, 'edits/json');
  await page.fill('#edit-value', '{"a":2}');
  await page.click('#save');
  await waitText(page, 'edit-msg', /Saved at rev/);
  got = await raw('edits/json');
  assert.deepEqual(JSON.parse(Buffer.from(got.bytes).toString()), { a: 2 });
  assert.equal(got.type, 'application/json');
  await shot(page, 'saved');
});

test('a transient publish is not shown as the stored value', async (page) => {
  await open(page, 'edits/text');
  const rev = await text(page, 'm-rev');
  const r = await api('/api/v1/publish/edits/text', { method: 'POST', body: 'fleeting', headers: { 'Content-Type': 'text/plain' } });
  assert.equal(r.status, 202);
  await page.locator('#transient').waitFor();
  assert.match(await text(page, 'transient-text'), /not stored: fleeting/);
  assert.equal(await text(page, 'value'), 'a,b\n3,4', 'the stored value stays');
  assert.equal(await text(page, 'm-rev'), rev);
  const val = page.locator('.node[data-path="edits/text"] .val');
  assert.equal(await val.textContent(), '⇢ fleeting');
  assert.match(await val.getAttribute('class'), /transient/);
  await shot(page, 'transient');
});

test('an invalid filter\'s error stays, with no earlier matches under it', async (page) => {
  await page.fill('#filter', 'edits/+');
  await page.click('#filter-form button');
  await waitText(page, 'tree-count', /3 keys match/);
  await page.fill('#filter', 'edits/#/x');
  await page.click('#filter-form button');
  await waitText(page, 'filter-msg', /\S/);
  await put('edits/other', '1', 'application/json'); // live traffic meanwhile
  await page.waitForTimeout(500);
  assert.match(await text(page, 'filter-msg'), /^No matches shown: \S/);
  assert.equal(await page.locator('#filter').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.locator('.node:not([hidden])').count(), 0);
  await shot(page, 'bad-filter');
  await page.fill('#filter', '');
  await page.click('#filter-form button');
  assert.equal(await text(page, 'filter-msg'), '');
  await page.locator('.node[data-path="edits"]').waitFor();
});

test('pattern delete answers beside its own button', async (page) => {
  await put('pd/a', '1', 'application/json');
  await put('pd/b', '2', 'application/json');
  await page.click('.pattern-delete summary');
  await page.fill('#pdelete-pattern', 'nothing/#');
  await page.click('#pdelete button');
  await waitText(page, 'pdelete-msg', /No key matches nothing\/#/);
  await page.fill('#pdelete-pattern', 'pd/#');
  await page.click('#pdelete button');
  await page.click('#confirm-ok');
  await waitText(page, 'pdelete-msg', /Deleted 2 keys/);
  const [btn, msg] = await Promise.all(['#pdelete button', '#pdelete-msg'].map((s) => page.locator(s).boundingBox()));
  assert.ok(Math.abs(btn.y - msg.y) < 40 && msg.x >= btn.x, `beside: ${JSON.stringify({ btn, msg })}`);
  assert.equal(await text(page, 'edit-msg'), '', 'nothing under the key\'s Save');
  assert.equal((await api('/api/v1/keys/pd/a')).status, 404);
  // The folder goes from the tree too (never listed: one ls tells).
  await page.waitForFunction(() => !document.querySelector('.node[data-path="pd"]:not([hidden])'));
  await shot(page, 'pattern-delete');
  await page.click('.pattern-delete summary');
});

test('16 changes a second under an expanded folder for 3 s send no ls', async (page) => {
  const ops = [];
  for (let i = 0; i < 8; i++) ops.push({ op: 'set', key: `load/k${i}`, value: i });
  assert.equal((await api('/api/v1/batch', { method: 'POST', body: JSON.stringify({ ops }), headers: { 'Content-Type': 'application/json' } })).status, 200);
  await page.locator('.node[data-path="load"]').waitFor();
  const mark = sent.length;
  await expand(page, 'load/k0');
  assert.equal(lsSince(mark).length, 1, 'one ls for the expansion');
  let n = 0;
  const writes = [];
  const t0 = Date.now();
  while (Date.now() - t0 < 3000) {
    const i = n++;
    // Mostly changes of listed keys; every fourth a new key, one a new folder.
    const key = i === 5 ? 'load/sub/deep' : i % 4 === 3 ? `load/new${i}` : `load/k${i % 8}`;
    writes.push(put(key, String(1000 + i), 'application/json'));
    await new Promise((r) => setTimeout(r, 1000 / 16));
  }
  await Promise.all(writes);
  await page.waitForTimeout(500);
  const ls = lsSince(mark);
  console.log(`     ${n} changes in 3 s; the page sent ${sent.length - mark} frames, ${ls.length} of them ls`);
  assert.equal(ls.length, 1, `ls frames: ${JSON.stringify(ls)}`);
  // The rows changed in place, and the new ones are there.
  const last = n - 1 - ((n - 1) % 4 === 3 ? 1 : 0);
  await page.waitForFunction(([p, v]) => document.querySelector(`.node[data-path="${p}"] .val`)?.textContent === v,
    [`load/k${last % 8}`, String(1000 + last)]);
  await page.locator('.node[data-path="load/new3"]').waitFor();
  assert.equal(await page.locator('.node[data-path="load/sub"]').getAttribute('aria-expanded'), 'false');
  await shot(page, 'live-in-place');
  const mark2 = sent.length;
  await expand(page, 'load/sub/deep');
  assert.equal(lsSince(mark2).length, 1, 'one ls for the new folder\'s expansion');
  await page.locator('.node[data-path="load"]').click(); // closed again
});

test('the WAI-ARIA tree: roles, states, a keyboard walk with a visible cursor, names, contrast', async (page) => {
  const edits = page.locator('.node[data-path="edits"]');
  if ((await edits.getAttribute('aria-expanded')) === 'true') await edits.click();
  await page.waitForFunction(() => document.querySelector('.node[data-path="edits"]').getAttribute('aria-expanded') === 'false');
  assert.equal(await page.locator('#tree').getAttribute('role'), 'tree');
  assert.equal(await page.locator('#filter').getAttribute('role'), 'searchbox');
  const items = await page.locator('.node:not([hidden])').evaluateAll((els) => els.map((e) => ({
    role: e.getAttribute('role'), level: e.getAttribute('aria-level'), sel: e.getAttribute('aria-selected'),
    exp: e.getAttribute('aria-expanded'), pos: e.getAttribute('aria-posinset'), size: e.getAttribute('aria-setsize'),
    path: e.dataset.path })));
  assert.ok(items.length > 3);
  for (const it of items) {
    assert.equal(it.role, 'treeitem');
    assert.ok(Number(it.level) >= 1 && /^(true|false)$/.test(it.sel) && Number(it.pos) >= 1 && Number(it.size) >= Number(it.pos), JSON.stringify(it));
  }
  assert.equal(items.find((i) => i.path === 'edits').exp, 'false');
  // Every button a user can reach has a name.
  const unnamed = await page.locator('button').evaluateAll((els) =>
    els.filter((b) => b.offsetParent !== null && !(b.getAttribute('aria-label') || b.textContent).trim()).map((b) => b.outerHTML));
  assert.deepEqual(unnamed, []);
  // The keyboard: to "edits", open it, down to its first key, select it.
  await page.locator('#tree').focus();
  await page.keyboard.press('Home');
  for (let i = 0; i < 10; i++) {
    const id = await page.locator('#tree').getAttribute('aria-activedescendant');
    if ((await page.locator(`#${id}`).getAttribute('data-path')) === 'edits') break;
    await page.keyboard.press('ArrowDown');
  }
  const cursor = () => page.locator('#tree').getAttribute('aria-activedescendant').then((id) => page.locator(`#${id}`));
  let row = await cursor();
  assert.equal(await row.getAttribute('data-path'), 'edits');
  const ring = await row.evaluate((e) => { const s = getComputedStyle(e); return { style: s.outlineStyle, width: parseFloat(s.outlineWidth) }; });
  assert.ok(ring.style !== 'none' && ring.width >= 2, `a visible cursor: ${JSON.stringify(ring)}`);
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction(() => document.querySelector('.node[data-path="edits"]').getAttribute('aria-expanded') === 'true');
  await page.keyboard.press('ArrowDown');
  row = await cursor();
  assert.equal(await row.getAttribute('data-path'), 'edits/bin');
  assert.equal(await row.getAttribute('aria-level'), '2');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('.node[data-path="edits/bin"]').getAttribute('aria-selected') === 'true');
  assert.equal(await text(page, 'key-title'), 'edits/bin');
  await shot(page, 'keyboard');
  await page.keyboard.press('ArrowLeft'); // to the folder
  assert.equal(await (await cursor()).getAttribute('data-path'), 'edits');
  await page.keyboard.press('ArrowLeft'); // closes it
  await page.waitForFunction(() => document.querySelector('.node[data-path="edits"]').getAttribute('aria-expanded') === 'false');
  for (const sel of ['#conn', '#bridge', '.muted', '.node .name', '.node .val', '#m-rev', '.meta dt', 'label', '#publish', '#delete']) {
    const c = await page.evaluate(contrastOf, sel);
    assert.ok(c === null || c >= 4.5, `contrast of ${sel}: ${c}`);
  }
});

test('stopped: every view stale, edits disabled, Retry; started again: fresh', async (page) => {
  await open(page, 'edits/text');
  await f.stopAlmanac();
  await page.locator('#panes[data-stale="true"]').waitFor();
  for (const s of ['#stale-bar', '.browse .stale-tag', '.details .stale-tag', '#retry']) {
    assert.equal(await page.locator(s).isVisible(), true, `${s} shown`);
  }
  const disabled = (sel) => page.locator(sel).evaluate((e) => e.matches(':disabled'));
  assert.equal(await saveDisabled(page), true);
  for (const sel of ['#edit-fields', '#pdelete-fields', '#edit-value', '#edit-type', '#publish', '#delete', '#pdelete-pattern']) {
    assert.equal(await disabled(sel), true, `${sel} disabled`);
  }
  assert.equal(await page.locator('#bridge').getAttribute('data-state'), 'unknown');
  assert.notEqual(await page.locator('#bridge').evaluate((e) => getComputedStyle(e).color), connectedColour);
  for (const sel of ['#stale-text', '.details .stale-tag', '#bridge']) {
    const c = await page.evaluate(contrastOf, sel);
    assert.ok(c === null || c >= 4.5, `contrast of ${sel}: ${c}`);
  }
  await shot(page, 'stale');
  // Another key, while disconnected: nothing of the old one is left as if current.
  await page.locator('.node[data-path="edits/json"]').click();
  await waitText(page, 'details-msg', /Not connected: edits\/json cannot be read/);
  assert.equal(await page.locator('#value').isVisible(), false);
  assert.equal(await page.locator('#meta').isVisible(), false);
  await shot(page, 'stale-other-key');
  await f.startAlmanac();
  await put('edits/json', '{"a":3}', 'application/json'); // while the page is away
  await put('edits/text', 'fresh', 'text/csv');
  // Retry, unless the page's own backoff was quicker.
  const retried = await page.locator('#retry').click({ timeout: 1000 }).then(() => true, () => false);
  console.log(`     reconnected ${retried ? 'by Retry' : 'by the backoff'}`);
  await page.locator('#panes[data-stale="false"]').waitFor();
  await page.waitForFunction(() => document.getElementById('value').textContent === '{\n  "a": 3\n}');
  await page.waitForFunction(() => document.querySelector('.node[data-path="edits/text"] .val').textContent === 'fresh');
  assert.equal(await page.locator('#stale-bar').isVisible(), false);
  assert.equal(await disabled('#edit-value'), false);
  await page.locator('#bridge[data-state="connected"]').waitFor();
  await shot(page, 'fresh');
});

test('a narrow window: one column, the details scrolled into view on selection', async (page) => {
  await page.setViewportSize({ width: 420, height: 700 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.locator('.node[data-path="edits/bin"]').click();
  await waitText(page, 'key-title', /^edits\/bin$/);
  const [browse, details] = await Promise.all(['.browse', '#details'].map((s) => page.locator(s).boundingBox()));
  assert.ok(details.y >= browse.y + browse.height - 2, 'one column: the details below the tree');
  await page.waitForFunction(() => { // in view: at the top, or as far up as the page scrolls
    const top = document.getElementById('details').getBoundingClientRect().top;
    const end = window.scrollY + innerHeight >= document.documentElement.scrollHeight - 2;
    return top > -5 && (top < 50 || (end && top < innerHeight / 2));
  });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 420, `no sideways scrolling: ${width}`);
  await shot(page, 'narrow', false);
});

await run(f, 'edits', tests.map(({ name, fn }) => [name, (page, ctx) => {
  sent = ctx.sent;
  return fn(page, ctx.bad);
}]), {
  setup: async () => {
    await f.startBroker();
    await f.startAlmanac();
    await put('edits/bin', Buffer.from([0, 255, 16, 0x41, 0xfe]), 'application/x-e2e');
    await put('edits/json', '{"a":1,"b":[1,2]}', 'application/json');
    await put('edits/text', 'a,b\n1,2', 'text/csv');
  },
});
