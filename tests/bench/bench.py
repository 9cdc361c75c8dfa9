#!/usr/bin/env python3
"""almanac's benchmarks, each against a peer run in the same invocation, so
the figures are ratios that a shared, noisy machine does not distort much.

  get     GET of one small key with wrk (50 connections), against nginx
          serving a file with the same bytes.
  put     acknowledged PUTs from 50 concurrent writers (wrk), against Redis
          SET from 50 clients (appendfsync everysec) and against raw SQLite
          committing each write on its own (WAL, synchronous=NORMAL).
  memory  1,000,000 keys like site/42/dev1234/temp with small JSON values:
          heap (anonymous memory) and RSS growth per key against Redis's
          used_memory for the same keys, and the time from start to /ready
          with those keys on disk (best of three).
  history 1,000,000 records of one key among 1,000 others: a query of 10,000
          records from the middle and a full scan streamed over HTTP, against
          the same reads done with raw SQLite (Python's sqlite3) on the same
          file; and acknowledged PUTs with history on against off.
  bridge  200,000 MQTT messages over 10,000 topics, at QoS 0 then QoS 1,
          through a mosquitto broker: the rate at which almanac's bridge has
          them committed against a bare libmosquitto subscriber counting the
          same stream in the same run.
  auth    GET of one small key and acknowledged PUTs (wrk, 50 connections)
          with a token presented (Authorization: Bearer, a token made with
          POST /api/v1/tokens reading and writing site/#, on a daemon started
          with ALMANAC_ADMIN_TOKEN, beside 1,000 other tokens) against the
          same load with auth off (no credential configured: loopback
          clients are "local"); the two daemons run side by side and are
          measured alternately, and the daemon's CPU per request is shown.
  expiry  100,000 keys like site/NN/devN/temp, imported to expire at the same
          moment: the p99 of acknowledged PUTs (wrk) in the 5 s before it
          against the 5 s from it, and how long until the last key is gone.
  blobput acknowledged PUTs of 256 KiB values (random bytes) from 8 writers (wrk)
          over 64 keys, history on: MB/s against dd writing 1 GiB in 256 KiB
          blocks to the same filesystem with conv=fsync (the goal's peer) and
          with oflag=dsync (a sync per block); then 4,000 retained 256 KiB
          payloads (QoS 1) through mosquitto: the rate at which almanac's
          bridge has them committed against a bare libmosquitto subscriber
          counting the same stream.
  blobget GET of one 256 KiB value with wrk (50 connections), against nginx
          serving the same bytes from a file with sendfile on.
  blobmem 10,000 values of 256 KiB (2.5 GiB; fewer, said so, when the disk
          has not five times that free) written by 8 clients and read back:
          the growth of the process's RSS and anonymous memory. Takes about
          a minute and a half and 13 GiB of disk: only when named.
  converge how long a write takes to reach another almanac: almanac A and B
          bridged to one mosquitto, to two mosquittos joined by mosquitto's
          bridge, and to two nodes of a 3-node NATS cluster (JetStream, MQTT
          3.1.1; bridge_qos 1, then 0); 300 PUTs on A, one at a time, each
          seen on an SSE stream from B: commit on A to commit on B (the
          envelopes' ts) and the PUT's answer to the event's arrival; p50,
          p99, max, three fresh setups of each.

Usage: tests/bench/bench.py --binary build/almanac [get] [put] [memory] [history] [bridge] [auth]
       [expiry] [blobput] [blobget] [blobmem] [converge]
Peers: wrk, nginx, redis-server, redis-cli, mosquitto, nats-server and mqtt_load
(built beside almanac with libmosquitto); tests/bench/run installs them.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection

DURATION = 10  # seconds per wrk run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer")


class Almanac:
    def __init__(self, binary, data_dir, *args, env=None):
        self.port = free_port()
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [binary, "serve", "--http_listen", f"127.0.0.1:{self.port}", "--data_dir", data_dir,
             # a free TCP port too: another daemon on the machine may hold 8481
             "--tcp_listen", f"127.0.0.1:{free_port()}",
             "--log_level", "warn", "--sys_interval", "0", *args],
            env=None if env is None else {**os.environ, **env})
        self.started = time.time()
        wait_http(self.url("/ready"))
        self.ready_s = time.time() - self.started

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024

    def mem(self):
        """(RSS, anonymous, file-backed) bytes, from /proc/PID/status."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            st = f.read()
        return tuple(int(re.search(rf"{k}:\s+(\d+) kB", st).group(1)) * 1024
                     for k in ("VmRSS", "RssAnon", "RssFile"))

    def cpu_s(self):
        """CPU seconds (user + system) the daemon has used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def wrk(url, script=None, connections=50, headers=(), duration=DURATION):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    return rps, p99


def get_against_nginx(binary, tmp, name, key, value, ctype, sendfile=False):
    """GET of one stored value from almanac, and of the same bytes from a
    file served by nginx, alternately twice (so neither gets only the quiet
    moments): [((almanac req/s, p99), (nginx req/s, p99))...]."""
    a = Almanac(binary, os.path.join(tmp, name))
    url = a.url("/api/v1/keys/" + key)
    urllib.request.urlopen(urllib.request.Request(url, data=value, method="PUT",
                                                  headers={"Content-Type": ctype})).read()
    www = os.path.join(tmp, "www-" + name)
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "value"), "wb") as f:
        f.write(value)
    nport = free_port()
    conf = os.path.join(tmp, f"nginx-{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 2; pid {tmp}/nginx.pid; error_log stderr error;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; sendfile {"on" if sendfile else "off"};
  server {{ listen 127.0.0.1:{nport}; root {www}; location / {{ default_type {ctype}; }} }} }}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", tmp])
    peer = f"http://127.0.0.1:{nport}/value"
    try:
        wait_http(peer)
        assert urllib.request.urlopen(url).read() == value
        assert urllib.request.urlopen(peer).read() == value
        return [(wrk(url), wrk(peer)) for _ in range(2)]
    finally:
        nginx.terminate()
        nginx.wait()
        a.stop()


def bench_get(binary, tmp):
    results = get_against_nginx(binary, tmp, "get", "site/0042/sensor/17/temp", b'{"v":21.5}',
                                "application/json")
    arps = max(r[0][0] for r in results)
    nrps = max(r[1][0] for r in results)
    print(f"get: almanac {arps:,.0f} req/s (p99 {results[-1][0][1]}), "
          f"nginx {nrps:,.0f} req/s (p99 {results[-1][1][1]}): ratio {arps / nrps:.2f} "
          f"(goal >= 1.0)")


PUT_LUA = """
local counter = 0
local id = 0
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  return wrk.format("PUT", "/api/v1/keys/bench/" .. id .. "/" .. counter, nil, '{"v":21.5}')
end
"""


def redis_server(tmp, *extra):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", tmp, "--save", "", *extra],
                            stdout=subprocess.DEVNULL)
    for _ in range(500):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return proc, port
        time.sleep(0.01)
    raise RuntimeError("redis did not start")


def bench_put(binary, tmp):
    script = os.path.join(tmp, "put.lua")
    with open(script, "w") as f:
        f.write(PUT_LUA)
    a = Almanac(binary, os.path.join(tmp, "put"))
    try:
        rps, p99 = wrk(a.url("/"), script)
        info = json.load(urllib.request.urlopen(a.url("/api/v1/info")))
        per_commit = info["rev"] / max(1, info["storage"]["commits"])
    finally:
        a.stop()

    proc, port = redis_server(tmp, "--appendonly", "yes", "--appendfsync", "everysec")
    try:
        out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-n", "500000",
                              "-t", "set", "-r", "1000000", "-q"], capture_output=True,
                             text=True).stdout
        redis_rps = float(re.search(r"([\d.]+) requests per second", out).group(1))
    finally:
        proc.terminate()
        proc.wait()

    db = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    n, start = 0, time.time()
    while time.time() - start < 3:
        for _ in range(1000):
            n += 1
            db.execute("BEGIN")
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"bench/{n}", b'{"v":21.5}'))
            db.execute("COMMIT")
    sqlite_rps = n / (time.time() - start)
    db.close()
    print(f"put: almanac {rps:,.0f} acknowledged writes/s (p99 {p99}, {per_commit:.1f} writes "
          f"per commit; goal >= 20,000/s); ratio {rps / redis_rps:.2f} against Redis SET "
          f"({redis_rps:,.0f}/s, AOF everysec), {rps / sqlite_rps:.2f} against raw SQLite "
          f"with a commit per write ({sqlite_rps:,.0f}/s)")


def memory_keys():
    """The shape of issue #15: site/NN/devN/temp, 100 sites of 10,000
    devices, each a small JSON sensor reading such as {"v":21.5}."""
    for site in range(100):
        for dev in range(10000):
            yield f"site/{site:02d}/dev{dev}/temp", f'{{"v":{(site * 7 + dev) % 400 / 10}}}'


def bench_memory(binary, tmp):
    n = 1_000_000
    data = os.path.join(tmp, "mem")
    a = Almanac(binary, data)
    batch = []

    def flush():
        body = json.dumps({"ops": batch}).encode()
        req = urllib.request.Request(a.url("/api/v1/batch"), data=body, method="POST")
        urllib.request.urlopen(req).read()
        batch.clear()

    for key, value in memory_keys():
        batch.append({"op": "set", "key": key, "value": json.loads(value)})
        if len(batch) == 10000:
            flush()
    a.stop()

    # An empty daemon and one holding the keys, both just started; the
    # start is timed three times (the machine is shared), the best kept.
    empty = Almanac(binary, os.path.join(tmp, "empty"))
    base = empty.mem()
    empty.stop()
    ready = []
    for _ in range(3):
        full = Almanac(binary, data)
        ready.append(full.ready_s)
        keys = json.load(urllib.request.urlopen(full.url("/api/v1/info")))["keys"]
        mem = full.mem()
        full.stop()
    ready_s = min(ready)
    # Both daemons also hold the few $SYS keys. Anonymous memory is the heap;
    # RSS adds the file-backed pages (the binary, libraries, SQLite's file).
    rss_key, anon_key, file_key = ((m - b) / n for m, b in zip(mem, base))
    assert keys >= n, keys

    proc, port = redis_server(tmp, "--appendonly", "no")
    try:
        def used():
            out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"],
                                 capture_output=True, text=True).stdout
            return int(re.search(r"used_memory:(\d+)", out).group(1))

        before = used()
        pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
        chunk = []
        for key, value in memory_keys():
            chunk.append(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n")
            if len(chunk) == 10000:
                pipe.stdin.write("".join(chunk).encode())
                chunk.clear()
        pipe.stdin.close()
        pipe.wait()
        redis_per_key = (used() - before) / n
    finally:
        proc.terminate()
        proc.wait()
    print(f"memory: almanac {anon_key:.0f} bytes/key of heap (anonymous memory growth), "
          f"RSS {rss_key:.0f} bytes/key (file-backed {file_key:+.0f}); Redis {redis_per_key:.0f} "
          f"bytes/key (used_memory): ratio {anon_key / redis_per_key:.2f} heap, "
          f"{rss_key / redis_per_key:.2f} RSS (goal <= 0.8); start to /ready with {n:,} keys: "
          f"{ready_s:.2f} s, best of {', '.join(f'{r:.2f}' for r in ready)} (goal < 1 s)")


def http_get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return body


def bench_history(binary, tmp):
    # Writes: the same PUT load with history off, then on.
    script = os.path.join(tmp, "put.lua")
    with open(script, "w") as f:
        f.write(PUT_LUA)
    rates = {}
    for mode, args in (("off", ["--history_retention", "0"]), ("on", [])):
        a = Almanac(binary, os.path.join(tmp, f"hist-put-{mode}"), *args)
        try:
            rates[mode] = wrk(a.url("/"), script)[0]
        finally:
            a.stop()

    # Reads: 1,000,000 records of bench/hot, 10 each of 1,000 other keys.
    data = os.path.join(tmp, "hist-read")
    a = Almanac(binary, data)
    import http.client
    conn = HTTPConnection("127.0.0.1", a.port)
    try:
        for b in range(100):
            ops = [{"op": "set", "key": "bench/hot", "value": {"v": b * 10000 + i}}
                   for i in range(10000)]
            conn.request("POST", "/api/v1/batch", json.dumps({"ops": ops}),
                         {"Content-Type": "application/json"})
            assert conn.getresponse().read()
        for r in range(10):
            ops = [{"op": "set", "key": f"bench/other/{i}", "value": r} for i in range(1000)]
            conn.request("POST", "/api/v1/batch", json.dumps({"ops": ops}),
                         {"Content-Type": "application/json"})
            conn.getresponse().read()
        raw = sqlite3.connect(f"file:{data}/almanac.db?mode=ro", uri=True)
        mid = raw.execute("SELECT ts FROM history WHERE key = 'bench/hot' ORDER BY ts "
                          "LIMIT 1 OFFSET 500000").fetchone()[0]
        sql = ("SELECT rev, key, ts, type, labels, origin, value FROM history "
               "WHERE key = 'bench/hot' AND ts >= ? ORDER BY ts LIMIT ?")
        path = f"/api/v1/history/bench/hot?start={mid}&limit=10000"
        body = http_get(conn, path)
        assert len(json.loads(body)["records"]) == 10000
        times, peer = [], []
        for _ in range(20):
            t = time.perf_counter()
            http_get(conn, path)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert len(raw.execute(sql, (mid, 10000)).fetchall()) == 10000
            peer.append(time.perf_counter() - t)
        q_ms, peer_ms = sorted(times)[10] * 1000, sorted(peer)[10] * 1000

        # The scan as curl reads it (the median of 3): Python's own HTTP
        # client would be the bottleneck.
        out = os.path.join(tmp, "scan.json")
        scans = []
        for _ in range(3):
            r = subprocess.run(["curl", "-s", "-o", out, "-w", "%{time_total}",
                                a.url("/api/v1/history/bench/hot?limit=2000000")],
                               capture_output=True, text=True, check=True)
            scans.append(float(r.stdout))
        scan_s = sorted(scans)[1]
        with open(out) as f:
            n = len(json.load(f)["records"])
        assert n == 1_000_000, n
        t = time.perf_counter()
        rows = raw.execute(sql, (0, 2_000_000)).fetchall()
        raw_s = time.perf_counter() - t
        assert len(rows) == n
        raw.close()
    finally:
        conn.close()
        a.stop()
    print(f"history: query of 10,000 records from the middle of 1,000,000: {q_ms:.1f} ms "
          f"(goal < 20 ms; raw SQLite {peer_ms:.1f} ms: {q_ms / peer_ms:.2f}x); full scan "
          f"streamed {n / scan_s:,.0f} records/s (goal >= 1,000,000/s; raw SQLite "
          f"{n / raw_s:,.0f} rows/s: {raw_s / scan_s:.2f}x); acknowledged PUTs with history "
          f"{rates['on']:,.0f}/s against {rates['off']:,.0f}/s without: "
          f"{rates['on'] / rates['off']:.2f}x (goal >= 0.8)")


def http(method, url, body=None, token=None):
    """(status, body) of one request; an HTTP error is an answer, not an exception."""
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


OTHER_TOKENS = 1000


def bench_auth(binary, tmp, rounds=2):
    admin = "bench-admin-" + os.urandom(12).hex()
    key = "/api/v1/keys/site/12/dev4711/temp"
    value = b'{"v":21.5}'
    # Side by side: no session listener, whose default port only one can hold.
    off = Almanac(binary, os.path.join(tmp, "auth-off"), "--tcp_listen", "off")
    try:
        on = Almanac(binary, os.path.join(tmp, "auth-on"), "--tcp_listen", "off",
                     env={"ALMANAC_ADMIN_TOKEN": admin})
    except BaseException:
        off.stop()
        raise
    try:
        st, body = http("POST", on.url("/api/v1/tokens"), json.dumps(
            {"name": "bench", "read": ["site/#"], "write": ["site/#"]}).encode(), admin)
        assert st == 201, (st, body)
        token = json.loads(body)["token"]
        # A deployment's worth of other tokens: finding one must not cost
        # a look at each.
        for n in range(OTHER_TOKENS):
            st, body = http("POST", on.url("/api/v1/tokens"), json.dumps(
                {"name": f"user{n}", "read": [f"site/{n}/#"]}).encode(), admin)
            assert st == 201, (st, body)
        assert http("PUT", off.url(key), value)[0] in (200, 201)
        assert http("PUT", on.url(key), value, token)[0] in (200, 201)
        # Auth is really on: no credential is refused, a key beyond the
        # token's privileges is forbidden, the token reads the key.
        assert http("GET", on.url(key))[0] == 401
        assert http("GET", on.url("/api/v1/keys/other/1"), token=token)[0] == 403
        assert http("GET", on.url(key), token=token) == (200, value), \
            http("GET", on.url(key), token=token)
        assert http("GET", off.url(key)) == (200, value)

        script = os.path.join(tmp, "auth-put.lua")
        with open(script, "w") as f:  # bench_put's load, under site/# (wrk -H adds the header)
            f.write(PUT_LUA.replace("/api/v1/keys/bench/", "/api/v1/keys/site/bench/"))
        modes = {"off": (off, ()), "on": (on, (f"Authorization: Bearer {token}",))}
        runs = {(op, m): [] for op in ("get", "put") for m in modes}
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")  # ABBA: neither gets
            for op in ("get", "put"):                                # only the quiet moments
                for m in order:
                    a, headers = modes[m]
                    cpu = a.cpu_s()
                    if op == "get":
                        rps, p99 = wrk(a.url(key), headers=headers)
                    else:
                        rps, p99 = wrk(a.url("/"), script, headers=headers)
                    # the daemon's CPU per request: what a shared machine's
                    # noise changes least
                    runs[op, m].append((rps, p99, (a.cpu_s() - cpu) / (rps * DURATION) * 1e6))
        st, body = http("GET", on.url("/api/v1/tokens"), token=admin)
        used = [t for t in json.loads(body)["tokens"] if t["name"] == "bench"] if st == 200 else []
        assert used and used[0].get("last_used"), (st, body)
    finally:
        off.stop()
        on.stop()
    for op in ("get", "put"):
        best = {m: max(runs[op, m]) for m in modes}
        cpu = {m: min(r[2] for r in runs[op, m]) for m in modes}
        ratio = best["on"][0] / best["off"][0]
        each = "; ".join(f"{m} " + ", ".join(f"{r[0]:,.0f}" for r in runs[op, m]) for m in modes)
        print(f"auth {op}: token presented {best['on'][0]:,.0f} req/s (p99 {best['on'][1]}), "
              f"auth off {best['off'][0]:,.0f} req/s (p99 {best['off'][1]}): ratio {ratio:.2f} "
              f"(goal >= 0.95: {'PASS' if ratio >= 0.95 else 'short'}); daemon CPU per request "
              f"{cpu['on']:.1f} µs with the token, {cpu['off']:.1f} µs off: "
              f"{cpu['off'] / cpu['on']:.2f}x [best of {rounds}, alternated; each run req/s: "
              f"{each}]")


def info(a):
    with urllib.request.urlopen(a.url("/api/v1/info"), timeout=5) as r:
        return json.load(r)


def bench_bridge(binary, tmp, messages=200_000, topics=10_000):
    load = os.path.join(os.path.dirname(binary), "mqtt_load")
    for qos in (0, 1):
        port = free_port()
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 100\n")
        broker = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        data = os.path.join(tmp, f"bridge{qos}")
        a = Almanac(binary, data, "--bridge_url", f"mqtt://127.0.0.1:{port}",
                    "--bridge_map", "in bench/#", "--bridge_qos", str(qos))
        while info(a)["bridge"]["state"] != "connected":
            time.sleep(0.05)
        counter = subprocess.Popen([load, "count", str(port), str(messages), str(qos)],
                                   stdout=subprocess.PIPE, text=True)
        assert counter.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # subscribed, and $SYS/bridge/state written
        rev0 = info(a)["storage"]["committed_rev"]
        t0 = time.time()
        pub = subprocess.Popen([load, "pub", str(port), str(messages), str(topics), str(qos)],
                               stdout=subprocess.PIPE, text=True)
        # almanac: changes committed, polled until all are in or none came for 3 s.
        got, last, t_last = 0, rev0, t0
        while got < messages and time.time() - t_last < 3:
            rev = info(a)["storage"]["committed_rev"]
            if rev != last:
                last, t_last = rev, time.time()
            got = last - rev0
            time.sleep(0.005)
        pub_s = float(pub.communicate()[0])
        n, last_us = map(int, counter.communicate()[0].split())
        sub_rate = n / (last_us / 1e6 - t0)
        alm_rate = got / (t_last - t0)
        print(f"bridge qos {qos}: almanac committed {got:,} of {messages:,} at {alm_rate:,.0f}/s, "
              f"libmosquitto subscriber counted {n:,} at {sub_rate:,.0f}/s "
              f"(publisher {messages / pub_s:,.0f}/s): {alm_rate / sub_rate:.2f}x")
        a.stop()
        broker.terminate()
        broker.wait()


def ms(text):
    """wrk's latency ("850.12us", "6.58ms", "1.02s") in ms."""
    v, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def bench_expiry(binary, tmp, keys=100_000, window=5):
    """Acknowledged PUTs (wrk, 50 connections) for `window` seconds before
    and from the moment `keys` keys expire at once: the write p99 of each,
    and how long the expiry took."""
    a = Almanac(binary, os.path.join(tmp, "expiry"))
    try:
        when = int((time.time() + 2 * window + 15) * 1e6)  # after the import and a baseline
        lines = "".join(json.dumps({"key": f"site/{n % 100:02d}/dev{n}/temp", "value": 20.5,
                                    "expires": when}) + "\n" for n in range(keys))
        t0 = time.time()
        with urllib.request.urlopen(urllib.request.Request(
                a.url("/api/v1/import"), data=lines.encode(), method="POST")) as r:
            assert r.status == 200
        imported_s = time.time() - t0
        script = os.path.join(tmp, "expiry-put.lua")
        with open(script, "w") as f:
            f.write(PUT_LUA)
        time.sleep(max(0, when / 1e6 - window - 1 - time.time()))
        _, before = wrk(a.url("/"), script, duration=window)
        time.sleep(max(0, when / 1e6 - time.time()))
        start = time.time()
        gone = {}

        def watch():  # how long until the last expired key is gone
            url = a.url("/api/v1/keys/site/%2B/%2B/temp?limit=1")
            while time.time() - start < 60:
                if not json.load(urllib.request.urlopen(url))["entries"]:
                    gone["t"] = time.time() - start
                    return
                time.sleep(0.05)
        t = threading.Thread(target=watch)
        t.start()
        rps, during = wrk(a.url("/"), script, duration=window)
        t.join()
    finally:
        a.stop()
    print(f"expiry: {keys:,} keys imported in {imported_s:.1f} s, expiring at once; write p99 "
          f"{before} in the {window} s before, {during} in the {window} s from the moment they "
          f"expire ({ms(during) / ms(before):.2f}x), {rps:,.0f} PUT/s meanwhile; the last key "
          f"was gone {gone.get('t', float('nan')):.2f} s after its time")


