// The details of the selected key: its value and facts (rev, time, type,
// origin, retained or not, expiry, labels), copy buttons for the key and
// the value, the edit form (compare-and-set with if_rev), publish, delete,
// and delete by pattern.
//
// Invariants:
// 1. Save is enabled only when the form differs from the stored value
//    (edited(): the text differs from the stored bytes shown the same way,
//    the content type was changed, or a file was loaded) and the session is
//    online; a submit otherwise writes nothing.
// 2. The edit box shows the stored bytes exactly, in the representation
//    picked in "edit as" (JSON, text, hex, base64); switching converts the
//    bytes, never changes them.
// 3. A save sends the content type in the form, which is the stored one
//    unless the user changed it, and keeps the entry's labels.
// 4. `shown` is the stored entry on screen; a transient publish never
//    replaces it (it is shown apart, as published).
import {
  $, say, entryBytes, hexFromBytes, bytesFromHex, base64FromBytes, bytesFromBase64Text, timeText,
} from './util.js';
import { session } from './connection.js';
import { render } from './tree.js';
import { loadChart, appendPoint, hideChart } from './chart.js';
import { loadMessages, appendMessage, clearMessages } from './messages.js';
import { selected, setSelected } from './selection.js';

let shown = null;     // the stored entry on screen (invariant 4)
let editBase = null;  // the rev the edit started from (null: not editing)
let editAs = 'json';  // the representation in the edit box (invariant 2)
let fileLoaded = false;

const NARROW = '(max-width: 700px)'; // style.css: one column

// `reveal`: the user picked it; in one column the details scroll into view.
export async function select(path, { reveal = false } = {}) {
  if (path !== selected) { editBase = null; shown = null; fileLoaded = false; delete $('details').dataset.key; }
  setSelected(path);
  $('key-title').textContent = path;
  $('copy-key').hidden = false;
  say('copy-msg', '');
  say('edit-msg', '');
  if (reveal && matchMedia(NARROW).matches) $('details').scrollIntoView({ block: 'start' });
  try {
    const e = await session.request('get', { key: path });
    if (path !== selected) return;
    showEntry(e);
    loadChart(path, e);
    loadMessages(path);
  } catch (e) {
    if (path !== selected) return;
    if (e.code === 'not_found') { showEntry({ key: path, deleted: true }); hideChart(); loadMessages(path); }
    else if (e.code === 'offline') unreadable(path);
    else say('edit-msg', `Not read: ${e.message}`);
  }
  render();
}

// Selected while disconnected: nothing of another key is left standing.
function unreadable(path) {
  shown = null;
  delete $('details').dataset.key;
  $('meta').hidden = $('value-box').hidden = $('edit').hidden = true;
  hideChart();
  clearMessages();
  $('details-msg').textContent = `Not connected: ${path} cannot be read until the connection is back.`;
  $('details-msg').hidden = false;
}

export function clearDetails() {
  setSelected(null);
  shown = editBase = null;
  fileLoaded = false;
  delete $('details').dataset.key;
  $('key-title').textContent = 'Select a key';
  $('copy-key').hidden = true;
  $('meta').hidden = $('value-box').hidden = $('edit').hidden = $('details-msg').hidden = true;
  hideChart();
  clearMessages();
  $('value').textContent = $('edit-value').value = '';
  $('transient').hidden = true;
  say('edit-msg', '');
  say('pdelete-msg', '');
}

// The stored bytes of `e` as the edit box shows them in `as`; null when
// they cannot be (binary as text).
function formatted(e, as) {
  if (!e || e.deleted) return '';
  if ((as === 'json' || as === 'text') && 'value' in e) return JSON.stringify(e.value);
  if ((as === 'json' || as === 'text') && 'text' in e) return e.text;
  return format(entryBytes(e), as);
}

function format(bytes, as) {
  if (as === 'hex') return hexFromBytes(bytes);
  if (as === 'base64') return base64FromBytes(bytes);
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes); // throws on binary
}

function parse(text, as) {
  if (as === 'hex') return bytesFromHex(text);
  if (as === 'base64') return bytesFromBase64Text(text);
  return new TextEncoder().encode(text);
}

function storedType() {
  return shown && !shown.deleted ? shown.content_type : '';
}

// Invariant 1.
function edited() {
  if (!shown || editBase === null) return false;
  if (fileLoaded || $('edit-type').value.trim() !== storedType()) return true;
  let base;
  try { base = formatted(shown, editAs); } catch (err) { return true; }
  return $('edit-value').value !== base;
}

export function updateSave() {
  const dirty = edited();
  $('save').disabled = !dirty || !session.online;
  $('edit').dataset.dirty = String(dirty);
  $('edit-state').textContent = !session.online ? 'not connected: edits are off'
    : dirty ? 'changed, not saved yet' : 'unchanged: Save is enabled once you change the value';
}

