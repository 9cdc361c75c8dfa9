// The selected key's recent messages, newest first: its changes read from
// history (`history` newest first, PAGE at a time, "Load older" with the
// cursor), extended live by details.js (appendMessage: stored changes,
// deletions, transient publishes), each with a diff against the message
// before it when both are JSON.
//
// Invariants:
// 1. `items` is sorted newest first by order() and holds each message once:
//    a stored change or deletion is known by its rev, a transient publish
//    (no rev of its own: its `rev` is the last one committed before it) by
//    that rev and its ts. History pages, live events and a replay after a
//    reconnection all merge into it, in whatever order they arrive.
// 2. The list is of `current` only; a reply for another key, or for a
//    request a later one replaced (`gen`), is dropped.
// 3. At most `cap` items (CAP, raised only by "Load older"): a busy key
//    drops its oldest, which "Load older" can read again.
// 4. Each item's diff is against the item below it; it is made again only
//    when that neighbour changes.
import { $, bytesFromBase64, hexFromBytes, timeText } from './util.js';
import { session } from './connection.js';
import { selected } from './selection.js';

const PAGE = 50;  // records a history request asks for
const CAP = 200;  // items kept while live changes come in (invariant 3)
const SHORT = 120; // characters of a value shown before "show all"
const DIFF_LINES = 40; // diff lines shown before "… and N more"

let current = null; // the key listed (invariant 2)
let items = [];     // newest first (invariant 1): { id, m, li, prevId }
const byId = new Map();
let more = false;   // history holds older records than the oldest listed
let cap = CAP;
let gen = 0;        // the newest request's number (invariant 2)

// ---- the diff ----

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

// A path as a user reads it: `state`, `nested.a`, `list[2]`, `["odd key"]`.
function pathOf(base, k) {
  if (typeof k === 'number') return `${base}[${k}]`;
  if (/^[A-Za-z_$][\w$-]*$/.test(k)) return base ? `${base}.${k}` : k;
  return `${base}[${JSON.stringify(k)}]`;
}

// What changed from the JSON value `a` to `b`, field by field: objects are
// walked by key and arrays by index, down to the values that differ; any
// other pair (numbers, strings, an object become a number…) is compared
// whole. Returns [{ op, path, from, to }] with op '+' (added: `to`), '-'
// (removed: `from`) or '~' (changed: `from` → `to`); the changes of `b`'s
// fields in its order, then the removed ones. Empty when they are equal
// (whatever the order of their keys). Pure: no DOM, no state.
export function jsonDiff(a, b, path = '', out = []) {
  if (isObject(a) && isObject(b)) {
    for (const k of Object.keys(b)) {
      if (!has(a, k)) out.push({ op: '+', path: pathOf(path, k), to: b[k] });
      else jsonDiff(a[k], b[k], pathOf(path, k), out);
    }
    for (const k of Object.keys(a)) if (!has(b, k)) out.push({ op: '-', path: pathOf(path, k), from: a[k] });
  } else if (Array.isArray(a) && Array.isArray(b)) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) jsonDiff(a[i], b[i], pathOf(path, i), out);
    for (let i = n; i < b.length; i++) out.push({ op: '+', path: pathOf(path, i), to: b[i] });
    for (let i = n; i < a.length; i++) out.push({ op: '-', path: pathOf(path, i), from: a[i] });
  } else if (a !== b) out.push({ op: '~', path, from: a, to: b });
  return out;
}

// ---- the items ----

const idOf = (m) => (m.transient ? `t${m.rev}/${m.ts}` : `r${m.rev}`);

// Newest first: by rev; a transient publish after the change of its rev;
// transient publishes of the same rev by time.
function order(x, y) {
  return (y.m.rev - x.m.rev) || ((y.m.transient ? 1 : 0) - (x.m.transient ? 1 : 0)) || (y.m.ts - x.m.ts);
}

const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + '…' : s);
const json = (v) => clip(JSON.stringify(v), 80);

// The value of a message, short (one line) and full (built when opened).
function valueParts(m) {
  if ('value' in m) {
    const one = JSON.stringify(m.value);
    // An object or array opens to its pretty-printed form, a number or a string is whole.
    return { kind: 'JSON', short: clip(one, SHORT), whole: one.length <= SHORT && (m.value === null || typeof m.value !== 'object'),
             full: () => JSON.stringify(m.value, null, 2) };
  }
  if ('text' in m) {
    const nl = m.text.indexOf('\n');
    const line = nl < 0 ? m.text : m.text.slice(0, nl);
    if (!m.text) return { kind: 'text', short: '‹empty›', whole: true };
    return { kind: 'text', short: clip(line, SHORT) + (nl >= 0 && line.length <= SHORT ? ' …' : ''),
             whole: nl < 0 && line.length <= SHORT, full: () => m.text };
  }
  const bytes = bytesFromBase64(m.base64 || '');
  const head = hexFromBytes(bytes.subarray(0, 16)).replace(/\n/g, ' ');
  return { kind: 'binary', short: `‹${bytes.length} bytes› ${head}${bytes.length > 16 ? ' …' : ''}`,
           whole: bytes.length <= 16, full: () => hexFromBytes(bytes) };
}

