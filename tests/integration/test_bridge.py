"""The MQTT bridge against a real mosquitto broker started by the test: each
direction with content types, labels and binary payloads, deletes, maps,
the status topic and its will, a broker that goes away and comes back, a
killed almanac with a full outbox, bad credentials, an unreachable broker,
MQTT 3.1.1, two almanacs on one broker converging, the late echoes of our
own publishes never taking a key back, and two brokers joined by
mosquitto's own bridge. Clients are mosquitto_pub, mosquitto_sub and curl.
"""
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Broker, Daemon, curl, free_port, wait_for  # noqa: E402


class BridgeCase(unittest.TestCase):
    broker = None  # a fresh broker per class

    @classmethod
    def setUpClass(cls):
        cls.broker = Broker().start()

    @classmethod
    def tearDownClass(cls):
        cls.broker.cleanup()

    def daemon(self, *args, broker=None, client_id=None, connect=True):
        broker = broker or self.broker
        self.client_id = client_id or f"almanac-test-{uuid.uuid4().hex[:8]}"
        d = Daemon(["--bridge_url", broker.url, "--bridge_client_id", self.client_id,
                    "--bridge_keepalive", "5", *args])
        self.addCleanup(d.cleanup)
        d.start()
        if connect:
            self.wait_connected(d)
        return d

    def bridge(self, d):
        return curl(d, "GET", "/api/v1/info").json()["bridge"]

    def wait_connected(self, d):
        wait_for(lambda: self.bridge(d)["state"] == "connected", what="the bridge to connect")

    def envelope(self, d, key):
        r = curl(d, "GET", f"/api/v1/keys/{key}?envelope=1")
        return r.json() if r.status == 200 else None

    def wait_value(self, d, key, field, value, timeout=10):
        def check():
            e = self.envelope(d, key)
            return e if e is not None and e.get(field) == value else None
        return wait_for(check, timeout, what=f"{key} to hold {value!r}")

    def wait_retained(self, topic, payload, broker=None, timeout=10):
        broker = broker or self.broker

        def check():
            got = broker.retained(topic).get(topic)
            return got if got is not None and got[0] == payload else None
        return wait_for(check, timeout, interval=0.2, what=f"{topic} retained as {payload!r}")


