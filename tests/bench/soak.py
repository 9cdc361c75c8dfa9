#!/usr/bin/env python3
"""almanac soak benchmark: a real daemon bridged to a real mosquitto broker,
under a moderate mixed load for N minutes, watched for leaks.

Usage:
  python3 tests/bench/soak.py --binary build/almanac [--minutes 30] [--rate 2]
  tests/bench/run soak            (SOAK_MINUTES=30 by default)

Everything runs on 127.0.0.1, on free ports, in a temporary folder: mosquitto
(started and restarted by this script) and `almanac serve` with
`--bridge_url mqtt://127.0.0.1:<broker>`, `--bridge_map "both site/#"` and
history capped by `--history_max_bytes` (32MiB by default, so pruning runs and
the disk stays bounded). The load, every part rate-limited, standard library
only plus mosquitto_pub/mosquitto_sub. `--rate` scales it: the default 2 is
about 180 operations a second (~5 MB/min of values), measured at ~4% of one
core for this script and 5-10% for almanac on a 2-core machine; --rate 4
doubles both (almanac ~25%). The figures below are per unit of --rate:

  writers   2 HTTP keep-alive connections doing PUTs (15/s each, 1% of them
            followed by a DELETE), 1 TCP session doing `set` (15/s); keys
            like site/12/dev4711/temp (20 sites x 50 devices x 4 metrics =
            4,000 keys), values of 1 byte to ~68 KiB (a few above
            the 64 KiB blob threshold): JSON numbers and objects, text, binary.
  readers   1 HTTP keep-alive connection (30/s): GET of single keys (with ETag /
            If-None-Match, HEAD), pattern gets (site/%2B/dev4711/%23, paged
            site/N/%23), ls, history of a key and of a pattern with every=.
  subs      1 long-lived TCP session that subscribes and unsubscribes all the
            time (snapshot, live_only, unique, since=) and reads every event.
  SSE       5 streams at a time on /api/v1/events/..., read for 2-25 s and
            dropped (half with a TCP reset), some that never get an event
            (?live_only=1 on quiet/N/#), some resuming with ?since=.
  churn     ~1 session a second over TCP or WebSocket (/api/v1/ws): welcome,
            a few requests (get, pget, ls, history, set, ping, subscribe),
            then a clean close, a reset, or a reset right after a large
            request.
  MQTT      a small MQTT 3.1.1 client (QoS 1, retained) publishing into mapped
            topics site/N/mqttM/... (10/s), mosquitto_pub with MQTT 5
            properties every 15 s, and every 30 s a probe of both bridge directions. The
            broker is restarted every --broker_restart seconds (default 180).

Every minute one line: elapsed minute, the daemon's VmRSS and RssAnon, open
fds, threads, CPU (daemon and this script), operations done in that minute,
p50/p99 of HTTP PUT and GET (single key), errors (and expected errors: MQTT
failures while the broker restarts), HTTP keep-alive reconnects, and the
sizes of almanac.db and its WAL.

Verdict (exit 0 PASS, 1 FAIL). Samples are taken every 5 s; the first
--warmup minutes (default: a sixth of the run, 1..5 min) are not judged. Of the
rest, the mean RssAnon of the last third must be within max(--mem_pct 10%,
--mem_mib 8 MiB) of the first third's, and the slope of a least-squares line
through the last half of it (printed in MiB/h: a leak keeps growing to the
end, a late-filling cache flattens), times the judged window, within the same
tolerance; the median fd count of the last third within --fd_tol (20) of the
first third's, and the fitted fd growth too; threads flat (+2).
No unexpected errors. At the end, after the load stops, the daemon must answer
/health and /ready, its session count drop to 0, and its idle fd count be
within 8 of the idle count before the load started (waiting up to 45 s: a
dropped SSE stream that gets no event is noticed at its next heartbeat). FAIL
prints the numbers, the daemon's fds by kind (TCP sockets by state) and the
tail of its log. `kill -USR1 <soak pid>` prints where every load thread is.
The first minutes fill SQLite's page caches (cache_size 64 MiB per
connection), so short runs (--minutes 3) check the machinery and fds, not
memory: judge memory on a 30-minute run.
"""
import argparse
import base64
import faulthandler
import http.client
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict

MiB = 1024 * 1024
SITES, DEVS, METRICS = 20, 50, ("temp", "hum", "status", "fw")
stop = threading.Event()
max_rev = 0  # highest rev seen in a PUT answer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rand_key():
    return f"site/{random.randrange(SITES)}/dev{4700 + random.randrange(DEVS)}/{random.choice(METRICS)}"


def rand_size():
    r = random.random()
    if r < 0.6:
        return random.randint(1, 64)
    if r < 0.9:
        return int(64 * 64 ** random.random())  # 64 B .. 4 KiB, log-uniform
    if r < 0.99:
        return int(4096 * 8 ** random.random())  # 4 .. 32 KiB
    return random.randint(32 * 1024, 68 * 1024)  # a few cross the 64 KiB blob threshold


