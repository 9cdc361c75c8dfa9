"""The daemon's start with configuration: the documented conf/almanac.conf
starts as it is; bad files, variables and flags stop the start with a
message naming the place, and leave no server behind."""
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402


def serve(args, env=None, timeout=10):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([harness.BINARY, "serve"] + args, capture_output=True, text=True,
                          env=e, timeout=timeout)


class Config(unittest.TestCase):
    def test_shipped_config_starts(self):
        conf = str(harness.ROOT / "conf" / "almanac.conf")
        d = Daemon(["-c", conf]).start()
        try:
            info = curl(d, "GET", "/api/v1/info").json()
            # The flags given by the harness win over the file's data_dir.
            self.assertTrue(info["storage"]["path"].startswith(d.data_dir))
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()

    def test_help(self):
        """`almanac --help` names every command; `almanac serve --help` every
        option of conf/almanac.conf with its default (and config.c knows no
        option the file leaves out: the exit status says so)."""
        r = subprocess.run([harness.BINARY, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        for cmd in ("serve", "get", "set", "del", "ls", "sub", "pub", "history", "export",
                    "import", "info", "token", "version"):
            self.assertRegex(r.stdout, rf"\n  {cmd} ", cmd)
        self.assertIn("\n  -s HOST:PORT ", r.stdout)  # the client's options too
        # each command's own: its synopsis, an example, the client options
        r = subprocess.run([harness.BINARY, "history", "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: almanac [CLIENT OPTIONS] history KEY|PATTERN [--start T]", r.stdout)
        self.assertIn("\nExample:\n  almanac history ", r.stdout)
        self.assertIn("--cafile FILE", r.stdout)
        r = subprocess.run([harness.BINARY, "help", "token"], capture_output=True, text=True)
        self.assertIn("almanac token create ", r.stdout)
        r = subprocess.run([harness.BINARY, "help", "frob"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no command 'frob'", r.stderr)
        r = serve(["--help"])
        self.assertEqual(r.returncode, 0, r.stdout)
        listed = dict(re.findall(r"^  --([a-z_]+) +default: (.*)$", r.stdout, re.M))
        self.assertGreater(len(listed), 50)
        self.assertEqual(listed["http_listen"], "127.0.0.1:8480")
        self.assertEqual(listed["history_keys"], "# (e.g. home/#)")
        self.assertEqual(listed["bridge_map"], "both #")
        self.assertTrue(listed["jwt_key"].startswith("none"))
        self.assertNotIn("not in almanac.conf", r.stdout)

    def test_bad_configuration_stops_the_start(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write("# a comment\nlog_level info\nno_such_option 1\n")
            path = f.name
        try:
            cases = [
                (["-c", path], None, f"{path}:3: unknown option 'no_such_option'"),
                (["--max_key_bytes", "huge"], None, "--max_key_bytes: max_key_bytes: 'huge'"),
                (["--frobnicate", "1"], None, "unknown option '--frobnicate'"),
                ([], {"ALMANAC_DURABILITY": "maybe"},
                 "ALMANAC_DURABILITY: durability: 'maybe' is not commit or fsync"),
                (["--http_listen", "127.0.0.1:99999"], None, "is not HOST:PORT or off"),
                # a value that reads like --help is a value, not a request for help
                (["--bridge_password", "-h", "--nope", "1"], None, "unknown option '--nope'"),
                # a failover list: the bad URL is named
                (["--bridge_url", "mqtt://a,,mqtt://b"], None,
                 "--bridge_url: bridge_url: URL 2 of 'mqtt://a,,mqtt://b' is empty"),
                ([], {"ALMANAC_BRIDGE_URL": "mqtt://a:1883,mqtt://b,mqtt://a"},
                 "ALMANAC_BRIDGE_URL: bridge_url: 'mqtt://a' (URL 3) is the broker of "
                 "'mqtt://a:1883' (URL 1) again"),
                (["--bridge_url", "mqtt://a,mqtt://b:0"], None,
                 "'mqtt://b:0': the port is not a number from 1 to 65535"),
            ]
            for args, env, words in cases:
                with self.subTest(args=args, env=env):
                    r = serve(args + ["--data_dir", tempfile.mkdtemp()], env)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn(words, r.stderr)
        finally:
            os.unlink(path)

    def test_busy_port_and_data_dir(self):
        d = Daemon().start()
        try:
            r = serve(["--http_listen", f"127.0.0.1:{d.port}", "--data_dir", tempfile.mkdtemp()])
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot listen", r.stderr)
            r = serve(["--http_listen", "127.0.0.1:0", "--data_dir", d.data_dir])
            self.assertEqual(r.returncode, 1)
            self.assertIn("in use by another almanac", r.stderr)
            self.assertEqual(curl(d, "GET", "/health").status, 200)
        finally:
            d.stop()
            d.cleanup()


if __name__ == "__main__":
    harness.main()
