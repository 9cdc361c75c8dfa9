// almanac's dashboard: the key tree (loaded lazily with `ls`, only the rows
// in view are in the DOM), live changes over the WebSocket session protocol,
// the details of a key, edits with compare-and-set, and a chart of its
// history; a sign-in with an access token when the server asks for one.
// Plain JavaScript, no build step, nothing from the internet.
'use strict';

const $ = (id) => document.getElementById(id);
const ROW = 28; // px, the height of a tree row (style.css .node)

// ---- the session (API.md "Session protocol") ----

// `ready` turns true once the welcome is in and a stored token has been
// presented: until then only `auth` may be sent, so it goes before any other
// request of the connection.
const session = {
  ws: null, nextId: 1, pending: new Map(), backoff: 1000, lastRev: 0, subs: new Map(),
  ready: false, authRequired: false, server: '',

  connect() {
    setConn('connecting');
    this.ready = false;
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/ws';
    const ws = new WebSocket(url, 'almanac.v1');
    this.ws = ws;
    ws.onmessage = (m) => this.receive(JSON.parse(m.data));
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.dropped();
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 10000);
    };
  },

  // Ends this connection and opens a fresh one at once (after signing out).
  reconnect() {
    const ws = this.ws;
    this.ws = null; // its close is not a drop to recover from
    if (ws) ws.close();
    this.dropped();
    this.connect();
  },

  dropped() {
    this.ready = false;
    setConn('offline');
    for (const p of this.pending.values()) p.reject(Object.assign(new Error('disconnected'), { code: 'offline' }));
    this.pending.clear();
    this.subs.clear();
  },

  receive(m) {
    if (m.type === 'welcome') {
      this.backoff = 1000;
      this.authRequired = m.auth_required === true;
      this.server = m.server || '';
      setConn('online');
      onWelcome();
      return;
    }
    if (m.type === 'event' || m.type === 'sync') {
      const kind = this.subs.get(m.sub);
      if (!kind) return; // a subscription given up when the principal changed
      if (m.type === 'event') return onEvent(m);
      if (kind === 'live' && m.rev > this.lastRev) this.lastRev = m.rev;
      return;
    }
    if (m.type === 'error' && m.id === null) { // about the session, not a request
      if (m.sub !== undefined) this.subs.delete(m.sub); // no longer readable
      // Revoked or expired (the server closes next); a session that never
      // signed in is only closed after a while, and reconnects.
      else if (m.error === 'unauthorized' && auth.principal) signedOut(m.message);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.type === 'error') {
      // A request anonymous may not make: sign in (a refused `auth` is the
      // sign-in form's own business, a quiet request the caller's).
      if (m.error === 'unauthorized' && p.type !== 'auth' && !p.quiet) needSignIn(m.message);
      p.reject(Object.assign(new Error(m.message), { code: m.error }));
    } else p.resolve(m);
  },

  // `quiet`: an `unauthorized` answer does not bring up the sign-in form.
  request(type, fields = {}, { quiet = false } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || (!this.ready && type !== 'auth')) {
        reject(Object.assign(new Error('not connected'), { code: 'offline' }));
        return;
      }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject, type, quiet });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  },
};

function setConn(state) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = state === 'online' ? 'connected' : state === 'offline' ? 'disconnected, reconnecting…' : 'connecting…';
}

// After every (re)connection: a token this tab keeps is presented first;
// then the feeds start, unless anonymous may do nothing and no one is
// signed in.
async function onWelcome() {
  const token = auth.token();
  if (token) {
    try {
      signedIn((await session.request('auth', { token })).principal);
    } catch (e) {
      if (e.code === 'offline') return;
      if (e.code === 'rate_limited') { session.ws.close(); return; } // again after the backoff
      signedOut(e.message);
    }
  }
  session.ready = true;
  if (!auth.principal && session.authRequired) {
    clearView();
    showSignIn(); // keeps a message already there (revoked, signed out)
    refreshInfo(); // names the server, from the welcome
    return;
  }
  await startFeeds();
}

