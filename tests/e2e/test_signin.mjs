// The dashboard's sign-in, in Debian's Chromium driven by playwright-core,
// against the real daemon started with ALMANAC_ADMIN_TOKEN (so anonymous
// may do nothing). Tokens are made with POST /api/v1/tokens as an admin
// would: alice reads and writes home/#, reader only reads it; keys home/a
// and work/b are set with the admin token. What a user would check: the page
// asks for a token and shows no key; a wrong token is refused in the form;
// alice sees home/ and never work/, her name in the header; a reload of the
// tab keeps her signed in (the token goes first on the new connection), a
// new tab or browser asks again; no token in localStorage, cookies or the
// URL; the chart's and header's HTTP requests carry it; a save under home/
// works, a forbidden action says so where it was made; revoking alice's
// token brings the form back with a revoked-or-expired message; signing out
// asks again. Then a server with anonymous_read: keys without a token, a
// "Sign in" link, and a save anonymous may not make brings up the form.
// Screenshots go to --out (the build's test output).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { binary, out, fixture, run, expand } from './lib.mjs';

// Two daemons of its own (with an admin token; the second with
// anonymous_read), in the fixture's folder, stopped by the runner.
const f = fixture('signin');
const { dir, procs } = f;
const ADMIN = 'admin-' + randomBytes(16).toString('hex');

let seq = 0;
function startAlmanac(extra = []) {
  return new Promise((resolve, reject) => {
    let log = '';
    const p = spawn(binary, ['serve', '--http_listen', '127.0.0.1:0', '--tcp_listen', 'off',
      '--data_dir', join(dir, `data${seq++}`), ...extra], { env: { ...process.env, ALMANAC_ADMIN_TOKEN: ADMIN } });
    procs.push(p);
    p.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (m && /ready/.test(log)) resolve(Number(m[1]));
    });
    p.on('exit', (code) => reject(new Error(`almanac exited ${code}:\n${log}`)));
  });
}

// HTTP as the admin.
async function admin(port, method, path, body) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method, body, headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' } });
  return { status: r.status, text: await r.text() };
}

async function makeToken(port, name, read, write) {
  const r = await admin(port, 'POST', '/api/v1/tokens', JSON.stringify({ name, read, write }));
  assert.equal(r.status, 201, r.text);
  return JSON.parse(r.text).token;
}

async function shot(page, name) {
  await page.screenshot({ path: join(out, `signin-${name}.png`), fullPage: true });
}

// The keys a user sees: tree rows that are displayed.
const visibleKeys = (page) => page.evaluate(() =>
  [...document.querySelectorAll('.node')].filter((e) => e.offsetParent !== null).map((e) => e.dataset.path));
// Every key the page knows of, shown or not.
const knownKeys = (page) => page.evaluate(() => [...nodes.keys()].filter((k) => k !== ''));
const stored = (page) => page.evaluate(() => sessionStorage.getItem('almanac.token'));

async function expectForm(page, { timeout } = {}) {
  await page.locator('#signin').waitFor({ state: 'visible', timeout });
  assert.equal(await page.locator('#panes').isVisible(), false, 'the panes give way to the form');
  assert.equal(await page.locator('#signin-token').getAttribute('type'), 'password');
  assert.equal(await page.locator('#who-name').isVisible(), false, 'no one is signed in');
  assert.deepEqual(await visibleKeys(page), [], 'no keys are shown');
  assert.deepEqual(await knownKeys(page), [], 'no keys are held by the page');
}

async function signIn(page, token) {
  await page.fill('#signin-token', token);
  await page.click('#signin-submit');
}

const msg = (page, id) => page.locator(`#${id}`).textContent();
const waitMsg = (page, id, re, timeout) => page.waitForFunction(
  ([i, src]) => new RegExp(src).test(document.getElementById(i).textContent), [id, re.source], { timeout });

