"""Sessions that clean up after themselves (API.md "Session lifetime"): a
last will set and grave goods deleted when a session ends without bye (a
dropped TCP socket, a dropped WebSocket, too_slow) and by the next start
after a SIGKILL; bye, which keeps the will from being set; the write
privilege they need; locks held by a session, waited for, released when it
ends, and shown under $SYS/locks."""
import base64
import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Client, Daemon, curl, wait_for  # noqa: E402

K = "/api/v1/keys/"
WILL = [{"key": "dev/1/status", "text": "offline"},
        {"key": "dev/1/seen", "value": {"why": "gone"}, "labels": {"by": "will"}}]


class WebSocket:
    """A minimal WebSocket session client over a raw socket (RFC 6455)."""

    def __init__(self, d):
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Protocol: almanac.v1\r\n\r\n".encode())
        self.f = self.sock.makefile("rb")
        assert b" 101 " in self.f.readline()
        while self.f.readline() not in (b"\r\n", b""):
            pass
        self.welcome = self.recv()

    def recv(self):
        head = self.f.read(2)
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(self.f.read(2), "big")
        return json.loads(self.f.read(n))

    def close(self):
        self.f.close()
        self.sock.close()

    def send(self, msg):
        data = json.dumps(msg).encode()
        mask = os.urandom(4)
        hdr = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else \
            bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