// Fills the edit box from the stored entry: binary as hex or base64 (the
// "Show as" pick), JSON as JSON, text as text.
function fillEdit(e) {
  editAs = e.deleted ? 'json' : 'value' in e ? 'json' : 'text' in e ? 'text' : $('binary-as').value;
  $('edit-as').value = editAs;
  $('edit-value').value = formatted(e, editAs);
  $('edit-type').value = e.deleted ? '' : e.content_type;
  $('edit-file').value = '';
  fileLoaded = false;
}

export function showEntry(e) {
  shown = e;
  $('details').dataset.key = e.key; // whose details are shown (the tests wait for it)
  $('details-msg').hidden = true;
  $('meta').hidden = $('value-box').hidden = $('edit').hidden = false;
  $('transient').hidden = true;
  $('copy-value').hidden = !!e.deleted;
  if (e.deleted) {
    $('m-rev').textContent = e.rev || '';
    $('m-time').textContent = e.ts ? timeText(e.ts) : '';
    for (const id of ['m-type', 'm-origin', 'm-retained', 'm-expires', 'm-labels']) $(id).textContent = '';
    $('value').textContent = '(deleted)';
    $('binary-as-label').hidden = true;
  } else {
    $('m-rev').textContent = e.rev;
    $('m-time').textContent = timeText(e.ts);
    $('m-type').textContent = e.content_type;
    $('m-origin').textContent = ORIGINS[e.origin] || e.origin;
    // A stored value is the key's retained state; what MQTT sees of it
    // depends on the bridge's maps.
    $('m-retained').textContent = 'yes: stored, the current value of the key' +
      (e.origin === 'mqtt' ? ' (as the broker retains it)' : '; the bridge publishes it retained where it maps the key out');
    $('m-expires').textContent = e.expires ? timeText(e.expires) : 'never';
    $('m-labels').textContent = Object.entries(e.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—';
    const binary = 'base64' in e;
    $('binary-as-label').hidden = !binary;
    if ('value' in e) $('value').textContent = JSON.stringify(e.value, null, 2);
    else if ('text' in e) $('value').textContent = e.text;
    else $('value').textContent = format(entryBytes(e), $('binary-as').value);
  }
  if (editBase === null) fillEdit(e); // an edit under way keeps its text and its rev
  updateSave();
}

// A live event of the selected key: stored, or a transient publish shown
// apart (invariant 4).
export function liveEntry(m) {
  if (m.key !== selected) return;
  appendMessage(m);
  if (m.transient) {
    const text = 'value' in m ? JSON.stringify(m.value) : 'text' in m ? m.text : `‹${entryBytes(m).length} bytes›`;
    $('transient-text').textContent = `Published at ${timeText(m.ts)}, not stored: ${text.slice(0, 200)}`;
    $('transient').hidden = false;
    return;
  }
  showEntry(m);
  if (!m.deleted) appendPoint(m);
  else hideChart();
}

// What `origin` means, for people who do not know the API.
const ORIGINS = {
  http: 'http (an HTTP request)', ws: 'ws (a WebSocket session: this page or another client)',
  tcp: 'tcp (a session on the TCP port, the CLI)', unix: 'unix (a session on the Unix socket)',
  mqtt: 'mqtt (a message from the broker, through the bridge)', sys: 'sys (the server: an expiry, a will)',
};

// Copies `text`: the Clipboard API where the page may use it, else the
// older way through a selected, hidden text area.
async function copy(text, what) {
  try {
    if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
    else {
      const t = document.createElement('textarea');
      t.value = text;
      t.setAttribute('readonly', '');
      t.style.position = 'fixed';
      t.style.opacity = '0';
      document.body.appendChild(t);
      t.select();
      const ok = document.execCommand('copy');
      t.remove();
      if (!ok) throw new Error('the browser refused');
    }
    say('copy-msg', `Copied the ${what}.`, true);
  } catch (err) {
    say('copy-msg', `Not copied: ${err.message}`);
  }
}

function startEdit() {
  if (editBase === null && shown) editBase = shown.deleted ? 0 : shown.rev;
}

function editFields() {
  const text = $('edit-value').value;
  let fields;
  if (editAs === 'json') {
    try { fields = { value: JSON.parse(text) }; } catch (err) { throw new Error('not valid JSON: ' + err.message); }
  } else if (editAs === 'text') fields = { text };
  else fields = { base64: base64FromBytes(parse(text, editAs)) };
  const type = $('edit-type').value.trim();
  if (type) fields.content_type = type;
  return fields;
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    d.onclose = () => resolve(d.returnValue === 'ok');
    d.returnValue = '';
    d.showModal();
  });
}