WORDS = "ok warm cold idle running fault door open closed low high".split()


def rand_value():
    """(bytes, content type, kind) with kind json/text/binary."""
    n = rand_size()
    r = random.random()
    if n < 16 and r < 0.5:
        return str(round(random.uniform(-40, 120), 2)).encode(), "application/json", "json"
    if r < 0.4:
        pad = "x" * max(0, n - 40)
        return (json.dumps({"v": random.randint(0, 1 << 40), "s": random.choice(WORDS), "pad": pad})
                .encode(), "application/json", "json")
    if r < 0.7:
        text = (" ".join(random.choice(WORDS) for _ in range(n // 5 + 1)))[:n] or "x"
        return text.encode(), "text/plain; charset=utf-8", "text"
    return os.urandom(n), "application/octet-stream", "binary"


class Pacer:
    """Sleeps so that calls happen `rate` times a second on average."""

    def __init__(self, rate):
        self.period = 1.0 / rate
        self.next = time.monotonic()

    def wait(self):
        self.next = max(self.next + self.period * random.uniform(0.5, 1.5), time.monotonic() - 1)
        d = self.next - time.monotonic()
        if d > 0:
            stop.wait(d)
        return not stop.is_set()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.restarts = []  # (stop time, start time or None) of the broker
        self.reset()
        self.total_errors = 0
        self.total_expected = 0
        self.total_ops = 0
        self.error_log = []  # (elapsed s, kind, message), the first 50
        self.expected_log = []
        self.t0 = time.monotonic()

    def reset(self):
        self.ops = defaultdict(int)
        self.lat = {"put": [], "get": []}
        self.errors = 0
        self.expected = 0
        self.reconnects = 0

    def op(self, kind, latency=None):
        with self.lock:
            self.ops[kind] += 1
            if latency is not None and kind in self.lat:
                self.lat[kind].append(latency)

    def broker_trouble(self, t0, t1=None, grace=40.0):
        """Whether [t0, t1] overlaps a broker restart (down time plus grace)."""
        t1 = t0 if t1 is None else t1
        with self.lock:
            for down, up in self.restarts:
                end = (up if up is not None else time.monotonic() + 1e9) + grace
                if t0 <= end and t1 >= down - 1:
                    return True
        return False

    def error(self, kind, msg, expected=False):
        with self.lock:
            entry = (time.monotonic() - self.t0, kind, str(msg)[:200])
            if expected:
                self.expected += 1
                self.total_expected += 1
                if len(self.expected_log) < 50:
                    self.expected_log.append(entry)
            else:
                self.errors += 1
                self.total_errors += 1
                if len(self.error_log) < 50:
                    self.error_log.append(entry)
                    print(f"  error at {entry[0]:.0f}s [{kind}]: {entry[2]}", flush=True)

    def reconnect(self):
        with self.lock:
            self.reconnects += 1

    def take(self):
        with self.lock:
            ops, lat, errors, expected, rec = self.ops, self.lat, self.errors, self.expected, self.reconnects
            self.reset()
            self.total_ops += sum(ops.values())
        return ops, lat, errors, expected, rec


stats = Stats()


# ---------------------------------------------------------------- processes

class Broker:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "mosquitto")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)  # mosquitto started as root runs as user mosquitto
        self.port = free_port()
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {self.dir}/\nautosave_interval 30\n"
                    f"log_dest file {self.dir}/mosquitto.log\nlog_type error\nlog_type warning\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()  # saves retained messages on SIGTERM
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Daemon:
    def __init__(self, binary, tmp, broker_port, history_max):
        self.data_dir = os.path.join(tmp, "data")
        self.port, self.tcp_port = free_port(), free_port()
        self.log_path = os.path.join(tmp, "almanac.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--http_listen", f"127.0.0.1:{self.port}",
             "--tcp_listen", f"127.0.0.1:{self.tcp_port}", "--data_dir", self.data_dir,
             "--bridge_url", f"mqtt://127.0.0.1:{broker_port}", "--bridge_map", "both site/#",
             "--bridge_client_id", f"almanac-soak-{os.getpid()}",
             "--history_max_bytes", history_max, "--log_level", "warn"],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"almanac exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("almanac did not get ready")

    def get(self, path, timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def sample(self):
        """(VmRSS, RssAnon, fds, threads, cpu seconds) of the daemon."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1)) * 1024
        anon = int(re.search(r"RssAnon:\s+(\d+)", st).group(1)) * 1024
        threads = int(re.search(r"Threads:\s+(\d+)", st).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, anon, fds, threads, cpu

    def log_tail(self, n=30):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "did not stop within 30 s of SIGTERM (killed)"
        self.log.close()
        return f"exit code {self.proc.returncode}"


# ---------------------------------------------------------------- HTTP

class Http:
    """One keep-alive connection; a request that fails on a connection the
    server closed is retried once on a new one (counted as a reconnect)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            t = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, data, time.perf_counter() - t, r
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest) as e:
                self.close()
                if attempt:
                    raise
                stats.reconnect()
            except Exception:
                self.close()
                raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def http_writer(port, rate):
    global max_rev
    h = Http(port)
    p = Pacer(rate)
    while p.wait():
        key = rand_key()
        value, ctype, _ = rand_value()
        headers = {"Content-Type": ctype}
        if random.random() < 0.1:
            headers["X-Almanac-Label-Unit"] = random.choice(["C", "%", "V"])
        try:
            status, data, lat, _ = h.request("PUT", f"/api/v1/keys/{key}", value, headers)
            if status in (200, 201):
                stats.op("put", lat)
                rev = json.loads(data)["rev"]
                if rev > max_rev:
                    max_rev = rev
            else:
                stats.error("http put", f"{status} {data[:120]!r}")
        except Exception as e:
            stats.error("http put", repr(e))
        if random.random() < 0.01:  # a delete now and then, so keys come and go
            try:
                status, data, _, _ = h.request("DELETE", f"/api/v1/keys/{rand_key()}")
                if status in (200, 404):
                    stats.op("delete")
                else:
                    stats.error("http delete", f"{status} {data[:120]!r}")
            except Exception as e:
                stats.error("http delete", repr(e))
    h.close()


def http_reader(port, rate):
    h = Http(port)
    p = Pacer(rate)
    etags = {}
    while p.wait():
        r = random.random()
        try:
            if r < 0.7:
                key = rand_key()
                hdr = {"If-None-Match": etags[key]} if key in etags and random.random() < 0.3 else {}
                method = "HEAD" if random.random() < 0.05 else "GET"
                status, data, lat, resp = h.request(method, f"/api/v1/keys/{key}", headers=hdr)
                if status in (200, 304, 404):
                    stats.op("get", lat)
                    if status == 200 and resp.getheader("ETag"):
                        etags[key] = resp.getheader("ETag")
                else:
                    stats.error("http get", f"{status} {data[:120]!r}")
                continue
            if r < 0.82:
                if random.random() < 0.5:
                    path = f"/api/v1/keys/site/%2B/dev{4700 + random.randrange(DEVS)}/%23"
                else:
                    path = f"/api/v1/keys/site/{random.randrange(SITES)}/%23?limit=50"
                status, data, _, _ = h.request("GET", path)
                if status == 200 and "?limit" in path:
                    nxt = json.loads(data).get("next")
                    if nxt:
                        status, data, _, _ = h.request(
                            "GET", path + "&after=" + urllib.parse.quote(nxt, safe=""))
                kind = "pattern"
            elif r < 0.9:
                path = random.choice(["/api/v1/ls", "/api/v1/ls/site",
                                      f"/api/v1/ls/site/{random.randrange(SITES)}"])
                status, data, _, _ = h.request("GET", path)
                kind = "ls"
            else:
                if random.random() < 0.5:
                    path = f"/api/v1/history/{rand_key()}?limit=100&order=desc"
                else:
                    start = int(time.time() * 1e6) - 120_000_000
                    path = (f"/api/v1/history/site/{random.randrange(SITES)}/%23"
                            f"?start={start}&every=10s&limit=500")
                status, data, _, _ = h.request("GET", path)
                kind = "history"
            if status == 200 or status == 404 and kind == "ls":  # ls of a key not written yet
                stats.op(kind)
            else:
                stats.error(f"http {kind}", f"{path}: {status} {data[:120]!r}")
        except Exception as e:
            stats.error("http read", repr(e))
    h.close()


# ---------------------------------------------------------------- sessions

class Closed(Exception):
    pass


class Session:
    """A session over TCP (newline-delimited JSON) or WebSocket."""

    def __init__(self, port, tcp_port, ws=False):
        self.ws = ws
        self.buf = b""
        self.next_id = 1
        self.events = 0
        self.sock = socket.create_connection(("127.0.0.1", tcp_port if not ws else port), timeout=15)
        if ws:
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall((f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                               f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                               f"Sec-WebSocket-Protocol: almanac.v1\r\n\r\n").encode())
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"websocket upgrade refused: {head[:100]!r}")
        welcome = self.recv()
        if welcome is None or welcome.get("type") != "welcome":
            raise RuntimeError(f"no welcome: {welcome!r}")

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise Closed("server closed the connection")
        self.buf += d

    def _need(self, n):
        while len(self.buf) < n:
            self._fill()

    def send(self, obj):
        data = json.dumps(obj, separators=(",", ":")).encode()
        if not self.ws:
            self.sock.sendall(data + b"\n")
            return
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                struct.pack("!BH", 0x80 | 126, n) if n < 65536 else
                                struct.pack("!BQ", 0x80 | 127, n))
        mask = os.urandom(4)
        masked = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
                  ).to_bytes(n, "big") if n else b""
        self.sock.sendall(head + mask + masked)

    def _raw(self):
        """The next message's bytes."""
        if not self.ws:
            while b"\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\n", 1)
            return line
        payload = b""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                self._need(4)
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._need(off + n)
            data, self.buf = self.buf[off:off + n], self.buf[off + n:]
            op = b0 & 0x0F
            if op == 8:
                raise Closed(f"websocket close {data[:2].hex()} {data[2:100]!r}")
            if op == 9:
                self.sock.sendall(bytes([0x8A, 0x80 | len(data)]) + b"\0\0\0\0" + data)
                continue
            if op == 10:
                continue
            payload += data
            if b0 & 0x80:
                return payload

    def recv(self):
        """The next message as a dict, or None for an event (not parsed)."""
        raw = self._raw()
        if raw.startswith(b'{"type":"event"'):
            self.events += 1
            return None
        return json.loads(raw)

    def request(self, obj, ok_errors=()):
        obj["id"] = self.next_id
        self.next_id += 1
        self.send(obj)
        deadline = time.monotonic() + 15
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {obj['type']}")
            m = self.recv()
            if m is None or m.get("id") != obj["id"] or m.get("type") == "sync":
                if m is not None and m.get("type") == "error":
                    raise RuntimeError(f"unsolicited error {m}")
                continue
            if m.get("type") == "error" and m.get("error") not in ok_errors:
                raise RuntimeError(f"{obj['type']}: {m.get('error')}: {m.get('message')}")
            return m

    def drain(self, seconds):
        """Reads (and drops) whatever arrives for `seconds`."""
        end = time.monotonic() + seconds
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(min(left, 0.5))
            try:
                while time.monotonic() < end and not stop.is_set():
                    if self.ws and len(self.buf) >= 2 or not self.ws and b"\n" in self.buf:
                        m = self.recv()
                        if m is not None and m.get("type") == "error":
                            raise RuntimeError(f"unsolicited error {m}")
                    else:
                        self._fill()
            except socket.timeout:
                pass
            finally:
                self.sock.settimeout(15)

    def close(self, how="clean"):
        try:
            if how == "reset":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "clean":
                if self.ws:
                    self.sock.sendall(bytes([0x88, 0x82]) + b"\0\0\0\0" + struct.pack("!H", 1000))
                else:
                    self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(5)
                try:
                    while self.sock.recv(65536):
                        pass
                except (socket.timeout, OSError):
                    pass
        finally:
            self.sock.close()


