// Small helpers every module of the dashboard uses: the element lookup, the
// message lines, and the conversions between a value's bytes and the ways
// it is shown and edited (text, hex, base64). No state.

export const $ = (id) => document.getElementById(id);

// A message line (role=alert or status): `ok` green, else red.
export function say(where, text, ok) {
  const m = $(where);
  m.textContent = text;
  m.className = 'msg ' + (text ? (ok ? 'ok' : 'err') : '');
}

export function bytesFromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export function base64FromBytes(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// 16 bytes a line, as the details show them.
export function hexFromBytes(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, '0') + (i % 16 === 15 ? '\n' : ' ');
  return out.trim();
}

// Hex digits in pairs; spaces, newlines and an 0x prefix are allowed.
export function bytesFromHex(text) {
  const digits = text.replace(/0x/gi, '').replace(/[\s,:]/g, '');
  if (!/^[0-9a-fA-F]*$/.test(digits) || digits.length % 2) throw new Error('not hex: use pairs of 0-9 and a-f');
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// Standard base64, whitespace allowed; throws when it is not.
export function bytesFromBase64Text(text) {
  const t = text.replace(/\s/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t) || t.length % 4) throw new Error('not base64');
  return bytesFromBase64(t);
}

// The bytes of an entry (API.md "Entry envelope": value, text or base64).
export function entryBytes(e) {
  if ('base64' in e) return bytesFromBase64(e.base64);
  const text = 'text' in e ? e.text : JSON.stringify(e.value);
  return new TextEncoder().encode(text);
}

// The short text of a value in a tree row.
export function shortValue(e) {
  if ('value' in e) return JSON.stringify(e.value).slice(0, 80);
  if ('text' in e) return e.text.slice(0, 80);
  if ('base64' in e) return `‹${Math.floor(e.base64.length / 4 * 3) - (e.base64.match(/=*$/)[0].length)} bytes›`;
  return '';
}

// One time format for the whole page: the user's locale and time zone.
export function timeText(us) {
  return new Date(us / 1000).toLocaleString(undefined, {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}