// The live subscription resumes with `since`, so no change made while the
// page was away is missed; with lastRev 0 the tree starts afresh.
async function startFeeds() {
  const since = session.lastRev;
  try {
    let ok;
    try {
      ok = await session.request('subscribe', since > 0 ? { pattern: '#', since } : { pattern: '#', live_only: true });
    } catch (e) {
      if (e.code !== 'history_gone') throw e;
      ok = await session.request('subscribe', { pattern: '#', live_only: true });
      reloadTree(); // too much was missed: start again from the current state
    }
    session.subs.set(ok.sub, 'live');
  } catch (e) {
    if (e.code === 'offline') return;
    // unauthorized: the sign-in form is up; forbidden: nothing to watch.
  }
  // The bridge's state is $SYS/bridge/state, which not every principal may read.
  session.request('subscribe', { pattern: '$SYS/bridge/#' }, { quiet: true })
    .then((sys) => session.subs.set(sys.sub, 'sys'))
    .catch(() => setBridge(null));
  if (since === 0) reloadTree();
  if (selected) select(selected, true);
  refreshInfo();
}

// After a sign-in on this connection: the old principal's subscriptions go,
// and what may be seen now is loaded afresh.
async function restartFeeds() {
  for (const sub of session.subs.keys()) session.request('unsubscribe', { sub }).catch(() => {});
  session.subs.clear();
  session.lastRev = 0;
  await startFeeds();
}

// /api/v1/info needs read of $SYS/# or admin: once refused, it is not asked
// again until the principal changes, and the welcome names the server.
let infoDenied = false;
async function refreshInfo() {
  const token = auth.token();
  if (infoDenied || !session.ready || (session.authRequired && !auth.principal)) {
    $('server').textContent = session.server.replace('/', ' ');
    return;
  }
  try {
    const r = await fetch('/api/v1/info', { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (r.status === 401 || r.status === 403) {
      infoDenied = true;
      $('server').textContent = session.server.replace('/', ' ');
      return;
    }
    const info = await r.json();
    $('server').textContent = `almanac ${info.version} · ${info.keys.toLocaleString()} keys · rev ${info.rev}`;
    setBridge(info.bridge.state);
  } catch (e) { /* shown by the connection state */ }
}
setInterval(refreshInfo, 5000);

function setBridge(state) {
  $('bridge').textContent = state ? `MQTT bridge: ${state}` : '';
}

// ---- who is signed in (API.md "Access control") ----

// The token is kept in sessionStorage: this tab only, gone when it closes,
// and never in localStorage, a cookie or the URL.
const TOKEN_KEY = 'almanac.token';
const auth = {
  principal: null, // the name the server gave the token, once it took it
  token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  },
  keep(token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* this connection only */ }
  },
  forget() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
    this.principal = null;
  },
};

function signedIn(name) {
  auth.principal = name;
  infoDenied = false;
  $('edit-msg').textContent = $('pdelete-msg').textContent = '';
  setWho();
}

// The server ended the token's session (revoked, expired) or refused the
// token this tab kept: it is forgotten, and so is what it showed.
function signedOut(message) {
  auth.forget();
  infoDenied = false;
  session.lastRev = 0; // the next connection starts afresh
  clearView();
  showSignIn(/revoked|expired/i.test(message)
    ? `Signed out: ${message}. Sign in again with a valid token.`
    : `Signed out: the token was revoked or has expired. The server said: ${message}. Sign in again with a valid token.`);
}

// A request anonymous may not make.
function needSignIn(message) {
  if (auth.principal) signedOut(message); // the token no longer counts
  else showSignIn(`Sign in to go on: ${message}.`);
}

function setWho() {
  const name = auth.principal;
  $('principal').textContent = name || '';
  $('who-name').hidden = $('signout').hidden = !name;
  // No "Sign in" while the form is up, or while a kept token is on its way.
  $('signin-open').hidden = !!name || !$('signin').hidden || !!auth.token();
}

function signInSay(text, ok) {
  const m = $('signin-msg');
  m.textContent = text;
  m.className = 'msg ' + (ok ? 'ok' : 'err');
}