def set_request(key):
    value, ctype, kind = rand_value()
    req = {"type": "set", "key": key}
    if kind == "json":
        req["value"] = json.loads(value)
    elif kind == "text":
        req["text"] = value.decode()
    else:
        req["base64"] = base64.b64encode(value).decode()
        req["content_type"] = ctype
    if random.random() < 0.1:
        req["labels"] = {"src": "soak"}
    return req


def session_writer(port, tcp_port, rate):
    p = Pacer(rate)
    s = None
    while p.wait():
        try:
            if s is None:
                s = Session(port, tcp_port)
            s.request(set_request(rand_key()))
            stats.op("set")
        except Exception as e:
            stats.error("session set", repr(e))
            if s is not None:
                s.close("reset")
            s = None
    if s is not None:
        s.close()


def sub_pattern():
    r = random.random()
    if r < 0.4:
        return f"site/{random.randrange(SITES)}/+/{random.choice(METRICS)}"
    if r < 0.7:
        return f"site/+/dev{4700 + random.randrange(DEVS)}/#"
    if r < 0.85:
        return f"quiet/{random.randrange(100)}/#"
    return f"site/{random.randrange(SITES)}/#"


def subscriber(port, tcp_port, period):
    """One long-lived session whose subscriptions keep changing."""
    s, subs = None, []
    while not stop.is_set():
        try:
            if s is None:
                s, subs = Session(port, tcp_port), []
            if len(subs) < 3 or (len(subs) < 12 and random.random() < 0.5):
                req = {"type": "subscribe", "pattern": sub_pattern()}
                if random.random() < 0.3:
                    req["live_only"] = True
                elif random.random() < 0.2 and max_rev > 50:
                    req["since"] = max_rev - random.randint(1, 50)
                if random.random() < 0.2:
                    req["unique"] = True
                subs.append(s.request(req)["sub"])
                stats.op("subscribe")
            else:
                sub = subs.pop(random.randrange(len(subs)))
                s.request({"type": "unsubscribe", "sub": sub})
                stats.op("unsubscribe")
            s.drain(period)
        except Exception as e:
            stats.error("subscriber", repr(e))
            if s is not None:
                s.close("reset")
            s = None
            stop.wait(1)
    if s is not None:
        s.close()


