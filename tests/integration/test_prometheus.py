"""Numeric values as Prometheus gauges: GET /api/v1/prometheus/{pattern}
(or ?pattern=, repeatable, for a scrape config's `params`) and the
metrics_keys of /metrics. What a user checks: Debian's real `prometheus`
server scrapes almanac with a token and the value comes back through
Prometheus's own query API, and again after it changed; a plain number is
named by the key's last level, a JSON object's numbers and booleans by their
fields, with topic, sensor, level1..N and the entry's labels as labels; the
token's privileges decide which keys are shown; what cannot be a metric
(strings, binary) is left out; every bad parameter is refused."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, curl, free_port, wait_for  # noqa: E402

K = "/api/v1/keys/"
TOKEN = "prometheus-test-admin-token-0123"
ADMIN = {"Authorization": "Bearer " + TOKEN}


def samples(text):
    """{(name, frozenset of label pairs): value} of a text exposition, and
    the families' TYPE lines, checked to come before their samples."""
    out, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[7:].split()
            assert kind == "gauge" and name not in typed, line
            typed.add(name)
            continue
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        assert name in typed, f"{name} has no TYPE line before it"
        pairs = []
        for part in labels.rstrip("}").split('",'):
            k, _, v = part.partition('="')
            pairs.append((k, v.rstrip('"')))
        out[(name, frozenset(pairs))] = float(value)
    return out