// The sign-in form, in place of the panes; `message` undefined keeps the
// one shown.
function showSignIn(message) {
  $('signin-why').textContent = session.authRequired
    ? 'This server shows nothing without an access token.'
    : 'Sign in with an access token to see or change more than visitors without one may.';
  $('signin-cancel').hidden = session.authRequired;
  if (message !== undefined) signInSay(message, false);
  const opening = $('signin').hidden;
  $('signin').hidden = false;
  $('panes').hidden = true;
  setWho();
  if (opening) $('signin-token').focus();
}

function hideSignIn() {
  $('signin').hidden = true;
  $('panes').hidden = false;
  signInSay('');
  setWho();
  render(); // the tree had no height while hidden
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('signin-token');
  const token = input.value.trim();
  if (!token) { signInSay('Enter a token.'); input.focus(); return; }
  $('signin-submit').disabled = true;
  try {
    const ok = await session.request('auth', { token });
    auth.keep(token);
    input.value = '';
    signedIn(ok.principal);
    hideSignIn();
    await restartFeeds();
  } catch (e) {
    signInSay(e.code === 'offline' ? 'Not connected to the server; try again when it is back.'
      : `Not signed in: ${e.message}.`);
    input.select();
  } finally {
    $('signin-submit').disabled = false;
  }
});
$('signin-cancel').addEventListener('click', hideSignIn);
$('signin-open').addEventListener('click', () => showSignIn(''));
$('signout').addEventListener('click', () => {
  auth.forget();
  infoDenied = false;
  setWho();
  session.lastRev = 0;
  clearView();
  signInSay('Signed out.', true); // shown if the new connection asks for a token
  session.reconnect(); // anonymous from its start
});

// ---- the key tree ----

const nodes = new Map(); // path -> node; '' is the root
let rows = [];           // the visible nodes, in order
let filterRows = null;   // a pattern's matches (a flat list), or null
let focusIndex = 0;
let selected = null;
const values = new Map(); // path -> short text of its value
const flashes = new Map(); // path -> until (ms)
const fetching = new Set();

function node(path) {
  let n = nodes.get(path);
  if (!n) {
    const cut = path.lastIndexOf('/');
    n = { path, name: cut < 0 ? path : path.slice(cut + 1), parent: cut < 0 ? '' : path.slice(0, cut),
          depth: path === '' ? -1 : path.split('/').length - 1, value: false, kids: false,
          expanded: false, children: null };
    nodes.set(path, n);
  }
  return n;
}

async function load(path) {
  const reply = await session.request('ls', path === '' ? {} : { key: path });
  const n = node(path);
  n.children = reply.children.map((c) => {
    const k = node(path === '' ? c.name : path + '/' + c.name);
    k.value = c.value;
    k.kids = c.children;
    return k.path;
  });
}

// Forgets every key and value shown (after a sign-out).
function clearView() {
  nodes.clear();
  values.clear();
  flashes.clear();
  filterRows = null;
  selected = shown = editBase = null;
  $('key-title').textContent = 'Select a key';
  $('meta').hidden = $('value-box').hidden = $('edit').hidden = $('chart-box').hidden = true;
  $('value').textContent = $('edit-value').value = '';
  $('edit-msg').textContent = $('pdelete-msg').textContent = '';
  layout();
}

async function reloadTree() {
  nodes.clear();
  values.clear();
  const root = node('');
  root.expanded = true;
  try { await load(''); } catch (e) { root.children = []; }
  layout();
}

function flatten(out, path) {
  const n = nodes.get(path);
  if (!n || !n.children) return;
  for (const c of n.children) {
    const k = nodes.get(c);
    out.push(k);
    if (k.expanded) flatten(out, c);
  }
}

function layout() {
  if (filterRows) rows = filterRows;
  else {
    rows = [];
    flatten(rows, '');
  }
  focusIndex = Math.min(focusIndex, Math.max(0, rows.length - 1));
  $('tree-spacer').style.height = rows.length * ROW + 'px';
  $('tree-count').textContent = filterRows ? `${rows.length.toLocaleString()} keys match` : '';
  render();
}

