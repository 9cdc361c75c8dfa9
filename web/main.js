// almanac's dashboard, the entry module: wires the session (connection.js)
// to the views (tree.js, details.js, chart.js) and the sign-in (auth.js);
// the feeds after every (re)connection; the header (server, bridge); and
// the stale state while disconnected. Native ES modules, no build step,
// nothing from the internet.
//
// Invariant: from a drop until the feeds run again after the next welcome,
// the page is stale (#panes[data-stale=true]): every view says so, every
// edit is disabled, and a Retry button reconnects at once.
import { $, timeText } from './util.js';
import { session } from './connection.js';
import { auth, authHooks, initAuth, signedIn, signedOut, needSignIn, showSignIn } from './auth.js';
import { nodes, initTree, reloadTree, clearTree, applyEvent, render, refreshCounts } from './tree.js';
import { initDetails, select, clearDetails, liveEntry, updateSave } from './details.js';
import { selected, selection } from './selection.js';
import { initChart } from './chart.js';
import { initMessages } from './messages.js';
import { initPublish } from './publish.js';

// Forgets every key and value shown (after a sign-out).
export function clearView() {
  clearTree();
  clearDetails();
}

// ---- stale while disconnected ----

let stale = false;
function setStale(on) {
  if (on && !stale) {
    $('stale-text').textContent = `Not connected since ${timeText(Date.now() * 1000)}: ` +
      'what is shown may be out of date, and edits are off until the connection is back.';
    setBridge(bridge ? 'unknown' : null, true);
  }
  stale = on;
  $('panes').dataset.stale = String(on);
  $('stale-bar').hidden = !on;
  $('edit-fields').disabled = $('pdelete-fields').disabled = $('pub-fields').disabled = on;
  updateSave();
}

// ---- the feeds, after every (re)connection ----

// A token this tab keeps is presented first; then the feeds start, unless
// anonymous may do nothing and no one is signed in.
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
    setStale(false);
    showSignIn(); // keeps a message already there (revoked, signed out)
    refreshInfo(); // names the server, from the welcome
    return;
  }
  await startFeeds();
}

// The live subscription resumes with `since`, so no change made while the
// page was away is missed; with lastRev 0 the tree starts afresh. Then the
// details and the chart are read again, and the folders' numbers once the
// replay is in (its `sync`).
let countsStale = false;
async function startFeeds() {
  const since = session.lastRev;
  countsStale = since > 0;
  try {
    try {
      await session.subscribe('live', since > 0 ? { pattern: '#', since } : { pattern: '#', live_only: true });
    } catch (e) {
      if (e.code !== 'history_gone') throw e;
      await session.subscribe('live', { pattern: '#', live_only: true });
      reloadTree(); // too much was missed: start again from the current state
    }
  } catch (e) {
    if (e.code === 'offline') return;
    // unauthorized: the sign-in form is up; forbidden: nothing to watch.
  }
  // The bridge's state is $SYS/bridge/state, which not every principal may read.
  session.subscribe('sys', { pattern: '$SYS/bridge/#' }, { quiet: true })
    .catch(() => setBridge(null));
  if (since === 0) await reloadTree();
  setStale(false);
  if (selected) await select(selected);
  refreshInfo();
}

// After a sign-in on this connection: the old principal's subscriptions go,
// and what may be seen now is loaded afresh.
export async function restartFeeds() {
  for (const sub of session.subs.values()) sub.close().catch(() => {});
  session.subs.clear();
  session.lastRev = 0;
  await startFeeds();
}

function onEvent(m, kind) {
  if (kind === 'sys') {
    if (m.key === '$SYS/bridge/state' && m.text) setBridge(m.text);
    return;
  }
  if (m.rev > session.lastRev && !m.transient) session.lastRev = m.rev;
  applyEvent(m);
  liveEntry(m);
}

// ---- the header ----

// /api/v1/info needs read of $SYS/# or admin: once refused, it is not asked
// again until the principal changes, and the welcome names the server.
let infoDenied = false;
export function forgetInfo() { infoDenied = false; }

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
    if (info.bridge && info.bridge.state) setBridge(info.bridge.state);
  } catch (e) { /* shown by the connection state */ }
}

// The bridge's state, green only when connected; "unknown" while this page
// is not connected to the server (it cannot know).
let bridge = null;
function setBridge(state, unknown = false) {
  if (!unknown) bridge = state;
  const el = $('bridge');
  el.textContent = state ? `MQTT bridge: ${state}` : '';
  el.dataset.state = state === 'connected' ? 'connected' : unknown ? 'unknown' : 'down';
}

// ---- start ----

session.hooks = {
  welcome: onWelcome,
  event: onEvent,
  sync: (kind) => {
    if (kind !== 'live' || !countsStale) return;
    countsStale = false;
    refreshCounts();
  },
  dropped: () => setStale(true),
  revoked: (message) => { if (auth.principal) signedOut(message); },
  unauthorized: needSignIn,
};
Object.assign(authHooks, { clearView, restartFeeds, forgetInfo });
selection.pick = select;
initAuth();
initTree();
initDetails();
initChart();
initMessages();
initPublish();
$('retry').addEventListener('click', () => session.retry());
setInterval(refreshInfo, 5000);
render();
// For the console and the e2e tests (tests/e2e): the session and the tree.
Object.assign(window, { session, nodes });
session.connect();
