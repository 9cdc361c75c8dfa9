"""Large values in blob files (API.md "Large values", ARCHITECTURE.md):
values of at least blob_min_bytes are written once to data_dir/blobs/ and
shared by the entry, its history record and its outbox row; almanac.db
holds only references. What a user checks: every read path gives the bytes
back exact (HTTP GET, sent from the file; a session's get; SSE; history;
pattern get; export); a restart reads them back; a torn tail (a crash
between a blob's write and its commit) is cut at start and logged, a file
nothing references removed; overwrites, deletes and history retention
give the space back (the files shrink); MQTT carries them both ways;
export and import carry them; max_db_bytes caps the blob files too."""
import base64
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Broker, Client, Daemon, curl, wait_for  # noqa: E402

K = "/api/v1/keys/"


def blob_files(d):
    folder = os.path.join(d.data_dir, "blobs")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def blob_bytes(d):
    folder = os.path.join(d.data_dir, "blobs")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in blob_files(d))


class Blobs(unittest.TestCase):
    def daemon(self, *args):
        d = Daemon(["--max_value_bytes", "16MiB", *args]).start()
        self.addCleanup(d.cleanup)
        return d

    def put(self, d, key, data, ctype="application/octet-stream", headers=None):
        r = curl(d, "PUT", K + key, data, {"Content-Type": ctype, **(headers or {})})
        self.assertIn(r.status, (200, 201), r)
        return r.json()["rev"]

    def test_every_read_gives_the_bytes_back_and_the_database_stays_small(self):
        d = self.daemon()
        frame = os.urandom(300_000)
        doc = json.dumps({"pixels": list(range(20000))}).encode()  # a large JSON value
        rev = self.put(d, "cam/1/frame", frame)
        self.put(d, "cam/1/meta", doc, "application/json")
        self.put(d, "cam/1/small", b"tiny")
        # HTTP GET, from the file (a plain 200 with its length and headers).
        r = curl(d, "GET", K + "cam/1/frame")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, frame)
        self.assertEqual(r.headers["content-length"], str(len(frame)))
        self.assertEqual(r.headers["x-almanac-rev"], str(rev))
        self.assertEqual(curl(d, "GET", K + "cam/1/meta").body, doc)
        self.assertEqual(curl(d, "HEAD", K + "cam/1/frame").headers["content-length"],
                         str(len(frame)))
        # A session, a pattern get, SSE and history: the same bytes.
        c = Client(d)
        self.addCleanup(c.close)
        self.assertEqual(base64.b64decode(c.request("get", key="cam/1/frame")["base64"]), frame)
        self.assertEqual(c.request("get", key="cam/1/meta")["value"], json.loads(doc))
        page = curl(d, "GET", K + "cam/1/%2B").json()["entries"]
        self.assertEqual(base64.b64decode(page[0]["base64"]), frame)
        with urllib.request.urlopen(d.url("/api/v1/events/cam/1/frame"), timeout=10) as sse:
            data = b""
            while not data.endswith(b"\n\n"):
                data += sse.readline()
            env = json.loads([ln for ln in data.split(b"\n") if ln.startswith(b"data:")][0][5:])
            self.assertEqual(base64.b64decode(env["base64"]), frame)
        h = curl(d, "GET", "/api/v1/history/cam/1/frame").json()["records"]
        self.assertEqual(base64.b64decode(h[0]["base64"]), frame)
        # Kept once, in a blob file, not in almanac.db.
        self.assertEqual(len(blob_files(d)), 1)
        self.assertEqual(blob_bytes(d), len(frame) + len(doc))
        db = os.path.getsize(os.path.join(d.data_dir, "almanac.db"))
        wal = os.path.join(d.data_dir, "almanac.db-wal")
        db += os.path.getsize(wal) if os.path.exists(wal) else 0
        self.assertLess(db, len(frame), "the value is not in almanac.db's pages")
        # A restart reads them back.
        d.stop()
        d.start()
        self.assertEqual(curl(d, "GET", K + "cam/1/frame").body, frame)
        self.assertEqual(curl(d, "GET", K + "cam/1/small").body, b"tiny")
        h = curl(d, "GET", "/api/v1/history/cam/1/frame").json()["records"]
        self.assertEqual(base64.b64decode(h[0]["base64"]), frame)

    def test_a_torn_tail_is_cut_and_an_orphan_file_removed_at_start(self):
        d = self.daemon()
        frame = os.urandom(200_000)
        self.put(d, "cam/2/frame", frame)
        d.stop()
        first = os.path.join(d.data_dir, "blobs", blob_files(d)[0])
        with open(first, "ab") as f:  # what a crash between write and commit leaves
            f.write(os.urandom(70_000))
        orphan = os.path.join(d.data_dir, "blobs", "00000077.blob")
        with open(orphan, "wb") as f:
            f.write(os.urandom(100_000))
        d.start()
        log = d.log_text()
        self.assertIn("70000 bytes after the last referenced one cut", log)
        self.assertIn("file 77 is referenced by nothing: removed", log)
        self.assertEqual(os.path.getsize(first), len(frame))
        self.assertFalse(os.path.exists(orphan))
        self.assertEqual(curl(d, "GET", K + "cam/2/frame").body, frame)
        # New blobs go on after the cut, not over the value.
        more = os.urandom(150_000)
        self.put(d, "cam/2/next", more)
        self.assertEqual(curl(d, "GET", K + "cam/2/frame").body, frame)
        self.assertEqual(curl(d, "GET", K + "cam/2/next").body, more)

    def test_overwrites_deletes_and_retention_give_the_space_back(self):
        # Small files, so that they fill and are sealed quickly.
        d = self.daemon("--blob_file_bytes", "1MiB", "--history_max_bytes", "64KiB")
        frame = os.urandom(300_000)
        for i in range(12):
            self.put(d, "cam/3/frame", frame[i:] + frame[:i])
        wait_for(lambda: len(blob_files(d)) <= 2, 20, 0.1, "the overwritten files to go")
        self.assertLessEqual(blob_bytes(d), 1 << 20 + 300_000)
        last = frame[11:] + frame[:11]
        self.assertEqual(curl(d, "GET", K + "cam/3/frame").body, last)
        # History keeps at most 64 KiB: older records' blobs are pruned with them.
        self.assertEqual(curl(d, "DELETE", K + "cam/3/frame").status, 200)
        for i in range(4):  # fill and seal the current file with something else
            self.put(d, f"cam/3/other{i}", os.urandom(300_000))
        for i in range(4):
            self.assertEqual(curl(d, "DELETE", K + f"cam/3/other{i}").status, 200)
        self.put(d, "cam/3/last", os.urandom(300_000))
        wait_for(lambda: blob_bytes(d) <= (1 << 20) + 300_000, 25, 0.2, "the files to shrink")

    def test_a_file_mostly_dead_is_compacted(self):
        """A sealed file whose live values fall under half of it: they are
        copied to the current file and the file goes; the values read back
        exact, before and after a restart, with their revs."""
        d = self.daemon("--blob_file_bytes", "1MiB", "--history_retention", "0")
        values = {k: os.urandom(300_000) for k in ("keep/a", "keep/b", "keep/c")}
        revs = {k: self.put(d, k, v) for k, v in values.items()}  # file 1, nearly full
        first = blob_files(d)[0]
        for k in ("keep/a", "keep/b"):  # overwritten: a third of file 1 stays live
            values[k] = os.urandom(300_000)
            revs[k] = self.put(d, k, values[k])
        wait_for(lambda: first not in blob_files(d), 25, 0.1, "file 1 to be compacted away")
        self.assertIn("compacted: 1 live values (300000 bytes)", d.log_text())
        # The copies' writer let go of the file they went to: a writer alone
        # keeps to it while it has room (it counted as busy for good, and the
        # next value opened another file).
        files = blob_files(d)
        values["keep/d"] = os.urandom(100_000)
        revs["keep/d"] = self.put(d, "keep/d", values["keep/d"])
        self.assertEqual(blob_files(d), files)
        for k, v in values.items():
            r = curl(d, "GET", K + k)
            self.assertEqual((r.body, r.headers["x-almanac-rev"]), (v, str(revs[k])), k)
        d.stop()
        d.start()
        for k, v in values.items():
            self.assertEqual(curl(d, "GET", K + k).body, v, k)
        self.assertLessEqual(blob_bytes(d), 1 << 20)

    def test_a_slow_history_read_keeps_its_pruned_blobs(self):
        """A history answer read slowly (its read transaction open for
        minutes) while records it has yet to send are pruned and their keys
        deleted: their files stay until the read ends (they were removed
        under it: the answer was cut short and the log said the database
        was corrupt), then go."""
        d = self.daemon("--blob_file_bytes", "1MiB", "--history_max_bytes", "20MiB")
        a, b = os.urandom(15 << 20), os.urandom(3 << 20)
        self.put(d, "slow/a", a)  # each in a file of its own
        self.put(d, "slow/b", b)
        files = blob_files(d)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # no autotuning
        sock.connect(("127.0.0.1", d.port))
        sock.sendall(b"GET /api/v1/history/slow/%%23?order=asc HTTP/1.1\r\n"
                     b"Host: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % d.port)
        got = sock.recv(65536)
        self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got[:200])
        self.assertEqual(curl(d, "DELETE", K + "slow/a").status, 200)
        self.assertEqual(curl(d, "DELETE", K + "slow/b").status, 200)
        for _ in range(6):  # history over 20 MiB: both records are pruned
            self.put(d, "slow/c", os.urandom(3 << 20))
        wait_for(lambda: not any("base64" in r and r["key"] != "slow/c" for r in
                                 curl(d, "GET", "/api/v1/history/slow/%23").json()["records"]),
                 20, 0.2, "the records to be pruned")
        time.sleep(12)  # the collector looked at least twice
        self.assertTrue(set(files) <= set(blob_files(d)), "removed under the reader")
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sock.close()
        head, body = got.split(b"\r\n\r\n", 1)
        if b"chunked" in head.lower():
            out, rest = [], body
            while True:
                size, rest = rest.split(b"\r\n", 1)
                n = int(size.split(b";")[0], 16)
                if n == 0:
                    break
                out.append(rest[:n])
                rest = rest[n + 2:]
            body = b"".join(out)
        records = json.loads(body)["records"]
        self.assertEqual([r["key"] for r in records[:2]], ["slow/a", "slow/b"])
        self.assertEqual(base64.b64decode(records[0]["base64"]), a)
        self.assertEqual(base64.b64decode(records[1]["base64"]), b)
        self.assertNotIn("corrupt", d.log_text())
        wait_for(lambda: not set(files) & set(blob_files(d)), 70, 0.2,  # a look a minute
                 "the pruned records' files to go once the read ended")

    def test_pages_of_large_values_end_early(self):
        """A page of a pattern get (or of an export) ends once it holds
        16 MiB, with a cursor: 1000 values of 256 MiB could not be held."""
        d = self.daemon()
        values = {f"page/{i:03}": os.urandom(300_000) for i in range(80)}
        for k, v in values.items():
            self.put(d, k, v)
        got, pages = read_pages(lambda after: curl(
            d, "GET", K + "page/%23?limit=1000" + (f"&after={after}" if after else "")).json(),
            "entries")
        self.assertGreater(pages, 1)
        self.assertEqual(got, values)
        lines = curl(d, "GET", "/api/v1/export").body.splitlines()
        exported = {json.loads(x)["key"] for x in lines}
        self.assertTrue(set(values) <= exported)
        # History: a session's page ends early with a cursor; HTTP streams.
        c = Client(d)
        self.addCleanup(c.close)
        got, pages = read_pages(lambda after: c.request(
            "history", pattern="page/#", limit=1000, **({"after": after} if after else {})),
            "records")
        self.assertGreater(pages, 1)
        self.assertEqual(got, values)
        records = curl(d, "GET", "/api/v1/history/page/%23?limit=1000").json()["records"]
        self.assertEqual({r["key"]: base64.b64decode(r["base64"]) for r in records}, values)

    def test_a_large_put_is_refused_before_a_byte_is_written(self):
        """A hostile client's large body: without the privilege it is refused
        at the headers (no blob file grows); one that stops short of its
        Content-Length stores nothing."""
        admin = {"Authorization": "Bearer blob-test-admin-token-0123456789"}
        d = self.daemon("--admin_token", admin["Authorization"][7:])
        r = curl(d, "POST", "/api/v1/tokens",
                 json.dumps({"name": "reader", "read": ["#"], "write": []}), admin)
        reader = {"Authorization": "Bearer " + r.json()["token"]}
        body = os.urandom(2 << 20)
        self.assertEqual(curl(d, "PUT", K + "cam/x", body).status, 401)
        self.assertEqual(curl(d, "PUT", K + "cam/x", body, reader).status, 403)
        self.assertEqual(blob_bytes(d), 0)
        # A body cut short: the connection drops before the last byte.
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(f"PUT {K}cam/cut HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: {admin['Authorization']}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        s.close()
        time.sleep(0.5)
        self.assertEqual(curl(d, "GET", K + "cam/cut", headers=admin).status, 404)
        self.put(d, "cam/ok", body, headers=admin)
        self.assertEqual(curl(d, "GET", K + "cam/ok", headers=admin).body, body)

    def test_mqtt_both_ways(self):
        broker = Broker().start()
        self.addCleanup(broker.cleanup)
        d = self.daemon("--bridge_url", broker.url, "--bridge_client_id", "almanac-blobs")
        time.sleep(0.5)
        snapshot = os.urandom(250_000)  # a camera's JPEG, retained
        broker.pub("frigate/front/snapshot", snapshot)
        wait_for(lambda: curl(d, "GET", K + "frigate/front/snapshot").body == snapshot, 10, 0.1,
                 "the snapshot from MQTT")
        self.assertEqual(len(blob_files(d)), 1)
        out = os.urandom(400_000)
        self.put(d, "firmware/node7", out)
        wait_for(lambda: broker.retained("firmware/node7").get("firmware/node7", (b"",))[0] == out,
                 10, 0.2, "the value retained on the broker")

    def test_export_and_import_carry_them(self):
        a = self.daemon()
        frame = os.urandom(200_000)
        self.put(a, "cam/4/frame", frame)
        exported = curl(a, "GET", "/api/v1/export")
        self.assertEqual(exported.status, 200)
        b = self.daemon()
        r = curl(b, "POST", "/api/v1/import", exported.body,
                 {"Content-Type": "application/x-ndjson"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(curl(b, "GET", K + "cam/4/frame").body, frame)
        self.assertEqual(len(blob_files(b)), 1)

    def test_max_db_bytes_caps_the_blob_files(self):
        d = self.daemon("--max_db_bytes", "2MiB")
        written = 0
        status = 0
        for i in range(20):
            r = curl(d, "PUT", K + f"cap/{i}", os.urandom(300_000),
                     {"Content-Type": "application/octet-stream"})
            status = r.status
            if r.status != 201:
                break
            written += 300_000
        self.assertEqual(status, 507, "refused once full")
        self.assertLessEqual(blob_bytes(d), 2 << 20)
        self.assertEqual(curl(d, "GET", K + "cap/0").status, 200)  # what was there stays


def read_pages(fetch, field):
    """Every page of a paged answer (`fetch(after)`), following `next`: the
    values by key, and how many pages there were."""
    got, after, pages = {}, None, 0
    while True:
        page = fetch(after)
        pages += 1
        for x in page[field]:
            got[x["key"]] = base64.b64decode(x["base64"])
        after = page["next"]
        if after is None:
            return got, pages


def memory_kib(d, field):
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def read_sampling_heap(d, path):
    """The body of GET `path` (read by curl), and how far the daemon's
    anonymous memory rose above where it was while it was read (KiB)."""
    base = memory_kib(d, "RssAnon")
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], memory_kib(d, "RssAnon"))
            time.sleep(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        body = subprocess.run(["curl", "-sS", "--fail", d.url(path)], capture_output=True,
                              check=True, timeout=120).stdout
    finally:
        done.set()
        sampler.join()
    return body, peak[0] - base


class Huge(unittest.TestCase):
    """A 100 MiB value goes in over HTTP (streamed to its blob file: the
    process's peak memory does not grow by the value's size) and over MQTT,
    and comes back byte-exact."""

    def test_a_100_mib_value(self):
        broker = Broker().start()
        self.addCleanup(broker.cleanup)
        d = Daemon(["--max_value_bytes", "256MiB", "--bridge_url", broker.url,
                    "--bridge_client_id", "almanac-huge", "--bridge_map", "in mqtt/#"]).start()
        self.addCleanup(d.cleanup)
        path = os.path.join(d.data_dir, "..", f"huge-{os.getpid()}.bin")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        with open(path, "wb") as f:
            for _ in range(100):
                f.write(os.urandom(1 << 20))
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        peak = memory_kib(d, "VmHWM")
        out = subprocess.run(["curl", "-sS", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                              "--data-binary", "@" + path, d.url(K + "huge/http")],
                             capture_output=True, timeout=120)
        self.assertIn(b'"rev"', out.stdout, out)
        grew = memory_kib(d, "VmHWM") - peak
        self.assertLess(grew, 32 * 1024, f"the peak grew by {grew} KiB for a 100 MiB body")
        got = subprocess.run(["curl", "-sS", d.url(K + "huge/http")], capture_output=True,
                             timeout=120).stdout
        self.assertEqual(hashlib.sha256(got).hexdigest(), digest)
        # History and export stream it from its file a piece at a time: the
        # heap (RssAnon, sampled while curl reads) never holds it.
        for route, find in (("/api/v1/history/huge/http", lambda b: json.loads(b)["records"][0]),
                           ("/api/v1/export", lambda b: next(
                               x for x in map(json.loads, b.splitlines()) if x["key"] == "huge/http"))):
            got, grew = read_sampling_heap(d, route)
            value = base64.b64decode(find(got)["base64"])
            self.assertEqual(hashlib.sha256(value).hexdigest(), digest, route)
            self.assertLess(grew, 16 * 1024, f"{route}: the heap grew by {grew} KiB for 100 MiB")
        # Over MQTT: Paho reads the whole message into a buffer of its own
        # (and keeps a buffer that size); almanac writes the payload to its
        # blob file from there, without a copy of its own.
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "mqtt/huge", "-r", "-q", "1",
                        "-f", path], check=True, timeout=120)
        wait_for(lambda: curl(d, "HEAD", K + "mqtt/huge").headers.get("content-length")
                 == str(100 << 20), 60, 0.2, "the 100 MiB message")
        got = subprocess.run(["curl", "-sS", d.url(K + "mqtt/huge")], capture_output=True,
                             timeout=120).stdout
        self.assertEqual(hashlib.sha256(got).hexdigest(), digest)