class Directions(BridgeCase):
    def test_in_retained_and_live_with_type_and_labels(self):
        self.broker.pub("in1/before", "21.5", props=[("publish", "content-type",
                                                      "application/json"),
                                                     ("publish", "user-property", "unit", "C")])
        d = self.daemon()
        e = self.wait_value(d, "in1/before", "value", 21.5)
        self.assertEqual(e["type"], "application/json")
        self.assertEqual(e["labels"], {"unit": "C"})
        self.assertEqual(e["origin"], "mqtt")
        self.broker.pub("in1/live", "hello", retain=False)
        e = self.wait_value(d, "in1/live", "text", "hello")
        self.assertEqual(e["origin"], "mqtt")
        # $-topics are not mirrored by the default map (mosquitto publishes
        # $SYS/broker/... every second here).
        time.sleep(1.5)
        self.assertEqual(curl(d, "GET", "/api/v1/keys/$SYS/broker/version").status, 404)
        self.assertEqual(curl(d, "GET", "/api/v1/keys/%24SYS/broker/uptime").status, 404)

    def test_out_with_type_and_labels(self):
        d = self.daemon()
        r = curl(d, "PUT", "/api/v1/keys/out1/temp", "22.5",
                 {"Content-Type": "application/json", "X-Almanac-Label-unit": "C"})
        self.assertIn(r.status, (200, 201))
        payload, ctype, props = self.wait_retained("out1/temp", b"22.5")
        self.assertEqual(ctype, "application/json")
        self.assertEqual(props, "unit:C")
        # What came from HTTP stays from HTTP: its echo is not a change.
        time.sleep(0.5)
        e = self.envelope(d, "out1/temp")
        self.assertEqual((e["origin"], e["rev"]), ("http", r.json()["rev"]))

    def test_deletes_both_ways(self):
        d = self.daemon()
        curl(d, "PUT", "/api/v1/keys/del1/a", "x")
        self.wait_retained("del1/a", b"x")
        self.assertEqual(curl(d, "DELETE", "/api/v1/keys/del1/a").status, 200)
        wait_for(lambda: "del1/a" not in self.broker.retained("del1/a"), 10, 0.2,
                 "the retained message to go")
        self.broker.pub("del1/b", "y")
        self.wait_value(d, "del1/b", "text", "y")
        self.broker.pub("del1/b", None)  # an empty retained payload
        wait_for(lambda: curl(d, "GET", "/api/v1/keys/del1/b").status == 404,
                 what="the key to be deleted")

    def test_binary_payloads_kept_exactly(self):
        d = self.daemon()
        blob = bytes(range(256)) * 3
        self.broker.pub("bin1/in", blob)
        wait_for(lambda: curl(d, "GET", "/api/v1/keys/bin1/in").body == blob,
                 what="the binary value")
        self.assertEqual(self.envelope(d, "bin1/in")["type"], "application/octet-stream")
        blob2 = bytes(reversed(range(256))) + b"\0\0"
        r = curl(d, "PUT", "/api/v1/keys/bin1/out", blob2,
                 {"Content-Type": "application/octet-stream"})
        self.assertIn(r.status, (200, 201))
        _, ctype, _ = self.wait_retained("bin1/out", blob2)
        self.assertEqual(ctype, "application/octet-stream")

    def test_transient_publish_goes_out_not_retained(self):
        d = self.daemon()
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(self.broker.port), "-t", "pub1/#",
                                "-C", "1", "-W", "10", "-F", "%t %p %r"],
                               stdout=subprocess.PIPE)
        time.sleep(0.5)  # subscribed
        self.assertEqual(curl(d, "POST", "/api/v1/publish/pub1/bell", "ding").status, 202)
        out, _ = sub.communicate(timeout=15)
        self.assertEqual(out.decode().strip(), "pub1/bell ding 0")
        self.assertEqual(self.broker.retained("pub1/#"), {})
        self.assertEqual(curl(d, "GET", "/api/v1/keys/pub1/bell").status, 404)

    def test_mqtt_311(self):
        d = self.daemon("--bridge_protocol", "3.1.1")
        self.broker.pub("v3/in", "1", v5=False)
        self.wait_value(d, "v3/in", "value", 1)
        curl(d, "PUT", "/api/v1/keys/v3/out", "two")
        self.wait_retained("v3/out", b"two")
        curl(d, "DELETE", "/api/v1/keys/v3/out")
        wait_for(lambda: "v3/out" not in self.broker.retained("v3/out"), 10, 0.2,
                 "the retained message to go")
        self.broker.pub("v3/in", None, v5=False)
        wait_for(lambda: curl(d, "GET", "/api/v1/keys/v3/in").status == 404,
                 what="the key to be deleted")

    def test_info_and_metrics(self):
        d = self.daemon()
        curl(d, "PUT", "/api/v1/keys/info1/x", "1")
        self.wait_retained("info1/x", b"1")
        b = wait_for(lambda: (lambda b: b if b["messages_out"] >= 1 else None)(self.bridge(d)))
        self.assertEqual(b["state"], "connected")
        self.assertEqual(b["url"], self.broker.url)
        self.assertEqual(b["node"], self.broker.url)  # the one in use (bridge_url may list more)
        self.assertEqual(b["client_id"], self.client_id)
        self.assertEqual((b["outbox"], b["reconnects"], b["errors_in"]), (0, 0, 0))
        self.assertIsNone(b["last_error"])
        self.assertGreaterEqual(b["messages_in"], 1)  # the echo, at least
        m = curl(d, "GET", "/metrics").body.decode()
        self.assertIn("\nalmanac_bridge_connected 1\n", m)
        self.assertIn("\nalmanac_bridge_outbox 0\n", m)
        self.assertIn("almanac_bridge_messages_out_total ", m)
        self.assertIn("almanac_bridge_reconnects_total 0", m)
        # The state is a key too, for subscribers and the dashboard.
        wait_for(lambda: curl(d, "GET", "/api/v1/keys/$SYS/bridge/state").body == b"connected",
                 what="$SYS/bridge/state")
        wait_for(lambda: curl(d, "GET", "/api/v1/keys/$SYS/bridge/node").body ==
                 self.broker.url.encode(), what="$SYS/bridge/node")

    def test_no_broker_configured(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        self.assertEqual(self.bridge(d), {"state": "off", "outbox": 0})
        self.assertIn(curl(d, "PUT", "/api/v1/keys/off/x", "1").status, (200, 201))
        self.assertIn("\nalmanac_bridge_connected 0\n", curl(d, "GET", "/metrics").body.decode())
        self.assertEqual(curl(d, "GET", "/api/v1/keys/$SYS/bridge/state").body, b"off")


class Maps(BridgeCase):
    def test_prefix_rewriting_directions_and_named_dollar_topics(self):
        d = self.daemon("--bridge_map", "in sensors/# home/sensors/#",
                        "--bridge_map", "out devices/+/set home/cmd/+/set",
                        "--bridge_map", "in $SYS/broker/version mosquitto/version")
        self.broker.pub("sensors/kitchen/temp", "20")
        self.wait_value(d, "home/sensors/kitchen/temp", "value", 20)
        curl(d, "PUT", "/api/v1/keys/home/cmd/lamp/set", "on")
        self.wait_retained("devices/lamp/set", b"on")
        # in-only: a change of home/sensors/... does not go out.
        curl(d, "PUT", "/api/v1/keys/home/sensors/local", "1")
        # out-only: devices/... coming in is not mapped.
        self.broker.pub("devices/lamp/state", "off")
        # a map that names a $-topic mirrors it.
        e = self.wait_value(d, "mosquitto/version", "origin", "mqtt")
        self.assertTrue(e["text"].startswith("mosquitto version"))
        time.sleep(0.5)
        self.assertEqual(self.broker.retained("home/#"), {})
        self.assertNotIn("sensors/local", self.broker.retained("sensors/#"))
        self.assertEqual(curl(d, "GET", "/api/v1/keys/devices/lamp/state").status, 404)
        self.assertEqual(self.bridge(d)["outbox"], 0)

    def test_bad_map_stops_the_start(self):
        for bad, says in [("in a/+ b/#", "differ from their first wildcard on"),
                          ("sideways #", "'sideways' is not in, out or both"),
                          ("in a/#/b", "topic filter"),
                          ("out", "expected in|out|both")]:
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([harness.BINARY, "serve", "--data_dir", tmp,
                                      "--http_listen", "127.0.0.1:0", "--tcp_listen", "off",
                                      "--bridge_url", self.broker.url, "--bridge_map", bad],
                                     capture_output=True, timeout=10)
            err = out.stderr.decode()
            self.assertEqual(out.returncode, 2, err)
            self.assertIn("bridge_map", err)
            self.assertIn(bad, err)
            self.assertIn(says, err)

    def test_bad_map_in_the_file_names_the_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "almanac.conf")
            with open(conf, "w") as f:
                f.write("bridge_map both #\nbridge_map in x/+/y z/#\n")
            out = subprocess.run([harness.BINARY, "serve", "-c", conf, "--data_dir", tmp],
                                 capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{conf}:2: bridge_map", out.stderr.decode())


class EmptyValues(BridgeCase):
    """API.md "MQTT bridge": MQTT cannot carry an empty retained value (it
    deletes the topic), so a set of an empty value on a key that maps out is
    refused with invalid_body, on every transport, batch and import whole."""

    def assertEmptyRefused(self, r, key):
        self.assertEqual(r.status, 400, r)
        body = r.json()
        self.assertEqual(body["error"], "invalid_body", body)
        for words in (key, "MQTT", "empty", "delete the key"):
            self.assertIn(words, body["message"])

    def test_empty_value_on_a_mapped_key_is_refused(self):
        d = self.daemon("--bridge_map", "both em/out/#", "--bridge_map", "in em/in/#")
        self.assertIn(curl(d, "PUT", "/api/v1/keys/em/out/a", "kept").status, (200, 201))
        self.wait_retained("em/out/a", b"kept")
        rev = self.envelope(d, "em/out/a")["rev"]
        # HTTP, on a key that holds a value and on one that does not exist yet
        self.assertEmptyRefused(curl(d, "PUT", "/api/v1/keys/em/out/a", ""), "em/out/a")
        self.assertEmptyRefused(curl(d, "PUT", "/api/v1/keys/em/out/new", b"",
                                     {"Content-Type": "application/octet-stream"}), "em/out/new")
        # a session (TCP): an empty text, and an empty base64
        c = harness.Client(d)
        for fields in ({"text": ""}, {"base64": ""}):
            m = c.request("set", key="em/out/a", **fields)
            self.assertEqual((m["type"], m["error"]), ("error", "invalid_body"), m)
            self.assertIn("delete the key", m["message"])
        c.close()
        # a batch and an import are refused whole
        batch = {"ops": [{"op": "set", "key": "em/out/b", "text": "fine"},
                         {"op": "set", "key": "em/out/a", "text": ""}]}
        r = curl(d, "POST", "/api/v1/batch", json.dumps(batch))
        self.assertEmptyRefused(r, "em/out/a")
        self.assertIn("ops[1]", r.json()["message"])
        lines = '{"key":"em/out/c","text":"fine"}\n{"key":"em/out/a","text":""}\n'
        r = curl(d, "POST", "/api/v1/import", lines)
        self.assertEmptyRefused(r, "em/out/a")
        self.assertIn("line 2", r.json()["message"])
        # nothing changed, here or on the broker
        e = self.envelope(d, "em/out/a")
        self.assertEqual((e["text"], e["rev"]), ("kept", rev))
        for k in ("em/out/new", "em/out/b", "em/out/c"):
            self.assertEqual(curl(d, "GET", f"/api/v1/keys/{k}").status, 404, k)
        time.sleep(0.5)
        self.assertEqual({t: v[0] for t, v in self.broker.retained("em/out/#").items()},
                         {"em/out/a": b"kept"})
        # A key that no out map covers (none at all, or in only) can be empty.
        for key in ("em/local", "em/in/x"):
            r = curl(d, "PUT", f"/api/v1/keys/{key}", "")
            self.assertEqual(r.status, 201, r)
            self.assertEqual(self.envelope(d, key)["text"], "")
        # Deleting is the way to empty a mapped key.
        self.assertEqual(curl(d, "DELETE", "/api/v1/keys/em/out/a").status, 200)
        wait_for(lambda: "em/out/a" not in self.broker.retained("em/out/#"), 10, 0.2,
                 "the retained message to go")

    def test_empty_transient_publish_goes_out(self):
        """A transient publish is not retained: an empty one is an ordinary
        MQTT message, so it is allowed on a mapped key."""
        d = self.daemon()
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(self.broker.port), "-t", "empub/#",
                                "-C", "1", "-W", "10", "-F", "%t|%l|%r"],
                               stdout=subprocess.PIPE)
        time.sleep(0.5)  # subscribed
        self.assertEqual(curl(d, "POST", "/api/v1/publish/empub/bell", "").status, 202)
        out, _ = sub.communicate(timeout=15)
        self.assertEqual(out.decode().strip(), "empub/bell|0|0")  # empty, not retained
        self.assertEqual(curl(d, "GET", "/api/v1/keys/empub/bell").status, 404)

    def test_default_map_covers_every_key(self):
        d = self.daemon()  # no bridge_map: both #
        r = curl(d, "PUT", "/api/v1/keys/anywhere/x", "")
        self.assertEmptyRefused(r, "anywhere/x")

    def test_bridge_off_takes_empty_values(self):
        d = Daemon(["--bridge_map", "both #"])  # maps, but no bridge_url: off
        self.addCleanup(d.cleanup)
        d.start()
        r = curl(d, "PUT", "/api/v1/keys/off/empty", "")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(curl(d, "GET", "/api/v1/keys/off/empty?envelope=1").json()["text"], "")
        c = harness.Client(d)
        self.assertEqual(c.request("set", key="off/empty2", text="")["type"], "ok")
        c.close()


