// The chart of the selected key's history, drawn by uPlot (vendor/uplot,
// MIT), extended by live changes.
//
// What is charted: a number (a JSON number, or a text that is a decimal
// number), or one numeric field of a JSON object or array (its numeric
// leaves, booleans as 0/1), picked in #chart-field: by default the first
// number of the current value (a boolean only when it has no number:
// zigbee2mqtt's `temperature` before its `occupancy`); the user's pick is kept when the same key's
// chart is read again. The chart shows only while the current value is a
// number or has a numeric field.
//
// History: `history {pattern: key, start, stop}`, every record while the
// range holds at most RAW of them (deletions included); beyond that, again
// with `every=` (the last record of each step, about STEPS of them).
//
// Gaps (null values, spanGaps false, so no line crosses them):
// - a deletion, or a value without the field (not a number, no such field);
// - a silence: two points further apart than SILENCE × the median spacing
//   of the points in the chart, and than a minute (and than two steps of a
//   downsampled history), get a null between them. A key written every 10 s
//   breaks after 100 s of silence; one written a few times a day is not
//   broken up by its usual quiet.
//
// Range: x from the first point to the later of now and the last point
// (capped at a custom range's stop), not the whole range picked; y fits the
// values with 10 % padding. Live changes extend it at once.
//
// Times are the browser's local time zone (tzDate below). The legend shows
// util.js timeText (the page's one time format); the axis ticks show parts
// of it (the same locale and options: hour and minute, seconds when ticks
// are less than a minute apart, the date under the first tick of each day).
import uPlot from './vendor/uplot/uPlot.esm.js';
import { $, timeText } from './util.js';
import { session } from './connection.js';
import { selected } from './selection.js';

const RAW = 1000;       // records read whole before the history is downsampled
const STEPS = 300;      // steps of a downsampled history
const SILENCE = 10;     // × the median spacing: a gap
const MIN_SILENCE = 60; // s: no silence shorter than this is a gap
const MAX_FIELDS = 200; // numeric leaves listed of one JSON value
const NARROW = '(max-width: 700px)'; // style.css: one column

// The chart's state; on `window.chart` for the console and the e2e tests.
const view = {
  key: null,       // the key charted
  entry: null,     // its current stored entry
  records: [],     // its history in time order: { ts (µs), rev, nums: Map(field → number) | null }
  field: '',       // the field charted ('' for a plain number)
  range: { start: 0, stop: Infinity, live: true }, // µs
  every: null,     // the step of a downsampled history ('12s'), or null
  step: 0,         // the same in s (0: every record)
  data: [[], []],  // what uPlot plots: x in s, y (null: a gap)
  why: [],         // for each null of data[1], what the legend says of it
  gaps: 0,
  zoomed: false,   // the x range is a drag's, kept while live points come in
  u: null,         // the uPlot instance
};
const picked = new Map(); // key → the field the user picked in #chart-field
let loading = 0;    // the newest load's number; a reply to an older one is dropped
let pending = null; // live entries that came in while a load was under way

// ---- the values ----

const DECIMAL = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;

// The numbers of an entry: Map(field id → number), or null when it has none.
// A field id is the path's JSON (["a",0,"b"]); '' is the value itself.
function numbers(e) {
  if (!e || e.deleted) return null;
  const out = new Map();
  if ('value' in e) {
    if (typeof e.value === 'number') out.set('', e.value);
    else if (e.value !== null && typeof e.value === 'object') leaves(e.value, [], out);
  } else if (typeof e.text === 'string' && DECIMAL.test(e.text)) out.set('', Number(e.text));
  return out.size ? out : null;
}

function leaves(v, path, out) {
  if (out.size >= MAX_FIELDS) return;
  if (typeof v === 'number') out.set(JSON.stringify(path), v);
  else if (typeof v === 'boolean') out.set(JSON.stringify(path), v ? 1 : 0);
  else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) leaves(x, [...path, Array.isArray(v) ? Number(k) : k], out);
  }
}

// A field as a user reads it: `temp`, `a.b`, `list[2]`, `["odd key"]`.
function fieldLabel(id) {
  if (id === '') return 'value';
  return JSON.parse(id).map((p, i) => (typeof p === 'number' ? `[${p}]`
    : /^[A-Za-z_$][\w$-]*$/.test(p) ? (i ? '.' : '') + p : `[${JSON.stringify(p)}]`)).join('');
}

const record = (e) => ({ ts: e.ts, rev: e.rev, nums: numbers(e), deleted: !!e.deleted });

// ---- the data ----