const pool = [];
function render() {
  const tree = $('tree');
  const first = Math.max(0, Math.floor(tree.scrollTop / ROW) - 2);
  const count = Math.ceil(tree.clientHeight / ROW) + 5;
  const now = Date.now();
  for (let i = 0; i < count; i++) {
    let el = pool[i];
    if (!el) {
      el = document.createElement('div');
      el.className = 'node';
      el.setAttribute('role', 'treeitem');
      el.innerHTML = '<span class="twisty" aria-hidden="true"></span><span class="name"></span><span class="val"></span>';
      el.addEventListener('click', () => activate(Number(el.dataset.index), true));
      tree.appendChild(el);
      pool.push(el);
    }
    const index = first + i;
    const n = rows[index];
    if (!n) { el.hidden = true; continue; }
    el.hidden = false;
    el.id = 'row-' + index;
    el.dataset.index = index;
    el.dataset.path = n.path;
    el.style.top = index * ROW + 'px';
    const depth = filterRows ? 0 : n.depth;
    el.style.paddingLeft = 0.3 + depth * 1.1 + 'rem';
    el.setAttribute('aria-level', depth + 1);
    el.setAttribute('aria-selected', String(n.path === selected));
    if (n.kids && !filterRows) el.setAttribute('aria-expanded', String(n.expanded));
    else el.removeAttribute('aria-expanded');
    el.children[0].textContent = n.kids && !filterRows ? (n.expanded ? '▾' : '▸') : '';
    el.children[1].textContent = filterRows ? n.path : n.name;
    el.children[1].title = n.path;
    const v = n.value ? values.get(n.path) : undefined;
    el.children[2].textContent = v === undefined ? '' : v;
    if (n.value && v === undefined) fetchValue(n.path);
    el.classList.toggle('flash', (flashes.get(n.path) || 0) > now);
  }
  const focused = rows[focusIndex];
  if (focused) $('tree').setAttribute('aria-activedescendant', 'row-' + focusIndex);
}
$('tree').addEventListener('scroll', () => render(), { passive: true });
window.addEventListener('resize', () => render());

async function fetchValue(path) {
  if (fetching.has(path) || fetching.size > 64) return;
  fetching.add(path);
  try {
    const e = await session.request('get', { key: path });
    values.set(path, shortValue(e));
  } catch (e) {
    if (e.code === 'not_found') values.set(path, '');
  } finally {
    fetching.delete(path);
  }
  scheduleRender();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function shortValue(e) {
  if ('value' in e) return JSON.stringify(e.value).slice(0, 80);
  if ('text' in e) return e.text.slice(0, 80);
  if ('base64' in e) return `‹${Math.floor(e.base64.length / 4 * 3)} bytes›`;
  return '';
}

async function toggle(n, open) {
  if (!n.kids) return;
  n.expanded = open;
  if (open && !n.children) {
    try { await load(n.path); } catch (e) { n.children = []; }
  }
  layout();
}

function activate(index, click) {
  const n = rows[index];
  if (!n) return;
  focusIndex = index;
  if (click && n.kids && !filterRows) toggle(n, !n.expanded);
  if (n.value) select(n.path);
  render();
}

function scrollToFocus() {
  const tree = $('tree');
  const top = focusIndex * ROW;
  if (top < tree.scrollTop) tree.scrollTop = top;
  else if (top + ROW > tree.scrollTop + tree.clientHeight) tree.scrollTop = top + ROW - tree.clientHeight;
  render();
}

$('tree').addEventListener('keydown', (ev) => {
  const n = rows[focusIndex];
  switch (ev.key) {
    case 'ArrowDown': focusIndex = Math.min(rows.length - 1, focusIndex + 1); break;
    case 'ArrowUp': focusIndex = Math.max(0, focusIndex - 1); break;
    case 'Home': focusIndex = 0; break;
    case 'End': focusIndex = rows.length - 1; break;
    case 'PageDown': focusIndex = Math.min(rows.length - 1, focusIndex + 10); break;
    case 'PageUp': focusIndex = Math.max(0, focusIndex - 10); break;
    case 'ArrowRight':
      if (n && n.kids && !n.expanded && !filterRows) toggle(n, true);
      else if (n && n.expanded) focusIndex++;
      break;
    case 'ArrowLeft':
      if (n && n.expanded && !filterRows) toggle(n, false);
      else if (n && !filterRows) focusIndex = Math.max(0, rows.findIndex((r) => r.path === n.parent));
      break;
    case 'Enter': case ' ':
      if (n) { if (n.kids && !filterRows && !n.value) toggle(n, !n.expanded); if (n.value) select(n.path); }
      break;
    default: return;
  }
  ev.preventDefault();
  scrollToFocus();
});

// A pattern filter: its matches as a flat list (pget, page by page).
$('filter-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const pattern = $('filter').value.trim();
  if (!pattern) { filterRows = null; layout(); return; }
  const found = [];
  let after = null;
  try {
    do {
      const page = await session.request('pget', after ? { pattern, limit: 10000, after } : { pattern, limit: 10000 });
      for (const e of page.entries) {
        const n = node(e.key);
        n.value = true;
        values.set(e.key, shortValue(e));
        found.push(n);
      }
      after = page.next;
    } while (after && found.length < 200000);
    filterRows = found;
    focusIndex = 0;
    $('tree').scrollTop = 0;
    layout();
  } catch (e) {
    $('tree-count').textContent = e.message;
  }
});

