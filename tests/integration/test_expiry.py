"""Keys that expire: `ttl` on a session's set, `X-Almanac-TTL` on PUT, the
`expires` field, deletion within a second of the time (a normal delete:
history, events, an empty retained message on MQTT), across a restart, an
overwrite that cancels it, export and import keeping it, and MQTT 5's message
expiry interval both ways, against a real mosquitto."""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Broker, Client, Daemon, curl, wait_for  # noqa: E402

K = "/api/v1/keys/"


def now_us():
    return int(time.time() * 1e6)


class Expiry(unittest.TestCase):
    def setUp(self):
        self.d = Daemon().start()
        self.addCleanup(self.d.cleanup)

    def test_put_with_ttl_expires_like_a_delete(self):
        sse = subprocess.Popen(["curl", "-sN", self.d.url("/api/v1/events/t/%23?live_only=1")],
                               stdout=subprocess.PIPE)
        self.addCleanup(sse.kill)
        time.sleep(0.3)
        t0 = now_us()
        r = curl(self.d, "PUT", K + "t/a", "1", {"X-Almanac-TTL": "1s"})
        self.assertEqual(r.status, 201, r)
        e = curl(self.d, "GET", K + "t/a?envelope=1").json()
        self.assertTrue(t0 + 1_000_000 <= e["expires"] <= now_us() + 1_000_000, e)
        self.assertEqual(curl(self.d, "GET", K + "t/a").headers["x-almanac-expires"],
                         str(e["expires"]))
        # an overwrite without a ttl never expires; one with a later ttl, later
        curl(self.d, "PUT", K + "t/b", "1", {"X-Almanac-TTL": "1s"})
        curl(self.d, "PUT", K + "t/b", "2")
        self.assertNotIn("expires", curl(self.d, "GET", K + "t/b?envelope=1").json())
        wait_for(lambda: curl(self.d, "GET", K + "t/a").status == 404, timeout=5,
                 what="t/a to expire")
        self.assertLess(now_us() - e["expires"], 1_500_000)  # within a second (and a poll)
        self.assertEqual(curl(self.d, "GET", K + "t/b").body, b"2")
        # history and subscribers saw a delete, by the server
        recs = curl(self.d, "GET", "/api/v1/history/t/a").json()["records"]
        self.assertEqual([r.get("deleted", False) for r in recs], [False, True], recs)
        sse.kill()
        out = sse.stdout.read().decode()
        self.assertIn("event: delete", out)
        self.assertIn('"key":"t/a"', out.split("event: delete", 1)[1])

    def test_session_ttl_and_bad_ttls(self):
        c = Client(self.d)
        m = c.request("set", key="s/a", text="x", ttl="2s")
        self.assertEqual(m["type"], "ok", m)
        m = c.request("get", key="s/a")
        self.assertGreater(m["expires"], now_us() + 1_000_000, m)
        m = c.request("set", key="s/n", text="x", ttl=1)  # a number is seconds
        self.assertEqual(m["type"], "ok", m)
        for bad in ("soon", "0s", -1, "-5s", True):
            m = c.request("set", key="s/bad", text="x", ttl=bad)
            self.assertEqual(m["error"], "bad_request", (bad, m))
            self.assertIn("ttl", m["message"])
        self.assertEqual(c.request("get", key="s/bad")["error"], "not_found")
        r = curl(self.d, "PUT", K + "s/bad", "1", {"X-Almanac-TTL": "tomorrow"})
        self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"), r)
        self.assertIn("X-Almanac-TTL", r.json()["message"])
        self.assertEqual(curl(self.d, "GET", K + "s/bad").status, 404)
        wait_for(lambda: c.request("get", key="s/n").get("error") == "not_found", timeout=4,
                 what="s/n to expire")
        c.close()

    def test_restart_export_import(self):
        curl(self.d, "PUT", K + "r/soon", "1", {"X-Almanac-TTL": "2s"})
        curl(self.d, "PUT", K + "r/later", "1", {"X-Almanac-TTL": "1h"})
        exported = curl(self.d, "GET", "/api/v1/export").body.decode()
        later = [json.loads(line) for line in exported.splitlines()
                 if json.loads(line)["key"] == "r/later"][0]
        self.assertIn("expires", later)
        self.assertEqual(self.d.stop(), 0)
        time.sleep(2.5)  # r/soon expires while the server is down
        self.d.start()
        wait_for(lambda: curl(self.d, "GET", K + "r/soon").status == 404, timeout=1.5,
                 what="r/soon to go within a second of the start")
        e = curl(self.d, "GET", K + "r/later?envelope=1").json()
        self.assertEqual(e["expires"], later["expires"])
        # an import into an empty server keeps the time
        d2 = Daemon().start()
        self.addCleanup(d2.cleanup)
        r = curl(d2, "POST", "/api/v1/import", exported)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(curl(d2, "GET", K + "r/later?envelope=1").json()["expires"],
                         later["expires"])


