"""The almanac CLI against the real daemon: every command, --json, values
through standard input, sub until interrupted, and errors as exit codes."""
import json
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon().start()
        cls.env = dict(os.environ, ALMANAC_SERVER=f"127.0.0.1:{cls.d.tcp_port}")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        cls.d.cleanup()
        assert rc == 0, rc

    def run_cli(self, *args, stdin=None):
        return subprocess.run([harness.BINARY, *args], input=stdin, capture_output=True,
                              env=self.env, timeout=20)

    def test_set_get_ls_del(self):
        r = self.run_cli("set", "cli/kitchen/temp", "21.5")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.decode(), r"^rev \d+\n$")
        self.run_cli("set", "cli/kitchen/name", "kitchen")
        self.assertEqual(self.run_cli("get", "cli/kitchen/temp").stdout, b"21.5\n")
        self.assertEqual(curl(self.d, "GET", "/api/v1/keys/cli/kitchen/temp").body, b"21.5")
        out = self.run_cli("get", "cli/#").stdout.decode().splitlines()
        self.assertEqual(out, ["cli/kitchen/name = kitchen", "cli/kitchen/temp = 21.5"])
        envs = [json.loads(x) for x in self.run_cli("--json", "get", "cli/+/temp").stdout.splitlines()]
        self.assertEqual(envs[0]["value"], 21.5)
        self.assertEqual(envs[0]["type"], "application/json")
        one = json.loads(self.run_cli("get", "--json", "cli/kitchen/name").stdout)
        self.assertEqual((one["key"], one["text"], one["type"]),
                         ("cli/kitchen/name", "kitchen", "text/plain; charset=utf-8"))
        self.assertEqual(self.run_cli("ls", "cli").stdout, b"kitchen/\n")
        self.assertEqual(self.run_cli("ls", "cli/kitchen").stdout, b"name\ntemp\n")
        self.assertEqual(self.run_cli("del", "cli/#").stdout, b"deleted 2\n")

    def test_binary_through_stdin(self):
        blob = bytes(range(256)) * 10
        self.assertEqual(self.run_cli("set", "clibin/x", "-", stdin=blob).returncode, 0)
        self.assertEqual(self.run_cli("get", "clibin/x").stdout, blob)
        self.assertEqual(self.run_cli("get", "clibin/#").stdout,
                         b"clibin/x = <2560 bytes of application/octet-stream>\n")
        self.assertEqual(curl(self.d, "GET", "/api/v1/keys/clibin/x").body, blob)

    def test_sub_and_pub(self):
        self.run_cli("set", "clisub/a", "1")
        p = subprocess.Popen([harness.BINARY, "sub", "clisub/#"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env)
        self.assertEqual(p.stdout.readline(), b"clisub/a = 1\n")
        self.assertIn(b"in sync at rev", p.stderr.readline())
        self.assertEqual(self.run_cli("pub", "clisub/p", "hello").stdout, b"published\n")
        self.run_cli("del", "clisub/a")
        self.assertEqual(p.stdout.readline(), b"clisub/p = hello\n")
        self.assertEqual(p.stdout.readline(), b"clisub/a (deleted)\n")
        p.send_signal(signal.SIGINT)
        self.assertNotEqual(p.wait(10), 0)
        p.stdout.close()
        p.stderr.close()

    def test_info(self):
        out = self.run_cli("info").stdout.decode()
        self.assertIn("$SYS/version = ", out)
        self.assertIn("$SYS/sessions/count = ", out)

    def test_errors(self):
        r = self.run_cli("get", "cli/none")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"not_found", r.stderr)
        r = self.run_cli("set", "cli/+", "1")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"invalid_key", r.stderr)
        r = self.run_cli("set", "$SYS/x", "1")
        self.assertIn(b"read_only", r.stderr)
        r = subprocess.run([harness.BINARY, "-s", "127.0.0.1:1", "get", "a"], capture_output=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"cannot connect", r.stderr)
        for args in (["frob"], ["get"], ["set", "k"], []):
            r = self.run_cli(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(b"usage", r.stderr)


if __name__ == "__main__":
    harness.main()
