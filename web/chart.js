// The chart of the selected key's numeric history: about 300 points over
// the range picked (`history` with `every=`), extended by live changes.
import { $ } from './util.js';
import { session } from './connection.js';
import { selected } from './details.js';

let points = [];
let chartRange = { start: 0, stop: 0, live: true };
let entry = null; // the stored entry the chart is of

function numberOf(e) {
  if (typeof e.value === 'number') return e.value;
  if (typeof e.text === 'string' && e.text.trim() !== '' && !isNaN(Number(e.text))) return Number(e.text);
  return null;
}

export function hideChart() {
  $('chart-box').hidden = true;
}

export async function loadChart(key = selected, e = entry) {
  entry = e;
  const box = $('chart-box');
  if (!e || e.deleted || numberOf(e) === null) { box.hidden = true; return; }
  box.hidden = false;
  $('chart-info').textContent = 'loading…';
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
    if (key !== selected) return;
    points = [];
    $('chart-info').textContent = `No history: ${err.message}`;
  }
  drawChart();
}

// A live change of the selected key.
export function appendPoint(e) {
  entry = e;
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

export function initChart() {
  $('range').addEventListener('change', () => {
    $('custom').hidden = $('range').value !== 'custom';
    if ($('range').value !== 'custom') loadChart();
  });
  $('c-apply').addEventListener('click', () => loadChart());
}