def churner(port, tcp_port, rate):
    p = Pacer(rate)
    while p.wait():
        ws = random.random() < 0.5
        s = None
        try:
            s = Session(port, tcp_port, ws=ws)
            if random.random() < 0.3:
                s.request({"type": "hello", "protocol": "1.0"})
            for _ in range(random.randint(1, 5)):
                r = random.random()
                if r < 0.25:
                    s.request({"type": "get", "key": rand_key()}, ok_errors=("not_found",))
                elif r < 0.4:
                    s.request({"type": "pget", "pattern": sub_pattern(), "limit": 100})
                elif r < 0.5:
                    s.request({"type": "ls", "key": f"site/{random.randrange(SITES)}"})
                elif r < 0.6:
                    s.request({"type": "history", "pattern": rand_key(), "limit": 20,
                               "order": "desc"})
                elif r < 0.7:
                    s.request(set_request(rand_key()))
                elif r < 0.8:
                    s.request({"type": "ping"})
                else:
                    s.request({"type": "subscribe", "pattern": sub_pattern(),
                               "live_only": random.random() < 0.5})
                    s.drain(random.uniform(0.2, 2))
                stats.op("churn req")
            how = random.random()
            if how < 0.4:
                s.close("clean")
            elif how < 0.7:
                s.close("reset")
            else:  # gone in the middle of a large answer
                s.send({"type": "pget", "pattern": "site/#", "limit": 2000, "id": 999999})
                time.sleep(0.01)
                s.close("reset")
            stats.op("session")
        except Exception as e:
            stats.error("churn ws" if ws else "churn tcp", repr(e))
            if s is not None:
                s.close("reset")