class Prometheus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--admin_token", TOKEN, "--metrics_keys", "home/+/temp"]).start()
        d = cls.d

        def put(key, body, headers=None):
            r = curl(d, "PUT", K + key, body, {**ADMIN, **(headers or {})})
            assert r.status in (200, 201), r
        put("home/kitchen/temp", "21.5", {"X-Almanac-Label-unit": "C"})
        put("home/living-room/temp", "19", {"X-Almanac-Label-unit": "C",
                                           "X-Almanac-Label-note": 'a "b" \\c'})
        put("zigbee2mqtt/kitchen_sensor", json.dumps(
            {"temperature": 21.25, "humidity": 40, "occupancy": True, "name": "Aqara",
             "update": {"progress": 0, "state": "idle"}, "list": [1, 2]}))
        put("site/12/dev4711/temp", " 7.5 ", {"Content-Type": "text/plain"})
        put("home/door/state", '"open"')
        put("cam/1/frame", b"\x00\xff\x10", {"Content-Type": "application/octet-stream"})
        put("vault/pin", "1234")
        r = curl(d, "POST", "/api/v1/tokens", json.dumps(
            {"name": "scraper", "read": ["home/#", "zigbee2mqtt/#", "site/#", "cam/#", "lab/#"],
             "write": []}), ADMIN)
        assert r.status == 201, r
        cls.scraper = r.json()["token"]

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def get(self, path, token=None):
        return curl(self.d, "GET", path, headers={"Authorization": "Bearer " + (token or
                                                                               self.scraper)})

    def test_the_exposition(self):
        r = self.get("/api/v1/prometheus/%23")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers["content-type"].startswith("text/plain; version=0.0.4"))
        got = {k: v for k, v in samples(r.body.decode()).items()
               if ("level1", "lab") not in k[1]}  # test_scraped_by_prometheus's
        kitchen = frozenset({("topic", "home/kitchen/temp"), ("sensor", "kitchen"),
                             ("level1", "home"), ("level2", "kitchen"), ("level3", "temp"),
                             ("unit", "C")})
        self.assertEqual(got[("temp", kitchen)], 21.5)
        z = frozenset({("topic", "zigbee2mqtt/kitchen_sensor"), ("sensor", "kitchen_sensor"),
                       ("level1", "zigbee2mqtt"), ("level2", "kitchen_sensor")})
        self.assertEqual(got[("temperature", z)], 21.25)
        self.assertEqual(got[("humidity", z)], 40)
        self.assertEqual(got[("occupancy", z)], 1)
        self.assertEqual(got[("update_progress", z)], 0)
        self.assertEqual(got[("temp", frozenset({
            ("topic", "site/12/dev4711/temp"), ("sensor", "dev4711"), ("level1", "site"),
            ("level2", "12"), ("level3", "dev4711"), ("level4", "temp")}))], 7.5)
        text = r.body.decode()
        self.assertIn('note="a \\"b\\" \\\\c"', text)  # escaped as the format wants
        # strings, arrays, binary values and keys the token may not read: none
        self.assertEqual(len(got), 7, sorted(got))
        self.assertNotIn("vault", text)
        self.assertNotIn("frame", text)
        self.assertNotIn("Aqara", text)

    def test_parameters(self):
        text = self.get("/api/v1/prometheus?pattern=home/%2B/temp&pattern=home/kitchen/temp"
                        "&prefix=mqtt_").body.decode()
        got = samples(text)
        self.assertEqual(sorted(n for n, _ in got), ["mqtt_temp", "mqtt_temp"])  # once each
        self.assertEqual(self.get("/api/v1/prometheus/home/%23?max_age=1h").body.decode().count(
            "\ntemp{"), 2)
        time.sleep(1.1)
        self.assertEqual(samples(self.get("/api/v1/prometheus/home/%23?max_age=1s").body
                                 .decode()), {})
        for query, words in (("/api/v1/prometheus", "which keys"),
                             ("/api/v1/prometheus/home/%23?prefix=1x", "prefix"),
                             ("/api/v1/prometheus/home/%23?prefix=a-b", "prefix"),
                             ("/api/v1/prometheus/home/%23?max_age=soon", "max_age"),
                             ("/api/v1/prometheus/home/%23?max_age=0s", "max_age"),
                             ("/api/v1/prometheus/home/%23?limit=5", "unknown query parameter"),
                             ("/api/v1/prometheus/home/%23x", "whole segment"),
                             ("/api/v1/prometheus?" + "&".join(["pattern=a"] * 17), "at most")):
            r = self.get(query)
            self.assertEqual(r.status, 400, (query, r))
            self.assertIn(words, r.json()["message"], query)
        self.assertEqual(curl(self.d, "GET", "/api/v1/prometheus/%23").status, 401)

    def test_metrics_keys_on_metrics(self):
        text = curl(self.d, "GET", "/metrics", headers=ADMIN).body.decode()
        self.assertIn("almanac_keys ", text)
        self.assertIn('temp{topic="home/kitchen/temp",sensor="kitchen"', text)
        self.assertIn('temp{topic="home/living-room/temp"', text)
        self.assertNotIn("dev4711", text)  # not in metrics_keys

    def test_scraped_by_prometheus(self):
        """Debian's prometheus scrapes with the token (params: pattern) and
        the values come back through its query API, then the new one."""
        if shutil.which("prometheus") is None:
            self.fail("prometheus is not installed (.ci/install-deps installs it)")
        tmp = tempfile.mkdtemp(prefix="almanac-prom-")
        self.addCleanup(shutil.rmtree, tmp, True)
        port = free_port()
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: almanac
    metrics_path: /api/v1/prometheus
    params:
      pattern: ['lab/#', 'zigbee2mqtt/+']
    authorization:
      credentials: {self.scraper}
    static_configs:
      - targets: ['127.0.0.1:{self.d.port}']
