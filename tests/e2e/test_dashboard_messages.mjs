// The dashboard's per-key message list (issue 14, MQTT Explorer's "recent
// messages with a diff"), in Debian's Chromium driven by playwright-core
// against the real daemon bridged to a real mosquitto. What a user checks:
// after several PUTs of JSON objects, opening the key lists them newest
// first with their revs, each with a diff naming exactly the fields changed,
// added and removed; a change through MQTT appears on top without
// reselecting, with its diff and origin mqtt; a transient publish is marked
// so, a deletion as deleted; "Load older" pages back past 50; a busy key
// keeps at most 200; events that arrive while the history request is in
// flight (its reply held back) and a reconnection after the daemon was
// restarted add nothing twice; a text key shows no JSON diff; history that
// is not kept or is off is said so. Screenshots go to --out.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { fixture, run, open, expand, waitText, sleep, out, contrastOf } from './lib.mjs';

const f = fixture('messages');
// MQTT in only: with `both #` every PUT also goes out and its echo comes
// back in as a change of origin mqtt (bridge.c invariant 3), so a key
// written quickly would list more changes than were made. This test is of
// the list; the MQTT change it makes comes in all the same.
const serve = ['--bridge_map', 'in msg/#'];
const revs = {}; // key -> the revs of its PUTs, oldest first

const v1 = { state: 'ON', battery: 99, old_field: 1, nested: { a: 1, b: [1, 2] } };
const v2 = { state: 'OFF', battery: 99, old_field: 1, nested: { a: 1, b: [1, 2] } };
const v3 = { state: 'OFF', battery: 97, nested: { a: 2, b: [1, 2, 3] }, 'odd key': true };
const v4 = { 'odd key': true, nested: { b: [1, 2, 3], a: 2 }, battery: 97, state: 'OFF' }; // v3, keys reordered

// The list as a user reads it: per item its rev, kind, the head's text, the
// diff lines (sign, path, values, without the screen readers' words) or
// its note, and the value's one line.
const list = (page) => page.locator('#messages > li').evaluateAll((lis) => lis.map((li) => {
  const seen = (n) => [...n.childNodes].filter((c) => !(c.classList && c.classList.contains('vh')))
    .map((c) => (c.nodeType === 1 ? seen(c) : c.textContent)).join('');
  const diff = [...li.querySelectorAll('.diff li')].map((l) => {
    const sign = l.querySelector('.d-sign');
    return sign ? `${sign.textContent} ${seen(l).slice(sign.textContent.length)}` : seen(l);
  });
  const note = li.querySelector('.diff-note');
  const value = li.querySelector('.m-value');
  return { rev: Number(li.dataset.rev), kind: li.dataset.kind, head: li.querySelector('.m-head').textContent,
    diff, note: note ? note.textContent : null, value: value ? (value.querySelector('summary') || value).textContent : null,
    time: li.querySelector('time').firstChild.textContent };
}));
const stored = (items) => items.filter((i) => i.kind !== 'transient');

// No message twice: stored revs strictly descending, transient ones unique.
function once(items, what) {
  const r = stored(items).map((i) => i.rev);
  for (let i = 1; i < r.length; i++) assert.ok(r[i] < r[i - 1], `${what}: revs strictly descending: ${r.join(' ')}`);
  const t = items.filter((i) => i.kind === 'transient').map((i) => i.head + i.value);
  assert.equal(new Set(t).size, t.length, `${what}: each transient publish once`);
}

// Waits until the top item has `rev`, is of `kind`, or its text matches `re`.
const waitTop = (page, { rev, kind, re }) => page.waitForFunction(([r, k, src]) => {
  const li = document.querySelector('#messages > li');
  return !!li && (r === undefined || li.dataset.rev === String(r)) && (k === undefined || li.dataset.kind === k) &&
    (src === undefined || new RegExp(src).test(li.textContent));
}, [rev, kind, re && re.source]);

// The page's WebSocket goes through here. While `hold.on`, the newest-page
// history request of `hold.key` (`hold.what` 'request') or its reply
// ('reply') is held back until release(): changes made meanwhile reach the
// page as events first, and are in the reply too ('request') or not.
const hold = { on: false, key: '', what: 'request', ids: new Set(), held: [] };
function release() {
  hold.on = false;
  for (const [to, m] of hold.held.splice(0)) to.send(m);
}

