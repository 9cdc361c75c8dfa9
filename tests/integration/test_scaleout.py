"""Reads scaled out, as README "Scaling out" recommends: nginx, configured by
conf/nginx-almanac.conf itself (its addresses and port replaced), in front of
two almanacs bridged to one mosquitto broker. GETs through nginx reach both
almanacs and agree; a write on one is read through nginx; an SSE stream
through nginx gets live changes; a client whose almanac is killed behind
nginx (the shipped JavaScript client, over WebSocket) or that resumes on the
other almanac with a rev of the first (curl, SSE Last-Event-ID) gets
history_gone, takes a fresh snapshot and misses no later change.

Every almanac behind nginx is set up as the recipe says: an admin token (so
that clients, all arriving from nginx's loopback address, are not "local"
with every privilege), anonymous reads, no per-address connection limit.
"""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import ROOT, Broker, Client, Daemon, curl, free_port, wait_for  # noqa: E402

RECIPE = ROOT / "conf" / "nginx-almanac.conf"
ADMIN = "scaleout-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class Nginx:
    """nginx as the current user in a folder of its own, with the recipe
    included in its http context and a header naming the almanac that
    answered (X-Upstream, added here: not part of the recipe)."""

    def __init__(self, a_port, b_port):
        self.dir = tempfile.mkdtemp(prefix="almanac-nginx-")
        os.chmod(self.dir, 0o755)  # started as root, the workers run as nobody
        self.port = free_port()
        text = RECIPE.read_text()
        for old, new, count in (("server almanac-1:8480", f"server 127.0.0.1:{a_port}", 2),
                                ("server almanac-2:8480", f"server 127.0.0.1:{b_port}", 2),
                                ("listen 80;", f"listen 127.0.0.1:{self.port};", 1)):
            assert text.count(old) == count, f"the recipe's '{old}' is not there {count} times"
            text = text.replace(old, new)
        with open(os.path.join(self.dir, "almanac.conf"), "w") as f:
            f.write(text)
        d = self.dir
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    add_header X-Upstream $upstream_addr always;
    include {d}/almanac.conf;
}}
""")
        self.proc = subprocess.Popen(
            ["nginx", "-p", d, "-c", f"{d}/nginx.conf",
             "-g", f"daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.answers, 10, what="nginx to listen")
        except BaseException:
            self.cleanup()  # the caller never gets it to clean up
            raise

    def answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log()}")
        return curl(self, "GET", "/health", timeout=2).status != 0

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # a fast shutdown: the master ends its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def text_of(data_line):
    """The text value of an SSE `data: ` line's envelope."""
    return json.loads(data_line[6:]).get("text")