// ---- live changes ----

function onEvent(m) {
  if (session.subs.get(m.sub) === 'sys') {
    if (m.key === '$SYS/bridge/state' && m.text) setBridge(m.text);
    return;
  }
  if (m.rev > session.lastRev && !m.transient) session.lastRev = m.rev;
  const path = m.key;
  const now = Date.now();
  if (m.deleted) values.delete(path);
  else values.set(path, shortValue(m));
  let n = nodes.get(path);
  if (n) n.value = !m.deleted;
  // The row, or its nearest shown ancestor, lights up.
  let p = path;
  while (p && !nodes.has(p)) p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
  if (p) flashes.set(p, now + 1200);
  flashes.set(path, now + 1200);
  // A key that appears (or goes) changes the children of the loaded nodes
  // above it.
  if (!n || m.deleted) {
    for (let p = path; p !== '';) {
      p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
      const pn = nodes.get(p);
      if (pn && pn.children) reloadChildren(p);
    }
  }
  if (path === selected) showEntry(m, true);
  scheduleRender();
}

const reloading = new Set();
function reloadChildren(path) {
  if (reloading.has(path)) return;
  reloading.add(path);
  setTimeout(async () => {
    reloading.delete(path);
    try { await load(path); } catch (e) { /* gone */ }
    const n = nodes.get(path);
    if (path !== '' && n && n.children && n.children.length === 0) n.kids = false;
    layout();
  }, 150);
}

// ---- the details of a key ----

let shown = null;    // the entry on screen
let editBase = null; // the rev the value being edited was read at (null: not editing)

async function select(path, keepEdit) {
  if (path !== selected) editBase = null;
  selected = path;
  $('key-title').textContent = path;
  try {
    const e = await session.request('get', { key: path });
    showEntry(e, keepEdit);
    loadChart();
  } catch (e) {
    if (e.code === 'not_found') showEntry({ key: path, deleted: true });
  }
  render();
}

function hex(b64) {
  const bytes = atob(b64);
  let out = '';
  for (let i = 0; i < bytes.length; i++) {
    out += bytes.charCodeAt(i).toString(16).padStart(2, '0') + (i % 16 === 15 ? '\n' : ' ');
  }
  return out.trim();
}