export function initDetails() {
  $('copy-key').addEventListener('click', () => { if (selected) copy(selected, 'key'); });
  // The value as it is shown: JSON pretty-printed, text, binary as hex or base64.
  $('copy-value').addEventListener('click', () => { if (shown && !shown.deleted) copy($('value').textContent, 'value'); });
  $('binary-as').addEventListener('change', () => {
    if (!shown) return;
    $('value').textContent = format(entryBytes(shown), $('binary-as').value);
  });
  $('edit-value').addEventListener('input', () => { startEdit(); updateSave(); });
  $('edit-type').addEventListener('input', () => { startEdit(); updateSave(); });
  // Invariant 2: another representation of the same bytes.
  $('edit-as').addEventListener('change', () => {
    const to = $('edit-as').value;
    try {
      $('edit-value').value = format(parse($('edit-value').value, editAs), to === 'json' ? 'text' : to);
    } catch (err) {
      say('edit-msg', `Kept the text as it was: it is ${err.message.startsWith('not') ? err.message : 'not valid in ' + to}.`);
    }
    editAs = to;
    updateSave();
  });
  $('edit-file').addEventListener('change', async () => {
    const f = $('edit-file').files[0];
    if (!f) return;
    const bytes = new Uint8Array(await f.arrayBuffer());
    startEdit();
    editAs = 'base64';
    $('edit-as').value = editAs;
    $('edit-value').value = base64FromBytes(bytes);
    fileLoaded = true;
    say('edit-msg', `Loaded ${f.name} (${bytes.length} bytes); Save stores it as ${$('edit-type').value || 'its sniffed type'}.`, true);
    updateSave();
  });
  $('revert').addEventListener('click', () => {
    if (!shown) return;
    editBase = null;
    fillEdit(shown);
    say('edit-msg', '');
    updateSave();
  });

  $('edit').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!selected || !edited() || !session.online) return; // invariant 1
    let fields;
    try { fields = editFields(); } catch (err) { say('edit-msg', `Not saved: ${err.message}`); return; }
    if (shown && !shown.deleted && shown.labels && Object.keys(shown.labels).length) fields.labels = shown.labels;
    // The rev the edit started from: a change made meanwhile is reported,
    // not overwritten.
    const ifRev = editBase !== null ? editBase : shown && !shown.deleted ? shown.rev : 0;
    const key = selected;
    try {
      const ok = await session.request('set', { key, ...fields, if_rev: ifRev });
      editBase = null;
      fileLoaded = false;
      say('edit-msg', `Saved at rev ${ok.rev}.`, true); // the live event shows it
    } catch (err) {
      if (err.code === 'rev_mismatch') {
        const cur = await session.request('get', { key }).catch(() => null);
        if (cur) showEntry(cur);
        editBase = cur ? cur.rev : 0; // saving again replaces what is there now
        say('edit-msg', `Not saved: ${key} changed since you read it at rev ${ifRev}` +
            (cur ? ` (it is at rev ${cur.rev} now)` : '') +
            '. Your text is kept; the value above is the current one. Save again to replace it.');
      } else say('edit-msg', `Not saved: ${err.message}`);
    }
    updateSave();
  });

  $('publish').addEventListener('click', async () => {
    if (!selected) return;
    try {
      await session.request('publish', { key: selected, ...editFields() });
      say('edit-msg', 'Published (not stored).', true);
    } catch (err) { say('edit-msg', `Not published: ${err.message}`); }
  });

  $('delete').addEventListener('click', async () => {
    if (!selected || !(await confirmDialog(`Delete ${selected}?`))) return;
    try {
      await session.request('delete', { key: selected, ...(shown && shown.rev ? { if_rev: shown.rev } : {}) });
      say('edit-msg', 'Deleted.', true);
    } catch (err) { say('edit-msg', `Not deleted: ${err.message}`); }
  });

  // Its messages stay beside its own button, never under the key's Save.
  $('pdelete').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const pattern = $('pdelete-pattern').value.trim();
    say('pdelete-msg', '');
    if (!pattern) { say('pdelete-msg', 'Enter a pattern.'); return; }
    let count;
    try {
      const page = await session.request('pget', { pattern, limit: 10000 });
      count = page.entries.length + (page.next ? '+' : '');
    } catch (err) { say('pdelete-msg', `Not deleted: ${err.message}`); return; }
    if (count === '0') { say('pdelete-msg', `No key matches ${pattern}; nothing deleted.`, true); return; }
    if (!(await confirmDialog(`Delete every key matching ${pattern} (${count} keys)?`))) return;
    try {
      const ok = await session.request('delete', { key: pattern });
      say('pdelete-msg', `Deleted ${ok.deleted} keys.`, true);
    } catch (err) { say('pdelete-msg', `Not deleted: ${err.message}`); }
  });
}