class Lines:
    """The lines a process writes to stdout, read by a thread into a queue."""

    def __init__(self, proc):
        self.proc = proc
        self.q = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, check, timeout=15, what="the line"):
        """Lines until check(line) is true; returns that line."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; saw {self.seen[-20:]}")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the stream ended before {what}; saw {self.seen[-20:]}")
            self.seen.append(line)
            if check(line):
                return line


class ScaleOut(unittest.TestCase):
    def setUp(self):
        self.broker = Broker().start()
        self.addCleanup(self.broker.cleanup)
        self.a = self.almanac("almanac-a")
        self.b = self.almanac("almanac-b")
        for d in (self.a, self.b):
            wait_for(lambda d=d: self.info(d)["bridge"]["state"] == "connected",
                     what="the bridge to connect")
        self.nginx = Nginx(self.a.port, self.b.port)
        self.addCleanup(self.nginx.cleanup)
        self.ports = {self.a.port: "a", self.b.port: "b"}

    def almanac(self, client_id):
        d = Daemon(["--bridge_url", self.broker.url, "--bridge_client_id", client_id,
                    "--bridge_keepalive", "5", "--anonymous_read", "#",
                    "--http_max_connections_per_ip", "0"],
                   env={"ALMANAC_ADMIN_TOKEN": ADMIN})
        self.addCleanup(d.cleanup)
        return d.start()

    def info(self, d):
        return curl(d, "GET", "/api/v1/info", headers=AUTH).json()

    def put(self, d, key, value):
        r = curl(d, "PUT", f"/api/v1/keys/{key}", value, headers=AUTH)
        self.assertIn(r.status, (200, 201), r)
        return r.json()["rev"]

    def through_nginx(self, path):
        """(the answer, "a" or "b": the almanac that gave it)."""
        r = curl(self.nginx, "GET", path)
        port = int(r.headers.get("x-upstream", ":0").rsplit(":", 1)[1])
        return r, self.ports.get(port)

    def test_gets_reach_both_and_agree_and_a_write_on_a_is_read_through_nginx(self):
        for i in range(20):
            self.put(self.a if i % 2 else self.b, f"scale/k{i}", f"v{i}")
        want = {f"scale/k{i}": f"v{i}" for i in range(20)}

        def converged():
            by = {}
            for _ in range(6):
                r, who = self.through_nginx("/api/v1/keys/scale/%23")
                if r.status != 200:
                    return None
                by.setdefault(who, []).append({e["key"]: e["text"] for e in r.json()["entries"]})
            return by if all(v == want for vs in by.values() for v in vs) else None
        by = wait_for(converged, 15, what="both almanacs to hold every write")
        self.assertEqual(set(by), {"a", "b"}, "GETs through nginx reach both almanacs")

        # A write acknowledged by a, then read through nginx: from both.
        self.put(self.a, "scale/k3", "changed on a")
        seen = set()

        def read_from_both():
            r, who = self.through_nginx("/api/v1/keys/scale/k3")
            if r.body == b"changed on a":
                seen.add(who)
            return seen == {"a", "b"}
        wait_for(read_from_both, 10, 0.02, "the write on a to be read through nginx from both")

    def sse(self, base, pattern, *headers):
        cmd = ["curl", "-sSN", "--max-time", "30"]
        for h in headers:
            cmd += ["-H", h]
        proc = subprocess.Popen(cmd + [base.url("/api/v1/events/" + urllib.parse.quote(
            pattern, safe="/"))], stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close()))
        return Lines(proc)

    def test_sse_through_nginx_gets_live_changes_from_both_almanacs(self):
        self.put(self.a, "scale/live", "before")
        wait_for(lambda: curl(self.b, "GET", "/api/v1/keys/scale/live").body == b"before",
                 what="b to have it")
        lines = self.sse(self.nginx, "scale/#")
        lines.until(lambda l: l == "event: sync", what="the sync")
        for d, value in ((self.a, "written on a"), (self.b, "written on b")):
            self.put(d, "scale/live", value)
            lines.until(lambda l, v=value: l.startswith("data: ") and text_of(l) == v,
                        what=f"the event of '{value}'")

    def ordered(self):
        """The two almanacs, the one whose revs are higher first: each
        database's revs start at a random multiple of 2^30 (migration 6), so
        which is ahead differs from run to run, and never by a few revs."""
        a_rev, b_rev = self.info(self.a)["rev"], self.info(self.b)["rev"]
        self.assertGreater(abs(a_rev - b_rev), 1000)
        return ((self.a, a_rev), (self.b, b_rev)) if a_rev > b_rev else \
            ((self.b, b_rev), (self.a, a_rev))

    def test_a_since_of_one_almanac_is_history_gone_on_the_other(self):
        """A resumption on one almanac with a rev of the other that this one
        never reached: 410 history_gone, directly and through nginx; the
        fresh snapshot after it holds every value, and the stream then gets
        every later change."""
        for i in range(5):
            self.put(self.a, f"scale/s{i}", f"v{i}")
        for d in (self.a, self.b):
            wait_for(lambda d=d: curl(d, "GET", "/api/v1/keys/scale/s4").body == b"v4",
                     what="both to have a's writes")
        (_, a_rev), (b, b_rev) = self.ordered()
        r = curl(b, "GET", "/api/v1/events/scale/%23", headers={"Last-Event-ID": str(a_rev)})
        self.assertEqual((r.status, r.json()["error"]), (410, "history_gone"), r)
        r = curl(b, "GET", f"/api/v1/events/scale/%23?since={a_rev}")
        self.assertEqual((r.status, r.json()["error"]), (410, "history_gone"), r)
        c = Client(b)
        self.addCleanup(c.close)
        self.assertEqual(c.request("subscribe", pattern="scale/#", since=a_rev)["error"],
                         "history_gone")

        # Through nginx, to whichever almanac serves this address: a rev
        # from the future of both.
        r = curl(self.nginx, "GET", "/api/v1/events/scale/%23",
                 headers={"Last-Event-ID": str(a_rev + b_rev + 1000)})
        self.assertEqual((r.status, r.json()["error"]), (410, "history_gone"), r)

        # What a client does next: a fresh snapshot, then every change.
        lines = self.sse(b, "scale/#")
        snap = {}

        def snapshot(line):
            if line.startswith("data: "):
                e = json.loads(line[6:])
                snap[e["key"]] = e["text"]
            return line == "event: sync"
        lines.until(snapshot, what="the sync")
        self.assertEqual(snap, {f"scale/s{i}": f"v{i}" for i in range(5)})
        for n in range(5):
            self.put(self.a, "scale/s0", f"after {n}")
            lines.until(lambda l, n=n: l.startswith("data: ") and text_of(l) == f"after {n}",
                        what=f"change {n} on a")

    def test_a_since_of_one_almanac_never_names_a_change_of_the_other(self):
        """Revs name no instance, but each database's start at a random
        multiple of 2^30: a rev the other almanac gave is above all of this
        one's (history_gone) or below all of them (a replay of every change
        this one has), never the rev of some change here to replay from.
        (With revs from 1 on both, b took a's rev of write 50 for its own
        and replayed from write 131 or so, skipping 51..130 without a word.)"""
        with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
            cfg.write("next\n".join(
                f'url = "{self.a.url(f"/api/v1/keys/scale/n/{n}")}"\nrequest = "PUT"\n'
                f'header = "Authorization: Bearer {ADMIN}"\ndata-binary = "{n}"\n'
                'output = "/dev/null"\n' for n in range(1, 201)))
        self.addCleanup(os.unlink, cfg.name)
        subprocess.run(["curl", "-sS", "--fail", "-K", cfg.name], check=True, timeout=60)
        for d in (self.a, self.b):
            wait_for(lambda d=d: curl(d, "GET", "/api/v1/keys/scale/n/200").body == b"200",
                     what="both to have write 200")
        (hi, _), (lo, _) = self.ordered()
        for seen_on, resume_on in ((hi, lo), (lo, hi)):
            seen = curl(seen_on, "GET", "/api/v1/keys/scale/n/50?envelope=1").json()["rev"]
            r = curl(resume_on, "GET", "/api/v1/events/scale/n/%23",
                     headers={"Last-Event-ID": str(seen)}, timeout=3)
            if r.status == 410:
                self.assertIs(seen_on, hi, "only a rev above this one's is history_gone here")
                continue
            replayed = {json.loads(x[6:]).get("key") for x in r.body.decode().splitlines()
                        if x.startswith("data: ")} - {None}  # the sync's has no key
            self.assertEqual(replayed, {f"scale/n/{n}" for n in range(1, 201)},
                             "a rev below all of this one's: every change replayed")

    def test_a_client_whose_almanac_is_killed_resumes_on_the_other_and_misses_nothing(self):
        client = subprocess.Popen(
            ["node", str(ROOT / "tests" / "integration" / "scaleout_client.mjs"),
             f"ws://127.0.0.1:{self.nginx.port}", "scale/#"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (client.kill(), client.wait(), client.stdin.close(),
                                 client.stdout.close()))
        out = Lines(client)
        client_id = json.loads(out.until(lambda l: '"welcome"' in l, what="a welcome"))["client_id"]
        out.until(lambda l: json.loads(l)["type"] == "sync", what="the first sync")

        # The almanac nginx gave it (its session's $SYS keys are there only),
        # and the other one.
        def has_session(d):
            return curl(d, "GET", f"/api/v1/keys/$SYS/sessions/{client_id}",
                        headers=AUTH).status == 200
        on, other = (self.a, self.b) if has_session(self.a) else (self.b, self.a)
        self.assertTrue(has_session(on) and not has_session(other))

        # A writer on the other almanac, before, during and after the kill:
        # write n sets scale/seq/n to n (a key each: the outbox keeps the
        # latest value of a topic, so a key written faster than it is sent
        # would skip values on the way, and so on the client).
        stop = threading.Event()
        written = []

        def writer():
            n = 0
            while not stop.is_set():
                n += 1
                self.put(other, f"scale/seq/{n}", str(n))
                written.append(n)
                time.sleep(0.01)
        w = threading.Thread(target=writer)
        w.start()
        self.addCleanup(lambda: (stop.set(), w.join()))
        out.until(lambda l: json.loads(l).get("value") == 20, what="the 20th write, live")
        on_rev = self.info(on)["rev"]
        on.stop(signal.SIGKILL)
        # On the other almanac: its rev below on_rev, history_gone, a reset
        # and a fresh snapshot; above (revs start at random), a replay of
        # every change it has. Either way a sync.
        out.until(lambda l: json.loads(l)["type"] == "sync", what="the sync on the other almanac")
        reset = self.info(other)["rev"] < on_rev
        synced = len(written)
        wait_for(lambda: len(written) >= synced + 10, 15, what="more writes")
        stop.set()
        w.join()
        last = written[-1]
        out.until(lambda l: json.loads(l).get("value") == last, what=f"the last write, {last}")

        # Every write, none missed: live on the first almanac up to the kill;
        # then, on the other, a snapshot holding every write up to some n and
        # every later write live, in order (or a replay of all of them).
        msgs = [json.loads(l) for l in out.seen]

        def values(part):
            return [m["value"] for m in part if m.get("key", "").startswith("scale/seq/")]
        if not reset:
            self.assertFalse([m for m in msgs if m["type"] == "reset"])
            self.assertEqual(set(values(msgs)), set(range(1, last + 1)), "every write")
            return
        reset = next(i for i, m in enumerate(msgs) if m["type"] == "reset")
        sync = next(i for i, m in enumerate(msgs) if i > reset and m["type"] == "sync")
        before, snapshot, live = values(msgs[:reset]), values(msgs[reset:sync]), values(msgs[sync:])
        self.assertEqual(before, list(range(1, len(before) + 1)), "live before the kill")
        self.assertGreaterEqual(len(before), 20)
        self.assertEqual(sorted(snapshot), list(range(1, len(snapshot) + 1)), "the snapshot")
        self.assertGreaterEqual(len(snapshot), len(before))
        self.assertEqual(live, list(range(len(snapshot) + 1, last + 1)), "live after it")


if __name__ == "__main__":
    harness.main()