// The plotted series of the picked field, with the gaps of the top comment.
function plotted() {
  const pts = view.records.map((r) => [r.ts / 1e6, r.nums && r.nums.has(view.field) ? r.nums.get(view.field) : null,
    !r.nums ? (r.deleted ? 'deleted' : 'not a number') : 'no such field']);
  const spacing = [];
  for (let i = 1; i < pts.length; i++) spacing.push(pts[i][0] - pts[i - 1][0]);
  spacing.sort((a, b) => a - b);
  const median = spacing.length ? spacing[spacing.length >> 1] : 0;
  const silence = Math.max(SILENCE * median, MIN_SILENCE, 2 * view.step);
  const xs = [], ys = [], why = [];
  let gaps = 0;
  pts.forEach(([x, y, w], i) => {
    const prev = i ? pts[i - 1] : null;
    if (prev && prev[1] !== null && y !== null && x - prev[0] > silence) {
      xs.push((prev[0] + x) / 2);
      ys.push(null);
      why.push('no data');
      gaps++;
    } else if (y === null && prev && prev[1] !== null) gaps++;
    xs.push(x);
    ys.push(y);
    why.push(y === null ? w : '');
  });
  view.gaps = gaps;
  view.why = why;
  return [xs, ys];
}

// The x range (top comment): from the first point to the later of now and
// the last point. uPlot asks it with the data's bounds (a new load, a live
// point, a double click after a zoom) or with a zoom's, kept as it is.
function xRange(u, min, max) {
  const xs = view.data[0];
  const first = xs[0], last = xs[xs.length - 1];
  const now = Date.now() / 1000, stop = view.range.stop / 1e6;
  if (!xs.length || min === null) return [view.range.start / 1e6, Math.min(now, stop)];
  // uPlot's own range of one point is a day after it: not a zoom either.
  view.zoomed = min !== first || (max !== last && first !== last);
  if (view.zoomed) return [min, max];
  max = Math.max(last, Math.min(now, stop));
  if (max - min < 0.001) return [min - 30, max + 30]; // one point, now: a minute around it
  return [min, max];
}

function yRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  return uPlot.rangeNum(min, max, 0.1, true);
}

// ---- the axes ----

// Parts of util.js timeText's format: the user's locale, the same options.
const CLOCK = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const CLOCK_S = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const DAY = new Intl.DateTimeFormat(undefined, { month: '2-digit', day: '2-digit' });

// The x ticks' steps (s): a second or more, so no two ticks read the same.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
  86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400, 365 * 86400];

// The x ticks (s): the time, and the date under the first tick of each day;
// the date alone once ticks are a day or more apart.
function timeTicks(u, splits, axisIdx, space, incr) {
  const clock = incr < 60 ? CLOCK_S : CLOCK;
  let prevDay = null;
  return splits.map((s) => {
    if (s === null) return '';
    const d = new Date(s * 1000);
    const day = DAY.format(d);
    const newDay = day !== prevDay;
    prevDay = day;
    if (incr >= 86400) return day;
    return newDay ? `${clock.format(d)}\n${day}` : clock.format(d);
  });
}

const NUMBER = new Intl.NumberFormat(undefined, { maximumFractionDigits: 6 });

// The y axis as wide as its longest label (a counter in the millions).
function yAxisSize(u, values, axisIdx, cycle) {
  const axis = u.axes[axisIdx];
  if (cycle > 1) return axis._size;
  let size = axis.ticks.size + axis.gap + 8;
  const longest = (values || []).reduce((a, v) => (v.length > a.length ? v : a), '');
  if (longest) {
    u.ctx.font = axis.font[0];
    size += u.ctx.measureText(longest).width / devicePixelRatio;
  }
  return Math.ceil(size);
}

// The legend: the point under the cursor; the last point when the cursor is
// not over the plot. A null says why (deleted, not a number, no data).
function lastIdx() {
  const ys = view.data[1];
  for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null) return i;
  return null;
}
function legendTime(u, v, si, idx) {
  if (idx == null) idx = lastIdx();
  return idx == null ? '—' : timeText(u.data[0][idx] * 1e6);
}
function legendValue(u, v, si, idx) {
  if (idx == null) idx = lastIdx();
  if (idx == null) return '—';
  return u.data[si][idx] === null ? view.why[idx] || '—' : NUMBER.format(u.data[si][idx]);
}

// A point with no neighbour to draw a line to (between gaps) is drawn as a
// dot, or it would not be seen.
function lonePoints(u, si, show) {
  if (show) return null;
  const ys = u.data[si], idxs = [];
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] !== null && (i === 0 || ys[i - 1] === null) && (i === ys.length - 1 || ys[i + 1] === null)) idxs.push(i);
  }
  return idxs.length ? idxs : null;
}

