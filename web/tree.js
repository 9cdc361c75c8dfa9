// The key tree: loaded lazily with `ls`, one folder at a time as it is
// expanded; a virtual list (only the rows in view are in the DOM, fixed
// height ROW); the WAI-ARIA tree pattern driven by the keyboard; a search
// (a substring, or a pattern when it holds + or #: a flat list of
// matches); live changes applied in place; on each folder row the number
// of keys below it and of the changes seen below it since the page opened.
//
// Invariants:
// 1. A node's `children` is null until the folder was listed, then the
//    sorted paths of its children. Once listed, a folder is kept current by
//    live events alone (applyEvent): a change never sends `ls`.
// 2. `rows` is what the tree shows, in order; focusIndex < rows.length
//    unless rows is empty.
// 3. A folder's `keys` is the number of keys below it as `ls` told it
//    (null: not told, the principal may not read them all) at rev
//    `countedAt`, then kept by the live events after that rev: a deletion
//    takes one off every folder above the key, a change marked `created`
//    adds one (a replay after a reconnection carries no such mark:
//    refreshCounts reads them again).
import { $, say, shortValue } from './util.js';
import { session } from './connection.js';
import { selected, selection } from './selection.js';

export const ROW = 28; // px, the height of a tree row (style.css .node)

export const nodes = new Map(); // path -> node; '' is the root
let rows = [];                  // the visible nodes, in order
let rowPos = [];                // [aria-posinset, aria-setsize] of each row
export let filterRows = null;   // a pattern's matches (a flat list), or null
let focusIndex = 0;
const values = new Map();    // path -> short text of its stored value
const published = new Map(); // path -> short text of a transient publish since
const flashes = new Map();   // path -> until (ms)
const fetching = new Set();
const changes = new Map();   // folder path -> changes seen below it since the page opened
let search = null;           // the search's substring (its matches are marked), or null
let searched = '';           // the search's text, pattern or substring

function filterLabel(count) {
  const keys = `${count.toLocaleString()} ${count === 1 ? 'key' : 'keys'}`;
  return search !== null ? `${keys} containing “${search}”` : `${keys} matching ${searched}`;
}

function node(path) {
  let n = nodes.get(path);
  if (!n) {
    const cut = path.lastIndexOf('/');
    n = { path, name: cut < 0 ? path : path.slice(cut + 1), parent: cut < 0 ? '' : path.slice(0, cut),
          depth: path === '' ? -1 : path.split('/').length - 1, value: false, kids: false,
          expanded: false, children: null, keys: null, countedAt: 0 };
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
    k.keys = c.children && c.keys !== undefined ? c.keys : null;
    k.countedAt = reply.rev;
    return k.path;
  });
  // The root's own number is never shown: it says whether a folder that
  // appears at the top may be counted (every one listed there was).
  if (path === '') n.keys = reply.children.every((c) => !c.children || c.keys !== undefined) ? 0 : null;
}

// Invariant 3 after a reconnection: every listed folder's children are
// asked again for their numbers (the structure is kept by the replay).
export async function refreshCounts() {
  const listed = [...nodes.values()].filter((n) => n.children).map((n) => n.path);
  for (const path of listed) {
    try {
      const reply = await session.request('ls', path === '' ? {} : { key: path });
      for (const c of reply.children) {
        const k = nodes.get(path === '' ? c.name : path + '/' + c.name);
        if (k) {
          k.keys = c.children && c.keys !== undefined ? c.keys : null;
          k.countedAt = reply.rev;
        }
      }
    } catch (e) { if (e.code === 'offline') return; }
  }
  scheduleRender();
}

// What a folder row says of its size and activity, and the longer form.
function countText(n) {
  const seen = changes.get(n.path) || 0;
  const parts = [];
  if (n.keys !== null) parts.push(`${n.keys.toLocaleString()} ${n.keys === 1 ? 'key' : 'keys'}`);
  if (seen) parts.push(`${seen.toLocaleString()} Δ`);
  const long = (n.keys !== null ? `${n.keys.toLocaleString()} keys below` : 'keys below: not known') +
    `; ${seen.toLocaleString()} changes seen since this page opened`;
  return [parts.join(' · '), long];
}

// Forgets every key and value shown (after a sign-out).
export function clearTree() {
  nodes.clear();
  changes.clear();
  search = null;
  values.clear();
  published.clear();
  flashes.clear();
  filterRows = null;
  layout();
}

export async function reloadTree() {
  nodes.clear();
  values.clear();
  published.clear();
  const root = node('');
  root.expanded = true;
  try { await load(''); } catch (e) { root.children = []; }
  layout();
}

function flatten(path) {
  const n = nodes.get(path);
  if (!n || !n.children) return;
  const size = n.children.length;
  n.children.forEach((c, i) => {
    const k = nodes.get(c);
    rows.push(k);
    rowPos.push([i + 1, size]);
    if (k.expanded) flatten(c);
  });
}