class Crash(unittest.TestCase):
    """SIGKILL while writers PUT values of random sizes from 1 byte to 8 MiB
    (most large enough for a blob file): every acknowledged value reads back
    byte-exact (its SHA-256), round after round on the same data."""

    ROUNDS = 3
    WRITERS = 4

    def writer(self, port, rnd, w, acked, stop):
        rng = random.Random(rnd * 100 + w)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                size = min(8 << 20, max(1, int(rng.expovariate(1 / (400 << 10)))))
                body = rng.randbytes(size)
                key = f"crash/{rnd}/{w}/{n}"
                conn.request("PUT", "/api/v1/keys/" + key, body,
                             {"Content-Type": "application/octet-stream"})
                r = conn.getresponse()
                r.read()
                if r.status in (200, 201):
                    acked[key] = hashlib.sha256(body).hexdigest()
        except (OSError, http.client.HTTPException):
            pass  # the kill
        finally:
            conn.close()

    def test_acknowledged_large_values_survive_sigkill(self):
        d = Daemon(["--max_value_bytes", "8MiB", "--blob_file_bytes", "16MiB"])
        self.addCleanup(d.cleanup)
        acked = {}
        for rnd in range(self.ROUNDS):
            d.start()
            stop = threading.Event()
            before = len(acked)
            threads = [threading.Thread(target=self.writer, args=(d.port, rnd, w, acked, stop))
                       for w in range(self.WRITERS)]
            for t in threads:
                t.start()
            wait_for(lambda: len(acked) >= before + 20, 60, 0.01, "writes to flow")
            time.sleep(random.uniform(0, 0.5))
            d.stop(signal.SIGKILL)
            stop.set()
            for t in threads:
                t.join()
            d.start()
            lost = []
            for key, digest in sorted(acked.items()):
                r = curl(d, "GET", K + key)
                if r.status != 200 or hashlib.sha256(r.body).hexdigest() != digest:
                    lost.append((key, r.status))
            self.assertEqual(lost[:5], [], f"round {rnd}: {len(lost)} acknowledged values lost")
            d.stop(signal.SIGKILL)
        print(f"{len(acked)} acknowledged values checked over {self.ROUNDS} rounds; "
              f"blob files: {len(blob_files(d))}", file=sys.stderr)


if __name__ == "__main__":
    harness.main()
