// The dashboard's session with the server: almanac's JavaScript client
// (clients/js/almanac.js, served as /web/almanac.js) with what the page adds
// to it: the connection state in the header, the sign-in form brought up
// by an `unauthorized` answer, and the hooks main.js sets.
//
// The client reconnects by itself (a backoff from 1 s doubling to 10 s);
// main.js resumes the feeds after each welcome, with `since`, itself,
// because it presents a stored token first and redraws the views after
// (its subscriptions are made with `resume: false`).
//
// `ready` turns true once the welcome is in and a stored token has been
// presented (main.js): until then only `auth` may be sent, so it goes
// before any other request of the connection. `online` is false from a drop
// until the next welcome: every view is stale then (main.js).
import { $ } from './util.js';
import { Almanac } from './almanac.js';

const client = new Almanac(undefined, { backoff: 1000, maxBackoff: 10000 });

export const session = {
  client,
  lastRev: 0, subs: new Map(), // server sub id → Subscription
  ready: false, online: false, authRequired: false, server: '',
  // Set by main.js: welcome(), event(m, kind), sync(kind), dropped(),
  // revoked(message), unauthorized(message) (a request anonymous may not
  // make).
  hooks: {},

  get ws() { return client.ws; },

  connect() { client.open(); },

  // Ends this connection and opens a fresh one at once (after signing out).
  reconnect() { client.reconnect(); },

  // The Retry button: try now instead of after the backoff.
  retry() { client.retry(); },

  // `quiet`: an `unauthorized` answer does not bring up the sign-in form.
  async request(type, fields = {}, { quiet = false } = {}) {
    if (!this.ready && type !== 'auth') throw Object.assign(new Error('not connected'), { code: 'offline' });
    try {
      return await client.request(type, fields);
    } catch (e) {
      // A request anonymous may not make: sign in (a refused `auth` is the
      // sign-in form's own business, a quiet request the caller's).
      if (e.code === 'unauthorized' && type !== 'auth' && !quiet) this.hooks.unauthorized(e.message);
      throw e;
    }
  },

  // A subscription whose events go to hooks.event(m, kind); `live` ones
  // move lastRev with their `sync`. Resolves with the subscription.
  async subscribe(kind, fields, { quiet = false } = {}) {
    if (!this.ready) throw Object.assign(new Error('not connected'), { code: 'offline' });
    const { pattern, ...rest } = fields;
    try {
      const sub = await client.subscribe(pattern, {
        ...rest,
        resume: false,
        onEvent: (m) => this.hooks.event(m, kind),
        onSync: (m) => {
          if (kind === 'live' && m.rev > this.lastRev) this.lastRev = m.rev;
          if (this.hooks.sync) this.hooks.sync(kind);
        },
        onError: () => this.subs.delete(sub.serverId), // no longer readable
      });
      this.subs.set(sub.serverId, sub);
      return sub;
    } catch (e) {
      if (e.code === 'unauthorized' && !quiet) this.hooks.unauthorized(e.message);
      throw e;
    }
  },
};

client.on('connecting', () => {
  session.ready = false;
  setConn('connecting');
});

client.on('welcome', (m) => {
  session.online = true;
  session.authRequired = m.auth_required === true;
  session.server = m.server || '';
  setConn('online');
  session.hooks.welcome();
});

client.on('close', () => {
  session.ready = false;
  session.online = false;
  setConn('offline');
  session.subs.clear();
  if (session.hooks.dropped) session.hooks.dropped();
});

// About the session, not a request: a subscription no longer readable (its
// onError), or the token revoked or expired (the server closes next); a
// session that never signed in is only closed after a while, and reconnects.
client.on('error', (e) => {
  if (e.sub === undefined && e.code === 'unauthorized') session.hooks.revoked(e.message);
});

function setConn(state) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = state === 'online' ? 'connected' : state === 'offline' ? 'disconnected, reconnecting…' : 'connecting…';
}
