"""Tests of almanac.py against the real daemon on free ports (the Daemon of
tests/integration/harness.py): the HTTP client's requests and errors, the
asyncio session's requests, subscriptions (snapshot → sync → live), their
resumption with ``since`` after a dropped socket and after a restart of the
daemon (no change missed, none twice), a fresh snapshot after
``history_gone``, history, the Unix socket, and tokens.

Run: python3 test_almanac.py --binary path/to/almanac
"""
import asyncio
import os
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "integration"))

import harness  # noqa: E402
from harness import Daemon, free_port  # noqa: E402
from almanac import AlmanacError, Client, Session, value_of  # noqa: E402


class Collector:
    """A subscription's messages, read in the background."""

    def __init__(self, sub):
        self.sub = sub
        self.got = []
        self.changed = asyncio.Event()
        self.error = None
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for m in self.sub:
                self.got.append(m)
                self.changed.set()
        except AlmanacError as e:
            self.error = e
            self.changed.set()

    async def until(self, match, timeout=10):
        async def wait():
            while True:
                for m in self.got:
                    if match(m):
                        return m
                self.changed.clear()
                await self.changed.wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no such message in {timeout} s; got {self.got}") from None


class HttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon().start()
        cls.db = Client(cls.daemon.url(""))

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.daemon.cleanup()

    def assertCode(self, code, status, fn, *args, **kwargs):
        with self.assertRaises(AlmanacError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(cm.exception.code, code, cm.exception.message)
        self.assertEqual(cm.exception.status, status)
        return cm.exception

    def test_get_set_delete(self):
        db = self.db
        r = db.set("home/kitchen/temp", 21.5, labels={"unit": "C"})
        self.assertGreater(r["rev"], 0)
        e = db.get("home/kitchen/temp")
        self.assertEqual((e["key"], e["value"], e["type"], e["rev"]), ("home/kitchen/temp", 21.5, "application/json", r["rev"]))
        self.assertEqual(e["labels"], {"unit": "C"})
        self.assertEqual(db.get_raw("home/kitchen/temp"), (b"21.5", "application/json"))
        db.set("home/hall/name", "hall")
        self.assertEqual(value_of(db.get("home/hall/name")), "hall")
        db.set("home/hall/raw", b"\x00\x01\xff")
        raw = db.get("home/hall/raw")
        self.assertEqual((raw["type"], value_of(raw)), ("application/octet-stream", b"\x00\x01\xff"))
        db.set("home/hall/doc", {"a": [1, 2]})
        self.assertEqual(db.get("home/hall/doc")["value"], {"a": [1, 2]})
        # Keys with characters a URL path must escape.
        db.set("odd/a b?c%d", 1)
        self.assertEqual(db.get("odd/a b?c%d")["key"], "odd/a b?c%d")

        # Compare-and-set and create-only.
        self.assertCode("rev_mismatch", 412, db.set, "home/kitchen/temp", 22, if_rev=r["rev"] - 1)
        self.assertCode("rev_mismatch", 412, db.set, "home/kitchen/temp", 22, if_rev=0)
        self.assertGreater(db.set("home/kitchen/temp", 22, if_rev=r["rev"])["rev"], r["rev"])
        self.assertEqual(db.set("home/new", 1, if_rev=0)["key"], "home/new")

        self.assertEqual(db.delete("home/new")["deleted"], 1)
        self.assertCode("not_found", 404, db.get, "home/new")
        self.assertCode("not_found", 404, db.delete, "home/new")
        self.assertCode("invalid_key", 400, db.set, "bad/+/key", 1)
        self.assertCode("read_only", 403, db.set, "$SYS/version", "x")

    def test_pattern_get_with_cursors_ls_and_delete(self):
        db = self.db
        for i in range(7):
            db.set(f"lamps/l{i}/state", {"on": i % 2 == 0})
        page = db.pget("lamps/+/state", limit=3)
        self.assertEqual([x["key"] for x in page["entries"]], ["lamps/l0/state", "lamps/l1/state", "lamps/l2/state"])
        self.assertIsNotNone(page["next"])
        entries = db.pget_all("lamps/+/state", limit=3)  # three pages
        self.assertEqual([x["key"] for x in entries], [f"lamps/l{i}/state" for i in range(7)])
        self.assertEqual([x["value"]["on"] for x in entries], [True, False, True, False, True, False, True])
        self.assertEqual([x["key"] for x in db.pget_all("lamps/#", contains="L3")], ["lamps/l3/state"])
        self.assertEqual([c["name"] for c in db.ls("lamps")], [f"l{i}" for i in range(7)])
        self.assertIn("lamps", [c["name"] for c in db.ls()])
        self.assertEqual(db.delete("lamps/#")["deleted"], 7)
        self.assertEqual(db.pget_all("lamps/#"), [])

    def test_history_and_publish(self):
        db = self.db
        revs = [db.set("hist/t", v)["rev"] for v in (10, 11, 12)]
        revs.append(db.delete("hist/t")["rev"])
        page = db.history("hist/t")
        self.assertEqual([r["rev"] for r in page["records"]], revs)
        self.assertEqual([r.get("value") for r in page["records"]], [10, 11, 12, None])
        self.assertTrue(page["records"][3]["deleted"])
        self.assertIsNone(page["next"])
        desc = db.history("hist/t", order="desc", limit=2)
        self.assertEqual([r["rev"] for r in desc["records"]], [revs[3], revs[2]])
        self.assertEqual([r["rev"] for r in db.history_all("hist/t", limit=1)], revs)
        ts = page["records"][1]["ts"]
        self.assertEqual([r["rev"] for r in db.history("hist/t", start=ts)["records"]], revs[1:])
        db.set("hist/l", 1, labels={"room": "a"})
        db.set("hist/l", 2, labels={"room": "b"})
        self.assertEqual([r["value"] for r in db.history("hist/l", labels={"room": "b"})["records"]], [2])
        self.assertEqual([r["value"] for r in db.history("hist/l", exclude={"room": "b"})["records"]], [1])
        # A misspelt option is refused, never ignored.
        self.assertCode("bad_request", 400, db.request, "GET", "/api/v1/history/hist/t?limt=1")
        # A transient publish is not stored.
        db.publish("flash/now", "hi")
        self.assertCode("not_found", 404, db.get, "flash/now")


class SessionTest(unittest.IsolatedAsyncioTestCase):
    """The asyncio session over TCP, against a daemon on fixed ports (so a
    restart is the same server to the client)."""

    @classmethod
    def setUpClass(cls):
        cls.http_port, cls.tcp_port = free_port(), free_port()
        cls.sock = os.path.join(tempfile.mkdtemp(prefix="almanac-py-"), "s.sock")
        cls.daemon = Daemon(["--http_listen", f"127.0.0.1:{cls.http_port}",
                             "--tcp_listen", f"127.0.0.1:{cls.tcp_port}", "--unix_socket", cls.sock]).start()
        cls.http = Client(cls.daemon.url(""))

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.daemon.cleanup()

    async def connect(self, **options):
        s = await Session.connect("127.0.0.1", self.tcp_port, **options)
        self.addAsyncCleanup(s.close)
        return s

    async def assertCode(self, code, awaitable):
        with self.assertRaises(AlmanacError) as cm:
            await awaitable
        self.assertEqual(cm.exception.code, code, cm.exception.message)
        return cm.exception

    async def test_requests(self):
        s = await self.connect()
        self.assertEqual(s.welcome["type"], "welcome")
        r = await s.set("s/kitchen/temp", 21.5, labels={"unit": "C"})
        e = await s.get("s/kitchen/temp")
        self.assertEqual((e["value"], e["content_type"], e["rev"], e["labels"]), (21.5, "application/json", r["rev"], {"unit": "C"}))
        self.assertEqual(self.http.get("s/kitchen/temp")["value"], 21.5)  # the same over HTTP
        await s.set("s/raw", b"\x00\xff")
        self.assertEqual(value_of(await s.get("s/raw")), b"\x00\xff")
        await s.set("s/text", "hello")
        self.assertEqual(value_of(await s.get("s/text")), "hello")
        await self.assertCode("rev_mismatch", s.set("s/kitchen/temp", 1, if_rev=r["rev"] - 1))
        for i in range(5):
            await s.set(f"s/lamp{i}", i)
        page = await s.pget("s/+", limit=2)
        self.assertEqual([x["key"] for x in page["entries"]], ["s/lamp0", "s/lamp1"])
        self.assertEqual([x["key"] for x in await s.pget_all("s/+", limit=2)],  # four pages
                         ["s/lamp0", "s/lamp1", "s/lamp2", "s/lamp3", "s/lamp4", "s/raw", "s/text"])
        self.assertEqual([x["value"] for x in (await s.pget_all("s/+", contains="lamp"))], [0, 1, 2, 3, 4])
        self.assertEqual([c["name"] for c in await s.ls("s")], ["kitchen", "lamp0", "lamp1", "lamp2", "lamp3", "lamp4", "raw", "text"])
        self.assertEqual(await s.delete("s/lamp0"), 1)
        await self.assertCode("not_found", s.get("s/lamp0"))
        self.assertEqual(await s.delete("s/+"), 6)
        h = await s.history("s/lamp1")
        self.assertEqual([r.get("value") for r in h["records"]], [1, None])
        self.assertEqual(len(await s.history_all("s/#", limit=2)), len((await s.history("s/#"))["records"]))
        await self.assertCode("invalid_key", s.get("a/+"))
        await self.assertCode("bad_request", s.request("get", key="a", colour="red"))
        await s.ping()

    async def test_no_server(self):
        with self.assertRaises(AlmanacError) as cm:
            await Session.connect("127.0.0.1", free_port())
        self.assertEqual(cm.exception.code, "offline")
        with self.assertRaises(AlmanacError) as cm:
            Client(f"http://127.0.0.1:{free_port()}").get("a")
        self.assertEqual(cm.exception.code, "offline")

    async def test_unix_socket(self):
        s = await Session.connect(unix=self.sock)
        self.addAsyncCleanup(s.close)
        await s.set("u/k", "over the unix socket")
        self.assertEqual(self.http.get("u/k")["text"], "over the unix socket")

    async def test_subscribe_snapshot_sync_live(self):
        self.http.set("sub/a", 1)
        self.http.set("sub/b", 2)
        s = await self.connect()
        sub = await s.subscribe("sub/#")
        snap = [await sub.get(5), await sub.get(5)]
        self.assertEqual([(m["type"], m["key"], m["value"]) for m in snap], [("event", "sub/a", 1), ("event", "sub/b", 2)])
        sync = await sub.get(5)
        self.assertEqual(sync["type"], "sync")
        rev = self.http.set("sub/c", 3)["rev"]
        live = await sub.get(5)
        self.assertEqual((live["key"], live["value"], live["rev"], live.get("created")), ("sub/c", 3, rev, True))
        drev = self.http.delete("sub/a")["rev"]
        gone = await sub.get(5)
        self.assertEqual((gone["key"], gone.get("deleted"), gone["rev"]), ("sub/a", True, drev))
        await s.publish("sub/flash", "now")
        flash = await sub.get(5)
        self.assertEqual((flash["key"], flash["text"], flash.get("transient")), ("sub/flash", "now", True))
        self.assertEqual(sub.last_rev, drev)  # a transient publish does not move it
        await sub.close()
        with self.assertRaises(StopAsyncIteration):
            await sub.get(1)
        # live_only: no snapshot, a sync at once.
        sub2 = await s.subscribe("sub/#", live_only=True)
        self.assertEqual((await sub2.get(5))["type"], "sync")

    async def test_dropped_socket_resumes_with_since(self):
        self.http.set("drop/untouched", 0)
        self.http.set("drop/x", 1)
        s = await self.connect(backoff=1.5)
        c = Collector(await s.subscribe("drop/#"))
        sync1 = await c.until(lambda m: m["type"] == "sync")
        self.assertEqual([m["key"] for m in c.got if m["type"] == "event"], ["drop/untouched", "drop/x"])
        before = len(c.got)
        s.abort()  # the socket dies
        await asyncio.sleep(0.1)
        self.assertFalse(s.ready)
        await self.assertCode("offline", s.get("drop/x"))
        missed = [("drop/x", self.http.set("drop/x", i)["rev"]) for i in range(2, 7)]
        missed.append(("drop/new", self.http.set("drop/new", "n")["rev"]))
        missed.append(("drop/x", self.http.delete("drop/x")["rev"]))
        sync2 = await c.until(lambda m: m["type"] == "sync" and m["rev"] > sync1["rev"])
        replay = c.got[before:c.got.index(sync2)]
        # Exactly what changed while away, in rev order: no snapshot of the
        # untouched key, no gap, nothing twice.
        self.assertEqual([(m["key"], m["rev"]) for m in replay], missed)
        self.assertTrue(replay[-1]["deleted"])
        await s.wait_ready(5)
        after = self.http.set("drop/x", 7)["rev"]
        self.assertEqual((await c.until(lambda m: m.get("rev") == after))["value"], 7)
        self.assertEqual((await s.get("drop/x"))["value"], 7)

    async def test_daemon_restart_resumes(self):
        s = await self.connect(backoff=0.2, max_backoff=0.4)
        c = Collector(await s.subscribe("restart/#", live_only=True))
        await c.until(lambda m: m["type"] == "sync")
        writes = [self.http.set("restart/k", 1)["rev"], self.http.set("restart/k", 2)["rev"]]
        await c.until(lambda m: m.get("rev") == writes[-1])
        self.daemon.stop()
        self.daemon.start()
        # Written as soon as the daemon is back: before or after the client
        # is back, each must arrive once.
        writes += [self.http.set("restart/k", i)["rev"] for i in range(3, 7)]
        await c.until(lambda m: m.get("rev") == writes[-1], 15)
        events = [m for m in c.got if m["type"] == "event"]
        self.assertEqual([m["rev"] for m in events], writes)
        self.assertEqual([m["value"] for m in events], [1, 2, 3, 4, 5, 6])
        await s.wait_ready(5)
        self.assertEqual((await s.get("restart/k"))["value"], 6)


class HistoryGoneTest(unittest.IsolatedAsyncioTestCase):
    async def test_reset_then_fresh_snapshot(self):
        # History keeps only kept/#: a replay of other/# cannot be served.
        d = Daemon(["--history_keys", "kept/#"]).start()
        self.addCleanup(d.cleanup)
        self.addCleanup(d.stop)
        http = Client(d.url(""))
        http.set("other/a", 1)
        s = await Session.connect("127.0.0.1", d.tcp_port, backoff=1.0)
        self.addAsyncCleanup(s.close)
        sub = await s.subscribe("other/#")
        c = Collector(sub)
        await c.until(lambda m: m["type"] == "sync")
        s.abort()
        await asyncio.sleep(0.1)
        http.set("other/a", 2)
        http.set("other/b", 3)
        reset = await c.until(lambda m: m["type"] == "reset")
        i = c.got.index(reset)
        sync = await c.until(lambda m: m["type"] == "sync" and c.got.index(m) > i)
        fresh = c.got[i + 1:c.got.index(sync)]
        self.assertEqual([(m["key"], m["value"]) for m in fresh], [("other/a", 2), ("other/b", 3)])
        self.assertEqual(sub.last_rev, sync["rev"])


class TokenTest(unittest.IsolatedAsyncioTestCase):
    ADMIN = "admin-secret-for-the-python-client-test"

    async def test_tokens(self):
        d = Daemon(env={"ALMANAC_ADMIN_TOKEN": self.ADMIN}).start()
        self.addCleanup(d.cleanup)
        self.addCleanup(d.stop)
        admin = Client(d.url(""), token=self.ADMIN)
        token = admin.create_token("kitchen", read=["kitchen/#"], write=["kitchen/#"])
        self.assertIn("kitchen", [t["name"] for t in admin.tokens()])
        admin.set("hall/temp", 18)

        # HTTP: anonymous is unauthorized, the token is limited to kitchen/#.
        anon = Client(d.url(""))
        with self.assertRaises(AlmanacError) as cm:
            anon.get("hall/temp")
        self.assertEqual((cm.exception.code, cm.exception.status), ("unauthorized", 401))
        db = Client(d.url(""), token=token)
        db.set("kitchen/temp", 21)
        self.assertEqual(db.get("kitchen/temp")["value"], 21)
        for fn, args in ((db.set, ("hall/temp", 1)), (db.get, ("hall/temp",)), (db.delete, ("#",)),
                         (db.history, ("hall/#",))):
            with self.assertRaises(AlmanacError) as cm:
                fn(*args)
            self.assertEqual((cm.exception.code, cm.exception.status), ("forbidden", 403), fn.__name__)
        self.assertEqual([e["key"] for e in db.pget_all("#")], ["kitchen/temp"])  # filtered

        # Sessions: a bad token refuses the connection; auth on an open one.
        with self.assertRaises(AlmanacError) as cm:
            await Session.connect("127.0.0.1", d.tcp_port, token="wrong")
        self.assertEqual(cm.exception.code, "unauthorized")
        s = await Session.connect("127.0.0.1", d.tcp_port)
        self.addAsyncCleanup(s.close)
        self.assertTrue(s.welcome["auth_required"])
        with self.assertRaises(AlmanacError) as cm:
            await s.get("kitchen/temp")
        self.assertEqual(cm.exception.code, "unauthorized")
        self.assertEqual(await s.auth(token), "kitchen")
        self.assertEqual((await s.get("kitchen/temp"))["value"], 21)
        with self.assertRaises(AlmanacError) as cm:
            await s.set("hall/temp", 1)
        self.assertEqual(cm.exception.code, "forbidden")
        with self.assertRaises(AlmanacError) as cm:
            await s.subscribe("hall/#")
        self.assertEqual(cm.exception.code, "forbidden")

        # After a drop the token is presented again and the subscription
        # resumes.
        c = Collector(await s.subscribe("#"))
        await c.until(lambda m: m["type"] == "sync")
        self.assertEqual([m["key"] for m in c.got if m["type"] == "event"], ["kitchen/temp"])
        s.abort()
        await asyncio.sleep(0.1)
        await s.wait_ready(10)
        rev = (await s.set("kitchen/temp", 22))["rev"]
        self.assertEqual((await c.until(lambda m: m.get("rev") == rev))["value"], 22)

        # Revoked: the server ends the session with unauthorized.
        errors = []
        s.on_error = errors.append
        admin.delete_token("kitchen")
        for _ in range(100):
            if any(e.code == "unauthorized" for e in errors):
                break
            await asyncio.sleep(0.05)
        self.assertIn("unauthorized", [e.code for e in errors])


if __name__ == "__main__":
    harness.main()