// The value, expandable to all of it when it does not fit one line.
function valueEl(m) {
  const v = valueParts(m);
  if (v.whole) {
    const c = el('code', 'm-value', v.short);
    c.title = v.kind;
    return c;
  }
  const d = el('details', 'm-value');
  const s = el('summary');
  s.append(el('code', '', v.short), el('span', 'vh', ` (${v.kind}; open to show all)`));
  d.append(s);
  d.addEventListener('toggle', () => {
    if (d.open && !d.querySelector('pre')) d.append(el('pre', 'm-full', v.full()));
  });
  return d;
}

function itemEl(m) {
  const li = el('li', 'm-item');
  li.dataset.rev = m.rev;
  li.dataset.kind = m.transient ? 'transient' : m.deleted ? 'deleted' : 'stored';
  const t = el('time', 'm-time', timeText(m.ts));
  t.dateTime = new Date(m.ts / 1000).toISOString();
  const parts = [t];
  // A transient publish has no rev of its own: its `rev` is another change's.
  if (!m.transient) parts.push(el('span', 'm-rev', `rev ${m.rev}`));
  if (m.origin) parts.push(el('span', 'm-origin', `origin ${m.origin}`));
  if (m.deleted) parts.push(el('span', 'm-badge deleted', 'deleted'));
  if (m.transient) parts.push(el('span', 'm-badge transient', 'transient, not stored'));
  const head = el('div', 'm-head');
  // Laid out by the gap; read as one sentence, with commas only heard.
  parts.forEach((p, i) => { if (i < parts.length - 1) p.append(el('span', 'vh', ', ')); });
  head.append(...parts);
  li.append(head, el('div', 'm-diff'));
  if (!m.deleted) li.append(valueEl(m));
  return li;
}

const SIGN = { '+': '+', '-': '−', '~': '~' };
const WORD = { '+': 'added', '-': 'removed', '~': 'changed' };

// The diff of `m` against `prev`, the message below it (invariant 4): JSON
// field by field; other values only "changed" or "no change"; none for a
// deletion or after one, or for the oldest listed.
function diffEl(m, prev) {
  const box = el('div', 'm-diff');
  if (prev && prev.deleted && !m.deleted) box.append(el('p', 'diff-note', 'set again after the deletion'));
  if (!prev || m.deleted || prev.deleted) return box;
  if (!('value' in m) || !('value' in prev)) {
    const same = m.text !== undefined ? m.text === prev.text : m.base64 !== undefined && m.base64 === prev.base64;
    box.append(el('p', 'diff-note', same ? 'no change' : 'changed'));
    return box;
  }
  const d = jsonDiff(prev.value, m.value);
  if (!d.length) { box.append(el('p', 'diff-note', 'no change')); return box; }
  const ul = el('ul', 'diff');
  ul.setAttribute('aria-label', `${d.length} ${d.length === 1 ? 'change' : 'changes'} from the message before`);
  for (const c of d.slice(0, DIFF_LINES)) {
    const line = el('li', `d-${WORD[c.op]}`);
    line.title = WORD[c.op];
    const sign = el('span', 'd-sign', SIGN[c.op]);
    sign.setAttribute('aria-hidden', 'true');
    line.append(sign, el('span', 'vh', `${WORD[c.op]} `), el('code', 'd-path', c.path || 'value'));
    if (c.op === '+') line.append(': ', el('code', 'd-to', json(c.to)));
    if (c.op === '-') line.append(el('span', 'd-was', ` (was ${json(c.from)})`));
    if (c.op === '~') {
      const arrow = el('span', 'd-arrow', ' → ');
      arrow.setAttribute('aria-hidden', 'true');
      line.append(': ', el('code', 'd-from', json(c.from)), arrow, el('span', 'vh', ' to '), el('code', 'd-to', json(c.to)));
    }
    ul.append(line);
  }
  if (d.length > DIFF_LINES) ul.append(el('li', 'd-more', `… and ${d.length - DIFF_LINES} more`));
  box.append(ul);
  return box;
}

// Puts the messages `ms` in the list (invariant 1); `fresh`: live ones,
// flashed once.
function merge(ms, fresh = false) {
  for (const m of ms) {
    const id = idOf(m);
    if (byId.has(id)) continue;
    const it = { id, m, li: itemEl(m), prevId: null };
    if (fresh) { // flashed once, not again when it moves
      it.li.classList.add('fresh');
      it.li.addEventListener('animationend', () => it.li.classList.remove('fresh'), { once: true });
    }
    byId.set(id, it);
    items.push(it);
  }
  items.sort(order);
}