class Lifetime(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["--session_queue_bytes", "64KiB"]).start()
        self.addCleanup(self.d.cleanup)

    def get(self, key):
        r = curl(self.d, "GET", K + key + "?envelope=1")
        return r.json() if r.status == 200 else None

    def graves(self, n=2):
        for i in range(n):
            self.assertEqual(curl(self.d, "PUT", K + f"tmp/1/{i}", "x").status, 201)

    def assert_will_applied(self, since):
        wait_for(lambda: self.get("dev/1/status") is not None, timeout=3, what="the will")
        e = self.get("dev/1/status")
        self.assertEqual((e["text"], e["origin"]), ("offline", "tcp" if since else e["origin"]))
        self.assertEqual(self.get("dev/1/seen")["labels"], {"by": "will"})
        self.assertIsNone(self.get("tmp/1/0"))
        self.assertIsNone(self.get("tmp/1/1"))
        # one commit: the will and the grave goods share its time
        recs = curl(self.d, "GET", "/api/v1/history/%23?start=" + str(since)).json()["records"]
        stamps = {r["ts"] for r in recs if r["key"] in ("dev/1/status", "tmp/1/0")}
        self.assertEqual(len(stamps), 1, recs)

    def test_dropped_tcp_socket(self):
        c = Client(self.d)
        m = c.request("hello", protocol="1.0", last_will=WILL, grave_goods=["tmp/1/#"])
        self.assertEqual(m["type"], "ok", m)
        self.graves()
        since = int(time.time() * 1e6)
        c.close()  # no bye
        self.assert_will_applied(since)
        self.assertEqual(curl(self.d, "GET", K + "$wills/%2B").json()["entries"], [])

    def test_bye_keeps_the_will_but_not_the_grave_goods(self):
        c = Client(self.d)
        self.assertEqual(c.request("will", last_will=WILL)["type"], "ok")
        self.assertEqual(c.request("will", grave_goods=["tmp/1/#"])["type"], "ok")  # adds
        self.graves()
        self.assertEqual(c.request("bye")["type"], "ok")
        self.assertIsNone(c.recv())  # closed
        wait_for(lambda: self.get("tmp/1/0") is None, timeout=3, what="the grave goods")
        time.sleep(0.3)
        self.assertIsNone(self.get("dev/1/status"))

    def test_dropped_websocket(self):
        ws = WebSocket(self.d)
        ws.send({"type": "will", "id": 1, "last_will": WILL, "grave_goods": ["tmp/1/+"]})
        self.assertEqual(ws.recv()["type"], "ok")
        ws.send({"type": "lock", "id": 2, "key": "valve"})
        self.assertEqual(ws.recv()["type"], "ok")
        self.graves()
        other = Client(self.d)
        self.assertEqual(other.request("lock", key="valve")["error"], "locked")
        other.send({"type": "lock", "id": 9, "key": "valve", "wait_ms": 5000})
        since = int(time.time() * 1e6)
        ws.close()  # dropped, no close frame
        self.assertEqual(other.recv()["type"], "ok")  # the lock, released with the session
        other.close()
        wait_for(lambda: self.get("dev/1/status") is not None, timeout=3, what="the will")
        self.assertEqual(self.get("dev/1/status")["origin"], "ws")
        self.assertIsNone(self.get("tmp/1/0"))
        recs = curl(self.d, "GET", "/api/v1/history/tmp/1/0?start=" + str(since)).json()
        self.assertEqual([r.get("deleted") for r in recs["records"]], [True])

    def test_websocket_ttl_and_bye(self):
        ws = WebSocket(self.d)
        ws.send({"type": "set", "id": 1, "key": "w/brief", "text": "x", "ttl": "1s"})
        self.assertEqual(ws.recv()["type"], "ok")
        ws.send({"type": "get", "id": 2, "key": "w/brief"})
        self.assertGreater(ws.recv()["expires"], int(time.time() * 1e6))
        ws.send({"type": "will", "id": 3, "last_will": WILL, "grave_goods": ["tmp/1/#"]})
        self.assertEqual(ws.recv()["type"], "ok")
        self.graves()
        ws.send({"type": "bye", "id": 4})
        self.assertEqual(ws.recv()["type"], "ok")
        wait_for(lambda: self.get("tmp/1/0") is None, timeout=3, what="the grave goods")
        wait_for(lambda: self.get("w/brief") is None, timeout=3, what="w/brief to expire")
        self.assertIsNone(self.get("dev/1/status"))  # bye: no will
        ws.close()

    def test_too_slow(self):
        c = Client(self.d)
        c.request("hello", protocol="1.0", last_will=WILL, grave_goods=["tmp/1/#"])
        self.graves()
        c.request("subscribe", pattern="flood/#", live_only=True)
        big = "y" * 30000
        for i in range(200):  # 6 MB of events the client never reads
            curl(self.d, "PUT", K + f"flood/{i % 5}", big)
            if self.get("dev/1/status") is not None:
                break
        wait_for(lambda: self.get("dev/1/status") is not None, timeout=5,
                 what="the will of a session ended too_slow")
        self.assertIsNone(self.get("tmp/1/0"))
        c.close()

    def test_sigkill(self):
        c = Client(self.d)
        c.request("hello", protocol="1.0", last_will=WILL, grave_goods=["tmp/1/#"])
        self.assertEqual(c.request("lock", key="pump")["type"], "ok")
        self.graves()
        wait_for(lambda: curl(self.d, "GET", K + "$SYS/locks/pump").status == 200,
                 what="$SYS/locks/pump")
        self.d.stop(signal.SIGKILL)
        c.close()
        self.d.start()
        wait_for(lambda: self.get("dev/1/status") is not None, timeout=3,
                 what="the will, applied at the next start")
        self.assertEqual(self.get("dev/1/status")["origin"], "tcp")
        self.assertIsNone(self.get("tmp/1/0"))
        self.assertIn("applied the will of", self.d.log_text())
        # a lock does not outlive the server that held it
        wait_for(lambda: curl(self.d, "GET", K + "$SYS/locks/pump").status == 404,
                 what="the stale $SYS/locks/pump to go")

    def test_bad_wills_change_nothing(self):
        c = Client(self.d)
        for fields, code in [({"last_will": "x"}, "bad_request"),
                             ({"last_will": [{"key": "a/#", "text": "x"}]}, "invalid_key"),
                             ({"last_will": [{"key": "a", "text": "x", "ttl": 1}]}, "bad_request"),
                             ({"last_will": [{"key": "a"}]}, "invalid_body"),
                             ({"grave_goods": [1]}, "bad_request"),
                             ({"grave_goods": ["a/#/b"]}, "invalid_pattern"),
                             ({}, "bad_request")]:
            m = c.request("will", **fields)
            self.assertEqual(m.get("error"), code, (fields, m))
        c.close()
        time.sleep(0.5)
        self.assertEqual(curl(self.d, "GET", K + "%23").json()["entries"], [])