class Sessions(BridgeCase):
    def status(self, client_id):
        topic = f"almanac/{client_id}/status"
        return self.broker.retained(topic).get(topic, (None,))[0]

    def test_status_topic_and_will(self):
        d = self.daemon()
        cid = self.client_id
        wait_for(lambda: self.status(cid) == b"online", 10, 0.2, "online")
        d.stop()
        self.assertEqual(self.status(cid), b"offline")
        d.start()
        wait_for(lambda: self.status(cid) == b"online", 10, 0.2, "online again")
        d.stop(signal.SIGKILL)  # the broker publishes the will
        wait_for(lambda: self.status(cid) == b"offline", 10, 0.2, "the will")

    def test_qos1_messages_published_while_almanac_restarts_arrive(self):
        d = self.daemon()
        d.stop()
        for i in range(5):
            self.broker.pub(f"q1/m{i}", f"v{i}", retain=False, qos=1)
        d.start()
        for i in range(5):
            e = self.wait_value(d, f"q1/m{i}", "text", f"v{i}")
            self.assertEqual(e["origin"], "mqtt")

    def test_wrong_credentials_and_unreachable_broker_keep_http_serving(self):
        secured = Broker(users={"sensor": "right"}).start()
        self.addCleanup(secured.cleanup)
        d = self.daemon("--bridge_username", "sensor", "--bridge_password", "wrong",
                        broker=secured, connect=False)
        # mosquitto answers a wrong password with "not authorized".
        refused = re.compile(r"cannot connect to .*: the broker refused the connection: "
                             r"(not authorized|bad user name or password)", re.I)
        wait_for(lambda: refused.search(d.log_text()), what="a log line about the credentials")
        self.assertIn(f"cannot connect to {secured.url}", d.log_text())
        self.assertEqual(curl(d, "GET", "/health").status, 200)
        self.assertIn(curl(d, "PUT", "/api/v1/keys/cred/x", "1").status, (200, 201))
        b = self.bridge(d)
        self.assertNotEqual(b["state"], "connected")
        self.assertRegex(b["last_error"], refused)
        self.assertEqual(b["outbox"], 1)
        self.assertNotIn("wrong", d.log_text())  # no password in the log

        good = self.daemon("--bridge_username", "sensor", "--bridge_password", "right",
                           broker=secured)
        self.assertEqual(self.bridge(good)["state"], "connected")

        port = free_port()
        d2 = Daemon(["--bridge_url", f"mqtt://127.0.0.1:{port}"])
        self.addCleanup(d2.cleanup)
        d2.start()
        wait_for(lambda: "attempt 2" in d2.log_text(), what="a second attempt")
        self.assertIn(f"cannot connect to mqtt://127.0.0.1:{port}", d2.log_text())
        self.assertIn("next attempt in", d2.log_text())
        self.assertIn(curl(d2, "PUT", "/api/v1/keys/unreach/x", "1").status, (200, 201))
        self.assertEqual(curl(d2, "GET", "/api/v1/keys/unreach/x").body, b"1")


