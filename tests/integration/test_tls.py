"""TLS on the TCP session listener (tcp_tls_cert, tcp_tls_key) and the CLI's
--tls and --cafile, against the real daemon with certificates the test makes
with the openssl command: the CLI and a Python `ssl` client speak the
session protocol through it; plain text, a silent client and a wrong
certificate are turned away without harm to the others; a 1 MiB value comes
back whole while the client is slow to read; 50 clients shake hands at once;
the CLI speaks HTTPS to http_listen; half a configuration stops the start."""
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Client, Daemon  # noqa: E402

TOKEN = "t0ps3cret-admin-token-4711"


def make_cert(folder, name, san):
    """A self-signed certificate and its key (PEM files) for the names `san`."""
    cert, key = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def until_closed(sock):
    """What `sock` receives until the server closes it (a reset is a close)."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


class TlsClient(Client):
    """A session over TLS, the server's certificate checked against `cafile`."""

    def __init__(self, daemon, cafile):
        ctx = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", daemon.tcp_port), timeout=20)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.settimeout(20)
        self.file = self.sock.makefile("rb")
        self.welcome = self.recv()
        self.next_id = 1


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="almanac-tls-")
        cls.cert, cls.key = make_cert(cls.tmp, "server", "IP:127.0.0.1,DNS:localhost")
        cls.other, cls.other_key = make_cert(cls.tmp, "other", "DNS:other.example")
        cls.d = Daemon(["--tcp_tls_cert", cls.cert, "--tcp_tls_key", cls.key,
                        "--http_tls_cert", cls.cert, "--http_tls_key", cls.key,
                        "--admin_token", TOKEN]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.cleanup()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, rc

    def cli(self, *args, stdin=None, env=None):
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([harness.BINARY, "-s", f"127.0.0.1:{self.d.tcp_port}", *args],
                              input=stdin, capture_output=True, env=e, timeout=30)

    def client(self):
        c = TlsClient(self.d, self.cert)
        self.assertEqual(c.request("hello", protocol="1.0", token=TOKEN)["type"], "ok")
        return c

    def healthy(self):
        r = subprocess.run(["curl", "-sS", "--cacert", self.cert, "-o", "/dev/null", "-w",
                            "%{http_code}", f"https://127.0.0.1:{self.d.port}/health"],
                           capture_output=True, timeout=20)
        return r.stdout == b"200"

    def test_cli_sets_and_gets(self):
        r = self.cli("--tls", "--cafile", self.cert, "--token", TOKEN, "set", "tls/cli", "hello")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(b"rev "), r.stdout)
        # The same from the environment, and by name (the certificate names
        # localhost too).
        r = subprocess.run([harness.BINARY, "-s", f"localhost:{self.d.tcp_port}", "get",
                            "tls/cli"], capture_output=True, timeout=30,
                           env=dict(os.environ, ALMANAC_TLS="1", ALMANAC_CAFILE=self.cert,
                                    ALMANAC_TOKEN=TOKEN))
        self.assertEqual((r.returncode, r.stdout), (0, b"hello\n"), r.stderr)

    def test_session_protocol(self):
        c = TlsClient(self.d, self.cert)
        self.assertEqual(c.welcome["type"], "welcome")
        self.assertTrue(c.welcome["auth_required"])
        self.assertEqual(c.request("hello", protocol="1.0", token=TOKEN)["type"], "ok")
        self.assertEqual(c.request("set", key="tls/s/a", text="1")["type"], "ok")
        self.assertEqual(c.request("subscribe", pattern="tls/s/#", live_only=True)["type"], "ok")
        self.assertEqual(c.recv()["type"], "sync")
        w = self.client()
        w.request("set", key="tls/s/b", text="two")
        event = c.recv()
        self.assertEqual((event["type"], event["key"], event["text"]), ("event", "tls/s/b", "two"))
        self.assertEqual(c.request("get", key="tls/s/a")["text"], "1")
        w.close()
        c.close()

    def sessions(self):
        r = subprocess.run(["curl", "-sS", "--cacert", self.cert, "-H",
                            f"Authorization: Bearer {TOKEN}",
                            f"https://127.0.0.1:{self.d.port}/api/v1/info"],
                           capture_output=True, timeout=20)
        return json.loads(r.stdout)["sessions"]

    def test_plain_and_silent_clients_are_turned_away(self):
        # Clients that never shake hands hold no session (max_sessions is
        # for clients that got through).
        before = self.sessions()
        crowd = [socket.create_connection(("127.0.0.1", self.d.tcp_port)) for _ in range(20)]
        time.sleep(0.3)
        self.assertEqual(self.sessions(), before)
        for s in crowd:
            s.close()
        silent = socket.create_connection(("127.0.0.1", self.d.tcp_port), timeout=30)
        plain = socket.create_connection(("127.0.0.1", self.d.tcp_port), timeout=10)
        plain.sendall(b'{"type":"hello","id":1,"protocol":"1.0"}\n')
        self.assertNotIn(b"welcome", until_closed(plain))
        plain.close()
        # The loop goes on: another client is served while `silent` waits.
        c = self.client()
        self.assertEqual(c.request("ping")["type"], "pong")
        c.close()
        self.assertTrue(self.healthy())
        # A client that never starts its handshake is closed after its time.
        start = time.time()
        self.assertEqual(until_closed(silent), b"")
        self.assertLess(time.time() - start, 15)
        silent.close()

    def test_wrong_certificate(self):
        r = self.cli("--tls", "--cafile", self.other, "--token", TOKEN, "get", "tls/x")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b"almanac: TLS: certificate verify failed", r.stderr)
        # A certificate that verifies but names another host is refused too.
        d = Daemon(["--tcp_tls_cert", self.other, "--tcp_tls_key", self.other_key]).start()
        try:
            r = subprocess.run([harness.BINARY, "-s", f"127.0.0.1:{d.tcp_port}", "--tls",
                                "--cafile", self.other, "get", "tls/x"], capture_output=True,
                               timeout=30)
            self.assertEqual(r.returncode, 2, r)
            self.assertIn(b"certificate verify failed", r.stderr)
            self.assertIn(b"mismatch", r.stderr)
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()
        self.assertTrue(self.healthy())

    def test_large_value_while_the_client_is_slow(self):
        value = os.urandom(1 << 20)
        c = self.client()
        b64 = base64.b64encode(value).decode()
        self.assertEqual(c.request("set", key="tls/big", base64=b64)["type"], "ok")
        # Eight answers of 1.4 MB each wait for a client that does not read,
        # so the server's writes stop partway and go on later.
        for i in range(8):
            c.send({"type": "get", "id": 100 + i, "key": "tls/big"})
        time.sleep(1)
        for i in range(8):
            e = c.recv()
            self.assertEqual(e["id"], 100 + i)
            self.assertEqual(base64.b64decode(e["base64"]), value)
        c.close()
        # And through the CLI, both ways.
        args = ("--tls", "--cafile", self.cert, "--token", TOKEN)
        r = self.cli(*args, "set", "tls/big2", "-", stdin=value)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.cli(*args, "get", "tls/big2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, value)

    def test_fifty_clients_at_once(self):
        welcomes, errors = [], []
        start = threading.Barrier(50)

        def connect():
            try:
                start.wait()
                c = TlsClient(self.d, self.cert)
                welcomes.append(c.welcome["type"])
                c.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=connect) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(welcomes, ["welcome"] * 50)

    def test_cli_over_https(self):
        args = ("--tls", "--cafile", self.cert, "--http", f"127.0.0.1:{self.d.port}",
                "--token", TOKEN)
        r = self.cli(*args, "token", "create", "tls-reader", "--read", "tls/#")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.cli(*args, "token", "ls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b'tls-reader read ["tls/#"]', r.stdout)
        r = self.cli("--tls", "--cafile", self.other, "--http", f"127.0.0.1:{self.d.port}",
                     "--token", TOKEN, "token", "ls")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b"certificate verify failed", r.stderr)


