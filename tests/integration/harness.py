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
            ports = re.findall(r"listening on http://127\.0\.0\.1:(\d+)/", text)
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