# ---------------------------------------------------------------- SSE

def sse_streams(port, concurrent):
    sel = selectors.DefaultSelector()
    streams = {}  # socket -> dict

    def open_one():
        r = random.random()
        if r < 0.3:
            path, quiet = f"/api/v1/events/quiet/{random.randrange(100)}/%23?live_only=1", True
        elif r < 0.55:
            path, quiet = f"/api/v1/events/site/%2B/dev{4700 + random.randrange(DEVS)}/%23", False
        elif r < 0.8:
            path, quiet = (f"/api/v1/events/site/{random.randrange(SITES)}/%2B/"
                           f"{random.choice(METRICS)}?live_only=1"), False
        else:
            since = f"?since={max(0, max_rev - random.randint(1, 200))}" if max_rev else ""
            path, quiet = f"/api/v1/events/site/{random.randrange(SITES)}/%23{since}", False
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Accept: text/event-stream\r\n\r\n".encode())
        sock.setblocking(False)
        streams[sock] = {"path": path, "quiet": quiet, "head": b"", "ok": False, "bytes": 0,
                         "until": time.monotonic() + random.uniform(2, 25)}
        sel.register(sock, selectors.EVENT_READ)

    def drop(sock, how):
        sel.unregister(sock)
        st = streams.pop(sock)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return st

    while not stop.is_set():
        while len(streams) < concurrent and not stop.is_set():
            try:
                open_one()
                stats.op("sse open")
            except Exception as e:
                stats.error("sse open", repr(e))
                stop.wait(1)
                break
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            st = streams[sock]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                drop(sock, "close")
                stats.error("sse", f"{st['path']}: {e!r}")
                continue
            if not data:
                drop(sock, "close")
                stats.error("sse", f"{st['path']}: closed by the server after {st['bytes']} bytes")
                continue
            st["bytes"] += len(data)
            if not st["ok"]:
                st["head"] += data
                if b"\r\n" in st["head"]:
                    line = st["head"].split(b"\r\n", 1)[0]
                    if not line.startswith(b"HTTP/1.1 200"):
                        drop(sock, "close")
                        stats.error("sse", f"{st['path']}: {line[:100]!r}")
                        continue
                    st["ok"] = True
                    st["head"] = b""
        now = time.monotonic()
        for sock in [s for s, st in streams.items() if st["until"] <= now]:
            st = drop(sock, "reset" if random.random() < 0.5 else "close")
            stats.op("sse dropped")
    for sock in list(streams):
        drop(sock, "reset")


# ---------------------------------------------------------------- MQTT

class Mqtt:
    """Just enough MQTT 3.1.1 to publish at QoS 1."""

    def __init__(self, port, client_id):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        cid = client_id.encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
        self.sock.sendall(b"\x10" + self._len(len(var)) + var)
        ack = self._read(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"connack {ack.hex()}")
        self.pid = 0

    @staticmethod
    def _len(n):
        out = b""
        while True:
            b, n = n % 128, n // 128
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            d = self.sock.recv(n - len(buf))
            if not d:
                raise ConnectionError("broker closed the connection")
            buf += d
        return buf

    def publish(self, topic, payload, retain=True):
        self.pid = self.pid % 65535 + 1
        t = topic.encode()
        var = struct.pack("!H", len(t)) + t + struct.pack("!H", self.pid) + payload
        self.sock.sendall(bytes([0x32 | (1 if retain else 0)]) + self._len(len(var)) + var)
        ack = self._read(4)
        if ack[0] != 0x40 or struct.unpack("!H", ack[2:4])[0] != self.pid:
            raise RuntimeError(f"puback {ack.hex()}")

    def close(self):
        try:
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()