class Configuration(unittest.TestCase):
    def test_half_a_configuration_stops_the_start(self):
        tmp = tempfile.mkdtemp(prefix="almanac-tls-")
        try:
            cert, key = make_cert(tmp, "server", "IP:127.0.0.1")
            other, other_key = make_cert(tmp, "other", "DNS:other.example")
            missing = os.path.join(tmp, "missing.pem")
            cases = [(["--tcp_tls_cert", cert], b"tcp_tls_cert and tcp_tls_key go together"),
                     (["--tcp_tls_key", key], b"tcp_tls_cert and tcp_tls_key go together"),
                     (["--tcp_tls_cert", missing, "--tcp_tls_key", key],
                      f"tcp_tls_cert {missing}:".encode()),
                     (["--tcp_tls_cert", cert, "--tcp_tls_key", other_key],
                      f"tcp_tls_key {other_key}:".encode())]
            for args, words in cases:
                with self.subTest(args=args):
                    r = subprocess.run([harness.BINARY, "serve", "--http_listen", "127.0.0.1:0",
                                        "--tcp_listen", "127.0.0.1:0", "--data_dir",
                                        os.path.join(tmp, "data"), *args],
                                       capture_output=True, timeout=20)
                    self.assertEqual(r.returncode, 1, r)
                    self.assertIn(words, r.stderr)
                    self.assertNotIn(b"ready", r.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.main()