class Schema3(unittest.TestCase):
    def test_schema_3_database_migrates(self):
        """A database written by the previous almanac (schema 3, with a token)
        takes expiring keys after its migration, and keeps what it had."""
        import shutil
        import tempfile
        data = tempfile.mkdtemp(prefix="almanac-schema3-")
        self.addCleanup(shutil.rmtree, data, True)
        shutil.copy(os.path.join(harness.ROOT, "tests", "fixtures", "schema-3.db"),
                    os.path.join(data, "almanac.db"))
        admin = {"Authorization": "Bearer fixture-admin-token-3"}
        d = Daemon(["--admin_token", "fixture-admin-token-3"], data_dir=data).start()
        self.addCleanup(d.cleanup)
        self.assertIn("applied schema migration 4", d.log_text())
        self.assertNotIn("applied schema migration 3", d.log_text())
        self.assertEqual(curl(d, "GET", "/api/v1/info", headers=admin).json()["schema_version"], 6)
        e = curl(d, "GET", K + "home/kitchen/mood?envelope=1", headers=admin).json()
        self.assertEqual((e["rev"], e["text"], e["labels"]), (7, "warm", {"unit": "C"}))
        self.assertNotIn("expires", e)
        self.assertEqual(curl(d, "GET", K + "bin/blob", headers=admin).body, b"\x00\x01\xfe\xff")
        kitchen = {"Authorization": "Bearer alm_ylShwXfSDF_7M72_jmGARXnUZVXmp1AwOQKZjjvzzaI"}
        self.assertEqual(curl(d, "GET", K + "home/kitchen/temp", headers=kitchen).body,
                         b'{"v":21.5}')
        r = curl(d, "PUT", K + "home/brief", "1", dict(admin, **{"X-Almanac-TTL": "1s"}))
        self.assertEqual(r.status, 201, r)
        wait_for(lambda: curl(d, "GET", K + "home/brief", headers=admin).status == 404,
                 timeout=4, what="home/brief to expire")


class MqttExpiry(unittest.TestCase):
    def test_message_expiry_both_ways(self):
        broker = Broker().start()
        self.addCleanup(broker.cleanup)
        d = Daemon(["--bridge_url", broker.url]).start()
        self.addCleanup(d.cleanup)
        wait_for(lambda: curl(d, "GET", K + "$SYS/bridge/state").body == b"connected",
                 what="the bridge")
        # out: the retained message carries the seconds that remain
        curl(d, "PUT", K + "m/out", "1", {"X-Almanac-TTL": "30s"})
        curl(d, "PUT", K + "m/brief", "1", {"X-Almanac-TTL": "1s"})

        def expiry_interval():
            out = subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-t", "m/out", "-V",
                                  "mqttv5", "--retained-only", "-W", "1", "-F", "%E"],
                                 capture_output=True, timeout=10).stdout.decode().strip()
            return int(out) if out else None
        wait_for(lambda: expiry_interval() is not None, what="m/out on the broker")
        self.assertTrue(25 <= expiry_interval() <= 30)
        # the expired key's retained message is cleared
        wait_for(lambda: "m/brief" not in broker.retained("m/#"), timeout=5,
                 what="m/brief to leave the broker")
        self.assertEqual(curl(d, "GET", K + "m/brief").status, 404)
        # in: a message with an expiry interval makes a key that expires
        broker.pub("m/in", "1", props=[("publish", "message-expiry-interval", "2")])
        wait_for(lambda: curl(d, "GET", K + "m/in").status == 200, what="m/in")
        e = curl(d, "GET", K + "m/in?envelope=1").json()
        self.assertTrue(now_us() < e["expires"] <= now_us() + 2_000_000, e)
        wait_for(lambda: curl(d, "GET", K + "m/in").status == 404, timeout=5,
                 what="m/in to expire")
        # the echo of our own retained message changed nothing
        r = curl(d, "GET", "/api/v1/history/m/out").json()["records"]
        self.assertEqual(len(r), 1, r)


if __name__ == "__main__":
    harness.main()