// ---- drawing ----

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const chartHeight = () => (matchMedia(NARROW).matches ? 200 : 260);

// The width of the widest time tick in this locale ("11:59:59 PM"), in CSS px.
function tickWidth(font) {
  const g = document.createElement('canvas').getContext('2d');
  g.font = font;
  return Math.ceil(g.measureText(CLOCK_S.format(new Date(2000, 0, 1, 23, 58, 58))).width);
}

function create() {
  if (view.u) view.u.destroy();
  const el = $('chart');
  const muted = css('--muted') || '#555', accent = css('--accent') || '#0b57a4';
  const line = css('--line') || '#c8c8c8';
  const grid = { stroke: '#e6e6e6', width: 1 };
  const ticks = { stroke: line, width: 1, size: 5 };
  const border = { show: true, stroke: line, width: 1 };
  const font = '12px system-ui, sans-serif';
  const tick = tickWidth(font);
  view.u = new uPlot({
    width: el.clientWidth || 600,
    height: chartHeight(),
    tzDate: (s) => new Date(s * 1000), // the browser's local time zone
    padding: [null, Math.ceil(tick / 2) + 4, null, null], // room for the last tick's label
    scales: { x: { time: true, range: xRange }, y: { range: yRange } },
    series: [
      { label: 'time', value: legendTime },
      {
        label: fieldLabel(view.field), stroke: accent, width: 2, fill: accent + '14', spanGaps: false,
        value: legendValue,
        points: { size: 6, fill: '#fff', stroke: accent, filter: lonePoints },
      },
    ],
    axes: [
      { stroke: muted, font, grid, ticks, border, size: 48, space: tick + 24, incrs: TIME_STEPS, values: timeTicks },
      { stroke: muted, font, grid, ticks, border, size: yAxisSize },
    ],
    cursor: { points: { size: 9, fill: accent, stroke: '#fff' } },
    legend: { live: true },
  }, view.data, el);
  view.u.ctx.canvas.setAttribute('role', 'img');
}

// Draws the data again; `fresh` makes a new chart (another field).
function draw(fresh = false) {
  view.data = plotted();
  const xs = view.data[0], ys = view.data[1];
  const n = ys.filter((y) => y !== null).length;
  const el = $('chart');
  el.hidden = !n; // no plot of nothing: the line below says so
  if (!view.u || fresh) { view.zoomed = false; create(); }
  else view.u.setData(view.data, !view.zoomed);
  el.dataset.points = n;
  el.dataset.gaps = view.gaps;
  const what = view.field === '' ? view.key : `${fieldLabel(view.field)} of ${view.key}`;
  const span = n ? `${timeText(xs[0] * 1e6)} to ${timeText(xs[xs.length - 1] * 1e6)}` : '';
  view.u.ctx.canvas.setAttribute('aria-label', n ? `Chart of ${what}: ${n} points from ${span}` : `Chart of ${what}: no values`);
  $('chart-info').textContent = !n ? 'No values in this range.'
    : `${n} point${n === 1 ? '' : 's'} from ${span}` + (view.gaps ? `; ${view.gaps} gap${view.gaps === 1 ? '' : 's'}` : '')
      + (view.every ? ` (the last value of each ${view.every} step)` : '');
}

// The fields of the select: the current value's first, then any other the
// history holds. Keeps the picked one when it is still there.
function showFields() {
  const ids = [...(numbers(view.entry) || new Map()).keys()];
  const seen = new Set(ids);
  for (const r of view.records) {
    if (!r.nums) continue;
    for (const id of r.nums.keys()) if (!seen.has(id) && seen.size < MAX_FIELDS) { seen.add(id); ids.push(id); }
  }
  const plain = ids.length === 1 && ids[0] === '';
  $('chart-field-box').hidden = plain;
  const sel = $('chart-field');
  if ([...sel.options].map((o) => o.value).join('\n') !== ids.join('\n')) {
    sel.replaceChildren(...ids.map((id) => new Option(fieldLabel(id), id)));
  }
  sel.value = view.field;
}

// The first field of `e` that is a number and not a boolean (see the top).
function firstNumber(e, nums) {
  const ids = [...nums.keys()];
  const isNumber = (id) => {
    if (id === '') return true;
    let v = e.value;
    for (const p of JSON.parse(id)) v = v[p];
    return typeof v === 'number';
  };
  return ids.find(isNumber) ?? ids[0];
}