export function layout() {
  rows = [];
  rowPos = [];
  if (filterRows) rows = filterRows;
  else flatten('');
  focusIndex = Math.min(focusIndex, Math.max(0, rows.length - 1));
  $('tree-spacer').style.height = rows.length * ROW + 'px';
  $('tree-count').textContent = filterRows ? filterLabel(rows.length) : '';
  render();
}

const pool = [];
export function render() {
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
      el.innerHTML = '<span class="twisty" aria-hidden="true"></span><span class="name"></span>' +
        '<span class="cnt"></span><span class="val"></span>';
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
    // Only some rows are in the DOM: each says where it stands.
    const [pos, size] = filterRows ? [index + 1, rows.length] : rowPos[index];
    el.setAttribute('aria-posinset', pos);
    el.setAttribute('aria-setsize', size);
    el.setAttribute('aria-selected', String(n.path === selected));
    if (n.kids && !filterRows) el.setAttribute('aria-expanded', String(n.expanded));
    else el.removeAttribute('aria-expanded');
    el.children[0].textContent = n.kids && !filterRows ? (n.expanded ? '▾' : '▸') : '';
    showName(el.children[1], filterRows ? n.path : n.name);
    el.title = n.path;
    const [count, countLong] = n.kids && !filterRows ? countText(n) : ['', ''];
    el.children[2].textContent = count;
    el.children[2].title = countLong;
    const pub = published.get(n.path);
    const v = n.value ? values.get(n.path) : undefined;
    // A transient publish is not the stored value: marked, and said so.
    el.children[3].textContent = pub !== undefined ? `⇢ ${pub}` : v === undefined ? '' : v;
    el.children[3].classList.toggle('transient', pub !== undefined);
    el.children[3].title = pub !== undefined ? 'published, not stored' : '';
    if (n.value && v === undefined) fetchValue(n.path);
    el.classList.toggle('flash', (flashes.get(n.path) || 0) > now);
    el.classList.toggle('active', index === focusIndex);
  }
  if (rows[focusIndex]) tree.setAttribute('aria-activedescendant', 'row-' + focusIndex);
  else tree.removeAttribute('aria-activedescendant');
}

// ASCII letters in lower case, nothing else changed (the length stays):
// how the server's `contains` compares.
const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());

// A row's name, the search's substring marked in it.
function showName(span, name) {
  const at = search ? asciiLower(name).indexOf(asciiLower(search)) : -1;
  if (at < 0) { span.textContent = name; return; }
  const mark = document.createElement('mark');
  mark.textContent = name.slice(at, at + search.length);
  span.replaceChildren(name.slice(0, at), mark, name.slice(at + search.length));
}

async function fetchValue(path) {
  if (fetching.has(path) || fetching.size > 64 || !session.ready) return;
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
export function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

async function toggle(n, open) {
  if (!n.kids) return;
  n.expanded = open;
  if (open && !n.children) {
    try { await load(n.path); } catch (e) {
      if (e.code === 'not_found') n.children = []; // emptied meanwhile
      else n.expanded = false;
    }
    // A folder emptied while it was not listed (invariant 1) goes now.
    if (n.children && n.children.length === 0) {
      n.kids = n.expanded = false;
      if (!n.value) removeNode(n);
    }
  }
  layout();
}

function activate(index, click) {
  const n = rows[index];
  if (!n) return;
  focusIndex = index;
  if (click && n.kids && !filterRows) toggle(n, !n.expanded);
  if (n.value) selection.pick(n.path, { reveal: true });
  render();
}

function scrollToFocus() {
  const tree = $('tree');
  const top = focusIndex * ROW;
  if (top < tree.scrollTop) tree.scrollTop = top;
  else if (top + ROW > tree.scrollTop + tree.clientHeight) tree.scrollTop = top + ROW - tree.clientHeight;
  render();
}

// ---- live changes, in place (invariant 1) ----

// Where `path` is or would go in the sorted `list` (siblings share their
// parent's prefix, so paths sort as their names do).
function place(list, path) {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid] < path) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function removeNode(n) {
  for (;;) {
    const parent = nodes.get(n.parent);
    nodes.delete(n.path);
    reshaped = true;
    if (!parent || !parent.children) return;
    const i = place(parent.children, n.path);
    if (parent.children[i] === n.path) parent.children.splice(i, 1);
    if (parent.path === '' || parent.children.length > 0) return;
    parent.kids = parent.expanded = false; // an empty folder is no longer listed
    if (parent.value) return;
    n = parent;
  }
}

// A key went under a folder shown but never listed: whether the folder is
// empty now only `ls` of that folder can tell (once: then it is listed, and
// invariant 1 keeps it current).
const listing = new Set();
function emptied(path) {
  let p = path;
  do p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : ''; while (p && !nodes.has(p));
  const f = nodes.get(p);
  if (!p || !f || f.children || listing.has(p)) return;
  listing.add(p);
  setTimeout(async () => {
    listing.delete(p);
    try { await load(p); } catch (e) {
      if (e.code !== 'not_found') return;
      f.children = []; // nothing under it any more
    }
    if (f.children.length === 0) {
      f.kids = f.expanded = false;
      if (!f.value) removeNode(f);
    }
    layout();
  }, 300);
}

