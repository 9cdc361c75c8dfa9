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