BLOB = 256 * 1024  # bytes of each large value (issue #15)

def random_file(path, size):
    with open(path, "wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))
        f.write(os.urandom(size % (16 << 20)))
        os.fsync(f.fileno())


def dd(src, dst, count, flag):
    """dd's bytes/s writing `count` blocks of 256 KiB from src (in the page
    cache) to dst, with conv=fsync or oflag=dsync."""
    t = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=256K", f"count={count}", flag],
                   capture_output=True, check=True)
    rate = count * BLOB / (time.perf_counter() - t)
    os.unlink(dst)
    return rate


def mqtt_publish(port, messages, topics, payload, topic="cam/{}/frame"):
    """Publishes `messages` retained QoS 1 messages (to `topic` with N from 0
    to topics-1 in turn, each `payload` with its sequence number in front)
    over a plain MQTT 3.1.1 connection, at most 16 unacknowledged; the
    seconds until the last PUBACK."""
    def varint(n):
        out = bytearray()
        while True:
            n, b = divmod(n, 128)
            out.append(b | (128 if n else 0))
            if not n:
                return bytes(out)

    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rx = s.makefile("rb")
    body = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x08blob-pub"
    s.sendall(b"\x10" + varint(len(body)) + body)
    assert rx.read(4) == b"\x20\x02\x00\x00", "no CONNACK"
    window = threading.Semaphore(16)

    def acks():
        for _ in range(messages):
            assert rx.read(4)[0] == 0x40, "not a PUBACK"
            window.release()
    reader = threading.Thread(target=acks, daemon=True)
    reader.start()
    t = time.perf_counter()
    for n in range(messages):
        assert window.acquire(timeout=30), "no PUBACK for 30 s"
        name = topic.format(n % topics).encode()
        head = len(name).to_bytes(2, "big") + name + (n % 65535 + 1).to_bytes(2, "big")
        s.sendall(b"\x33" + varint(len(head) + len(payload)) + head
                  + n.to_bytes(8, "big") + payload[8:])
    reader.join()
    elapsed = time.perf_counter() - t
    s.close()
    return elapsed


