"""Server-Sent Events (GET /api/v1/events/{pattern}) against the real daemon,
read with `curl -N` as a shell script would, and with a raw socket for a
reader that stops reading."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402


class SseReader:
    """curl -N on an event stream, parsed into (event, id, data) as it comes."""

    def __init__(self, daemon, path, headers=()):
        cmd = ["curl", "-sN", "-g"]
        for h in headers:
            cmd += ["-H", h]
        self.proc = subprocess.Popen(cmd + [daemon.url(path)], stdout=subprocess.PIPE)
        self.events = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        ev = {}
        for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            if line == "":
                if ev:
                    with self.cond:
                        self.events.append(ev)
                        self.cond.notify_all()
                ev = {}
                continue
            if line.startswith(":"):
                continue  # a comment (the heartbeat's `: keepalive`), not a field of an event
            field, _, value = line.partition(": ")
            ev[field] = json.loads(value) if field == "data" else value
        with self.cond:
            self.events.append(None)  # the stream ended
            self.cond.notify_all()

    def wait(self, n, timeout=10):
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout)
            assert len(self.events) >= n, self.events
            return self.events[:n]

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Sse(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--session_queue_bytes", "64KiB"]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.cleanup()
        assert rc == 0, rc  # a clean stop; under LeakSanitizer, no leak

    def put(self, key, body):
        r = curl(self.d, "PUT", "/api/v1/keys/" + key, body)
        self.assertIn(r.status, (200, 201), r)
        return r.json()["rev"]

    def test_snapshot_sync_live(self):
        r1 = self.put("sse/a", "1")
        self.put("other", "x")
        s = SseReader(self.d, "/api/v1/events/sse/%23")
        first = s.wait(2)
        self.assertEqual(first[0]["event"], "put")
        self.assertEqual(first[0]["id"], str(r1))
        self.assertEqual(first[0]["data"]["key"], "sse/a")
        self.assertEqual(first[0]["data"]["value"], 1)
        self.assertEqual(first[1]["event"], "sync")
        sync = first[1]["data"]["rev"]
        r2 = self.put("sse/b", '"two"')
        self.put("other", "y")
        r3 = curl(self.d, "DELETE", "/api/v1/keys/sse/a").json()["rev"]
        live = s.wait(4)[2:]
        self.assertEqual([(e["event"], e["id"]) for e in live], [("put", str(r2)),
                                                                 ("delete", str(r3))])
        self.assertTrue(r2 > sync)
        # A live change that made its key says so, as in sessions; the
        # snapshot does not.
        self.assertTrue(live[0]["data"]["created"])
        self.assertNotIn("created", first[0]["data"])
        self.assertEqual(live[1]["data"], {"key": "sse/a", "rev": r3,
                                           "ts": live[1]["data"]["ts"], "deleted": True})
        s.close()

    def test_live_only_and_resume_header(self):
        self.put("lo/a", "1")
        s = SseReader(self.d, "/api/v1/events/lo/%23?live_only=1")
        self.assertEqual(s.wait(1)[0]["event"], "sync")
        self.put("lo/b", "2")
        self.assertEqual(s.wait(2)[1]["data"]["key"], "lo/b")
        s.close()
        # What EventSource sends on a reconnect: the stream starts again.
        s = SseReader(self.d, "/api/v1/events/lo/%23", ["Last-Event-ID: 1"])
        evs = s.wait(3)
        self.assertEqual([e["event"] for e in evs], ["put", "put", "sync"])
        s.close()

    def put_labelled(self, key, body, **labels):
        headers = {f"X-Almanac-Label-{k}": v for k, v in labels.items()}
        r = curl(self.d, "PUT", "/api/v1/keys/" + key, body, headers)
        self.assertIn(r.status, (200, 201), r)
        return r.json()

    def test_label_and_exclude_filters(self):
        self.put_labelled("sl/a", "1", unit="C", room="hall")
        self.put_labelled("sl/b", "2", unit="F")
        self.put_labelled("sl/c", "3", unit="C", room="attic")
        self.put("sl/d", "4")  # no labels
        s = SseReader(self.d, "/api/v1/events/sl/%23?label.unit=C&exclude.room=attic")
        first = s.wait(2)
        self.assertEqual([(e["event"], e["data"].get("key")) for e in first],
                         [("put", "sl/a"), ("sync", None)])
        self.put_labelled("sl/e", "5", unit="C")  # no room: nothing to exclude
        self.put_labelled("sl/b", "6", unit="C", room="attic")  # excluded
        curl(self.d, "DELETE", "/api/v1/keys/sl/c")  # its value was excluded: nothing
        gone = curl(self.d, "DELETE", "/api/v1/keys/sl/a").json()["rev"]  # its value matched
        self.put_labelled("sl/z", "7", unit="C")
        live = s.wait(5)[2:]
        self.assertEqual([(e["event"], e["data"]["key"]) for e in live],
                         [("put", "sl/e"), ("delete", "sl/a"), ("put", "sl/z")])
        self.assertEqual(live[1]["id"], str(gone))
        s.close()
        # exclude. alone: an entry without labels passes.
        s = SseReader(self.d, "/api/v1/events/sl/%23?exclude.unit=F")
        self.assertEqual([e["data"].get("key") for e in s.wait(5)],
                         ["sl/b", "sl/d", "sl/e", "sl/z", None])  # sl/b is unit C now
        s.close()

    def test_start_replays_from_a_time(self):
        a = self.put_labelled("st/a", "1", unit="C")
        start = a["ts"]
        r2 = self.put_labelled("st/b", "2", unit="F")["rev"]
        r3 = curl(self.d, "DELETE", "/api/v1/keys/st/a").json()["rev"]
        s = SseReader(self.d, f"/api/v1/events/st/%23?start={start}")
        evs = s.wait(4)
        self.assertEqual([(e["event"], e["data"].get("key")) for e in evs],
                         [("put", "st/a"), ("put", "st/b"), ("delete", "st/a"), ("sync", None)])
        self.assertEqual(evs[2]["id"], str(r3))
        r4 = self.put("st/c", "3")
        self.assertEqual(s.wait(5)[4]["id"], str(r4))  # then live
        s.close()
        # RFC 3339 to the µs, with a label filter: a deletion by the value it deleted.
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start // 1_000_000))
        s = SseReader(self.d, f"/api/v1/events/st/%23?start={t}.{start % 1_000_000:06d}Z"
                              "&label.unit=C")
        evs = s.wait(3)
        self.assertEqual([(e["event"], e.get("id")) for e in evs[:2]],
                         [("put", str(a["rev"])), ("delete", str(r3))])
        self.assertEqual(evs[2]["event"], "sync")
        self.assertGreaterEqual(int(evs[2]["id"]), r4)
        s.close()
        # An EventSource reconnecting repeats the URL: Last-Event-ID wins over start.
        s = SseReader(self.d, f"/api/v1/events/st/%23?start={start}", [f"Last-Event-ID: {r3}"])
        self.assertEqual([(e["event"], e.get("id")) for e in s.wait(2)][0], ("put", str(r4)))
        self.assertEqual(s.wait(2)[1]["event"], "sync")
        s.close()

    def test_bad_filters_and_start(self):
        cases = [("start=soon", "start"), ("start=1&since=1", "since and start"),
                 ("label.unit", "label.unit"),
                 ("&".join(f"exclude.n{i}=v" for i in range(17)), "exclude.n16"),
                 ("exclud.unit=C", "exclud.unit")]
        for q, name in cases:
            with self.subTest(q=q):
                r = curl(self.d, "GET", f"/api/v1/events/bad/%23?{q}")
                self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"), r)
                self.assertIn(name, r.json()["message"])

    def test_bad_pattern(self):
        r = curl(self.d, "GET", "/api/v1/events/a/%23/b")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"], "invalid_pattern")

    def test_slow_reader_gets_too_slow(self):
        sock = socket.create_connection(("127.0.0.1", self.d.port))
        sock.sendall(b"GET /api/v1/events/slowsse/%23?live_only=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)  # subscribed; now it reads nothing
        big = "z" * 30000
        for i in range(400):  # 12 MB: past socket buffers and the 64 KiB queue
            self.put(f"slowsse/{i % 5}", big)
        data = b""
        sock.settimeout(10)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if b"too_slow" in data and data.endswith(b"\r\n\r\n"):
                break
        sock.close()
        self.assertIn(b"event: error", data)
        self.assertIn(b'"error":"too_slow"', data)

    def test_stop_with_open_streams(self):
        d = Daemon().start()
        try:
            s = SseReader(d, "/api/v1/events/%23")
            s.wait(1)
            t = time.time()
            self.assertEqual(d.stop(), 0)
            self.assertLess(time.time() - t, 5)
            self.assertIsNone(s.wait(2)[-1])  # the stream ended
            s.close()
        finally:
            d.cleanup()


if __name__ == "__main__":
    harness.main()
