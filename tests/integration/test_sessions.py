"""The session protocol over TCP and the Unix socket, against the real
daemon, with plain sockets: requests and errors, version negotiation,
subscriptions (snapshot, sync, live; live_only; unique; unsubscribe), no gap
and no reorder under concurrent writers, a slow consumer, and abuse."""
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Client, Daemon, curl  # noqa: E402


class Sessions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sock_path = os.path.join(tempfile.mkdtemp(), "almanac.sock")
        cls.d = Daemon(["--unix_socket", cls.sock_path, "--session_queue_bytes", "256KiB",
                        "--max_message_bytes", "64KiB", "--max_subscriptions", "5"]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.cleanup()
        assert rc == 0, rc

    def client(self):
        return Client(self.d)

    def test_welcome_and_hello(self):
        c = self.client()
        self.assertEqual(c.welcome["type"], "welcome")
        self.assertEqual(c.welcome["protocols"], ["1.0"])
        self.assertTrue(c.welcome["client_id"].startswith("c"))
        self.assertFalse(c.welcome["auth_required"])
        self.assertEqual(c.request("hello", protocol="1.0")["type"], "ok")
        self.assertEqual(c.request("ping"), {"type": "pong", "id": 2})
        c.send({"type": "hello", "id": 9, "protocol": "2.0"})
        err = c.recv()
        self.assertEqual(err["error"], "protocol_unsupported")
        self.assertEqual(err["id"], 9)
        self.assertIsNone(c.recv())  # the connection closes
        c.close()

    def test_requests(self):
        c = self.client()
        r = c.request("set", key="s/a", value={"x": 0.1}, labels={"u": "C"})
        self.assertEqual((r["type"], r["created"]), ("ok", True))
        rev = r["rev"]
        e = c.request("get", key="s/a")
        self.assertEqual(e["type"], "entry")
        self.assertEqual(e["value"], {"x": 0.1})
        self.assertEqual(e["content_type"], "application/json")
        self.assertEqual(e["labels"], {"u": "C"})
        self.assertEqual(e["origin"], "tcp")
        self.assertEqual(c.request("set", key="s/b", text="hi", if_rev=0)["type"], "ok")
        self.assertEqual(c.request("set", key="s/b", text="x", if_rev=0)["error"], "rev_mismatch")
        self.assertEqual(c.request("set", key="s/a", text="y", if_rev=rev)["rev"], rev + 2)
        entries = c.request("pget", pattern="s/+", limit=1)
        self.assertEqual([x["key"] for x in entries["entries"]], ["s/a"])
        self.assertEqual(entries["next"], "s/a")
        self.assertEqual(c.request("pget", pattern="s/+", after="s/a")["entries"][0]["text"], "hi")
        self.assertEqual(c.request("ls", key="s")["children"][0],
                         {"name": "a", "value": True, "children": False})
        self.assertIn({"name": "s", "value": False, "children": True},
                      c.request("ls")["children"])
        self.assertEqual(c.request("delete", key="s/a")["deleted"], 1)
        self.assertEqual(c.request("delete", key="s/#")["deleted"], 1)
        self.assertEqual(c.request("get", key="s/a")["error"], "not_found")
        # The same store as HTTP sees.
        self.assertEqual(c.request("set", key="s/h", base64="AAE=")["type"], "ok")
        self.assertEqual(curl(self.d, "GET", "/api/v1/keys/s/h").body, b"\x00\x01")
        c.close()

    def test_errors(self):
        c = self.client()
        cases = [
            (b"not json\n", None, "bad_request"),
            (b'[1,2]\n', None, "bad_request"),
            (b'{"type":"get","key":"a"}\n', None, "bad_request"),  # no id
            (b'{"type":"frob","id":3}\n', 3, "bad_request"),
            (b'{"type":"get","id":4,"key":"a/+"}\n', 4, "invalid_key"),
            (b'{"type":"pget","id":5,"pattern":"a/#/b"}\n', 5, "invalid_pattern"),
            (b'{"type":"set","id":6,"key":"$SYS/x","text":"1"}\n', 6, "read_only"),
            (b'{"type":"set","id":7,"key":"k"}\n', 7, "invalid_body"),
            (b'{"type":"set","id":8,"key":"k","text":"x","content_type":"application/json"}\n',
             8, "invalid_body"),
            (b'{"type":"unsubscribe","id":9,"sub":99}\n', 9, "not_found"),
        ]
        for raw, rid, code in cases:
            with self.subTest(raw=raw):
                c.send_raw(raw)
                m = c.recv()
                self.assertEqual((m["type"], m["id"], m["error"]), ("error", rid, code), m)
                self.assertTrue(m["message"])
        self.assertEqual(c.request("ping")["type"], "pong")  # the session goes on
        c.close()

    def test_subscribe_snapshot_sync_live(self):
        w = self.client()
        for k in ("sub/1", "sub/2", "other"):
            w.request("set", key=k, text=k)
        c = self.client()
        ok = c.request("subscribe", pattern="sub/#")
        sid = ok["sub"]
        snap = [c.recv(), c.recv()]
        self.assertEqual([e["key"] for e in snap], ["sub/1", "sub/2"])
        self.assertTrue(all(e["type"] == "event" and e["sub"] == sid for e in snap))
        sync = c.recv()
        self.assertEqual(sync["type"], "sync")
        w.request("set", key="sub/3", text="3")
        w.request("set", key="other", text="x")
        w.request("delete", key="sub/1")
        w.request("publish", key="sub/p", text="t")
        live = [c.recv(), c.recv(), c.recv()]
        self.assertEqual([(e["key"], e.get("deleted", False)) for e in live],
                         [("sub/3", False), ("sub/1", True), ("sub/p", False)])
        self.assertTrue(all(e["rev"] > sync["rev"] for e in live[:2]))
        self.assertTrue(live[2]["transient"])
        # live_only: the sync comes at once; unique drops repeated values.
        ok2 = c.request("subscribe", pattern="sub/3", live_only=True, unique=True)
        self.assertEqual(c.recv()["type"], "sync")
        for v in ("3", "3", "4"):
            w.request("set", key="sub/3", text=v)
        got = [c.recv() for _ in range(4)]  # sub 1 sees three, sub 2 sees one
        mine = [e for e in got if e["sub"] == ok2["sub"]]
        self.assertEqual([e["text"] for e in mine], ["4"])
        self.assertEqual(c.request("unsubscribe", sub=sid)["type"], "ok")
        w.request("set", key="sub/9", text="9")
        self.assertEqual(c.request("ping")["type"], "pong")
        self.assertEqual([e for e in c.events if e.get("key") == "sub/9"], [])
        # The per-session limit on subscriptions.
        for i in range(4):
            c.request("subscribe", pattern=f"lim/{i}", live_only=True)
        self.assertEqual(c.request("subscribe", pattern="lim/x")["error"], "bad_request")
        c.close()
        w.close()

    def test_no_gap_no_reorder_under_concurrent_writes(self):
        c = self.client()
        ok = c.request("subscribe", pattern="race/#")
        while c.recv()["type"] != "sync":
            pass
        writers, per = 4, 300

        def write(w):
            wc = self.client()
            for i in range(per):
                # Pipelined: send all, then read all the answers.
                wc.send({"type": "set", "id": i, "key": f"race/{w}/{i}", "text": str(i)})
            for _ in range(per):
                assert wc.recv()["type"] == "ok"
            wc.close()

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        events = [c.recv() for _ in range(writers * per)]
        for t in threads:
            t.join()
        revs = [e["rev"] for e in events]
        self.assertTrue(all(e["sub"] == ok["sub"] for e in events))
        self.assertEqual(revs, sorted(revs))  # in rev order
        self.assertEqual(len(set(revs)), len(revs))
        self.assertEqual(len({e["key"] for e in events}), writers * per)  # none skipped
        c.close()

    def test_slow_consumer_is_closed_others_are_not(self):
        slow = self.client()
        slow.request("subscribe", pattern="slow/#", live_only=True)
        assert slow.recv()["type"] == "sync"
        fast = self.client()
        fast.request("subscribe", pattern="slow/#", live_only=True)
        assert fast.recv()["type"] == "sync"
        w = self.client()
        big = "x" * 50000
        n = 500  # 25 MB of events: more than kernel buffers and the 256 KiB queue
        got = []

        def read_fast():
            while len(got) < n:
                got.append(fast.recv() or {"type": "closed"})

        reader = threading.Thread(target=read_fast)
        reader.start()
        for i in range(n):
            self.assertEqual(w.request("set", key=f"slow/{i % 10}", text=big)["type"], "ok")
        reader.join(30)
        self.assertEqual([m["type"] for m in got], ["event"] * n)  # the fast one got all
        # The slow one: what it reads ends in too_slow, then the close.
        last = None
        while True:
            m = slow.recv()
            if m is None:
                break
            last = m
        self.assertEqual(last["error"], "too_slow")
        self.assertEqual(w.request("ping")["type"], "pong")
        for c in (slow, fast, w):
            c.close()

    def test_abuse(self):
        # A message over max_message_bytes, and no newline in sight.
        c = self.client()
        c.send_raw(b'{"type":"set","id":1,"key":"a","text":"' + b"x" * 70000)
        m = c.recv()
        self.assertEqual(m["error"], "too_large")
        self.assertIsNone(c.recv())
        c.close()
        # A client that vanishes mid-message, and one that sends bytes that
        # are not UTF-8: the server goes on.
        for raw in (b'{"type":"set","id":1,"key":"van', b'\xff\xfe{"type"\n'):
            c = self.client()
            c.send_raw(raw)
            c.close()
        c = self.client()
        self.assertEqual(c.request("ping")["type"], "pong")
        c.close()
        self.assertEqual(curl(self.d, "GET", "/api/v1/keys/van").status, 404)

    def test_sys_keys(self):
        watcher = self.client()
        watcher.request("subscribe", pattern="$SYS/sessions/#", live_only=True)
        self.assertEqual(watcher.recv()["type"], "sync")
        c = Client(unix=self.sock_path)
        cid = c.welcome["client_id"]
        seen = {}
        while len(seen) < 3:
            e = watcher.recv()
            if e["key"].startswith(f"$SYS/sessions/{cid}/"):
                seen[e["key"].rsplit("/", 1)[1]] = e["text"]
        self.assertEqual(seen["transport"], "unix")
        self.assertEqual(seen["address"], "unix")
        self.assertRegex(seen["since"], r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(watcher.request("get", key="$SYS/version")["text"],
                         c.welcome["server"].split("/")[1])
        self.assertGreaterEqual(watcher.request("get", key="$SYS/sessions/count")["value"], 2)
        info = curl(self.d, "GET", "/api/v1/info").json()
        self.assertGreaterEqual(info["sessions"], 2)
        self.assertGreaterEqual(info["subscriptions"], 1)
        self.assertIn("almanac_sessions ", curl(self.d, "GET", "/metrics").body.decode())
        # '#' never matches $-keys; the client cannot write them.
        self.assertFalse([e for e in watcher.request("pget", pattern="#")["entries"]
                          if e["key"].startswith("$")])
        self.assertEqual(c.request("set", key="$SYS/version", text="x")["error"], "read_only")
        c.close()
        gone = set()
        while len(gone) < 3:
            e = watcher.recv()
            if e.get("deleted") and e["key"].startswith(f"$SYS/sessions/{cid}/"):
                gone.add(e["key"])
        watcher.close()

    def test_max_sessions(self):
        d = Daemon(["--max_sessions", "2"]).start()
        try:
            a, b = Client(d), Client(d)
            third = socket.create_connection(("127.0.0.1", d.tcp_port))
            third.settimeout(10)
            f = third.makefile("rb")
            m = json.loads(f.readline())
            self.assertEqual((m["type"], m["error"]), ("error", "unavailable"))
            self.assertEqual(f.readline(), b"")  # closed
            f.close()
            third.close()
            self.assertEqual(a.request("ping")["type"], "pong")
            a.close()
            time.sleep(0.2)
            c = Client(d)  # a place is free again
            self.assertEqual(c.request("ping")["type"], "pong")
            for x in (b, c):
                x.close()
            self.assertEqual(d.stop(), 0)
        finally:
            d.cleanup()

    def test_unix_socket(self):
        c = Client(unix=self.sock_path)
        self.assertEqual(c.welcome["type"], "welcome")
        self.assertEqual(c.request("set", key="unix/k", text="u")["type"], "ok")
        self.assertEqual(c.request("get", key="unix/k")["origin"], "unix")
        c.close()


if __name__ == "__main__":
    harness.main()