// A stored key appears: it (and the folders to it) go into the folders
// already listed; a folder not listed yet only learns it has children.
// True when the page can tell the key is new (it had no row, or a new
// folder leads to it).
function addKey(path) {
  let parent = nodes.get('');
  if (!parent || !parent.children) return false;
  const parts = path.split('/');
  for (let i = 1; i <= parts.length; i++) {
    const p = parts.slice(0, i).join('/');
    const leaf = i === parts.length;
    const at = place(parent.children, p);
    const k = node(p);
    if (parent.children[at] !== p) { parent.children.splice(at, 0, p); reshaped = true; }
    if (leaf) {
      const fresh = !k.value;
      k.value = true;
      return fresh;
    }
    const fresh = !k.kids;
    // A twisty appears, over nothing yet: counted when the folder above is
    // (the principal reads everything below it), else not known.
    if (fresh) { reshaped = true; k.keys = parent.keys !== null ? 0 : null; }
    k.kids = true;
    if (fresh || !k.children) return fresh; // a folder not listed is listed when expanded
    parent = k;
  }
  return false;
}

// Invariant 3, and the changes seen: for every folder above `path`.
function countAbove(path, keys, rev) {
  for (let p = path, cut; (cut = p.lastIndexOf('/')) > 0;) {
    p = p.slice(0, cut);
    changes.set(p, (changes.get(p) || 0) + 1);
    const f = nodes.get(p);
    if (f && f.keys !== null && keys && rev > f.countedAt) f.keys = Math.max(0, f.keys + keys);
  }
}

export function applyEvent(m) {
  const path = m.key;
  const now = Date.now();
  if (m.transient) published.set(path, shortValue(m));
  else {
    published.delete(path);
    if (m.deleted) values.delete(path);
    else values.set(path, shortValue(m));
    const n = nodes.get(path);
    if (m.deleted) {
      if (n) {
        n.value = false;
        if (!n.kids || (n.children && n.children.length === 0)) removeNode(n);
      } else emptied(path);
      countAbove(path, -1, m.rev);
    } else countAbove(path, addKey(path) || m.created ? 1 : 0, m.rev); // a listed row: only its value changes
  }
  // The row, or its nearest shown ancestor, lights up.
  let p = path;
  while (p && !nodes.has(p)) p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
  if (p) flashes.set(p, now + 1200);
  flashes.set(path, now + 1200);
  if (reshaped && !filterRows) scheduleLayout();
  else scheduleRender();
}

// Set when a live change added or removed a row: the rows are laid out again.
let reshaped = false;
let layoutQueued = false;
function scheduleLayout() {
  if (layoutQueued) return;
  layoutQueued = true;
  requestAnimationFrame(() => { layoutQueued = false; reshaped = false; layout(); });
}

// ---- keyboard and filter ----

export function initTree() {
  $('tree').addEventListener('scroll', () => render(), { passive: true });
  window.addEventListener('resize', () => render());
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
        if (n) {
          if (n.kids && !filterRows && !n.value) toggle(n, !n.expanded);
          if (n.value) selection.pick(n.path, { reveal: true });
        }
        break;
      default: return;
    }
    ev.preventDefault();
    focusIndex = Math.max(0, focusIndex);
    scrollToFocus();
  });

  // The search: its matches as a flat list (pget, page by page). Keys
  // never hold + or #, so a text with one is a pattern (home/+/temp) and
  // any other a substring, either case (`contains`). An error stays beside
  // the search until the next one is tried, and no earlier matches are left
  // standing under it.
  $('filter-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('filter');
    const text = input.value.trim();
    say('filter-msg', '');
    input.removeAttribute('aria-invalid');
    search = null;
    if (!text) { filterRows = null; layout(); return; }
    const wild = /[+#]/.test(text);
    searched = text;
    const ask = wild ? { pattern: text, limit: 10000 } : { pattern: '#', contains: text, limit: 10000 };
    const found = [];
    let after = null;
    try {
      do {
        const page = await session.request('pget', after ? { ...ask, after } : ask);
        for (const e of page.entries) {
          const n = node(e.key);
          n.value = true;
          values.set(e.key, shortValue(e));
          found.push(n);
        }
        after = page.next;
      } while (after && found.length < 200000);
      filterRows = found;
      if (!wild) search = text;
    } catch (e) {
      filterRows = [];
      input.setAttribute('aria-invalid', 'true');
      say('filter-msg', e.code === 'offline' ? 'Not connected: the filter could not be applied.'
        : `No matches shown: ${e.message}`);
    }
    focusIndex = 0;
    $('tree').scrollTop = 0;
    layout();
  });
}
