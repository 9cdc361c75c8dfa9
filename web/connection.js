// The session with the server (API.md "Session protocol") over /api/v1/ws:
// requests with ids and their replies as promises, subscriptions' events
// handed to `hooks.event`, and reconnection with a backoff after a drop.
//
// `ready` turns true once the welcome is in and a stored token has been
// presented (main.js): until then only `auth` may be sent, so it goes
// before any other request of the connection. `online` is false from a drop
// until the next welcome: every view is stale then (main.js).
import { $ } from './util.js';

export const session = {
  ws: null, nextId: 1, pending: new Map(), backoff: 1000, lastRev: 0, subs: new Map(),
  ready: false, online: false, authRequired: false, server: '', timer: null,
  // Set by main.js: welcome(), event(m), sync(kind), dropped(),
  // revoked(message), unauthorized(message) (a request anonymous may not
  // make).
  hooks: {},

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    setConn('connecting');
    this.ready = false;
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v1/ws';
    const ws = new WebSocket(url, 'almanac.v1');
    this.ws = ws;
    ws.onmessage = (m) => this.receive(JSON.parse(m.data));
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.dropped();
      this.timer = setTimeout(() => this.connect(), this.backoff);
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

  // The Retry button: try now instead of after the backoff.
  retry() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return; // on its way already
    this.backoff = 1000;
    this.connect();
  },

  dropped() {
    this.ready = false;
    this.online = false;
    setConn('offline');
    for (const p of this.pending.values()) p.reject(Object.assign(new Error('disconnected'), { code: 'offline' }));
    this.pending.clear();
    this.subs.clear();
    if (this.hooks.dropped) this.hooks.dropped();
  },

  receive(m) {
    if (m.type === 'welcome') {
      this.backoff = 1000;
      this.online = true;
      this.authRequired = m.auth_required === true;
      this.server = m.server || '';
      setConn('online');
      this.hooks.welcome();
      return;
    }
    if (m.type === 'event' || m.type === 'sync') {
      const kind = this.subs.get(m.sub);
      if (!kind) return; // a subscription given up when the principal changed
      if (m.type === 'event') return this.hooks.event(m, kind);
      if (kind === 'live' && m.rev > this.lastRev) this.lastRev = m.rev;
      if (this.hooks.sync) this.hooks.sync(kind);
      return;
    }
    if (m.type === 'error' && m.id === null) { // about the session, not a request
      if (m.sub !== undefined) this.subs.delete(m.sub); // no longer readable
      // Revoked or expired (the server closes next); a session that never
      // signed in is only closed after a while, and reconnects.
      else if (m.error === 'unauthorized') this.hooks.revoked(m.message);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.type === 'error') {
      // A request anonymous may not make: sign in (a refused `auth` is the
      // sign-in form's own business, a quiet request the caller's).
      if (m.error === 'unauthorized' && p.type !== 'auth' && !p.quiet) this.hooks.unauthorized(m.message);
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
