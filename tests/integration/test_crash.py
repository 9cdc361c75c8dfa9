"""Nothing acknowledged is lost: 16 clients write concurrently, the daemon is
killed with SIGKILL at a random moment, restarted on the same data folder,
and every write that got a 2xx answer is there with its value. Several
rounds, each on top of the data of the ones before.

Access control is on (an admin token): the writers present a token made in
the first round, and each round makes another one while the writes flow;
every token acknowledged before a kill still works after it.

Each client is one curl process making its requests one after the other on
a kept-alive connection, printing the status of each as it is answered."""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl  # noqa: E402

WRITERS = 16
ROUNDS = 4
REQUESTS = 4000  # per writer and round: more than it can send before the kill
ADMIN = {"Authorization": "Bearer crash-test-admin-token"}


def value_of(key, n):
    return f"{key}={n}"


class Crash(unittest.TestCase):
    def writer(self, d, rnd, w, acked, shared, lock, procs):
        """Runs one curl process; records each acknowledged write."""
        with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
            for n in range(1, REQUESTS + 1):
                key = f"crash/{rnd}/{w}/{n}" if n % 2 else f"crash/shared/{w}"
                # the shared keys' numbers grow across rounds, so a write of
                # this round committed but not acknowledged is above the last
                # acknowledged one of the round before
                seq = n if n % 2 else rnd * REQUESTS + n
                cfg.write(f'header = "Authorization: Bearer {self.token}"\n'  # `next` resets it
                          f'url = "{d.url("/api/v1/keys/" + key)}"\nrequest = "PUT"\n'
                          f'data-binary = "{value_of(key, seq)}"\noutput = "/dev/null"\n'
                          'write-out = "%{http_code} %{url_effective}\\n"\nnext\n')
            path = cfg.name
        try:
            # Line-buffered: each status is out before the next request goes.
            proc = subprocess.Popen(["stdbuf", "-oL", "curl", "-sS", "-K", path],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            with lock:
                procs.append(proc)
            n = 0
            for line in proc.stdout:
                n += 1
                code, url = line.split(" ", 1)
                key = url.strip().split("/api/v1/keys/", 1)[1]
                if code.startswith("2"):
                    with lock:
                        if key.startswith("crash/shared/"):
                            shared[w] = rnd * REQUESTS + n
                        else:
                            acked[key] = value_of(key, n).encode()
            proc.stdout.close()
            proc.wait()
        finally:
            os.unlink(path)

    def make_token(self, d, name):
        r = curl(d, "POST", "/api/v1/tokens",
                 json.dumps({"name": name, "read": ["crash/#"], "write": ["crash/#"]}), ADMIN)
        return r.json()["token"] if r.status == 201 else None

    def test_acknowledged_writes_survive_sigkill(self):
        d = Daemon(env={"ALMANAC_ADMIN_TOKEN": ADMIN["Authorization"][7:]})
        acked, shared, tokens = {}, {}, {}
        lock = threading.Lock()
        last_rev = 0
        try:
            for rnd in range(ROUNDS):
                d.start()
                if rnd == 0:
                    self.token = self.make_token(d, "writers")
                info = curl(d, "GET", "/api/v1/info", headers=ADMIN).json()
                self.assertGreaterEqual(info["rev"], last_rev)  # never goes back
                procs = []
                threads = [threading.Thread(target=self.writer,
                                            args=(d, rnd, w, acked, shared, lock, procs))
                           for w in range(WRITERS)]
                before = len(acked)
                for t in threads:
                    t.start()
                # Kill at a random moment once the writes are flowing.
                deadline = time.time() + 60
                while len(acked) < before + 300 and time.time() < deadline:
                    time.sleep(0.01)
                secret = self.make_token(d, f"round{rnd}")
                if secret is not None:  # acknowledged: it must survive
                    tokens[f"round{rnd}"] = secret
                time.sleep(random.uniform(0, 1.0))
                d.stop(signal.SIGKILL)
                time.sleep(0.2)  # let the clients see their connections drop
                with lock:
                    for p in procs:
                        p.terminate()
                for t in threads:
                    t.join()

                d.start()
                self.assertGreaterEqual(len(acked), before + 300)
                auth = {"Authorization": f"Bearer {self.token}"}
                for name, secret in tokens.items():
                    r = curl(d, "GET", "/api/v1/keys/crash/none",
                             headers={"Authorization": f"Bearer {secret}"})
                    self.assertEqual(r.status, 404, f"token {name} lost: {r}")
                keys = sorted(acked)
                # Read back through the pattern API, a page at a time.
                found, after = {}, None
                while True:
                    q = "?limit=10000" + (f"&after={after}" if after else "")
                    page = curl(d, "GET", "/api/v1/keys/crash/%23" + q, headers=auth).json()
                    for e in page["entries"]:
                        found[e["key"]] = e["text"].encode()
                    after = page["next"]
                    if after is None:
                        break
                lost = [k for k in keys if found.get(k) != acked[k]]
                self.assertEqual(lost[:10], [], f"round {rnd}: {len(lost)} acknowledged writes lost")
                for w, n in shared.items():
                    # The last acknowledged value, or a later one committed
                    # before the kill.
                    got = int(found[f"crash/shared/{w}"].decode().split("=")[1])
                    self.assertGreaterEqual(got, n)
                last_rev = curl(d, "GET", "/api/v1/info", headers=ADMIN).json()["rev"]
                d.stop(signal.SIGKILL)
            print(f"{len(acked)} acknowledged writes and {len(tokens)} tokens checked over "
                  f"{ROUNDS} rounds", file=sys.stderr)
        finally:
            d.cleanup()


if __name__ == "__main__":
    harness.main()
