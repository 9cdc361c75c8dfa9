// Who is signed in (API.md "Access control"): the token, kept in
// sessionStorage (this tab only, gone when it closes, never localStorage, a
// cookie or the URL), the sign-in form in place of the panes, the header's
// "signed in as".
import { $ } from './util.js';
import { session } from './connection.js';
// What main.js does for a sign-in or out (it sets these: no import circle).
export const authHooks = { clearView: () => {}, restartFeeds: async () => {}, forgetInfo: () => {} };
import { render } from './tree.js';

const TOKEN_KEY = 'almanac.token';
export const auth = {
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

export function signedIn(name) {
  auth.principal = name;
  authHooks.forgetInfo();
  $('edit-msg').textContent = $('pdelete-msg').textContent = '';
  setWho();
}

// The server ended the token's session (revoked, expired) or refused the
// token this tab kept: it is forgotten, and so is what it showed.
export function signedOut(message) {
  auth.forget();
  authHooks.forgetInfo();
  session.lastRev = 0; // the next connection starts afresh
  authHooks.clearView();
  showSignIn(/revoked|expired/i.test(message)
    ? `Signed out: ${message}. Sign in again with a valid token.`
    : `Signed out: the token was revoked or has expired. The server said: ${message}. Sign in again with a valid token.`);
}

// A request anonymous may not make.
export function needSignIn(message) {
  if (auth.principal) signedOut(message); // the token no longer counts
  else showSignIn(`Sign in to go on: ${message}.`);
}

export function setWho() {
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
export function showSignIn(message) {
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

export function initAuth() {
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
      await authHooks.restartFeeds();
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
    authHooks.forgetInfo();
    setWho();
    session.lastRev = 0;
    authHooks.clearView();
    signInSay('Signed out.', true); // shown if the new connection asks for a token
    session.reconnect(); // anonymous from its start
  });
  setWho();
}