def mqtt_publisher(broker, rate):
    p = Pacer(rate)
    m = None
    last_v5 = time.monotonic()
    while p.wait():
        t0 = time.monotonic()
        topic = (f"site/{random.randrange(SITES)}/mqtt{random.randrange(25)}/"
                 f"{random.choice(METRICS)}")
        value = rand_value()[0] if random.random() < 0.3 else str(round(random.uniform(0, 40), 1)).encode()
        try:
            if m is None:
                m = Mqtt(broker.port, f"soak-pub-{os.getpid()}")
            m.publish(topic, value)
            stats.op("mqtt pub")
        except Exception as e:
            stats.error("mqtt pub", repr(e), expected=stats.broker_trouble(t0, grace=10))
            if m is not None:
                m.sock.close()
            m = None
            stop.wait(0.5)
        if time.monotonic() - last_v5 > 15:  # MQTT 5 with content type and a user property
            last_v5 = time.monotonic()
            try:
                subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-q", "1",
                                "-r", "-V", "mqttv5", "-D", "publish", "content-type",
                                "application/json", "-D", "publish", "user-property", "unit", "C",
                                "-m", json.dumps({"t": round(random.uniform(0, 40), 1)})],
                               check=True, capture_output=True, timeout=10)
                stats.op("mqtt pub")
            except Exception as e:
                stats.error("mosquitto_pub", repr(e), expected=stats.broker_trouble(last_v5, grace=10))
    if m is not None:
        m.close()


def bridge_probe(daemon, broker, period):
    """Both directions of the bridge, every `period` seconds."""
    n = 0
    while not stop.wait(period):
        n += 1
        token = f"probe-{os.getpid()}-{n}-{random.randrange(1 << 30)}"
        t0 = time.monotonic()
        ok_in = ok_out = False
        try:  # MQTT -> key
            m = Mqtt(broker.port, f"soak-probe-{os.getpid()}")
            m.publish("site/probe/in", token.encode())
            m.close()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not stop.is_set():
                status, data = daemon.get("/api/v1/keys/site/probe/in")
                if status == 200 and data == token.encode():
                    ok_in = True
                    break
                time.sleep(0.5)
        except Exception as e:
            ok_in = repr(e)
        try:  # key -> MQTT
            c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            c.request("PUT", "/api/v1/keys/site/probe/out", token, {"Content-Type": "text/plain"})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status not in (200, 201):
                raise RuntimeError(f"PUT site/probe/out: {r.status}")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not stop.is_set():
                out = subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-t", "site/probe/out",
                                      "--retained-only", "-C", "1", "-W", "2"],
                                     capture_output=True, timeout=10)
                if out.stdout.strip() == token.encode():
                    ok_out = True
                    break
                time.sleep(0.5)
        except Exception as e:
            ok_out = repr(e)
        if stop.is_set():
            return
        for name, ok in (("bridge in (mqtt->key)", ok_in), ("bridge out (key->mqtt)", ok_out)):
            if ok is True:
                stats.op("probe")
            else:
                stats.error(name, f"token not through in 20 s {ok or ''}",
                            expected=stats.broker_trouble(t0, time.monotonic()))


def broker_restarter(broker, first, period, down_s=3):
    wait = first
    while not stop.wait(wait):
        wait = period
        t = time.monotonic()
        with stats.lock:
            stats.restarts.append([t, None])
        broker.stop()
        stop.wait(down_s)
        try:
            broker.start()
        except Exception as e:
            stats.error("broker", f"restart failed: {e!r}")
        with stats.lock:
            stats.restarts[-1][1] = time.monotonic()
        print(f"  broker restarted at {t - stats.t0:.0f}s (down {time.monotonic() - t:.1f}s)",
              flush=True)


# ---------------------------------------------------------------- verdict