class Privileges(unittest.TestCase):
    def test_a_will_needs_write_of_what_it_touches(self):
        admin = "lifetime-admin-token-0001"
        d = Daemon(["--admin_token", admin]).start()
        self.addCleanup(d.cleanup)
        r = curl(d, "POST", "/api/v1/tokens",
                 json.dumps({"name": "dev", "read": ["dev/#"], "write": ["dev/1/#"]}),
                 {"Authorization": f"Bearer {admin}"})
        token = r.json()["token"]
        c = Client(d)
        c.request("auth", token=token)
        m = c.request("will", last_will=[{"key": "dev/2/status", "text": "offline"}])
        self.assertEqual(m["error"], "forbidden", m)
        self.assertIn("dev/2/status", m["message"])
        self.assertEqual(c.request("will", grave_goods=["dev/#"])["error"], "forbidden")
        self.assertEqual(c.request("lock", key="dev/2/x")["error"], "forbidden")
        self.assertEqual(c.request("will", grave_goods=["dev/1/#"])["type"], "ok")
        self.assertEqual(c.request("lock", key="dev/1/x")["type"], "ok")
        c.close()


class Locks(unittest.TestCase):
    def setUp(self):
        self.d = Daemon().start()
        self.addCleanup(self.d.cleanup)

    def holder(self):
        r = curl(self.d, "GET", K + "$SYS/locks/pump/1")
        return r.body.decode() if r.status == 200 else None

    def test_locks(self):
        a, b, c = Client(self.d), Client(self.d), Client(self.d)
        self.assertEqual(a.request("lock", key="pump/1")["type"], "ok")
        self.assertEqual(a.request("lock", key="pump/1")["type"], "ok")  # held already
        wait_for(lambda: self.holder() == a.welcome["client_id"], what="$SYS/locks/pump/1")
        m = b.request("lock", key="pump/1")
        self.assertEqual(m["error"], "locked", m)
        # a wait that runs out
        t0 = time.time()
        m = c.request("lock", key="pump/1", wait_ms=300)
        self.assertEqual(m["error"], "locked", m)
        self.assertTrue(0.25 < time.time() - t0 < 1.0, time.time() - t0)
        # b waits; a is killed (its socket closed): b has it within a second
        b.send({"type": "lock", "id": 50, "key": "pump/1", "wait_ms": 10000})
        time.sleep(0.2)
        t0 = time.time()
        a.close()
        m = b.recv()
        self.assertEqual((m["id"], m["type"]), (50, "ok"), m)
        self.assertLess(time.time() - t0, 1.0)
        wait_for(lambda: self.holder() == b.welcome["client_id"], what="the new holder")
        self.assertEqual(c.request("unlock", key="pump/1")["error"], "not_found")
        self.assertEqual(b.request("unlock", key="pump/1")["type"], "ok")
        wait_for(lambda: self.holder() is None, what="$SYS/locks/pump/1 to go")
        self.assertEqual(c.request("lock", key="pump/1")["type"], "ok")
        for bad in [{"key": "p/#"}, {"key": "p", "wait_ms": -1}, {"key": "p", "wait_ms": "1s"}]:
            self.assertIn(c.request("lock", **bad)["error"], ("invalid_key", "bad_request"), bad)
        for x in (b, c):
            x.close()


if __name__ == "__main__":
    harness.main()
