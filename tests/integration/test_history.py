"""History against the real daemon: time ranges and their edges (µs and
RFC 3339), both orders, cursor paging, label filters, every= downsampling,
retention by age and by size, `since` replays (sessions and SSE) with no gap
and no duplicate while a writer runs at full speed, history_gone, export ->
import into an empty store, the CLI, and a schema-1 database written by the
previous version."""
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Client, Daemon, curl, wait_for  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def rfc3339(us):
    t = datetime.datetime.fromtimestamp(us // 1_000_000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


class HistoryCase(unittest.TestCase):
    def daemon(self, *args, data_dir=None):
        d = Daemon(["--sys_interval", "0", *args], data_dir=data_dir)
        self.addCleanup(d.cleanup)
        return d.start()

    def history(self, d, key, **params):
        q = urllib.parse.urlencode(params)
        r = curl(d, "GET", f"/api/v1/history/{urllib.parse.quote(key, safe='/$')}?{q}")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def all_pages(self, d, key, **params):
        out, after = [], None
        while True:
            page = self.history(d, key, **params, **({"after": after} if after else {}))
            out += page["records"]
            after = page["next"]
            if after is None:
                return out

    def put(self, d, key, value, labels=None):
        headers = {"Content-Type": "application/json"}
        for k, v in (labels or {}).items():
            headers[f"X-Almanac-Label-{k}"] = v
        r = curl(d, "PUT", f"/api/v1/keys/{key}", json.dumps(value), headers)
        self.assertIn(r.status, (200, 201), r)
        return r.json()["rev"]


class Queries(HistoryCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--sys_interval", "0"]).start()
        d = cls.d
        # h/a: 20 values with labels; h/b: a few values and a deletion.
        for i in range(20):
            curl(d, "PUT", "/api/v1/keys/h/a", str(i),
                 {"Content-Type": "application/json", "X-Almanac-Label-room": f"r{i % 2}"})
            if i % 5 == 0:
                curl(d, "PUT", "/api/v1/keys/h/b", f"b{i}")
            time.sleep(0.01)
        curl(d, "DELETE", "/api/v1/keys/h/b")
        curl(d, "PUT", "/api/v1/keys/other", "1")

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def test_every_change_is_recorded_in_order(self):
        recs = self.history(self.d, "h/a", limit=1000)["records"]
        self.assertEqual([r["value"] for r in recs], list(range(20)))
        self.assertEqual([r["labels"]["room"] for r in recs[:2]], ["r0", "r1"])
        revs = [r["rev"] for r in recs]
        ts = [r["ts"] for r in recs]
        self.assertEqual(revs, sorted(revs))
        self.assertEqual(ts, sorted(ts))
        b = self.history(self.d, "h/b")["records"]
        self.assertEqual([r.get("text") for r in b], ["b0", "b5", "b10", "b15", None])
        self.assertTrue(b[-1]["deleted"])
        both = self.history(self.d, "h/+")["records"]
        self.assertEqual(len(both), 25)
        self.assertEqual([r["rev"] for r in both], sorted(r["rev"] for r in both))

    def test_range_edges_in_us_and_rfc3339(self):
        recs = self.history(self.d, "h/a")["records"]
        start, stop = recs[3]["ts"], recs[7]["ts"]
        got = self.history(self.d, "h/a", start=start, stop=stop)["records"]
        self.assertEqual([r["value"] for r in got], [3, 4, 5, 6])  # [start, stop)
        got = self.history(self.d, "h/a", start=rfc3339(start), stop=rfc3339(stop))["records"]
        self.assertEqual([r["value"] for r in got], [3, 4, 5, 6])
        got = self.history(self.d, "h/a", start=start + 1, stop=stop + 1)["records"]
        self.assertEqual([r["value"] for r in got], [4, 5, 6, 7])
        self.assertEqual(self.history(self.d, "h/a", start=stop, stop=stop)["records"], [])
        both = self.history(self.d, "h/+")["records"]  # a pattern: a range of revs
        start, stop = both[5]["ts"], both[12]["ts"]
        want = [r for r in both if start <= r["ts"] < stop]
        self.assertEqual(self.history(self.d, "h/+", start=start, stop=stop)["records"], want)
        self.assertEqual(self.history(self.d, "h/+", start=start - 1, stop=stop + 1,
                                      order="desc", limit=3)["records"],
                         list(reversed([r for r in both if start <= r["ts"] <= stop]))[:3])

    def test_both_orders_and_paging(self):
        asc = self.history(self.d, "h/+")["records"]
        desc = self.history(self.d, "h/+", order="desc")["records"]
        self.assertEqual(desc, list(reversed(asc)))
        for order, whole in (("asc", asc), ("desc", desc)):
            for limit in (1, 3, 7):
                pages = self.all_pages(self.d, "h/+", order=order, limit=limit)
                self.assertEqual(pages, whole, (order, limit))  # no loss, no duplicate
        recs = self.history(self.d, "h/a", limit=5)
        self.assertEqual(recs["next"], recs["records"][-1]["rev"])
        self.assertIsNone(self.history(self.d, "h/a", limit=20)["next"])

    def test_label_filters(self):
        got = self.history(self.d, "h/#", **{"label.room": "r1"})["records"]
        self.assertEqual([r["value"] for r in got], list(range(1, 20, 2)))
        self.assertEqual(self.history(self.d, "h/#", **{"label.room": "r9"})["records"], [])
        pages = self.all_pages(self.d, "h/a", limit=3, **{"label.room": "r0"})
        self.assertEqual([r["value"] for r in pages], list(range(0, 20, 2)))

    def test_exclude_filters(self):
        both = self.history(self.d, "h/+")["records"]
        got = self.history(self.d, "h/#", **{"exclude.room": "r1"})["records"]
        # h/b's records carry no labels, nor did the value its deletion deleted.
        self.assertEqual(got, [r for r in both if r.get("labels", {}).get("room") != "r1"])
        self.assertTrue(got[-1]["deleted"])
        self.assertEqual(self.history(self.d, "h/a", **{"label.room": "r0", "exclude.room": "r0"})
                         ["records"], [])
        pages = self.all_pages(self.d, "h/a", limit=3, order="desc", **{"exclude.room": "r0"})
        self.assertEqual([r["value"] for r in pages], list(range(19, 0, -2)))
        c = Client(self.d)
        self.addCleanup(c.close)
        m = c.request("history", pattern="h/#", labels={"room": "r1"},
                      exclude_labels={"room": "r0"}, limit=3)
        self.assertEqual([r["value"] for r in m["records"]], [1, 3, 5])

    def test_label_filters_judge_a_deletion_by_the_value_it_deleted(self):
        d = self.daemon()
        self.put(d, "hx/k", 1, {"unit": "C"})
        self.put(d, "hx/j", 2, {"unit": "F"})
        for key in ("hx/k", "hx/j"):
            self.assertEqual(curl(d, "DELETE", f"/api/v1/keys/{key}").status, 200)
        shape = lambda recs: [(r["key"], r.get("deleted", False)) for r in recs]  # noqa: E731
        self.assertEqual(shape(self.history(d, "hx/#", **{"label.unit": "C"})["records"]),
                         [("hx/k", False), ("hx/k", True)])
        self.assertEqual(shape(self.history(d, "hx/#", **{"exclude.unit": "C"})["records"]),
                         [("hx/j", False), ("hx/j", True)])
        self.assertEqual(shape(self.history(d, "hx/k", order="desc", **{"label.unit": "F"})
                               ["records"]), [])
        c = Client(d)
        self.addCleanup(c.close)
        m = c.request("history", pattern="hx/#", exclude_labels={"unit": "F"})
        self.assertEqual(shape(m["records"]), [("hx/k", False), ("hx/k", True)])

    def test_every_keeps_the_last_record_of_each_bucket(self):
        recs = self.history(self.d, "h/+")["records"]
        a_ts = [r["ts"] for r in recs if r["key"] == "h/a"]
        every = max(1, (a_ts[-1] - a_ts[0]) // 4)  # µs: about 5 buckets, however slow the writes
        expected = {}
        for r in recs:  # the last of each key's bucket, by key then time
            expected[(r["key"], r["ts"] // every)] = r
        want = [expected[k] for k in sorted(expected)]
        self.assertEqual(self.history(self.d, "h/+", every=f"{every}us", limit=1000)["records"], want)
        want_a = [r for r in want if r["key"] == "h/a"]
        self.assertEqual(self.history(self.d, "h/a", every=f"{every}us")["records"], want_a)
        self.assertEqual(self.history(self.d, "h/a", every=f"{every}us", order="desc")["records"],
                         list(reversed(want_a)))
        for order in ("asc", "desc"):
            whole = self.history(self.d, "h/+", every=f"{every}us", order=order)["records"]
            self.assertEqual(self.all_pages(self.d, "h/+", every=f"{every}us", order=order, limit=2),
                             whole)
        self.assertLess(len(want_a), 20)

    def test_session_history(self):
        c = Client(self.d)
        self.addCleanup(c.close)
        m = c.request("history", pattern="h/a", limit=5, order="desc", labels={"room": "r1"})
        self.assertEqual(m["type"], "records")
        self.assertEqual([r["value"] for r in m["records"]], [19, 17, 15, 13, 11])
        self.assertEqual(m["records"][0]["content_type"], "application/json")
        m2 = c.request("history", pattern="h/a", limit=5, order="desc", after=m["next"],
                       labels={"room": "r1"})
        self.assertEqual([r["value"] for r in m2["records"]], [9, 7, 5, 3, 1])
        for bad in ({"start": "yesterday"}, {"order": "up"}, {"every": "fast"}, {"limit": 0},
                    {"labels": ["x"]}):
            e = c.request("history", pattern="h/a", **bad)
            self.assertEqual(e["error"], "bad_request", bad)

    def test_bad_queries(self):
        for q in ("start=soon", "stop=2026-13-01T00:00:00Z", "limit=0", "order=sideways",
                  "every=0s", "every=5", "after=x"):
            r = curl(self.d, "GET", f"/api/v1/history/h/a?{q}")
            self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"), q)
        r = curl(self.d, "GET", "/api/v1/history/h/%23/x")
        self.assertEqual(r.json()["error"], "invalid_pattern")

    def test_cli_history(self):
        out = subprocess.run([harness.BINARY, "-s", f"127.0.0.1:{self.d.tcp_port}", "history",
                              "h/b", "--json"], capture_output=True, text=True, timeout=20)
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        self.assertEqual([x.get("text") for x in lines], ["b0", "b5", "b10", "b15", None])
        self.assertEqual(lines[0]["type"], "text/plain; charset=utf-8")
        out = subprocess.run([harness.BINARY, "-s", f"127.0.0.1:{self.d.tcp_port}", "history",
                              "h/a", "--limit", "3", "--order", "desc"],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(len(out.stdout.splitlines()), 3)
        self.assertTrue(out.stdout.splitlines()[0].endswith("h/a = 19"), out.stdout)


class Replay(HistoryCase):
    def test_since_replay_is_gapless_under_a_full_speed_writer(self):
        d = self.daemon()
        stop = threading.Event()

        def writer():
            n = 0
            body = []
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
            for _ in range(3):  # resume points while writes go on
                # A starved writer may not have reached rev 200 yet.
                since = max(0, curl(d, "GET", "/api/v1/info").json()["rev"] - 200)
                c = Client(d)
                self.addCleanup(c.close)
                ok = c.request("subscribe", pattern="w/#", since=since)
                self.assertEqual(ok["type"], "ok", ok)
                subs.append((c, since))
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        final = curl(d, "GET", "/api/v1/info").json()["rev"]
        truth = {r["rev"]: r for r in self.all_pages(d, "w/#", limit=10000)}
        for c, since in subs:
            revs, synced = [], None
            events = list(c.events)
            while True:
                m = events.pop(0) if events else c.recv()
                if m["type"] == "sync":
                    synced = m["rev"]
                elif m["type"] == "event":
                    revs.append(m["rev"])
                    self.assertEqual(m["value"], truth[m["rev"]]["value"])
                # The sync comes after the replay even when the writers were
                # too slow to add anything after it (a loaded machine).
                if synced is not None and revs and revs[-1] >= max(r for r in truth if r <= final):
                    break
            want = sorted(r for r in truth if since < r <= revs[-1])
            self.assertEqual(revs, want)  # every change once, in order, across the sync

    def test_sse_resumes_with_last_event_id(self):
        d = self.daemon()
        revs = [self.put(d, "sse/k", i) for i in range(5)]
        out = subprocess.run(["curl", "-sN", "--max-time", "1", "-H",
                              f"Last-Event-ID: {revs[1]}", d.url("/api/v1/events/sse/%23")],
                             capture_output=True, text=True)
        ids = [int(x[4:]) for x in out.stdout.splitlines() if x.startswith("id: ")]
        self.assertEqual(ids, revs[2:] + [revs[-1]])  # the replay, then the sync's id
        self.assertIn("event: sync", out.stdout)

    def test_history_gone(self):
        d = self.daemon("--history_retention", "1s")
        first = self.put(d, "gone/k", 1)
        time.sleep(1.2)
        self.put(d, "gone/k", 2)
        wait_for(lambda: curl(d, "GET", "/api/v1/info").json()["history"]["since_rev"] >= first,
                 what="pruning")
        c = Client(d)
        self.addCleanup(c.close)
        e = c.request("subscribe", pattern="gone/#", since=first - 1)
        self.assertEqual(e["error"], "history_gone", e)
        e = c.request("subscribe", pattern="gone/#", since=10**9)  # ahead of the store
        self.assertEqual(e["error"], "history_gone", e)
        r = curl(d, "GET", f"/api/v1/events/gone/%23?since={first - 1}")
        self.assertEqual((r.status, r.json()["error"]), (410, "history_gone"))
        e = c.request("subscribe", pattern="$SYS/#", since=first)  # not in history_keys
        self.assertEqual(e["error"], "history_gone", e)

    def test_history_off(self):
        d = self.daemon("--history_retention", "0")
        rev = self.put(d, "off/k", 1)
        r = curl(d, "GET", "/api/v1/history/off/k")
        self.assertEqual((r.status, r.json()["error"]), (503, "unavailable"))
        c = Client(d)
        self.addCleanup(c.close)
        self.assertEqual(c.request("subscribe", pattern="off/#", since=rev - 1)["error"],
                         "history_gone")
        now = curl(d, "GET", "/api/v1/info").json()["rev"]  # nothing to replay: fine
        self.assertEqual(c.request("subscribe", pattern="off/#", since=now)["type"], "ok")
        self.assertFalse(curl(d, "GET", "/api/v1/info").json()["history"]["enabled"])


class Retention(HistoryCase):
    def test_by_age(self):
        d = self.daemon("--history_retention", "2s")
        self.put(d, "age/k", "old")
        time.sleep(1.5)
        self.put(d, "age/k", "new")
        wait_for(lambda: len(self.history(d, "age/k")["records"]) == 1, 10,
                 what="the old record to go")
        self.assertEqual(self.history(d, "age/k")["records"][0]["value"], "new")
        info = curl(d, "GET", "/api/v1/info").json()["history"]
        self.assertGreaterEqual(info["pruned"], 1)
        self.assertEqual(curl(d, "GET", "/api/v1/keys/age/k").body, b'"new"')  # state stays

    def test_by_size_oldest_first(self):
        d = self.daemon("--history_max_bytes", "64KiB")
        value = "x" * 200
        for batch in range(10):
            ops = [{"op": "set", "key": f"size/{i % 10}", "value": f"{batch * 100 + i}:{value}"}
                   for i in range(100)]
            r = curl(d, "POST", "/api/v1/batch", json.dumps({"ops": ops}),
                     {"Content-Type": "application/json"})
            self.assertEqual(r.status, 200)
        wait_for(lambda: curl(d, "GET", "/api/v1/info").json()["history"]["bytes"] <= 65536,
                 what="history under its cap")
        recs = self.all_pages(d, "size/#", limit=10000)
        self.assertLess(len(recs), 1000)
        self.assertGreater(len(recs), 100)
        nums = [int(r["value"].split(":")[0]) for r in recs]
        self.assertEqual(nums, list(range(1000 - len(recs), 1000)))  # the newest are kept
        info = curl(d, "GET", "/api/v1/info").json()["history"]
        self.assertEqual(info["records"], len(recs))


class Transfer(HistoryCase):
    def test_export_import_round_trip(self):
        a = self.daemon()
        curl(a, "PUT", "/api/v1/keys/x/json", '{"v":[1,2.5,"three"]}',
             {"Content-Type": "application/json", "X-Almanac-Label-unit": "C"})
        curl(a, "PUT", "/api/v1/keys/x/text", "hello\u00e9")
        curl(a, "PUT", "/api/v1/keys/x/bin", bytes([0, 1, 2, 255]),
             {"Content-Type": "application/octet-stream"})
        curl(a, "PUT", "/api/v1/keys/x/odd", "<b/>", {"Content-Type": "application/xml"})
        ops = [{"op": "set", "key": f"many/{i}", "value": i}
               for i in range(2500)]  # more than a page and a commit
        curl(a, "POST", "/api/v1/batch", json.dumps({"ops": ops}),
             {"Content-Type": "application/json"})
        dump = curl(a, "GET", "/api/v1/export").body
        lines = [json.loads(x) for x in dump.splitlines()]
        self.assertEqual(len(lines), 2504)
        self.assertFalse(any(x["key"].startswith("$") for x in lines))

        b = self.daemon()
        r = curl(b, "POST", "/api/v1/import", dump, {"Content-Type": "application/x-ndjson"})
        self.assertEqual((r.status, r.json()), (200, {"imported": 2504}))

        def strip(text):
            out = []
            for x in text.splitlines():
                e = json.loads(x)
                del e["rev"], e["ts"]
                out.append(e)
            return out
        self.assertEqual(strip(curl(b, "GET", "/api/v1/export").body), strip(dump))
        self.assertEqual(curl(b, "GET", "/api/v1/keys/x/bin").body, bytes([0, 1, 2, 255]))

        # A bad line anywhere: nothing is applied, and the line is named.
        c = self.daemon()
        bad = dump + b'{"key":"bad/+","value":1}\n'
        r = curl(c, "POST", "/api/v1/import", bad)
        self.assertEqual(r.status, 400)
        self.assertIn("line 2505", r.json()["message"])
        self.assertEqual(curl(c, "GET", "/api/v1/export").body, b"")

        # The CLI does the same over HTTP.
        cli = [harness.BINARY, "--http", f"127.0.0.1:{a.port}", "export"]
        out = subprocess.run(cli, capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0)
        self.assertEqual(strip(out.stdout), strip(dump))
        out = subprocess.run([harness.BINARY, "--http", f"127.0.0.1:{c.port}", "import"],
                             input=out.stdout, capture_output=True, timeout=30)
        self.assertEqual((out.returncode, out.stdout), (0, b"imported 2504\n"), out.stderr)


class Migration(HistoryCase):
    def test_schema_1_database_opens_with_every_entry(self):
        data = tempfile.mkdtemp(prefix="almanac-schema1-")
        self.addCleanup(shutil.rmtree, data, True)
        shutil.copy(os.path.join(FIXTURES, "schema-1.db"), os.path.join(data, "almanac.db"))
        d = self.daemon(data_dir=data)
        self.assertIn("applied schema migration 2", d.log_text())
        info = curl(d, "GET", "/api/v1/info").json()
        self.assertEqual(info["schema_version"], 6)  # through 2, 3, 4, 5 and 6
        e = curl(d, "GET", "/api/v1/keys/home/kitchen/temp?envelope=1").json()
        self.assertEqual((e["rev"], e["value"], e["type"]), (6, {"v": 21.5}, "application/json"))
        e = curl(d, "GET", "/api/v1/keys/home/kitchen/mood?envelope=1").json()
        self.assertEqual((e["text"], e["labels"]), ("warm", {"unit": "C"}))
        self.assertEqual(curl(d, "GET", "/api/v1/keys/bin/blob").body, b"\x00\x01\xfe\xff")
        self.assertEqual(curl(d, "GET", "/api/v1/keys/a//b").body, b"x")
        self.assertEqual(curl(d, "GET", "/api/v1/keys/gone").status, 404)
        self.assertEqual(info["bridge"]["outbox"], 5)  # the outbox rows are kept
        # History starts at the migrations: older revs cannot be replayed.
        # The 6th moved the revs forward by a random multiple of 2^30 (revs
        # of their own for each database), history's floor with them.
        floor = info["history"]["since_rev"]
        self.assertLessEqual(floor, info["rev"])  # $SYS writes since
        self.assertGreaterEqual(floor - 11, 1 << 30)
        self.assertLess(floor, 1 << 51)
        c = Client(d)
        self.addCleanup(c.close)
        self.assertEqual(c.request("subscribe", pattern="#", since=11)["error"], "history_gone")
        self.assertEqual(c.request("subscribe", pattern="home/#", since=floor)["type"], "ok")
        self.assertGreater(self.put(d, "home/kitchen/temp", 22), floor)
        self.assertEqual(len(self.history(d, "home/kitchen/temp")["records"]), 1)


if __name__ == "__main__":
    harness.main()