let port, alice, reader, browser, context;
const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('the page asks for a token and shows no keys', async (page) => {
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.locator('#conn[data-state="online"]').waitFor();
  await expectForm(page);
  assert.equal(await page.locator('#signin-open').isVisible(), false, 'no "Sign in" link beside the form');
  assert.equal(await page.locator('#signin-cancel').isVisible(), false, 'no way around the form');
  assert.match(await msg(page, 'signin-help'), /almanac token create/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'signin-token');
  await shot(page, 'form');
  await page.setViewportSize({ width: 420, height: 800 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 420, `no sideways scrolling: ${width}`);
  await shot(page, 'form-narrow');
  await page.setViewportSize({ width: 1200, height: 900 });
});

test('a wrong token is refused in the form, which stays open', async (page) => {
  await signIn(page, 'alm_not-a-token-' + randomBytes(8).toString('hex'));
  await waitMsg(page, 'signin-msg', /\S/);
  const text = await msg(page, 'signin-msg');
  assert.match(text, /^Not signed in: .*token.*not valid/, text); // the server's words
  await expectForm(page);
  assert.equal(await stored(page), null);
  await shot(page, 'wrong');
});

test('the right token shows alice and home/, never work/; HTTP carries it', async (page) => {
  const info = page.waitForRequest((r) => r.url().endsWith('/api/v1/info'));
  await signIn(page, alice);
  await page.locator('#who-name').waitFor();
  assert.equal((await msg(page, 'who-name')).trim(), 'signed in as alice');
  assert.equal(await page.locator('#signout').isVisible(), true);
  assert.equal(await page.locator('#signin').isVisible(), false);
  assert.equal(await page.inputValue('#signin-token'), '', 'the token is not left in the input');
  await (await expand(page, 'home/a')).click();
  await page.waitForFunction(() => document.getElementById('value').textContent === '1');
  assert.deepEqual(await visibleKeys(page), ['home', 'home/a']);
  assert.ok(!(await knownKeys(page)).some((k) => k.startsWith('work')), 'nothing of work/ reaches the page');
  assert.equal((await info).headers().authorization, `Bearer ${alice}`);
  await page.waitForFunction(() => /^almanac \S+/.test(document.getElementById('server').textContent));
  await shot(page, 'signed-in');
});

test('the token is in sessionStorage only: not localStorage, a cookie or the URL', async (page) => {
  assert.equal(await stored(page), alice);
  const local = await page.evaluate(() => JSON.stringify({ ...localStorage }));
  assert.ok(!local.includes(alice), `localStorage: ${local}`);
  assert.equal(await page.evaluate(() => document.cookie), '');
  assert.deepEqual(await context.cookies(), []);
  assert.ok(!page.url().includes(alice) && !page.url().includes('token'), page.url());
});

test('a reload keeps alice signed in, presenting the token first', async (page) => {
  const sent = [];
  const seen = (ws) => ws.on('framesent', (f) => sent.push(JSON.parse(f.payload)));
  page.on('websocket', seen);
  await page.reload();
  await page.locator('#who-name').waitFor();
  assert.equal(await page.locator('#principal').textContent(), 'alice');
  await page.locator('.node[data-path="home"]').waitFor();
  assert.equal(await page.locator('#signin').isVisible(), false);
  page.off('websocket', seen);
  assert.ok(sent.length > 1, JSON.stringify(sent));
  assert.equal(sent[0].type, 'auth', `the first request: ${JSON.stringify(sent[0].type)}`);
  assert.equal(sent[0].token, alice);
});

test('a new tab, and a new browser, ask again', async () => {
  for (const ctx of [context, await browser.newContext({ viewport: { width: 1200, height: 900 } })]) {
    const tab = await ctx.newPage();
    try {
      await tab.goto(`http://127.0.0.1:${port}/`);
      await tab.locator('#conn[data-state="online"]').waitFor();
      await expectForm(tab);
      assert.equal(await stored(tab), null);
      if (ctx === context) await shot(tab, 'new-tab');
    } finally {
      await tab.close();
      if (ctx !== context) await ctx.close();
    }
  }
});

test('alice saves under home/; a forbidden pattern delete says so where it was', async (page) => {
  await (await expand(page, 'home/a')).click();
  await page.waitForFunction(() => document.getElementById('value').textContent === '1');
  await page.fill('#edit-value', '5');
  await page.click('#save');
  await waitMsg(page, 'edit-msg', /Saved at rev/);
  assert.equal((await admin(port, 'GET', '/api/v1/keys/home/a')).text, '5');
  await page.click('.pattern-delete summary');
  await page.fill('#pdelete-pattern', 'work/#');
  await page.click('#pdelete button');
  await waitMsg(page, 'pdelete-msg', /Not deleted: alice may not/);
  assert.equal(await page.locator('#signin').isVisible(), false, 'forbidden is not a sign-in');
  assert.equal((await admin(port, 'GET', '/api/v1/keys/work/b')).status, 200);
  await shot(page, 'forbidden-pattern');
});

test('revoking alice\'s token brings the form back with a revoked-or-expired message', async (page) => {
  const r = await admin(port, 'DELETE', '/api/v1/tokens/alice');
  assert.equal(r.status, 200, r.text);
  const t0 = Date.now();
  await page.locator('#signin').waitFor({ state: 'visible', timeout: 5000 });
  await waitMsg(page, 'signin-msg', /revoked or has expired/, 5000);
  console.log(`     the form was back after ${Date.now() - t0} ms: ${await msg(page, 'signin-msg')}`);
  await expectForm(page);
  assert.equal(await stored(page), null, 'the revoked token is forgotten');
  await page.waitForTimeout(1500); // the reconnection keeps the message
  await page.locator('#conn[data-state="online"]').waitFor();
  assert.match(await msg(page, 'signin-msg'), /revoked or has expired/);
  await shot(page, 'revoked');
});

test('a read-only token: save and delete answer forbidden where they were made', async (page) => {
  await signIn(page, reader);
  await page.locator('#who-name').waitFor();
  assert.equal(await page.locator('#principal').textContent(), 'reader');
  await (await expand(page, 'home/a')).click();
  await page.waitForFunction(() => document.getElementById('value').textContent === '5');
  await page.fill('#edit-value', '6');
  await page.click('#save');
  await waitMsg(page, 'edit-msg', /Not saved: reader may not write home\/a/);
  assert.equal(await page.locator('#signin').isVisible(), false, 'forbidden is not a sign-in');
  await page.click('#delete');
  await page.click('#confirm-ok');
  await waitMsg(page, 'edit-msg', /Not deleted: reader may not (write|delete) home\/a/);
  assert.equal(await page.locator('#signin').isVisible(), false);
  assert.equal((await admin(port, 'GET', '/api/v1/keys/home/a')).text, '5');
  await shot(page, 'forbidden');
});

test('signing out forgets the token and asks again', async (page) => {
  await page.click('#signout');
  await expectForm(page);
  assert.equal(await stored(page), null);
  await page.locator('#conn[data-state="online"]').waitFor();
  assert.equal(await msg(page, 'signin-msg'), 'Signed out.');
  await page.reload();
  await page.locator('#conn[data-state="online"]').waitFor();
  await expectForm(page);
  await shot(page, 'signed-out');
});

test('with anonymous_read: keys without a token, a "Sign in" link, and a save that needs one', async () => {
  const p2 = await startAlmanac(['--anonymous_read', 'home/#']);
  for (const [k, v] of [['home/a', '1'], ['work/b', '2']]) {
    assert.equal((await admin(p2, 'PUT', `/api/v1/keys/${k}`, v)).status, 201);
  }
  const writer = await makeToken(p2, 'alice', ['home/#'], ['home/#']);
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await ctx.newPage();
  try {
    await page.goto(`http://127.0.0.1:${p2}/`);
    await page.locator('#conn[data-state="online"]').waitFor();
    await (await expand(page, 'home/a')).click();
    await page.waitForFunction(() => document.getElementById('value').textContent === '1');
    assert.equal(await page.locator('#signin').isVisible(), false);
    assert.equal(await page.locator('#signin-open').isVisible(), true, 'a "Sign in" link');
    assert.ok(!(await knownKeys(page)).some((k) => k.startsWith('work')));
    await shot(page, 'anonymous-read');
    // The link opens the form, which can be left.
    await page.click('#signin-open');
    await page.locator('#signin-cancel').waitFor();
    await page.click('#signin-cancel');
    await page.locator('#panes').waitFor();
    // A save anonymous may not make asks for a token, and the edit survives it.
    await page.fill('#edit-value', '7');
    await page.click('#save');
    await page.locator('#signin').waitFor();
    assert.match(await msg(page, 'signin-msg'), /^Sign in to go on: .*needs a credential/);
    await shot(page, 'needs-token');
    await signIn(page, writer);
    await page.locator('#who-name').waitFor();
    assert.equal(await page.inputValue('#edit-value'), '7');
    await page.click('#save');
    await waitMsg(page, 'edit-msg', /Saved at rev/);
    assert.equal((await admin(p2, 'GET', '/api/v1/keys/home/a')).text, '7');
  } finally {
    await ctx.close();
  }
});

await run(f, 'signin', tests.map(({ name, fn }) => [name, (page, ctx) => {
  context = ctx.context;
  browser = context.browser();
  return fn(page);
}]), {
  limitMs: 200000,
  setup: async () => {
    port = await startAlmanac();
    alice = await makeToken(port, 'alice', ['home/#'], ['home/#']);
    reader = await makeToken(port, 'reader', ['home/#'], []);
    for (const [k, v] of [['home/a', '1'], ['work/b', '2']]) {
      assert.equal((await admin(port, 'PUT', `/api/v1/keys/${k}`, v)).status, 201);
    }
  },
});
