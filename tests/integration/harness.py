"""Runs the real almanac daemon for a test and talks to it with real clients.

The daemon listens on 127.0.0.1:0 (a free port the kernel picks) with a fresh
data folder; the port is read from its log. Requests go through the curl
binary, as a user's scripts would.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = None  # set by main() from --binary


class Daemon:
    def __init__(self, args=(), data_dir=None, env=None):
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="almanac-it-")
        self.args = list(args)
        self.env = env
        self.proc = None
        self.port = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"almanac-{os.getpid()}-{id(self)}.log")

    def start(self, timeout=15):
        env = dict(os.environ)
        env.update(self.env or {})
        self.log = open(self.log_path, "ab")
        offset = self.log.tell()  # only this run's lines count
        cmd = [BINARY, "serve", "--http_listen", "127.0.0.1:0", "--tcp_listen", "127.0.0.1:0",
               "--data_dir", self.data_dir]
        self.proc = subprocess.Popen(cmd + self.args, stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log_text()[offset:]
            ports = re.findall(r"listening on https?://127\.0\.0\.1:(\d+)/", text)
            if ports and "ready" in text.split("listening on")[-1]:
                self.port = int(ports[-1])
                tcp = re.findall(r"listening on tcp://127\.0\.0\.1:(\d+)/", text)
                self.tcp_port = int(tcp[-1]) if tcp else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"almanac exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        raise RuntimeError(f"almanac did not start:\n{self.log_text()}")

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("almanac did not stop in time")
        finally:
            self.proc = None
            self.log.close()
        return rc

    def cleanup(self):
        if self.proc is not None:
            self.stop(signal.SIGKILL)
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout=15, interval=0.05, what="the condition"):
    """Calls check() until it returns something true; returns that."""
    deadline = time.time() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Broker:
    """A real mosquitto broker on a free port of 127.0.0.1, with retained
    messages and sessions kept on disk across its restarts. `extra` lines go
    to its configuration (a bridge to another broker, say)."""

    def __init__(self, users=None, extra=""):
        self.dir = tempfile.mkdtemp(prefix="almanac-mosq-")
        os.chmod(self.dir, 0o777)  # mosquitto started as root runs as user mosquitto
        self.port = free_port()
        self.proc = None
        conf = [f"listener {self.port} 127.0.0.1", "persistence true",
                f"persistence_location {self.dir}/", "autosave_interval 1",
                "sys_interval 1", f"log_dest file {self.dir}/mosquitto.log", "log_type all"]
        if users:
            pw = os.path.join(self.dir, "passwords")
            open(pw, "w").close()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", pw, user, password], check=True,
                               capture_output=True)
            os.chmod(pw, 0o644)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf.append("allow_anonymous true")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n" + extra)

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()}")
                return False
        wait_for(listening, 10, what="mosquitto to listen")
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()  # mosquitto saves its state on SIGTERM
            self.proc.wait(10)
            self.proc = None

    def cleanup(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(os.path.join(self.dir, "mosquitto.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _auth(self, auth):
        return ["-u", auth[0], "-P", auth[1]] if auth else []

    def pub(self, topic, payload=None, retain=True, qos=1, props=(), v5=True, auth=None):
        """mosquitto_pub: `payload` bytes or str (None: an empty payload);
        `props` (command, name, value...) tuples for -D."""
        cmd = ["mosquitto_pub", "-p", str(self.port), "-t", topic, "-q", str(qos)]
        cmd += self._auth(auth) + (["-r"] if retain else [])
        cmd += ["-V", "mqttv5" if v5 else "mqttv311"]
        for p in props:
            cmd += ["-D", *p]
        if payload is None:
            cmd.append("-n")
        else:
            cmd += ["-s"]
        data = payload.encode() if isinstance(payload, str) else payload
        subprocess.run(cmd, input=data, check=True, capture_output=True, timeout=10)

    def retained(self, topic, timeout=1.0, auth=None):
        """{topic: (payload bytes, content type, user properties text)} of the
        retained messages matching `topic`, read with mosquitto_sub."""
        cmd = ["mosquitto_sub", "-p", str(self.port), "-t", topic, "-V", "mqttv5",
               "--retained-only", "-W", str(max(1, int(timeout))), "-F", "%t|%C|%P|%x"]
        out = subprocess.run(cmd + self._auth(auth), capture_output=True, timeout=timeout + 10)
        got = {}
        for line in out.stdout.decode(errors="replace").splitlines():
            t, ctype, props, hexed = line.rsplit("|", 3)[0], *line.rsplit("|", 3)[1:]
            got[t] = (bytes.fromhex(hexed), ctype, props)
        return got


class Client:
    """A session over TCP (or a Unix socket): one JSON message a line."""

    def __init__(self, daemon=None, unix=None):
        if unix:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection(("127.0.0.1", daemon.tcp_port))
        self.sock.settimeout(20)
        self.file = self.sock.makefile("rb")
        self.welcome = self.recv()
        self.next_id = 1

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, msg):
        self.sock.sendall((json.dumps(msg) + "\n").encode())

    def recv(self):
        line = self.file.readline()
        if not line:
            return None
        return json.loads(line)

    def request(self, type_, **fields):
        """Sends a request and returns its reply (events before it are kept)."""
        rid = self.next_id
        self.next_id += 1
        self.send(dict(type=type_, id=rid, **fields))
        self.events = getattr(self, "events", [])
        while True:
            m = self.recv()
            if m is None:
                raise ConnectionError("closed")
            if m.get("id") == rid and m["type"] != "event":
                return m
            self.events.append(m)

    def close(self):
        self.file.close()
        self.sock.close()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def curl(daemon, method, path, data=None, headers=None, timeout=30):
    """One request with the curl binary. `data` is bytes or str (sent as is)."""
    with tempfile.TemporaryDirectory() as tmp:
        hfile, bfile = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        cmd = ["curl", "-sS", "-g", "--max-time", str(timeout), "-D", hfile, "-o", bfile,
               "-w", "%{http_code}"]
        cmd += ["-I"] if method == "HEAD" else ["-X", method]  # -I: no body is read
        for name, value in (headers or {}).items():
            cmd += ["-H", f"{name}: {value}"]
        if data is not None:
            cmd += ["--data-binary", "@-"]
        cmd.append(daemon.url(path))
        if isinstance(data, str):
            data = data.encode()
        out = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout + 5)
        status = int(out.stdout.decode() or 0)
        hdrs = {}
        if os.path.exists(hfile):
            with open(hfile, "rb") as f:
                for line in f.read().decode("latin-1").splitlines()[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
        body = b""
        if os.path.exists(bfile) and method != "HEAD":
            with open(bfile, "rb") as f:
                body = f.read()
        return Response(status, hdrs, body)


def main():
    global BINARY
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    args, rest = parser.parse_known_args()
    BINARY = os.path.abspath(args.binary)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
