"""The session protocol over TCP and the Unix socket, against the real
daemon, with plain sockets: requests and errors, version negotiation,
subscriptions (snapshot, sync, live; live_only; unique; unsubscribe), no gap
and no reorder under concurrent writers, a slow consumer, and abuse."""
import json
import os
import socket
import sqlite3
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
        ls = c.request("ls")
        self.assertIn({"name": "s", "value": False, "children": True, "keys": 2}, ls["children"])
        self.assertGreaterEqual(ls["rev"], rev + 2)  # the rev the answer is of: every write in it
        self.assertEqual([x["key"] for x in c.request("pget", pattern="#", contains="S/B")["entries"]],
                         ["s/b"])
        self.assertEqual(c.request("pget", pattern="#", contains=7)["error"], "bad_request")
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

    def test_hello_minor_above_the_servers_closes(self):
        c = self.client()
        c.send({"type": "hello", "id": 4, "protocol": "1.9"})  # the server speaks 1.0
        err = c.recv()
        self.assertEqual((err["type"], err["id"], err["error"]),
                         ("error", 4, "protocol_unsupported"), err)
        self.assertIn("1.9", err["message"])
        self.assertIsNone(c.recv())  # the connection closes
        c.close()
        c = self.client()
        for bad in ("1.0x", "1", "-1.0"):  # not MAJOR.MINOR: refused, the session goes on
            self.assertEqual(c.request("hello", protocol=bad)["error"], "bad_request", bad)
        self.assertEqual(c.request("hello", protocol="1.0")["protocol"], "1.0")
        c.close()

    def test_unknown_fields_are_refused_and_nothing_is_done(self):
        """API.md "Strictness": every request type with a field it does not
        take gets bad_request naming the field, and nothing is done."""
        w, c = self.client(), self.client()
        self.assertEqual(w.request("set", key="strict/a", text="kept")["type"], "ok")
        watch = self.client()  # sees any change or publish of strict/#
        watch.request("subscribe", pattern="strict/#", live_only=True)
        self.assertEqual(watch.recv()["type"], "sync")
        cases = [
            ("hello", {"protocol": "1.0", "tokn": "x"}, "tokn"),
            ("get", {"key": "strict/a", "envelope": True}, "envelope"),
            ("pget", {"pattern": "strict/#", "limt": 1}, "limt"),
            ("set", {"key": "strict/new", "text": "x", "lables": {"u": "C"}}, "lables"),
            ("set", {"key": "strict/a", "text": "changed", "if_rev ": 1}, "if_rev "),
            ("publish", {"key": "strict/p", "text": "x", "if_rev": 0}, "if_rev"),
            ("delete", {"key": "strict/a", "recursive": True}, "recursive"),
            ("ls", {"key": "strict", "depth": 1}, "depth"),
            ("history", {"pattern": "strict/a", "lables": {"u": "C"}}, "lables"),
            ("history", {"pattern": "strict/a", "label.u": "C"}, "label.u"),
            ("subscribe", {"pattern": "strict/#", "limt": 1}, "limt"),
            ("unsubscribe", {"sub": 1, "all": True}, "all"),
            ("auth", {"token": "not-a-token", "user": "me"}, "user"),
            ("ping", {"payload": 1}, "payload"),
        ]
        for type_, fields, name in cases:
            with self.subTest(type=type_, field=name):
                m = c.request(type_, **fields)
                self.assertEqual((m["type"], m["error"]), ("error", "bad_request"), m)
                self.assertIn(f"unknown field '{name}' in {type_}", m["message"])
        # Nothing was done: no change, no publish, no subscription, and the
        # session goes on with its principal and protocol.
        self.assertEqual(c.request("ping")["type"], "pong")
        self.assertEqual(c.request("get", key="strict/a")["text"], "kept")
        self.assertEqual(c.request("get", key="strict/new")["error"], "not_found")
        self.assertEqual([e["key"] for e in curl(self.d, "GET", "/api/v1/keys/strict/%23")
                          .json()["entries"]], ["strict/a"])
        w.request("set", key="strict/after", text="1")
        self.assertEqual(watch.recv()["key"], "strict/after")  # the first event it sees
        self.assertFalse([m for m in c.events if m["type"] == "event"])  # c subscribed nothing
        self.assertEqual(c.request("hello", protocol="1.0")["type"], "ok")
        for x in (w, c, watch):
            x.close()

    def test_unsubscribe_with_an_unknown_field_keeps_the_subscription(self):
        c, w = self.client(), self.client()
        sid = c.request("subscribe", pattern="strict2/#", live_only=True)["sub"]
        self.assertEqual(c.recv()["type"], "sync")
        m = c.request("unsubscribe", sub=sid, force=True)
        self.assertEqual(m["error"], "bad_request", m)
        self.assertIn("'force'", m["message"])
        w.request("set", key="strict2/x", text="1")
        e = c.recv()
        self.assertEqual((e["type"], e["sub"], e["key"]), ("event", sid, "strict2/x"))
        c.close()
        w.close()

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
        # A live change that made its key says so; the snapshot does not.
        self.assertEqual([e.get("created") for e in snap + live], [None, None, True, None, None])
        # live_only: the sync comes at once; unique drops repeated values.
        ok2 = c.request("subscribe", pattern="sub/3", live_only=True, unique=True)
        self.assertEqual(c.recv()["type"], "sync")
        for v in ("3", "3", "4"):
            w.request("set", key="sub/3", text=v)
        got = [c.recv() for _ in range(4)]  # sub 1 sees three, sub 2 sees one
        mine = [e for e in got if e["sub"] == ok2["sub"]]
        self.assertEqual([e["text"] for e in mine], ["4"])
        self.assertNotIn("created", mine[0])  # sub/3 was there
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
        while True:
            e = watcher.recv()
            if e["key"] == f"$SYS/sessions/{cid}":
                break
        self.assertEqual(e["value"]["transport"], "unix")
        self.assertEqual(e["value"]["address"], "unix")
        self.assertLessEqual(abs(e["ts"] / 1e6 - time.time()), 60)  # since when: its ts
        # Held in memory only: a restart ends every session anyway.
        with sqlite3.connect(os.path.join(self.d.data_dir, "almanac.db")) as db:
            self.assertEqual(db.execute("SELECT count(*) FROM entries WHERE key LIKE "
                                        "'$SYS/sessions/%'").fetchone()[0], 0)
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
        while True:
            e = watcher.recv()
            if e.get("deleted") and e["key"] == f"$SYS/sessions/{cid}":
                break
        watcher.close()

    def test_a_replay_of_the_sessions_keys_is_refused(self):
        # The open sessions' keys change in memory only: history holds none
        # of their changes, even where history_keys covers them, so a replay
        # (since, start) of them cannot be whole. It is refused (take a
        # snapshot); it skipped every session opened or closed since.
        d = Daemon(["--history_keys", "$SYS/#", "--history_keys", "#",
                    "--sys_interval", "0"]).start()
        self.addCleanup(d.cleanup)
        c = Client(d)
        self.addCleanup(c.close)
        ok = c.request("set", key="a", text="x")
        since = ok["rev"]
        other = Client(d)  # opens after `since`: $SYS/sessions/<its id>
        self.addCleanup(other.close)
        e = c.request("subscribe", pattern="$SYS/sessions/#", since=since)
        got = [e] + ([c.recv()] if e["type"] == "ok" else [])
        self.assertEqual(e.get("error"), "history_gone", got)
        e = c.request("subscribe", pattern="$SYS/sessions/#", start=ok["ts"])
        self.assertEqual(e.get("error"), "history_gone", e)

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