function pickField() {
  const now = numbers(view.entry);
  const keep = picked.get(view.key);
  view.field = keep !== undefined && ((now && now.has(keep)) || view.records.some((r) => r.nums && r.nums.has(keep)))
    ? keep : now ? firstNumber(view.entry, now) : '';
}

// ---- the interface details.js uses ----

// Hidden (a deletion, no key, not connected): a load under way is dropped.
export function hideChart() {
  $('chart-box').hidden = true;
  loading++;
  pending = null;
}

export async function loadChart(key = selected, e = view.entry) {
  const box = $('chart-box');
  if (key !== view.key) view.records = [];
  view.key = key;
  view.entry = e;
  const my = ++loading;
  pending = [];
  if (!e || !numbers(e)) { box.hidden = true; pending = null; return; }
  box.hidden = false;
  $('chart-info').textContent = 'loading…';
  const range = $('range').value;
  const now = Date.now() * 1000;
  if (range === 'custom') {
    const start = Date.parse($('c-start').value), stop = Date.parse($('c-stop').value);
    if (isNaN(start) || isNaN(stop) || stop <= start) {
      $('chart-info').textContent = 'Pick a start and a later stop.';
      pending = null;
      return;
    }
    view.range = { start: start * 1000, stop: stop * 1000, live: stop * 1000 > now };
  } else view.range = { start: now - Number(range) * 1e6, stop: Infinity, live: true };
  const q = { pattern: key, start: view.range.start, limit: RAW };
  if (view.range.stop !== Infinity) q.stop = view.range.stop;
  let records, every = null, step = 0, failed = null;
  try {
    let reply = await session.request('history', q);
    if (reply.next && my === loading) {
      // Too many to draw each: about STEPS steps over the data's span (from
      // its first record), a whole number of seconds or of milliseconds.
      const ms = (Math.min(view.range.stop, now) - reply.records[0].ts) / 1000 / STEPS;
      const stepMs = ms >= 1000 ? Math.ceil(ms / 1000) * 1000 : Math.max(1, Math.ceil(ms));
      every = stepMs % 1000 ? `${stepMs}ms` : `${stepMs / 1000}s`;
      step = stepMs / 1000;
      reply = await session.request('history', { ...q, every, limit: 10000 });
    }
    records = reply.records;
  } catch (err) { failed = err; }
  if (my !== loading) return; // a later load replaced this one
  const late = pending;
  pending = null;
  if (key !== selected) return;
  if (failed) {
    view.records = [];
    view.every = null;
    view.step = 0;
    $('chart-info').textContent = `No history: ${failed.message}`;
    return;
  }
  view.records = records.map(record);
  view.every = every;
  view.step = step;
  // Live changes that came in meanwhile and the reply does not hold.
  for (const m of late) {
    const last = view.records[view.records.length - 1];
    if ((!last || m.rev > last.rev) && m.ts >= view.range.start && m.ts < view.range.stop) view.records.push(record(m));
  }
  pickField();
  showFields();
  draw(true);
}

// A live change of the selected key (stored, not deleted: details.js hides
// the chart on a deletion).
export function appendPoint(e) {
  if (e.key !== selected) return;
  if (pending && view.key === e.key) { view.entry = e; pending.push(e); return; } // merged when the load ends
  if (!numbers(e)) { view.entry = e; hideChart(); return; } // as loadChart would
  // Hidden (after a deletion, a value that was not a number) or of another
  // key: read again, so the history shows the gap.
  if ($('chart-box').hidden || view.key !== e.key || !view.u) { loadChart(e.key, e); return; }
  view.entry = e;
  const last = view.records[view.records.length - 1];
  if (!view.range.live || (last && e.rev <= last.rev) || e.ts < view.range.start || e.ts >= view.range.stop) return;
  view.records.push(record(e));
  showFields();
  draw();
}

export function initChart() {
  $('range').addEventListener('change', () => {
    $('custom').hidden = $('range').value !== 'custom';
    if ($('range').value !== 'custom') loadChart();
  });
  $('c-apply').addEventListener('click', () => loadChart());
  $('chart-field').addEventListener('change', () => {
    view.field = $('chart-field').value;
    picked.set(view.key, view.field);
    draw(true);
  });
  // As wide as its box (the details column, or the page in one column).
  new ResizeObserver(() => {
    const w = $('chart').clientWidth;
    if (!view.u || !w || w === view.u.width) return;
    view.u.setSize({ width: w, height: chartHeight() });
  }).observe($('chart'));
  window.chart = view;
}