""")
        with open(os.path.join(tmp, "log"), "wb") as log:
            prom = subprocess.Popen(["prometheus", "--config.file", os.path.join(tmp, "prometheus.yml"),
                                     "--storage.tsdb.path", os.path.join(tmp, "data"),
                                     "--web.listen-address", f"127.0.0.1:{port}"],
                                    stdout=log, stderr=log)
        self.addCleanup(lambda: (prom.terminate(), prom.wait(20)))

        def query(q):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.load(r)["data"]["result"]
            except OSError:
                return []

        def value(q):
            result = query(q)
            return result[0]["value"][1] if len(result) == 1 else None
        curl(self.d, "PUT", K + "lab/bench/temp", "21.5", {**ADMIN, "X-Almanac-Label-unit": "C"})
        wait_for(lambda: value('temp{sensor="bench",unit="C"}') == "21.5", 60, 0.5,
                 "Prometheus to have scraped the bench's temperature")
        self.assertEqual(value('up{job="almanac"}'), "1")  # its parser took the whole answer
        self.assertEqual(value('temperature{topic="zigbee2mqtt/kitchen_sensor"}'), "21.25")
        self.assertEqual(value('occupancy{sensor="kitchen_sensor"}'), "1")
        curl(self.d, "PUT", K + "lab/bench/temp", "22.75", {**ADMIN, "X-Almanac-Label-unit": "C"})
        wait_for(lambda: value('temp{sensor="bench",unit="C"}') == "22.75", 30, 0.5,
                 "Prometheus to have scraped the new value")
        self.assertEqual(query('{level1="home"}'), [])  # not in the scrape's patterns


def promtool(test, text):
    """Prometheus's own parser (Debian's promtool) takes `text` whole: exit 0,
    or 3 for lint advice only (no HELP lines); 1 is a parse error."""
    if shutil.which("promtool") is None:
        test.fail("promtool is not installed (Debian's prometheus package has it)")
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    test.assertIn(r.returncode, (0, 3), out)
    test.assertNotIn("error while linting", out)


class Hostile(unittest.TestCase):
    """What a writer can put in keys, values and labels never spoils a
    scrape: label names made valid that would be Prometheus's own ("__"),
    fields made the same name (one series twice), a family of two
    metrics_keys patterns, a key named as one of /metrics's own families; a
    pattern with no numbers (no samples) is an empty answer; the samples'
    bytes are capped as well as their number."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--admin_token", TOKEN, "--metrics_keys", "g/#",
                        "--metrics_keys", "h/#", "--metrics_keys", "none/#"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def put(self, key, body, headers=None):
        r = curl(self.d, "PUT", K + key, body, {**ADMIN, **(headers or {})})
        self.assertIn(r.status, (200, 201), r)

    def scrape(self, path):
        r = curl(self.d, "GET", path, headers=ADMIN)
        self.assertEqual(r.status, 200, r)
        promtool(self, r.body.decode())
        return r.body.decode()

    def test_label_names_made_reserved(self):
        self.put("h/lab", "7", {"X-Almanac-Label--_name__": "evil", "X-Almanac-Label-._x": "a",
                                "X-Almanac-Label-__y": "b", "X-Almanac-Label-topic": "t"})
        text = self.scrape("/api/v1/prometheus/h/lab")
        self.assertIn('label___name__="evil"', text)
        self.assertIn('label___x="a"', text)
        self.assertIn('label___y="b"', text)
        self.assertIn('label_topic="t"', text)
        self.assertNotIn(',__', text)

    def test_fields_made_one_name(self):
        self.put("h/obj", json.dumps({"a_b": 1, "a": {"b": 2}, "x-y": 5, "x.y": 6, "z": 3}))
        text = self.scrape("/api/v1/prometheus/h/obj")
        self.assertEqual(text.count("\na_b{"), 1, text)
        self.assertEqual(text.count("\nx_y{"), 1, text)
        self.assertIn("\nz{", text)

    def test_metrics_keys_families(self):
        self.put("g/temp", "1")
        self.put("h/temp", "2")
        self.put("h/almanac_keys", "5")  # named as one of ours
        text = self.scrape("/metrics")
        self.assertEqual(text.count("# TYPE temp gauge"), 1, text)
        self.assertIn('temp{topic="g/temp"', text)
        self.assertIn('temp{topic="h/temp"', text)
        self.assertNotIn("h/almanac_keys", text)

    def test_no_samples(self):
        r = curl(self.d, "GET", "/api/v1/prometheus/none/%23", headers=ADMIN)
        self.assertEqual((r.status, r.body), (200, b""))
        r = curl(self.d, "HEAD", "/api/v1/prometheus/none/%23", headers=ADMIN)
        self.assertEqual(r.status, 200)
        self.scrape("/metrics")  # none/# matches nothing

    def test_bytes_capped(self):
        """Each sample repeats its key's labels: one 64 KiB object under a
        long key with long labels would be some 100 MiB of text."""
        key = "big/" + "/".join(["a"] * 500)
        labels = {f"X-Almanac-Label-l{i:02}": "v" * 1200 for i in range(12)}
        self.put(key, json.dumps({f"f{i}": 1 for i in range(6500)}, separators=(",", ":")), labels)
        r = curl(self.d, "GET", "/api/v1/prometheus/big/%23", headers=ADMIN, timeout=120)
        self.assertNotEqual(r.status, 200, (len(r.body), r.body[:300]))
        self.assertIn("64 MiB", r.json()["message"])


if __name__ == "__main__":
    harness.main()
