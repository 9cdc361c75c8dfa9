// A subscriber for test_scaleout.py: the shipped JavaScript client
// (clients/js/almanac.js, over the `ws` package) at URL, subscribed to
// PATTERN, reconnecting and resuming by itself. Each welcome it gets and
// each message its subscription delivers (event, sync, reset) is written to
// stdout as one JSON line; it ends when its standard input closes.
//
//   node scaleout_client.mjs URL PATTERN
import WebSocket from 'ws';
import { Almanac } from '../../clients/js/almanac.js';

const [url, pattern] = process.argv.slice(2);
const out = (m) => process.stdout.write(JSON.stringify(m) + '\n');
const db = new Almanac(url, { WebSocket, backoff: 100, maxBackoff: 500 });
db.on('welcome', (w) => out({ type: 'welcome', client_id: w.client_id }));
process.stdin.on('end', () => {
  db.close();
  process.exit(0);
});
process.stdin.resume();
db.open();
await db.ready();
const sub = await db.subscribe(pattern);
for await (const m of sub) out(m);