class Outages(BridgeCase):
    def test_broker_away_changes_on_both_sides_nothing_lost(self):
        d = self.daemon()
        self.broker.stop()
        wait_for(lambda: self.bridge(d)["state"] != "connected", what="the loss to be seen")
        for i in range(20):
            self.assertIn(curl(d, "PUT", f"/api/v1/keys/down/a/{i}", f"a{i}").status,
                          (200, 201))
        curl(d, "PUT", "/api/v1/keys/down/a/0", "again")  # the latest per topic goes
        self.assertEqual(self.bridge(d)["outbox"], 20)
        time.sleep(2)
        self.broker.start()
        # Watch what almanac sends; devices publish before it is back.
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(self.broker.port), "-t", "down/a/#",
                                "-C", "20", "-W", "40", "-F", "%t %p"], stdout=subprocess.PIPE)
        for i in range(5):
            self.broker.pub(f"down/b/{i}", f"b{i}")
        out, _ = sub.communicate(timeout=60)
        lines = out.decode().split("\n")[:-1]
        expected = [f"down/a/{i} a{i}" for i in range(1, 20)] + ["down/a/0 again"]
        self.assertEqual(lines, expected)  # the outbox drains in rev order
        for i in range(5):
            self.wait_value(d, f"down/b/{i}", "text", f"b{i}")
        got = self.broker.retained("down/a/#")
        self.assertEqual({t: v[0] for t, v in got.items()},
                         {f"down/a/{i}": (b"again" if i == 0 else f"a{i}".encode())
                          for i in range(20)})
        wait_for(lambda: self.bridge(d)["outbox"] == 0, what="an empty outbox")
        self.assertGreaterEqual(self.bridge(d)["reconnects"], 1)

    def test_broker_back_with_another_value_of_keys_we_changed(self):
        """While the broker was away keys changed here and, on the broker,
        by another client. On the reconnect (or a switch to another node,
        test_failover.py) the broker sends the other client's retained
        values, then our outbox goes out: the broker orders ours last, so
        ours is what both sides end with, though the echoes of ours come
        right behind the other values."""
        broker = Broker()
        self.addCleanup(broker.cleanup)
        d = self.daemon(broker=broker, connect=False)
        keys = [f"race/k{i}" for i in range(30)]
        ops = [{"op": "set", "key": k, "text": f"ours-{k}"} for k in keys]
        r = curl(d, "POST", "/api/v1/batch", json.dumps({"ops": ops}),
                 {"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r)
        # just after the third failed attempt: the next one is 4 s away
        wait_for(lambda: d.log_text().count("cannot connect to") >= 3, 20, 0.02,
                 "a third failed attempt")
        broker.start()
        for k in keys:
            broker.pub(k, f"theirs-{k}")
        self.assertNotEqual(self.bridge(d)["state"], "connected")  # theirs came first
        self.wait_connected(d)
        wait_for(lambda: self.bridge(d)["outbox"] == 0, what="an empty outbox")
        expected = {k: f"ours-{k}".encode() for k in keys}
        wait_for(lambda: {t: v[0] for t, v in broker.retained("race/#").items()} == expected,
                 10, 0.2, "the broker to retain ours")
        time.sleep(1)  # every echo is in
        got = {k: curl(d, "GET", f"/api/v1/keys/{k}").body for k in keys}
        self.assertEqual({k: v for k, v in got.items() if v != expected[k]}, {})

    def test_sigkill_with_a_full_outbox_then_delivered(self):
        d = self.daemon()
        self.broker.stop()
        wait_for(lambda: self.bridge(d)["state"] != "connected", what="the loss to be seen")
        ops = [{"op": "set", "key": f"kill/{i}", "value": i} for i in range(300)]
        r = curl(d, "POST", "/api/v1/batch", json.dumps({"ops": ops}),
                 {"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r)
        curl(d, "DELETE", "/api/v1/keys/kill/299")
        self.assertEqual(self.bridge(d)["outbox"], 300)
        d.stop(signal.SIGKILL)
        d.start()
        self.assertEqual(self.bridge(d)["outbox"], 300)  # it survived
        self.broker.start()
        wait_for(lambda: self.bridge(d)["outbox"] == 0, 40, what="the outbox to drain")
        got = self.broker.retained("kill/#")
        self.assertEqual({t: v[0] for t, v in got.items()},
                         {f"kill/{i}": str(i).encode() for i in range(299)})


class Convergence(BridgeCase):
    KEYS = 8
    WRITES = 300

    def writer(self, d, name, seed, failures):
        import random
        rnd = random.Random(seed)
        with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
            cfg.write("next\n".join(
                f'url = "{d.url("/api/v1/keys/conv/k" + str(rnd.randrange(self.KEYS)))}"\n'
                f'request = "PUT"\ndata-binary = "{name}-{n}"\noutput = "/dev/null"\n'
                for n in range(self.WRITES)))
        out = subprocess.run(["curl", "-sS", "--fail", "-K", cfg.name], capture_output=True,
                             timeout=120)
        os.unlink(cfg.name)
        if out.returncode != 0:  # a thread's exception would go unseen
            failures.append(f"{name}: curl exited with {out.returncode}: {out.stderr!r}")

    def test_two_gateways_on_one_broker_converge_without_ping_pong(self):
        self.converge()

    def test_two_gateways_converge_mqtt311(self):
        """MQTT 3.1.1 does not tell our echoes retained: they converge all the same."""
        self.converge("--bridge_protocol", "3.1.1")

    def converge(self, *args):
        a = self.daemon(*args)
        b = self.daemon(*args)
        failures = []
        threads = [threading.Thread(target=self.writer, args=(a, "a", 1, failures)),
                   threading.Thread(target=self.writer, args=(b, "b", 2, failures))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])

        def converged():
            retained = self.broker.retained("conv/#")
            for i in range(self.KEYS):
                key = f"conv/k{i}"
                va = curl(a, "GET", f"/api/v1/keys/{key}").body
                vb = curl(b, "GET", f"/api/v1/keys/{key}").body
                if not (key in retained and va == vb == retained[key][0]):
                    return False
            return True
        wait_for(converged, 30, 0.5, "both gateways to hold the broker's values")
        before = [self.bridge(x) for x in (a, b)]
        time.sleep(1.5)
        after = [self.bridge(x) for x in (a, b)]
        for x, y in zip(before, after):  # quiet: nothing goes round
            self.assertEqual((x["messages_in"], x["messages_out"]),
                             (y["messages_in"], y["messages_out"]))
            self.assertLessEqual(y["messages_out"], self.WRITES)
            self.assertEqual(y["outbox"], 0)


class OwnEchoes(BridgeCase):
    """The echoes of our own retained publishes come back from the broker
    late, after newer values of ours went out: applying one then would take
    the key back to an older value for a moment (events, history)."""
    KEYS = 4
    WRITES = 20
    RUNS = 3

    def puts(self, d, key, failures):
        """WRITES PUTs of 1..WRITES to `key`, one after the other, as fast as
        one curl on one connection goes; a failure goes to `failures`."""
        with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as cfg:
            cfg.write("next\n".join(f'url = "{d.url("/api/v1/keys/" + key)}"\n'
                                     f'request = "PUT"\ndata-binary = "{n}"\n'
                                     'output = "/dev/null"\n'
                                     for n in range(1, self.WRITES + 1)))
        out = subprocess.run(["curl", "-sS", "--fail", "-K", cfg.name], capture_output=True,
                             timeout=60)
        os.unlink(cfg.name)
        if out.returncode != 0:
            failures.append(f"{key}: curl exited with {out.returncode}: {out.stderr!r}")

    @staticmethod
    def number(e):
        return int(e["value"] if "value" in e else e["text"])

    def test_rapid_puts_never_go_back_to_an_older_value(self):
        self.rapid_puts(self.daemon(), "flap5", self.RUNS)  # the default map: both #

    def test_rapid_puts_mqtt311(self):
        self.rapid_puts(self.daemon("--bridge_protocol", "3.1.1"), "flap311", 1)

    def rapid_puts(self, d, prefix, runs):
        expected = list(range(1, self.WRITES + 1))
        last = str(self.WRITES).encode()
        for run in range(runs):
            keys = [f"{prefix}/r{run}/k{i}" for i in range(self.KEYS)]
            c = harness.Client(d)
            self.assertEqual(c.request("subscribe", pattern=f"{prefix}/r{run}/#",
                                       live_only=True)["type"], "ok")
            seen = {k: [] for k in keys}

            def read():
                while True:
                    m = c.recv()
                    if m is None:
                        return
                    if m.get("type") == "event" and m.get("key") in seen:
                        seen[m["key"]].append(m)
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            failures = []
            writers = [threading.Thread(target=self.puts, args=(d, k, failures)) for k in keys]
            for t in writers:
                t.start()
            for t in writers:
                t.join()
            self.assertEqual(failures, [])
            wait_for(lambda: {t: v[0] for t, v in self.broker.retained(
                f"{prefix}/r{run}/#").items()} == {k: last for k in keys}, 10, 0.2,
                "the broker to retain the last values")
            for k in keys:
                self.wait_value(d, k, "value", self.WRITES)
            wait_for(lambda: self.bridge(d)["outbox"] == 0, what="an empty outbox")
            time.sleep(1)  # the last echoes are in
            c.sock.shutdown(2)
            reader.join(10)
            c.close()
            for k in keys:
                got = [(self.number(e), e["origin"]) for e in seen[k]]
                self.assertEqual(got, [(n, "http") for n in expected],
                                 f"{k}: the events went back to older values")
                r = curl(d, "GET", f"/api/v1/history/{k}?order=asc")
                self.assertEqual(r.status, 200, r)
                got = [(self.number(e), e["origin"]) for e in r.json()["records"]]
                self.assertEqual(got, [(n, "http") for n in expected],
                                 f"{k}: the history went back to older values")
                e = self.envelope(d, k)
                self.assertEqual((e["value"], e["origin"]), (self.WRITES, "http"))
            self.assertEqual({t: v[0] for t, v in self.broker.retained(
                f"{prefix}/r{run}/#").items()}, {k: last for k in keys})

    def test_same_value_twice_then_a_delete(self):
        """1, 1, 2, 2, then a delete and a set again: our echoes never bring
        back what was replaced, and the broker ends with what we hold."""
        d = self.daemon()
        key = "flap/same"
        for v in ("1", "1", "2", "2"):
            self.assertIn(curl(d, "PUT", f"/api/v1/keys/{key}", v).status, (200, 201))
        self.assertEqual(curl(d, "DELETE", f"/api/v1/keys/{key}").status, 200)
        wait_for(lambda: key not in self.broker.retained(key), 10, 0.2, "the delete")
        time.sleep(1)
        self.assertEqual(curl(d, "GET", f"/api/v1/keys/{key}").status, 404)
        self.assertIn(curl(d, "PUT", f"/api/v1/keys/{key}", "3").status, (200, 201))
        self.wait_retained(key, b"3")
        time.sleep(1)
        e = self.envelope(d, key)
        self.assertEqual((e["value"], e["origin"]), (3, "http"))
        r = curl(d, "GET", f"/api/v1/history/{key}?order=asc").json()["records"]
        got = [("deleted",) if x.get("deleted") else (x["value"], x["origin"]) for x in r]
        self.assertEqual(got, [(1, "http"), (1, "http"), (2, "http"), (2, "http"), ("deleted",),
                               (3, "http")])
        # another client's change after ours is applied as ever
        self.broker.pub(key, "4")
        e = self.wait_value(d, key, "value", 4)
        self.assertEqual(e["origin"], "mqtt")


class ScaleOut(unittest.TestCase):
    def test_two_brokers_joined_by_a_mosquitto_bridge(self):
        one = Broker().start()
        self.addCleanup(one.cleanup)
        two = Broker(extra=f"connection to-one\naddress 127.0.0.1:{one.port}\n"
                           "topic site/# both 1\n").start()
        self.addCleanup(two.cleanup)
        a = Daemon(["--bridge_url", one.url, "--bridge_client_id", "almanac-a"])
        b = Daemon(["--bridge_url", two.url, "--bridge_client_id", "almanac-b"])
        for d in (a, b):
            self.addCleanup(d.cleanup)
            d.start()
        time.sleep(1)  # the brokers' bridge connects
        curl(a, "PUT", "/api/v1/keys/site/a", "from a")
        curl(b, "PUT", "/api/v1/keys/site/b", "from b")
        wait_for(lambda: curl(b, "GET", "/api/v1/keys/site/a").body == b"from a",
                 what="a's change on b")
        wait_for(lambda: curl(a, "GET", "/api/v1/keys/site/b").body == b"from b",
                 what="b's change on a")


if __name__ == "__main__":
    harness.main()