// Drops the items below the `n` newest.
function keep(n) {
  for (const it of items.splice(n)) { byId.delete(it.id); it.li.remove(); }
}

// The list in the page: items in order, each diff against its neighbour
// below (invariant 4), the count and "Load older".
function render() {
  const ol = $('messages');
  items.forEach((it, i) => {
    const prev = items[i + 1];
    const pid = prev ? prev.id : '';
    if (it.prevId !== pid) {
      it.prevId = pid;
      it.li.querySelector('.m-diff').replaceWith(diffEl(it.m, prev && prev.m));
    }
    if (ol.children[i] !== it.li) ol.insertBefore(it.li, ol.children[i] || null);
  });
  while (ol.children.length > items.length) ol.lastChild.remove();
  $('messages-older').hidden = !more;
  $('messages-count').textContent = items.length
    ? `${items.length} ${items.length === 1 ? 'message' : 'messages'}, newest first` +
      (more ? '; older ones are kept in history' : '')
    : '';
  ol.hidden = !items.length;
}

function note(text) {
  $('messages-note').textContent = text;
  $('messages-note').hidden = !text;
}

function reset(key) {
  current = key;
  items = [];
  byId.clear();
  more = false;
  cap = CAP;
  gen++;
  $('messages').replaceChildren();
  note('');
  render();
}

// Why history was not read, said in the list's place.
function refused(key, e) {
  if (e.code === 'offline') {
    note(`Not connected: the messages of ${key} are read again when the connection is back.`);
    return;
  }
  // Nothing of the key may be shown: no older list stays under the reason.
  items.forEach((it) => byId.delete(it.id));
  items = [];
  more = false;
  render();
  if (e.code === 'forbidden') note(`The history of ${key} is not readable with your access: ${e.message}.`);
  else if (e.code === 'unavailable' && /history/.test(e.message)) {
    note(`No history is kept on this server: ${e.message}. Live changes are listed as they come.`);
  }
  else note(`The messages of ${key} were not read: ${e.message}.`);
}

// ---- the interface details.js calls ----

export function initMessages() {
  $('messages-older').addEventListener('click', loadOlder);
}

// A key selected, or read again after a reconnection: its newest page of
// history. Events that arrive meanwhile go in the list already (the key is
// `current` from now on) and are merged with the page, once each.
export async function loadMessages(key) {
  if (key !== current) reset(key);
  $('messages-box').hidden = false;
  const g = ++gen;
  if (!items.length) note('Loading…');
  let page;
  try {
    page = await session.request('history', { pattern: key, order: 'desc', limit: PAGE });
  } catch (e) {
    if (g === gen && key === current && key === selected) refused(key, e);
    return;
  }
  if (g !== gen || key !== current || key !== selected) return; // invariant 2
  const recs = page.records;
  // A full page that meets nothing listed may leave a gap below it (changes
  // missed while away, not replayed): what is below goes; "Load older"
  // reads it again.
  if (page.next && recs.length && !recs.some((r) => byId.has(idOf(r)))) {
    const bottom = recs[recs.length - 1].rev;
    const i = items.findIndex((it) => it.m.rev < bottom);
    if (i >= 0) keep(i);
  }
  more = !!page.next; // nothing older in history when the page is its last
  merge(recs);
  if (items.length > cap) { keep(cap); more = true; }
  note(recs.length ? '' : `History keeps no change of ${key}: it is not among history_keys, or its changes ` +
    'are older than history_retention. Live changes are listed as they come.');
  render();
}

// "Load older": the page of history below the oldest stored message listed
// (its rev is the cursor); what is loaded stays (invariant 3).
async function loadOlder() {
  const key = current;
  const oldest = [...items].reverse().find((it) => !it.m.transient);
  if (!key || !oldest) return;
  const btn = $('messages-older');
  btn.disabled = true;
  btn.textContent = 'Loading…';
  const g = gen;
  try {
    const page = await session.request('history', { pattern: key, order: 'desc', limit: PAGE, after: oldest.m.rev });
    if (g !== gen || key !== current || key !== selected) return;
    more = !!page.next;
    merge(page.records);
    cap = Math.max(cap, items.length);
    note('');
    render();
  } catch (e) {
    if (g === gen && key === current) note(`Older messages were not read: ${e.message}.`);
  } finally {
    btn.disabled = false;
    btn.textContent = 'Load older';
  }
}

// A live event of the selected key: on top at once, diffed against the one
// below; a replayed or already listed one is not added again.
export function appendMessage(m) {
  if (m.key !== current) {
    if (m.key !== selected) return;
    reset(m.key); // selected, its history not asked yet: loadMessages merges
    $('messages-box').hidden = false;
  }
  merge([m], true);
  if (items.length > cap) { keep(cap); more = true; }
  render();
}

export function clearMessages() {
  reset(null);
  $('messages-box').hidden = true;
}
