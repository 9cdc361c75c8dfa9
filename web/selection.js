// Which key the details show, for the modules that follow it (tree, chart,
// messages, publish) without importing details.js (no import circles): the
// key, and `pick`, how a module asks for another (main.js sets it to
// details.js's select).
export let selected = null;
export function setSelected(key) { selected = key; }
export const selection = { pick: () => {} };