function showEntry(e, live) {
  shown = e;
  $('meta').hidden = $('value-box').hidden = false;
  $('edit').hidden = false;
  if (e.deleted) {
    $('m-rev').textContent = e.rev || '';
    $('m-time').textContent = e.ts ? new Date(e.ts / 1000).toISOString() : '';
    $('m-type').textContent = $('m-origin').textContent = $('m-labels').textContent = '';
    $('value').textContent = '(deleted)';
    return;
  }
  $('m-rev').textContent = e.rev;
  $('m-time').textContent = new Date(e.ts / 1000).toISOString();
  $('m-type').textContent = e.content_type;
  $('m-origin').textContent = e.origin;
  $('m-labels').textContent = Object.entries(e.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—';
  const binary = 'base64' in e;
  $('binary-as-label').hidden = !binary;
  if ('value' in e) $('value').textContent = JSON.stringify(e.value, null, 2);
  else if ('text' in e) $('value').textContent = e.text;
  else $('value').textContent = $('binary-as').value === 'hex' ? hex(e.base64) : e.base64;
  if (editBase === null) { // an edit under way keeps its text and its rev
    $('edit-as').value = 'value' in e ? 'json' : 'text';
    $('edit-value').value = 'value' in e ? JSON.stringify(e.value) : 'text' in e ? e.text : '';
  }
  if (live) appendPoint(e);
}
$('binary-as').addEventListener('change', () => shown && showEntry(shown, false));
$('edit-value').addEventListener('input', () => {
  if (editBase === null && shown) editBase = shown.deleted ? 0 : shown.rev;
});

function editFields() {
  const text = $('edit-value').value;
  if ($('edit-as').value === 'json') {
    try { return { value: JSON.parse(text) }; } catch (err) { throw new Error('not valid JSON: ' + err.message); }
  }
  return { text };
}

function say(text, ok, where = 'edit-msg') {
  const m = $(where);
  m.textContent = text;
  m.className = 'msg ' + (ok ? 'ok' : 'err');
}

$('edit').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (!selected) return;
  let fields;
  try { fields = editFields(); } catch (err) { say(err.message); return; }
  // The rev the edit started from: a change made meanwhile is reported, not
  // overwritten.
  const ifRev = editBase !== null ? editBase : shown && !shown.deleted ? shown.rev : 0;
  try {
    const ok = await session.request('set', { key: selected, ...fields, if_rev: ifRev });
    editBase = null;
    say(`Saved at rev ${ok.rev}.`, true);
  } catch (err) {
    if (err.code === 'rev_mismatch') {
      const cur = await session.request('get', { key: selected }).catch(() => null);
      if (cur) showEntry(cur, true);
      editBase = cur ? cur.rev : 0; // saving again replaces what is there now
      say(`Not saved: ${selected} changed since you read it at rev ${ifRev}` +
          (cur ? ` (it is at rev ${cur.rev} now)` : '') +
          '. Your text is kept; the value above is the current one. Save again to replace it.');
    } else say(`Not saved: ${err.message}`);
  }
});

$('publish').addEventListener('click', async () => {
  if (!selected) return;
  try {
    await session.request('publish', { key: selected, ...editFields() });
    say('Published (not stored).', true);
  } catch (err) { say(`Not published: ${err.message}`); }
});

function confirmDialog(text) {
  return new Promise((resolve) => {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    d.onclose = () => resolve(d.returnValue === 'ok');
    d.returnValue = '';
    d.showModal();
  });
}

$('delete').addEventListener('click', async () => {
  if (!selected || !(await confirmDialog(`Delete ${selected}?`))) return;
  try {
    await session.request('delete', { key: selected, ...(shown && shown.rev ? { if_rev: shown.rev } : {}) });
    say('Deleted.', true);
  } catch (err) { say(`Not deleted: ${err.message}`); }
});

$('pdelete').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const pattern = $('pdelete-pattern').value.trim();
  if (!pattern) return;
  let count;
  try {
    const page = await session.request('pget', { pattern, limit: 10000 });
    count = page.entries.length + (page.next ? '+' : '');
  } catch (err) { say(`Not deleted: ${err.message}`, false, 'pdelete-msg'); return; }
  if (!(await confirmDialog(`Delete every key matching ${pattern} (${count} keys)?`))) return;
  try {
    const ok = await session.request('delete', { key: pattern });
    say(`Deleted ${ok.deleted} keys.`, true, 'pdelete-msg');
  } catch (err) { say(`Not deleted: ${err.message}`, false, 'pdelete-msg'); }
});