class LiveFilters(unittest.TestCase):
    """subscribe with `labels` / `exclude_labels` and `start` (API.md "Session
    lifetime", "Live filters"): the snapshot, the replay and live events pass
    the label filters, a deletion by the value it deleted; `start` replays
    every change from that time, then `sync`, then live, as `since` does for
    a rev, with no gap and no duplicate under a full-speed writer."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--sys_interval", "0"]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.cleanup()
        assert rc == 0, rc

    def client(self, d=None):
        c = Client(d or self.d)
        self.addCleanup(c.close)
        return c

    def set(self, c, key, text, **labels):
        r = c.request("set", key=key, text=text, **({"labels": labels} if labels else {}))
        self.assertEqual(r["type"], "ok", r)
        return r

    def until_sync(self, c):
        """The events of a subscription up to its sync, and the sync."""
        got = [m for m in getattr(c, "events", []) if m["type"] == "event"]
        c.events = []
        while True:
            m = c.recv()
            self.assertIsNotNone(m, "the session closed")
            if m["type"] == "sync":
                return got, m
            got.append(m)

    def test_labels_and_exclude_labels(self):
        w = self.client()
        self.set(w, "lf/a", "a1", unit="C", room="hall")
        self.set(w, "lf/b", "b1", unit="F", room="hall")
        self.set(w, "lf/c", "c1", unit="C", room="attic")
        self.set(w, "lf/d", "d1")  # no labels
        c = self.client()
        ok = c.request("subscribe", pattern="lf/#", labels={"unit": "C"},
                       exclude_labels={"room": "attic"})
        self.assertEqual(ok["type"], "ok", ok)
        snap, sync = self.until_sync(c)
        self.assertEqual([e["key"] for e in snap], ["lf/a"])
        # Live: a value by its labels, a deletion by the value it deleted.
        self.set(w, "lf/e", "e1", unit="C")  # no room: nothing to exclude
        self.set(w, "lf/b", "b2", unit="C", room="attic")  # excluded
        self.set(w, "lf/b", "b3", unit="F")  # not matched
        w.request("delete", key="lf/c")  # its value was excluded: nothing
        w.request("delete", key="lf/a")  # its value matched: the client learns it is gone
        w.request("publish", key="lf/p", text="t", labels={"unit": "C"})
        w.request("publish", key="lf/q", text="t")  # no labels: not matched
        self.set(w, "lf/z", "end", unit="C")
        live = [c.recv() for _ in range(4)]
        self.assertEqual([(e["key"], e.get("deleted", False)) for e in live],
                         [("lf/e", False), ("lf/a", True), ("lf/p", False), ("lf/z", False)])
        self.assertTrue(all(e["sub"] == ok["sub"] and e["rev"] >= sync["rev"] for e in live))
        self.assertEqual(live[2]["labels"], {"unit": "C"})
        # exclude_labels alone: an entry without labels passes.
        c2 = self.client()
        c2.request("subscribe", pattern="lf/#", exclude_labels={"unit": "F"})
        snap, _ = self.until_sync(c2)
        self.assertEqual([e["key"] for e in snap], ["lf/d", "lf/e", "lf/z"])

    def test_start_replays_from_a_time_through_the_label_filters(self):
        w = self.client()
        self.set(w, "ls/old", "o", unit="F")  # before start
        time.sleep(0.01)
        start = self.set(w, "ls/x", "x1", unit="C")["ts"]
        self.set(w, "ls/y", "y1", unit="F")
        w.request("delete", key="ls/x")  # its value matched
        w.request("delete", key="ls/y")  # its value did not
        last = w.request("delete", key="ls/old")  # its value, before the replay, did not
        c = self.client()
        self.assertEqual(c.request("subscribe", pattern="ls/#", start=start)["type"], "ok")
        replay, sync = self.until_sync(c)
        self.assertEqual([(e["key"], e.get("deleted", False)) for e in replay],
                         [("ls/x", False), ("ls/y", False), ("ls/x", True), ("ls/y", True),
                          ("ls/old", True)])
        self.assertEqual(replay[-1]["rev"], last["rev"])
        self.assertGreaterEqual(sync["rev"], last["rev"])
        c.request("subscribe", pattern="ls/#", start=start, labels={"unit": "C"})
        replay, _ = self.until_sync(c)
        self.assertEqual([(e["key"], e.get("deleted", False)) for e in replay],
                         [("ls/x", False), ("ls/x", True)])
        # RFC 3339, to the µs; a start after every change replays nothing.
        t = time.gmtime(start // 1_000_000)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{start % 1_000_000:06d}Z"
        c.request("subscribe", pattern="ls/#", start=text, labels={"unit": "C"})
        self.assertEqual(len(self.until_sync(c)[0]), 2)
        c.request("subscribe", pattern="ls/#", start=int(time.time() * 1e6) + 10**6)
        self.assertEqual(self.until_sync(c)[0], [])
        self.set(w, "ls/live", "1")
        e = c.recv()
        self.assertEqual((e["type"], e["key"]), ("event", "ls/live"))  # then live

    def test_bad_filters_and_start_name_the_field(self):
        c = self.client()
        cases = [
            ({"labels": ["x"]}, "labels"),
            ({"labels": {"unit": 1}}, "labels"),
            ({"labels": "unit=C"}, "labels"),
            ({"exclude_labels": {"room": None}}, "exclude_labels"),
            ({"labels": {f"n{i}": "v" for i in range(17)}}, "labels"),
            ({"start": "yesterday"}, "start"),
            ({"start": True}, "start"),
            ({"start": 1.5}, "start"),
            ({"start": 0, "since": 0}, "since and start"),
        ]
        for fields, name in cases:
            with self.subTest(fields=fields):
                m = c.request("subscribe", pattern="bad/#", **fields)
                self.assertEqual((m["type"], m["error"]), ("error", "bad_request"), m)
                self.assertIn(name, m["message"])
        m = c.request("history", pattern="bad/#", exclude_labels=["x"])
        self.assertEqual(m["error"], "bad_request", m)
        self.assertIn("exclude_labels", m["message"])
        self.assertEqual(c.request("ping")["type"], "pong")
        self.assertFalse([m for m in c.events if m["type"] in ("event", "sync")])

    def test_start_history_gone(self):
        """A start that history no longer reaches back to (history_max_bytes
        pruned the oldest records) gets history_gone, as since does."""
        d = Daemon(["--sys_interval", "0", "--history_max_bytes", "64KiB"]).start()
        self.addCleanup(d.cleanup)
        c = self.client(d)
        first = self.set(c, "gone/0", "first")
        for i in range(60):
            self.set(c, f"gone/{i % 3}", f"{i}:" + "x" * 2000)
        harness.wait_for(lambda: curl(d, "GET", "/api/v1/info").json()["history"]["bytes"]
                         <= 65536, what="history under its cap")
        kept = curl(d, "GET", "/api/v1/history/gone/%23?limit=1000").json()["records"]
        self.assertGreater(kept[0]["rev"], first["rev"])  # pruned
        e = c.request("subscribe", pattern="gone/#", start=first["ts"])
        self.assertEqual(e["error"], "history_gone", e)
        self.assertIn("start", e["message"])
        r = curl(d, "GET", f"/api/v1/events/gone/%23?start={first['ts']}")
        self.assertEqual((r.status, r.json()["error"]), (410, "history_gone"))
        e = c.request("subscribe", pattern="$SYS/#", start=kept[-1]["ts"])  # not in history_keys
        self.assertEqual(e["error"], "history_gone", e)
        # From a time after a record history still holds: served.
        start = next(r["ts"] for r in kept if r["ts"] > kept[0]["ts"])
        self.assertEqual(c.request("subscribe", pattern="gone/#", start=start)["type"], "ok")
        replay, _ = self.until_sync(c)
        self.assertEqual([e["rev"] for e in replay], [r["rev"] for r in kept if r["ts"] >= start])

    def test_start_replay_is_gapless_under_a_full_speed_writer(self):
        """The shape of test_history's `since` test, with a time: writers at
        full speed while subscriptions replay from a moment ago."""
        d = Daemon(["--sys_interval", "0"]).start()
        self.addCleanup(d.cleanup)
        stop = threading.Event()

        def writer():
            n = 0
            while not stop.is_set():
                body = json.dumps({"ops": [{"op": "set", "key": f"w/{(n + i) % 7}", "value": n + i}
                                           for i in range(50)]})
                curl(d, "POST", "/api/v1/batch", body, {"Content-Type": "application/json"})
                n += 50
        threads = [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            subs = []
            for i in range(3):  # start times while writes go on
                # A change of its own before each start, so that there is a
                # replay however slowly the writers go on a loaded machine.
                start = curl(d, "PUT", "/api/v1/keys/w/mark", str(i)).json()["ts"]
                c = self.client(d)
                when = start
                if i == 1:  # RFC 3339, to the µs
                    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start // 1_000_000)) + \
                        f".{start % 1_000_000:06d}Z"
                ok = c.request("subscribe", pattern="w/#", start=when)
                self.assertEqual(ok["type"], "ok", ok)
                subs.append((c, start))
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        final = curl(d, "GET", "/api/v1/info").json()["rev"]
        truth, after = {}, None
        while True:  # every change, from history
            page = curl(d, "GET", "/api/v1/history/w/%23?limit=10000" +
                        (f"&after={after}" if after else "")).json()
            truth.update((r["rev"], r) for r in page["records"])
            after = page["next"]
            if after is None:
                break
        for c, start in subs:
            revs, synced = [], None
            events = list(c.events)
            while True:
                m = events.pop(0) if events else c.recv()
                if m["type"] == "sync":
                    synced = m["rev"]
                elif m["type"] == "event":
                    revs.append(m["rev"])
                    self.assertEqual(m["value"], truth[m["rev"]]["value"])
                if synced is not None and revs and revs[-1] >= max(r for r in truth if r <= final):
                    break
            self.assertGreater(synced, revs[0])  # a replay came before the sync
            want = sorted(r for r in truth if truth[r]["ts"] >= start and r <= revs[-1])
            self.assertEqual(revs, want)  # every change from start once, in order, across the sync


if __name__ == "__main__":
    harness.main()