def fit(points):
    """Least-squares slope of (t, y) points."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def fd_kinds(pid, ports):
    """The daemon's fds by kind; TCP sockets by state and local port name."""
    names = {v: k for k, v in ports.items()}
    tcp = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    where = names.get(lport) or (f"to {names[rport]}" if rport in names else "other")
                    tcp[p[9]] = f"tcp {TCP_STATES.get(int(p[3], 16), p[3])} {where}"
        except OSError:
            pass
    kinds = defaultdict(int)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            target = tcp.get(m.group(1), "socket (unix or other)")
        else:
            target = re.sub(r"\[\d+\]", "", os.path.basename(target))
        kinds[target] += 1
    return dict(sorted(kinds.items()))


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=2.0, help="scales every load rate")
    ap.add_argument("--warmup", type=float, default=None, help="minutes not judged")
    ap.add_argument("--broker_restart", type=float, default=180, help="seconds between restarts")
    ap.add_argument("--history_max_bytes", default="32MiB")
    ap.add_argument("--mem_pct", type=float, default=10.0)
    ap.add_argument("--mem_mib", type=float, default=8.0)
    ap.add_argument("--fd_tol", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where every load thread is
    binary = os.path.abspath(args.binary)
    duration = args.minutes * 60
    warmup = (args.warmup * 60 if args.warmup is not None
              else min(300.0, max(60.0, duration / 6)))
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            sys.exit(f"soak: {tool} not found (apt-get install mosquitto mosquitto-clients)")

    tmp = tempfile.mkdtemp(prefix="almanac-soak-")
    broker = Broker(tmp)
    broker.start()
    daemon = None
    fail = []
    try:
        daemon = Daemon(binary, tmp, broker.port, args.history_max_bytes)
        time.sleep(2)  # the bridge connects
        idle_before = daemon.sample()
        ports = {"http": daemon.port, "tcp": daemon.tcp_port, "broker": broker.port}
        idle_kinds = fd_kinds(daemon.proc.pid, ports)
        print(f"soak: almanac pid {daemon.proc.pid} http 127.0.0.1:{daemon.port} "
              f"tcp 127.0.0.1:{daemon.tcp_port}, mosquitto 127.0.0.1:{broker.port}; "
              f"{args.minutes:g} min, rate x{args.rate:g}, warm-up {warmup / 60:g} min; "
              f"idle: anon {idle_before[1] / MiB:.1f} MiB, {idle_before[2]} fds, "
              f"{idle_before[3]} threads", flush=True)
        R = args.rate
        port, tport = daemon.port, daemon.tcp_port
        workers = [
            (http_writer, (port, 15 * R)), (http_writer, (port, 15 * R)),
            (session_writer, (port, tport, 15 * R)),
            (http_reader, (port, 30 * R)),
            (subscriber, (port, tport, 2.0 / R)),
            (churner, (port, tport, 1.0 * R)),
            (sse_streams, (port, max(1, round(5 * R)))),
            (mqtt_publisher, (broker, 10 * R)),
            (bridge_probe, (daemon, broker, 30)),
            (broker_restarter, (broker, min(args.broker_restart, duration / 2), args.broker_restart)),
        ]
        threads = [threading.Thread(target=f, args=a, daemon=True, name=f.__name__)
                   for f, a in workers]
        stats.t0 = time.monotonic()
        for t in threads:
            t.start()

        samples = []  # (t, rss, anon, fds, threads)
        t_start = stats.t0
        minute = 0
        last_cpu = idle_before[4]
        last_self = sum(os.times()[:2])
        last_line = t_start
        while True:
            now = time.monotonic()
            if now - t_start >= duration:
                break
            stop.wait(min(5.0, t_start + duration - now))
            if daemon.proc.poll() is not None:
                fail.append(f"almanac exited with {daemon.proc.returncode} during the soak")
                break
            s = daemon.sample()
            now = time.monotonic()
            samples.append((now - t_start, *s[:4]))
            if now - t_start >= (minute + 1) * 60 - 0.5 or now - t_start >= duration:
                minute += 1
                ops, lat, errors, expected, rec = stats.take()
                span = now - last_line
                cpu = (s[4] - last_cpu) / span * 100
                me = sum(os.times()[:2])
                mine = (me - last_self) / span * 100
                last_cpu, last_self, last_line = s[4], me, now
                disk = defaultdict(int)
                for d, _, fs in os.walk(daemon.data_dir):
                    for f in fs:
                        kind = "wal" if f.endswith("-wal") else "db" if f == "almanac.db" else "other"
                        try:
                            disk[kind] += os.path.getsize(os.path.join(d, f))
                        except OSError:
                            pass
                print(f"min {minute:3d} | rss {s[0] / MiB:6.1f}M anon {s[1] / MiB:6.1f}M "
                      f"fds {s[2]:4d} thr {s[3]:3d} | cpu almanac {cpu:4.0f}% soak {mine:4.0f}% "
                      f"| ops {sum(ops.values()):6d} (put {ops['put']} set {ops['set']} "
                      f"get {ops['get']} mqtt {ops['mqtt pub']} sess {ops['session']} "
                      f"sse {ops['sse open']}) | put p50 {pct(lat['put'], .5):5.1f} "
                      f"p99 {pct(lat['put'], .99):6.1f} get p50 {pct(lat['get'], .5):5.1f} "
                      f"p99 {pct(lat['get'], .99):6.1f} ms | errors {errors} (expected {expected}) "
                      f"reconnects {rec} | db {disk['db'] / MiB:.0f}M "
                      f"wal {disk['wal'] / MiB:.0f}M other {disk['other'] / MiB:.0f}M", flush=True)
        stop.set()
        for t in threads:
            t.join(30)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            fail.append(f"load threads did not stop: {alive}")

        # ---- verdict
        print("--- verdict")
        if daemon.proc.poll() is None:
            t_idle = time.monotonic()  # closes settle (a dropped quiet SSE stream may be noticed
            while time.monotonic() - t_idle < 45:  # only at its next heartbeat)
                time.sleep(1)
                if daemon.sample()[2] <= idle_before[2] + 8:
                    break
            print(f"idle after {time.monotonic() - t_idle:.0f} s")
            for path in ("/health", "/ready"):
                try:
                    status, _ = daemon.get(path)
                except Exception as e:
                    status = repr(e)
                print(f"{path}: {status}")
                if status != 200:
                    fail.append(f"{path} answered {status}")
            try:
                info = json.loads(daemon.get("/api/v1/info")[1])
                print(f"info: sessions {info.get('sessions')} keys {info.get('keys')} "
                      f"rev {info.get('rev')} bridge {json.dumps(info.get('bridge'))[:300]}")
                if info.get("sessions") not in (0, None):
                    fail.append(f"{info.get('sessions')} sessions still counted after every "
                                f"client left")
            except Exception as e:
                print(f"info: {e!r}")
            idle_after = daemon.sample()
            print(f"fds before: {idle_kinds}")
            print(f"fds after:  {fd_kinds(daemon.proc.pid, ports)}")
            print(f"idle before: anon {idle_before[1] / MiB:.1f} MiB, {idle_before[2]} fds, "
                  f"{idle_before[3]} threads; idle after: anon {idle_after[1] / MiB:.1f} MiB, "
                  f"{idle_after[2]} fds, {idle_after[3]} threads")
            if idle_after[2] > idle_before[2] + 8:
                fail.append(f"idle fds {idle_before[2]} before the load, {idle_after[2]} after it")
        judged = [x for x in samples if x[0] >= warmup]
        if len(judged) < 6:
            fail.append(f"only {len(judged)} samples after the warm-up: run longer")
        else:
            third = len(judged) // 3
            first, last = judged[:third], judged[-third:]
            span = judged[-1][0] - judged[0][0]
            a_first = sum(x[2] for x in first) / len(first)
            a_last = sum(x[2] for x in last) / len(last)
            tol = max(a_first * args.mem_pct / 100, args.mem_mib * MiB)
            # the fit is over the last half: a leak keeps growing to the end, while
            # caches that fill up late (a slow warm-up) flatten out
            half = judged[len(judged) // 2:]
            slope = fit([(x[0], x[2]) for x in half])
            print(f"RssAnon: first third {a_first / MiB:.1f} MiB, last third {a_last / MiB:.1f} MiB "
                  f"(+{(a_last - a_first) / MiB:.1f}), fit of the last half {slope * 3600 / MiB:+.1f} MiB/h = "
                  f"{slope * span / MiB:+.1f} MiB over the {span / 60:.1f} judged min; "
                  f"tolerance {tol / MiB:.1f} MiB")
            if a_last - a_first > tol:
                fail.append(f"RssAnon grew {(a_last - a_first) / MiB:.1f} MiB from the first to "
                            f"the last third (tolerance {tol / MiB:.1f} MiB)")
            if slope * span > tol:
                fail.append(f"RssAnon grows steadily: {slope * 3600 / MiB:+.1f} MiB/h, "
                            f"{slope * span / MiB:+.1f} MiB over the judged window "
                            f"(tolerance {tol / MiB:.1f} MiB)")
            r_first = sum(x[1] for x in first) / len(first)
            r_last = sum(x[1] for x in last) / len(last)
            print(f"VmRSS: first third {r_first / MiB:.1f} MiB, last third {r_last / MiB:.1f} MiB "
                  f"(reported, not judged: includes the mmap'd database)")
            f_first, f_last = median([x[3] for x in first]), median([x[3] for x in last])
            fslope = fit([(x[0], x[3]) for x in half])
            print(f"fds: first third median {f_first}, last third median {f_last}, "
                  f"fit {fslope * 3600:+.1f}/h; tolerance {args.fd_tol}")
            if f_last - f_first > args.fd_tol:
                fail.append(f"fds grew from {f_first} to {f_last} (median, first to last third)")
            if fslope * span > args.fd_tol:
                fail.append(f"fds grow steadily: {fslope * 3600:+.1f}/h")
            t_first, t_last = max(x[4] for x in first), max(x[4] for x in last)
            print(f"threads: first third max {t_first}, last third max {t_last}")
            if t_last > t_first + 2:
                fail.append(f"threads grew from {t_first} to {t_last}")
        print(f"ops: {stats.total_ops}; errors: {stats.total_errors} unexpected, "
              f"{stats.total_expected} expected (during broker restarts: "
              f"{len(stats.restarts)} restarts)")
        for t, kind, msg in stats.expected_log[:5]:
            print(f"  expected at {t:.0f}s [{kind}]: {msg}")
        if stats.total_errors:
            fail.append(f"{stats.total_errors} unexpected errors")
            for t, kind, msg in stats.error_log[:20]:
                print(f"  error at {t:.0f}s [{kind}]: {msg}")
    except Exception as e:
        fail.append(f"soak aborted: {e!r}")
    finally:
        stop.set()
        if daemon is not None:
            how = daemon.stop()
            print(f"almanac stop: {how}")
            if "killed" in how:
                fail.append(f"almanac {how}")
            if fail:
                print("almanac log (tail):\n" + daemon.log_tail())
        broker.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if fail:
        print("FAIL: " + "; ".join(fail))
        return 1
    print("PASS: memory, fds and threads flat, no unexpected errors, /health answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