// ---- the chart ----

let points = [];
let chartRange = { start: 0, stop: 0, live: true };

function numberOf(e) {
  if (typeof e.value === 'number') return e.value;
  if (typeof e.text === 'string' && e.text.trim() !== '' && !isNaN(Number(e.text))) return Number(e.text);
  return null;
}

async function loadChart() {
  const box = $('chart-box');
  if (!shown || shown.deleted || numberOf(shown) === null) { box.hidden = true; return; }
  box.hidden = false;
  $('chart-info').textContent = 'loading…';
  const key = selected;
  const range = $('range').value;
  const now = Date.now() * 1000;
  if (range === 'custom') {
    const start = Date.parse($('c-start').value), stop = Date.parse($('c-stop').value);
    if (isNaN(start) || isNaN(stop) || stop <= start) { $('chart-info').textContent = 'Pick a start and a later stop.'; return; }
    chartRange = { start: start * 1000, stop: stop * 1000, live: false };
  } else chartRange = { start: now - Number(range) * 1e6, stop: now + 3600e6, live: true };
  const span = (Math.min(chartRange.stop, now) - chartRange.start) / 1e6;
  const every = Math.max(1, Math.floor(span / 300)) + 's'; // about 300 points, whatever the range
  try {
    const reply = await session.request('history', { pattern: key, start: chartRange.start, stop: chartRange.stop, every, limit: 10000 });
    if (key !== selected) return;
    points = reply.records.filter((r) => !r.deleted).map((r) => [r.ts, numberOf(r)]).filter((p) => p[1] !== null);
    $('chart-info').textContent = `${points.length} points (the last value of each ${every} step)`;
  } catch (err) {
    points = [];
    $('chart-info').textContent = `No history: ${err.message}`;
  }
  drawChart();
}

function appendPoint(e) {
  const v = numberOf(e);
  if (v === null || !chartRange.live || $('chart-box').hidden) return;
  points.push([e.ts, v]);
  drawChart();
}

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  const w = c.width, h = c.height, pad = 40;
  g.clearRect(0, 0, w, h);
  g.font = '12px system-ui, sans-serif';
  g.fillStyle = '#555';
  if (points.length === 0) { g.fillText('no values in this range', pad, h / 2); c.dataset.points = 0; return; }
  const t0 = chartRange.start, t1 = Math.min(chartRange.stop, Math.max(Date.now() * 1000, points[points.length - 1][0]));
  let lo = Math.min(...points.map((p) => p[1])), hi = Math.max(...points.map((p) => p[1]));
  if (lo === hi) { lo -= 1; hi += 1; }
  const x = (t) => pad + (t - t0) / (t1 - t0 || 1) * (w - pad - 10);
  const y = (v) => h - 20 - (v - lo) / (hi - lo) * (h - 35);
  g.strokeStyle = '#c8c8c8';
  g.beginPath(); g.moveTo(pad, 10); g.lineTo(pad, h - 20); g.lineTo(w - 10, h - 20); g.stroke();
  g.fillText(String(+hi.toPrecision(6)), 2, 16);
  g.fillText(String(+lo.toPrecision(6)), 2, h - 22);
  g.fillText(new Date(t0 / 1000).toLocaleString(), pad, h - 5);
  g.strokeStyle = '#0b57a4';
  g.fillStyle = '#0b57a4';
  g.lineWidth = 2;
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
  g.stroke();
  for (const p of points) g.fillRect(x(p[0]) - 2, y(p[1]) - 2, 4, 4);
  c.dataset.points = points.length;
}

$('range').addEventListener('change', () => {
  $('custom').hidden = $('range').value !== 'custom';
  if ($('range').value !== 'custom') loadChart();
});
$('c-apply').addEventListener('click', loadChart);

setWho();
session.connect();