// The whole page, and the list alone (messages-NAME-list.png) to look at closely.
async function shot(page, ctx, name) {
  await ctx.shot(name);
  if (await page.locator('#messages-box').isVisible()) {
    await page.locator('#messages-box').screenshot({ path: join(out, `messages-${name}-list.png`) });
  }
}

const put = (key, v, type) => f.put(key, v, type).then((rev) => { (revs[key] ||= []).push(rev); return rev; });

const tests = [
  ['loads, connected to the bridge', async (page) => {
    await page.routeWebSocket(/\/api\/v1\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => {
        const q = JSON.parse(m);
        if (hold.on && q.type === 'history' && q.pattern === hold.key && !q.after && !q.every && !q.start) {
          if (hold.what === 'request') { hold.held.push([server, m]); return; }
          hold.ids.add(q.id);
        }
        server.send(m);
      });
      server.onMessage((m) => {
        const r = JSON.parse(m);
        if (r.type === 'records' && hold.ids.has(r.id)) {
          hold.ids.delete(r.id);
          if (hold.on) { hold.held.push([ws, m]); return; }
        }
        ws.send(m);
      });
    });
    await page.goto(f.url('/'));
    await page.locator('#conn[data-state="online"]').waitFor();
    await page.locator('#bridge[data-state="connected"]').waitFor();
    assert.equal(await page.locator('#messages-box').isVisible(), false, 'no list before a key is picked');
  }],

  ['PUTs of JSON objects: newest first, their revs, a diff naming exactly what changed', async (page, ctx) => {
    await open(page, 'msg/dev');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 4);
    const items = await list(page);
    assert.deepEqual(items.map((i) => i.rev), [...revs['msg/dev']].reverse(), 'newest first, the PUTs\' revs');
    assert.deepEqual(items.map((i) => i.kind), ['stored', 'stored', 'stored', 'stored']);
    for (const i of items) {
      assert.match(i.head, /origin http/);
      assert.match(i.head, new RegExp(`rev ${i.rev}\\b`));
    }
    assert.equal(items[0].note, 'no change', 'the same object, keys reordered');
    assert.deepEqual(items[0].diff, []);
    assert.deepEqual(items[1].diff, [
      '~ battery: 99 → 97',
      '~ nested.a: 1 → 2',
      '+ nested.b[2]: 3',
      '+ ["odd key"]: true',
      '− old_field (was 1)',
    ]);
    assert.deepEqual(items[2].diff, ['~ state: "ON" → "OFF"']);
    assert.deepEqual(items[3].diff, [], 'the oldest has nothing to be compared with');
    assert.equal(items[3].note, null);
    // One time format on the page (util.js timeText): as the header's.
    const fmt = await page.evaluate((us) => new Date(us / 1000).toLocaleString(undefined, {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }), Date.now() * 1000);
    assert.equal(items[0].time.length, fmt.length, `time as timeText writes it: ${items[0].time} / ${fmt}`);
    // Screen readers hear words, not only signs and colours.
    const spoken = await page.locator('#messages > li').nth(1).locator('.diff').textContent();
    for (const w of ['changed battery', 'added nested.b[2]', 'removed old_field', ' to 97']) assert.ok(spoken.includes(w), `"${w}" in: ${spoken}`);
    assert.equal(await page.locator('#messages > li').nth(1).locator('.diff').getAttribute('aria-label'), '5 changes from the message before');
    // The value: one line, opened to all of it, pretty-printed.
    assert.equal(items[0].value.startsWith('{"'), true, items[0].value);
    const first = page.locator('#messages > li').first().locator('details.m-value');
    await first.locator('summary').click();
    assert.equal(await first.locator('pre').textContent(), JSON.stringify(v4, null, 2));
    assert.deepEqual(ctx.sent.filter((m) => m.type === 'history' && m.pattern === 'msg/dev' && !m.every && !m.start)
      .map(({ order, limit }) => ({ order, limit })), [{ order: 'desc', limit: 50 }]);
    for (const sel of ['.m-head', '.m-rev', '.d-added', '.d-removed', '.d-changed', '.diff-note', '.m-value', '#messages-count']) {
      const c = await page.evaluate(contrastOf, `#messages ${sel}, #messages-box ${sel}`);
      assert.ok(c === null || c >= 4.5, `contrast of ${sel}: ${c}`);
    }
    await shot(page, ctx, 'list');
    await first.locator('summary').click();
  }],

  ['a change through MQTT, a transient publish and a deletion appear on top at once', async (page, ctx) => {
    const before = (await list(page)).length;
    const mq = { ...v4, state: 'ON', battery: 96 };
    const r = spawnSync('mosquitto_pub', ['-p', String(f.mqttPort), '-t', 'msg/dev', '-r', '-q', '1', '-m', JSON.stringify(mq)]);
    assert.equal(r.status, 0, String(r.stderr));
    await waitTop(page, { re: /origin mqtt/ });
    let items = await list(page);
    assert.equal(items.length, before + 1);
    assert.equal(items[0].rev, await f.revOf('msg/dev'));
    assert.match(items[0].head, /origin mqtt/);
    assert.deepEqual(items[0].diff, ['~ battery: 97 → 96', '~ state: "OFF" → "ON"']);
    assert.equal(await page.locator('#key-title').textContent(), 'msg/dev', 'without reselecting');

    const p = await f.api('/api/v1/publish/msg/dev', { method: 'POST', body: JSON.stringify({ ...mq, state: 'BLINK' }),
      headers: { 'Content-Type': 'application/json' } });
    assert.equal(p.status, 202);
    await waitTop(page, { kind: 'transient' });
    items = await list(page);
    assert.match(items[0].head, /transient, not stored/);
    assert.doesNotMatch(items[0].head, /rev \d/, 'no rev of its own');
    assert.deepEqual(items[0].diff, ['~ state: "ON" → "BLINK"']);

    assert.equal((await f.api('/api/v1/keys/msg/dev', { method: 'DELETE' })).status, 200);
    await waitTop(page, { kind: 'deleted' });
    items = await list(page);
    assert.match(items[0].head, /deleted/);
    assert.equal(items[0].rev, (await (await f.api('/api/v1/history/msg/dev?order=desc&limit=1')).json()).records[0].rev);
    assert.equal(items[0].value, null, 'a deletion has no value');
    assert.deepEqual(items[0].diff, []);
    // Set again: a value after a deletion has nothing to be compared with.
    await put('msg/dev', { state: 'NEW' });
    await waitTop(page, { kind: 'stored' });
    items = await list(page);
    assert.deepEqual(items[0].diff, []);
    assert.equal(items[0].note, 'set again after the deletion');
    assert.equal(items.length, before + 4);
    once(items, 'live');
    await shot(page, ctx, 'live');
  }],

  ['events while the history request is in flight: none lost, none twice', async (page, ctx) => {
    // Held back, the request is answered after the changes (the reply has
    // them too); the reply held back, before them (it has not).
    for (const [what, state] of [['request', 'RACE'], ['reply', 'LATE']]) {
      await open(page, 'msg/many'); // another key, so msg/dev is asked for afresh
      Object.assign(hold, { on: true, key: 'msg/dev', what });
      await (await expand(page, 'msg/dev')).click();
      await page.waitForFunction(() => document.getElementById('key-title').textContent === 'msg/dev');
      for (let i = 0; i < 50 && !hold.held.length; i++) await sleep(50);
      assert.equal(hold.held.length, 1, `the ${what} is held back`);
      const a = await put('msg/dev', { state, n: 1 });
      const b = await put('msg/dev', { state, n: 2 });
      const t = await f.api('/api/v1/publish/msg/dev', { method: 'POST', body: '{"state":"FLEETING"}', headers: { 'Content-Type': 'application/json' } });
      assert.equal(t.status, 202);
      await page.waitForFunction(() => document.querySelectorAll('#messages > li').length >= 3);
      let items = await list(page);
      assert.deepEqual(items.map((i) => i.kind), ['transient', 'stored', 'stored'], `${what}: the live ones, shown at once`);
      release();
      const all = (await (await f.api('/api/v1/history/msg/dev?order=desc&limit=50')).json()).records.map((r) => r.rev);
      await page.waitForFunction((n) => document.querySelectorAll('#messages > li').length >= n, all.length + 1);
      await sleep(300);
      items = await list(page);
      once(items, what);
      assert.equal(items.length, all.length + 1, `${what}: every change of history and the transient publish`);
      assert.deepEqual(stored(items).map((i) => i.rev), all, `${what}: every change of history, once`);
      assert.equal(items[0].kind, 'transient');
      assert.deepEqual([items[1].rev, items[2].rev], [b, a]);
      assert.deepEqual(items[1].diff, ['~ n: 1 → 2']);
      assert.deepEqual(items[0].diff, [`~ state: "${state}" → "FLEETING"`, '− n (was 2)']);
      if (what === 'request') await shot(page, ctx, 'race');
    }
  }],

  ['"Load older" pages back past 50, and a busy key keeps at most 200', async (page, ctx) => {
    await open(page, 'msg/many');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 50);
    const want = [...revs['msg/many']].reverse();
    let items = await list(page);
    assert.deepEqual(items.map((i) => i.rev), want.slice(0, 50));
    assert.deepEqual(items[0].diff, ['~ value: 119 → 120']);
    assert.deepEqual(items[49].diff, [], 'the oldest listed: nothing below it yet');
    assert.match(await page.locator('#messages-count').textContent(), /^50 messages, newest first/);
    await page.click('#messages-older');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 100);
    items = await list(page);
    assert.deepEqual(items.map((i) => i.rev), want.slice(0, 100));
    assert.deepEqual(items[49].diff, ['~ value: 70 → 71'], 'diffed once the one below came');
    await page.click('#messages-older');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 120);
    items = await list(page);
    assert.deepEqual(items.map((i) => i.rev), want);
    await page.locator('#messages-older').waitFor({ state: 'hidden' });
    once(items, 'paged');
    const sent = ctx.sent.filter((m) => m.type === 'history' && m.pattern === 'msg/many' && m.after);
    assert.deepEqual(sent.map((m) => m.after), [want[49], want[99]], 'the cursor: the oldest listed');
    await page.locator('#messages > li').nth(50).scrollIntoViewIfNeeded();
    await shot(page, ctx, 'older');

    // A busy key: live changes beyond 200 drop the oldest; Load older is back.
    await open(page, 'msg/busy');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 1);
    for (let i = 1; i <= 230; i++) await put('msg/busy', { n: i });
    await waitTop(page, { rev: revs['msg/busy'].at(-1) });
    items = await list(page);
    assert.equal(items.length, 200, 'capped');
    assert.deepEqual(items.map((i) => i.rev), [...revs['msg/busy']].reverse().slice(0, 200));
    assert.equal(await page.locator('#messages-older').isVisible(), true);
    assert.match(await page.locator('#messages-count').textContent(), /^200 messages, newest first; older ones are kept in history/);
    await shot(page, ctx, 'capped');
  }],

  ['a text key shows no JSON diff; a binary one its size and bytes', async (page, ctx) => {
    await open(page, 'msg/text');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 4);
    let items = await list(page);
    assert.deepEqual(items.map((i) => i.rev), [...revs['msg/text']].reverse());
    assert.equal(await page.locator('#messages .diff').count(), 0, 'no JSON diff');
    assert.deepEqual(items.map((i) => i.note), ['no change', 'changed', 'changed', null]);
    assert.equal(items[0].value, 'hello there');
    assert.match(items[3].value, /^line one …/, 'more lines: the first, then more');
    const open2 = page.locator('#messages > li').nth(3).locator('details.m-value');
    await open2.locator('summary').click();
    assert.equal(await open2.locator('pre').textContent(), 'line one\nline two');
    await shot(page, ctx, 'text');

    await open(page, 'msg/bin');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 2);
    items = await list(page);
    assert.match(items[0].value, /^‹20 bytes› 00 ff 10 41 00 01 02 03 04 05 06 07 08 09 0a 0b …/);
    assert.equal(items[1].value.trim(), '‹4 bytes› 00 ff 10 41');
    assert.equal(items[0].note, 'changed');
    await shot(page, ctx, 'binary');
  }],

  ['restarted daemon: the page reconnects by itself, and nothing appears twice', async (page, ctx) => {
    // msg/re: msg/dev is retained on the broker, which sets it again when
    // the bridge reconnects.
    await open(page, 'msg/re');
    await page.waitForFunction(() => document.querySelectorAll('#messages > li').length === 2);
    assert.equal((await f.api('/api/v1/publish/msg/re', { method: 'POST', body: '{"state":"PING"}',
      headers: { 'Content-Type': 'application/json' } })).status, 202);
    await waitTop(page, { kind: 'transient' });
    const before = await list(page);
    await f.stopAlmanac();
    await page.locator('#panes[data-stale="true"]').waitFor();
    await shot(page, ctx, 'stale');
    await f.startAlmanac(serve);
    // Changes the page missed: replayed with `since` and in the history
    // read again after the reconnection.
    const a = await put('msg/re', { state: 'AWAY', n: 1 });
    const b = await put('msg/re', { state: 'AWAY', n: 2 });
    await page.locator('#panes[data-stale="false"]').waitFor({ timeout: 20000 });
    await waitTop(page, { rev: b });
    await sleep(1000); // any late reply or replay
    const c = await put('msg/re', { state: 'BACK' });
    await waitTop(page, { rev: c });
    await sleep(300);
    const items = await list(page);
    once(items, 'reconnected');
    assert.equal(items.length, before.length + 3, 'three new, none twice');
    assert.deepEqual(items.slice(0, 3).map((i) => i.rev), [c, b, a]);
    assert.deepEqual(items[1].diff, ['~ n: 1 → 2']);
    assert.deepEqual(items[0].diff, ['~ state: "AWAY" → "BACK"', '− n (was 2)']);
    assert.equal(items.filter((i) => i.kind === 'transient').length, 1, 'the transient one seen before stays, once');
    assert.deepEqual(stored(items).map((i) => i.rev), [c, b, a, ...revs['msg/re'].slice(0, 2).reverse()]);
    await shot(page, ctx, 'reconnected');
  }],

  ['a narrow window: the list in one column, no sideways scrolling', async (page, ctx) => {
    await page.setViewportSize({ width: 420, height: 800 });
    await page.locator('#messages-box').scrollIntoViewIfNeeded();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 420, `no sideways scrolling: ${width}`);
    await shot(page, ctx, 'narrow');
    await page.setViewportSize({ width: 1200, height: 900 });
  }],

  ['history not kept for a key, or off: said in the list\'s place', async (page, ctx) => {
    await f.stopAlmanac();
    await f.startAlmanac([...serve, '--history_keys', 'msg/#']);
    await page.locator('#panes[data-stale="false"]').waitFor({ timeout: 20000 });
    await f.put('plain/x', { a: 1 });
    await open(page, 'plain/x');
    await waitText(page, 'messages-note', /History keeps no change of plain\/x/);
    assert.equal(await page.locator('#messages').isVisible(), false, 'no empty list');
    await f.put('plain/x', { a: 2 }); // live changes are listed all the same
    await waitTop(page, { kind: 'stored' });
    await shot(page, ctx, 'not-kept');

    await f.stopAlmanac();
    await f.startAlmanac([...serve, '--history_retention', '0']);
    await page.locator('#panes[data-stale="false"]').waitFor({ timeout: 20000 });
    await open(page, 'msg/dev');
    await waitText(page, 'messages-note', /No history is kept on this server: history is off/);
    assert.equal(await page.locator('#messages').isVisible(), false);
    assert.equal(await page.locator('#messages-older').isVisible(), false);
    await shot(page, ctx, 'history-off');
  }],
];

await run(f, 'messages', tests, {
  limitMs: 180000,
  setup: async () => {
    await f.startBroker();
    await f.startAlmanac(serve);
    for (const v of [v1, v2, v3, v4]) await put('msg/dev', v);
    for (let i = 1; i <= 120; i++) await put('msg/many', i);
    await put('msg/busy', { n: 0 });
    for (const s of ['A', 'B']) await put('msg/re', { state: s });
    for (const t of ['line one\nline two', 'hello world', 'hello there', 'hello there']) await put('msg/text', t, 'text/plain');
    await put('msg/bin', Buffer.from([0, 255, 16, 0x41]), 'application/octet-stream');
    await put('msg/bin', Buffer.from([0, 255, 16, 0x41, ...Array.from({ length: 16 }, (_, i) => i)]), 'application/octet-stream');
  },
});