def bench_blobput(binary, tmp, keys=64, messages=4000, rounds=3):
    src = os.path.join(tmp, "blob-src")
    random_file(src, 1 << 30)  # 1 GiB: dd's input, and the values http_load sends
    # Rounds of the peer then almanac, each after a sync (so that each
    # writes back only its own bytes), and the ratio of each round: on a
    # shared machine dd alone went from 859 to 222 MB/s within a minute.
    # The peer: the same bytes through dd to the same filesystem, conv=fsync
    # (one sync at the end) against durability commit, oflag=dsync (a sync
    # per 256 KiB) against durability fsync. almanac: 8 writers over 64
    # keys, history on. http_load (C) sends each body from the mapped file:
    # wrk builds every body in Lua and topped out at about 180 MB/s, setting
    # the pace itself.
    load = os.path.join(os.path.dirname(binary), "http_load")
    for durability, flag in (("commit", "conv=fsync"), ("fsync", "oflag=dsync")):
        ratios, seen = [], []
        for r in range(rounds):
            os.sync()
            peer = dd(src, os.path.join(tmp, "dd-out"), (1 << 30) // BLOB, flag)
            os.sync()
            a = Almanac(binary, os.path.join(tmp, f"blobput-{durability}-{r}"),
                        "--durability", durability)
            try:
                cpu = a.cpu_s()
                out = subprocess.run([load, str(a.port), "5", "8", src, str(BLOB), str(keys)],
                                     capture_output=True, text=True, check=True).stdout
                puts, secs, p50, p99 = out.split()
                rate = int(puts) * BLOB / float(secs)
                cores = (a.cpu_s() - cpu) / float(secs)
                st = info(a)
            finally:
                a.stop()
            shutil.rmtree(a.data_dir)
            ratios.append(rate / peer)
            seen.append(f"{rate / 1e6:,.0f} vs {peer / 1e6:,.0f}")
        print(f"blobput http, durability {durability}: 256 KiB values acknowledged, 8 writers "
              f"over {keys} keys, history on (last round: {rate / 1e6:,.0f} MB/s, p50 "
              f"{int(p50) / 1000:.1f} ms, p99 {int(p99) / 1000:.1f} ms, daemon CPU {cores:.2f} cores; db "
              f"{st['storage']['db_bytes'] / 2**20:,.0f} MiB, WAL "
              f"{st['storage']['wal_bytes'] / 2**20:,.0f} MiB) vs dd {flag}: median ratio "
              f"{sorted(ratios)[len(ratios) // 2]:.2f}"
              f"{' (goal >= 0.6)' if durability == 'commit' else ''} "
              f"[each round, MB/s: {'; '.join(seen)}]")

    # MQTT: retained 256 KiB payloads through mosquitto, bridged in, against
    # mqtt_load counting the same stream (mosquitto_sub takes only about
    # 80-130 MB/s of such payloads: it would set the pace, not the broker).
    with open(src, "rb") as f:
        payload = f.read(BLOB)
    os.unlink(src)
    load = os.path.join(os.path.dirname(binary), "mqtt_load")
    port = free_port()
    conf = os.path.join(tmp, "mosquitto-blob.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                "max_queued_messages 0\nmax_inflight_messages 100\n")
    broker = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
    a = None
    try:
        time.sleep(0.3)
        a = Almanac(binary, os.path.join(tmp, "blobput-mqtt"), "--bridge_url",
                    f"mqtt://127.0.0.1:{port}", "--bridge_map", "in bench/#")
        while info(a)["bridge"]["state"] != "connected":
            time.sleep(0.05)
        counter = subprocess.Popen([load, "count", str(port), str(messages), "1"],
                                   stdout=subprocess.PIPE, text=True)
        assert counter.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # subscribed, and $SYS/bridge/state written
        rev0 = info(a)["storage"]["committed_rev"]
        t0 = time.time()
        pub = {}
        publisher = threading.Thread(target=lambda: pub.update(
            s=mqtt_publish(port, messages, keys, payload, "bench/{}/frame")))
        publisher.start()
        # almanac: changes committed, polled until all are in or none came for 3 s.
        got, last, t_last = 0, rev0, t0
        while got < messages and time.time() - t_last < 3:
            rev = info(a)["storage"]["committed_rev"]
            if rev != last:
                last, t_last = rev, time.time()
            got = last - rev0
            time.sleep(0.005)
        publisher.join()
        n, last_us = map(int, counter.communicate()[0].split())
    finally:
        if a:
            a.stop()
        broker.terminate()
        broker.wait()
    alm_rate = got / (t_last - t0)
    sub_rate = n / (last_us / 1e6 - t0)
    print(f"blobput mqtt: almanac committed {got:,} of {messages:,} retained 256 KiB payloads "
          f"(QoS 1) at {alm_rate:,.0f}/s ({alm_rate * BLOB / 1e6:,.1f} MB/s), libmosquitto "
          f"subscriber counted {n:,} at {sub_rate:,.0f}/s ({sub_rate * BLOB / 1e6:,.1f} MB/s) "
          f"(publisher {messages / pub['s']:,.0f}/s): {alm_rate / sub_rate:.2f}x")


def bench_blobget(binary, tmp):
    results = get_against_nginx(binary, tmp, "blobget", "cam/0/frame", os.urandom(BLOB),
                                "application/octet-stream", sendfile=True)
    arps = max(r[0][0] for r in results)
    nrps = max(r[1][0] for r in results)
    print(f"blobget: almanac {arps:,.0f} req/s, {arps * BLOB / 1e6:,.0f} MB/s "
          f"(p99 {results[-1][0][1]}), nginx with sendfile {nrps:,.0f} req/s, "
          f"{nrps * BLOB / 1e6:,.0f} MB/s (p99 {results[-1][1][1]}): ratio {arps / nrps:.2f} "
          f"(goal >= 0.9) [each run req/s: almanac "
          f"{', '.join(f'{r[0][0]:,.0f}' for r in results)}; nginx "
          f"{', '.join(f'{r[1][0]:,.0f}' for r in results)}]")


def memory_of(pid):
    """VmRSS, RssAnon, RssFile (/proc/PID/status) and Anonymous
    (smaps_rollup), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    with open(f"/proc/{pid}/smaps_rollup") as f:
        rollup = f.read()
    m = {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) * 1024
         for k in ("VmRSS", "RssAnon", "RssFile")}
    m["Anonymous"] = int(re.search(r"^Anonymous:\s+(\d+) kB", rollup, re.M).group(1)) * 1024
    return m


def bench_blobmem(binary, tmp, n=10_000, writers=8):
    import http.client
    # Disk: the values as state, history up to history_max_bytes (1 GiB), and
    # a WAL that under steady writes holds every page written until they stop
    # (2.5 GiB of values left 3.5 GiB of database and 6.5 GiB of WAL): five
    # times the payload, and 1 GiB to spare.
    free = shutil.disk_usage(tmp).free
    if free < 5 * n * BLOB + (1 << 30):
        wanted, n = n, max(100, (free - (1 << 30)) // (5 * BLOB))
        print(f"blobmem: {free / 2**30:.1f} GiB free in {tmp}: {n:,} values instead of "
              f"{wanted:,}")
    base = os.urandom(BLOB)
    tail = base[8:]

    def value(i):
        return i.to_bytes(8, "big") + tail

    a = Almanac(binary, os.path.join(tmp, "blobmem"))
    try:
        time.sleep(0.5)
        before = memory_of(a.proc.pid)
        peak = [before["VmRSS"]]
        done = threading.Event()

        def watch():
            while not done.wait(0.1):
                peak[0] = max(peak[0], memory_of(a.proc.pid)["VmRSS"])

        def run(fn):
            errors = []

            def worker(w):
                conn = HTTPConnection("127.0.0.1", a.port)
                try:
                    for i in range(w, n, writers):
                        fn(conn, i)
                except Exception as e:
                    errors.append(e)
                finally:
                    conn.close()
            ts = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
            t = time.perf_counter()
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            if errors:
                raise errors[0]
            return time.perf_counter() - t

        def put(conn, i):
            conn.request("PUT", f"/api/v1/keys/cam/{i}/frame", value(i),
                         {"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            body = r.read()
            assert r.status in (200, 201), (r.status, body[:200])

        def get(conn, i):
            # Byte-exact, without building value(i): with 8 threads that
            # made the client ten times slower than the daemon.
            body = http_get(conn, f"/api/v1/keys/cam/{i}/frame")
            assert len(body) == BLOB and body.startswith(i.to_bytes(8, "big")) \
                and body.endswith(tail), i

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            write_s = run(put)
            written = memory_of(a.proc.pid)
            read_s = run(get)
            read = memory_of(a.proc.pid)
        finally:
            done.set()
            watcher.join()
        st = info(a)
    finally:
        a.stop()
    mib = 2**20

    def growth(m, k):
        d = m[k] - before[k]
        return f"{d / mib:+,.0f} MiB ({d / n / 1024:+.1f} KiB a value)"

    grown = read["VmRSS"] - before["VmRSS"]
    print(f"blobmem: {n:,} values of 256 KiB ({n * BLOB / mib:,.0f} MiB, history on) written by "
          f"{writers} Python clients in {write_s:.1f} s ({n * BLOB / write_s / 1e6:,.0f} MB/s), "
          f"read back byte-exact in {read_s:.1f} s ({n * BLOB / read_s / 1e6:,.0f} MB/s); the "
          f"process grew by {grown / mib:,.0f} MiB of RSS, {grown / (n * BLOB):.2f}x the payload "
          f"(goal < 16 MiB for 10,000 values) [from {before['VmRSS'] / mib:,.0f} MiB RSS, "
          f"{before['RssAnon'] / mib:,.0f} anonymous; after writing: RSS "
          f"{growth(written, 'VmRSS')}, anonymous {growth(written, 'RssAnon')}, file-backed "
          f"{growth(written, 'RssFile')}; "
          f"after reading: RSS {growth(read, 'VmRSS')}, anonymous {growth(read, 'RssAnon')} "
          f"(smaps_rollup: {growth(read, 'Anonymous')}), file-backed {growth(read, 'RssFile')}; "
          f"peak RSS {peak[0] / mib:,.0f} MiB; then db {st['storage']['db_bytes'] / mib:,.0f} MiB, "
          f"WAL {st['storage']['wal_bytes'] / mib:,.0f} MiB, {st['history']['records']:,} history "
          f"records ({st['history']['pruned']:,} pruned)]")

def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def mosquitto(tmp, name, extra=""):
    """(process, MQTT port) of a mosquitto broker with `extra` lines."""
    port = free_port()
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}")
    proc = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "mosquitto")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return [proc], [port]


def mosquitto_pair(tmp):
    """Two mosquitto brokers, the second bridged to the first (both ways)."""
    procs, (one,) = mosquitto(tmp, "mosq-one")
    try:
        more, (two,) = mosquitto(tmp, "mosq-two", f"connection to-one\naddress 127.0.0.1:{one}\n"
                                 "topic # both 1\n")
    except BaseException:
        procs[0].kill()
        procs[0].wait()
        raise
    return procs + more, [one, two]


def nats_cluster(tmp, nodes=3):
    """A NATS cluster of `nodes` servers, each with JetStream and an MQTT
    listener (NATS speaks MQTT 3.1.1 only): (processes, MQTT ports)."""
    client = [free_port() for _ in range(nodes)]
    route = [free_port() for _ in range(nodes)]
    mqtt = [free_port() for _ in range(nodes)]
    procs = []
    for i in range(nodes):
        routes = ", ".join(f"nats-route://127.0.0.1:{route[j]}" for j in range(nodes) if j != i)
        conf = os.path.join(tmp, f"nats{i}.conf")
        os.makedirs(os.path.join(tmp, f"nats{i}"), exist_ok=True)
        with open(conf, "w") as f:
            f.write(f"""server_name: n{i}
log_file: "{tmp}/nats{i}.log"
listen: 127.0.0.1:{client[i]}
jetstream {{ store_dir: "{tmp}/nats{i}" }}
cluster {{ name: almanac; listen: 127.0.0.1:{route[i]}; routes: [{routes}] }}
mqtt {{ listen: 127.0.0.1:{mqtt[i]} }}
""")
        procs.append(subprocess.Popen(["nats-server", "-c", conf], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    try:
        for i in range(nodes):
            wait_port(mqtt[i], procs[i], "nats-server")
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    return procs, mqtt


class SseTimes:
    """An SSE stream of `pattern` (live changes only) from almanac `a`: for
    each value (by its text), when it arrived here (perf_counter) and its
    commit time on `a` (the envelope's ts, µs)."""

    def __init__(self, a, pattern):
        self.arrived = {}
        self.cond = threading.Condition()
        self.resp = urllib.request.urlopen(
            a.url("/api/v1/events/" + urllib.parse.quote(pattern, safe="/") + "?live_only=1"),
            timeout=60)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        try:
            for line in self.resp:
                if line.startswith(b"data: "):
                    t = time.perf_counter()
                    e = json.loads(line[6:])
                    if "ts" not in e:
                        continue  # the sync
                    with self.cond:
                        self.arrived[e.get("text")] = (t, e["ts"])
                        self.cond.notify_all()
        except (OSError, ValueError, AttributeError):
            pass  # closed (http.client's chunked reader then has no file)

    def wait(self, text, timeout):
        """(arrival, ts) of `text`; None when it did not come in `timeout` s."""
        with self.cond:
            self.cond.wait_for(lambda: text in self.arrived, timeout)
            return self.arrived.get(text)

    def close(self):
        self.resp.close()


def converge_once(binary, tmp, name, ports, protocol, writes, timeout=30, extra=()):
    """For each of `writes` PUTs on almanac A (bridged to the first port),
    one at a time, its change on almanac B (bridged to the last), seen on an
    SSE stream from B: (commit on A to commit on B, the PUT's answer to the
    event's arrival) in ms, from the envelopes' ts (one clock: one machine)
    and from this process's clock; and how many did not come in `timeout`
    seconds."""
    args = ["--bridge_protocol", protocol, "--bridge_keepalive", "5", *extra]
    a = Almanac(binary, os.path.join(tmp, name + "-a"), "--bridge_url",
                f"mqtt://127.0.0.1:{ports[0]}", "--bridge_client_id", f"{name}-a", *args)
    b = Almanac(binary, os.path.join(tmp, name + "-b"), "--bridge_url",
                f"mqtt://127.0.0.1:{ports[-1]}", "--bridge_client_id", f"{name}-b", *args)
    sse = None
    try:
        for x in (a, b):
            deadline = time.time() + 30
            while info(x)["bridge"]["state"] != "connected":
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: the bridge did not connect")
                time.sleep(0.05)
        sse = SseTimes(b, "conv/#")
        conn = HTTPConnection("127.0.0.1", a.port, timeout=10)

        def put(text):
            conn.request("PUT", "/api/v1/keys/conv/k", body=text.encode(),
                         headers={"Content-Type": "text/plain"})
            r = conn.getresponse()
            body = r.read()
            t = time.perf_counter()
            if r.status not in (200, 201):
                raise RuntimeError(f"PUT answered {r.status}")
            return t, json.loads(body)["ts"]
        # Until a write on A reaches B: the brokers' bridges and subscriptions
        # are up (a NATS cluster elects its JetStream leaders first).
        deadline = time.time() + 60
        for n in range(10 ** 6):
            put(f"warm-{n}")
            if sse.wait(f"warm-{n}", 1) is not None:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{name}: no write reached B in 60 s")
        commit, seen, lost = [], [], 0
        for n in range(writes):
            acked, ts_a = put(f"w-{n}")
            got = sse.wait(f"w-{n}", timeout)
            if got is None:
                lost += 1
                continue
            commit.append((got[1] - ts_a) / 1000)
            seen.append((got[0] - acked) * 1000)
            time.sleep(0.005)
        return commit, seen, lost
    finally:
        if sse:
            sse.close()
        a.stop()
        b.stop()


def bench_converge(binary, tmp, writes=300, rounds=3):
    """How long a write takes to reach the other almanac: A and B bridged to
    one mosquitto, to two mosquittos joined by a bridge, and to two nodes of
    a 3-node NATS cluster (MQTT 3.1.1; at bridge_qos 1, the default, then 0);
    `rounds` fresh setups of each."""
    sys.setswitchinterval(0.0002)  # the SSE thread's arrival time, not the GIL's 5 ms

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))]
    setups = (("one mosquitto", lambda: mosquitto(tmp, "mosq"), "5", ()),
              ("two bridged mosquittos", lambda: mosquitto_pair(tmp), "5", ()),
              ("NATS cluster of 3", lambda: nats_cluster(tmp), "3.1.1", ()),
              ("NATS cluster of 3, bridge_qos 0", lambda: nats_cluster(tmp), "3.1.1",
               ("--bridge_qos", "0")))
    for name, start, protocol, extra in setups:
        for r in range(rounds):
            procs, ports = start()
            try:
                commit, seen, lost = converge_once(binary, tmp, f"{name.replace(' ', '-')}-{r}",
                                                   ports, protocol, writes, extra=extra)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
            commit.sort()
            seen.sort()
            if not commit:
                print(f"converge, {name}, round {r + 1}: none of {writes} writes reached B")
                continue
            print(f"converge, {name} (MQTT {protocol}), round {r + 1}: {len(commit)} of {writes} "
                  f"writes reached B ({lost} not within 30 s); commit on A to commit on B: "
                  f"p50 {pct(commit, 0.5):.2f} ms, p99 {pct(commit, 0.99):.2f} ms, max "
                  f"{commit[-1]:.2f} ms; PUT answered to SSE event from B: p50 "
                  f"{pct(seen, 0.5):.2f} ms, p99 {pct(seen, 0.99):.2f} ms (load average "
                  f"{os.getloadavg()[0]:.1f})", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("which", nargs="*",
                   default=["get", "put", "memory", "history", "bridge", "auth", "expiry",
                            "blobput", "blobget", "converge"])
    args = p.parse_args()
    binary = os.path.abspath(args.binary)
    tmp = tempfile.mkdtemp(prefix="almanac-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as another user
    try:
        for name in args.which:
            globals()[f"bench_{name}"](binary, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
