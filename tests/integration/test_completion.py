"""bash completion (packaging/almanac.bash-completion), as bash runs it on
TAB: commands, serve's options (from `almanac serve --help`), and keys of
the running server a level at a time, asked of the server the command line
names with -s."""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402

SCRIPT = str(harness.ROOT / "packaging" / "almanac.bash-completion")


def complete(*words):
    """What TAB offers after `words` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    r = subprocess.run(["bash", "-c", f'source "{SCRIPT}"; COMP_WORDS=({line}); '
                        f"COMP_CWORD={len(words) - 1}; _almanac; "
                        'for x in "${COMPREPLY[@]}"; do printf "%s|\\n" "$x"; done'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return sorted(x[:-1] for x in r.stdout.splitlines())


class Completion(unittest.TestCase):
    def test_commands_options_and_keys(self):
        b = harness.BINARY
        self.assertEqual(complete(b, "h"), ["help", "history"])
        self.assertEqual(complete(b, "serve", "--max_v"), ["--max_value_bytes"])
        self.assertIn("--metrics_keys", complete(b, "serve", "--"))
        self.assertEqual(complete(b, "serve", "--durability", ""), ["commit", "fsync"])
        d = Daemon().start()
        self.addCleanup(d.cleanup)
        for key in ("home/kitchen/temp", "home/kitchen/humidity", "home/hall", "garden/rain"):
            self.assertEqual(curl(d, "PUT", "/api/v1/keys/" + key, "1").status, 201)
        s = f"127.0.0.1:{d.tcp_port}"
        self.assertEqual(complete(b, "-s", s, "get", "h"), ["home/"])
        self.assertEqual(complete(b, "-s", s, "get", "home/"), ["home/hall ", "home/kitchen/"])
        self.assertEqual(complete(b, "-s", s, "sub", "home/kitchen/t"),
                         ["home/kitchen/temp "])
        self.assertEqual(complete(b, "-s", s, "--json", "history", "g"), ["garden/"])
        self.assertEqual(complete(b, "-s", s, "set", "home/hall", ""), [])  # a value, not a key
        # no server there: nothing offered, no error, no wait
        self.assertEqual(complete(b, "-s", "127.0.0.1:1", "get", "h"), [])


if __name__ == "__main__":
    harness.main()
