"""Access control against the real daemon: the principals (anonymous with
anonymous_read/anonymous_write, the admin_token, tokens, JWTs signed with
HS256, RS256 and ES256, a bad token), what they may and may not do (the
whole matrix is test_auth_matrix.py), patterns filtered to what is readable
(also for changes that come from MQTT), revocation and expiry ending
sessions and streams at once, protected mode for a fresh install reached
from another address, and secrets kept out of logs, metrics and info.

Every refused write is checked to have changed nothing."""
import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Broker, Client, Daemon, curl, free_port, wait_for  # noqa: E402

K = "/api/v1/keys/"
TOKEN = "t0ps3cret-admin-token-4711"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BAD = {"Authorization": "Bearer not-the-token-at-all"}


class SSE:
    """An EventSource-like reader of one SSE stream (its events' names and
    keys, or error codes)."""

    def __init__(self, d, path):
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        self.conn.request("GET", path)
        self.r = self.conn.getresponse()
        assert self.r.status == 200, (self.r.status, self.r.read())

    def next_event(self):
        """(event, key) of the next put/delete, or ("error", code)."""
        name = None
        while True:
            line = self.r.readline().decode()
            if line == "":
                return None
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: ") and name in ("put", "delete", "error"):
                data = json.loads(line[6:])
                return (name, data["error"] if name == "error" else data["key"])

    def ended(self):
        """Whether the stream ends (its last chunk) with nothing more."""
        rest = self.r.read()
        self.conn.close()
        return rest.strip() == b""


def own_address():
    """This machine's address on a non-loopback interface, or None."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.255.255.255", 1))  # no packet is sent
        ip = s.getsockname()[0]
        s.close()
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--admin_token", TOKEN, "--anonymous_read", "home/#",
                        "--anonymous_write", "home/lights/#"]).start()
        for key, value in [("home/lights/1", "on"), ("home/temp", "21"), ("work/desk", "x"),
                           ("work/door", "shut")]:
            r = curl(cls.d, "PUT", K + key, value, ADMIN)
            assert r.status == 201, r

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        log = cls.d.log_text()
        cls.d.cleanup()
        assert rc == 0, rc
        assert TOKEN not in log, "the admin token is in the log"

    def value(self, key):
        r = curl(self.d, "GET", K + key, headers=ADMIN)
        return r.body if r.status == 200 else None

    def assert_refused(self, r, status=401, code="unauthorized"):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.json()["error"], code, r)
        if status == 401:
            self.assertTrue(r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers)

    def test_anonymous_reads_what_anonymous_read_opens(self):
        self.assertEqual(curl(self.d, "GET", K + "home/temp").body, b"21")
        self.assert_refused(curl(self.d, "GET", K + "work/desk"))
        self.assertEqual(curl(self.d, "HEAD", K + "work/desk").status, 401)
        r = curl(self.d, "GET", K + "%23")  # "#": only the readable keys
        self.assertEqual(r.status, 200, r)
        self.assertEqual([e["key"] for e in r.json()["entries"]], ["home/lights/1", "home/temp"])
        r = curl(self.d, "GET", K + "+/desk")  # meets home/#: filtered to nothing
        self.assertEqual(r.json()["entries"], [])
        self.assert_refused(curl(self.d, "GET", K + "work/%23"))
        r = curl(self.d, "GET", "/api/v1/ls")
        self.assertEqual([c["name"] for c in r.json()["children"]], ["home"])
        self.assert_refused(curl(self.d, "GET", "/api/v1/ls/work"))
        exported = curl(self.d, "GET", "/api/v1/export").body.decode().splitlines()
        self.assertEqual(sorted(json.loads(x)["key"] for x in exported),
                         ["home/lights/1", "home/temp"])
        history = curl(self.d, "GET", "/api/v1/history/%23").json()["records"]
        self.assertTrue(history)
        self.assertTrue(all(rec["key"].startswith("home/") for rec in history), history)
        self.assert_refused(curl(self.d, "GET", "/api/v1/info"))
        self.assert_refused(curl(self.d, "GET", "/metrics"))
        self.assertEqual(curl(self.d, "GET", "/health").status, 200)  # open
        self.assertEqual(curl(self.d, "GET", "/ready").status, 200)

    def test_anonymous_writes_only_what_anonymous_write_opens(self):
        self.assertEqual(curl(self.d, "PUT", K + "home/lights/2", "off").status, 201)
        self.assert_refused(curl(self.d, "PUT", K + "home/temp", "99"))
        self.assert_refused(curl(self.d, "PUT", K + "work/desk", "99"))
        self.assert_refused(curl(self.d, "POST", "/api/v1/publish/work/desk", "1"))
        self.assert_refused(curl(self.d, "DELETE", K + "work/door"))
        self.assert_refused(curl(self.d, "DELETE", K + "home/%23"))  # not all of home/ is writable
        batch = {"ops": [{"op": "set", "key": "home/lights/3", "value": 1},
                         {"op": "set", "key": "work/desk", "value": 2}]}
        self.assert_refused(curl(self.d, "POST", "/api/v1/batch", json.dumps(batch)))
        imp = ('{"key":"home/lights/4","value":1}\n{"key":"work/new","value":1}\n')
        self.assert_refused(curl(self.d, "POST", "/api/v1/import", imp))
        # nothing changed by any refusal
        self.assertEqual(self.value("home/temp"), b"21")
        self.assertEqual(self.value("work/desk"), b"x")
        self.assertEqual(self.value("work/door"), b"shut")
        self.assertIsNone(self.value("home/lights/3"))
        self.assertIsNone(self.value("home/lights/4"))
        self.assertIsNone(self.value("work/new"))
        # a pattern delete within what anonymous may write
        curl(self.d, "PUT", K + "home/lights/9", "on")
        r = curl(self.d, "DELETE", K + "home/lights/9")
        self.assertEqual(r.status, 200, r)

    def test_tokens(self):
        self.assertEqual(curl(self.d, "GET", K + "work/desk", headers=ADMIN).status, 200)
        self.assertEqual(curl(self.d, "GET", "/api/v1/info", headers=ADMIN).status, 200)
        metrics = curl(self.d, "GET", "/metrics", headers=ADMIN).body.decode()
        self.assertIn("almanac_keys", metrics)
        self.assertNotIn(TOKEN, metrics)
        self.assertNotIn(TOKEN, curl(self.d, "GET", "/api/v1/info", headers=ADMIN).body.decode())
        # a bad token is refused even where anonymous could read
        self.assert_refused(curl(self.d, "GET", K + "home/temp", headers=BAD))
        self.assert_refused(curl(self.d, "GET", K + "home/temp", headers={"Authorization": "Basic x"}))
        # ?access_token for GETs (EventSource, downloads), not for writes:
        # a write's query does not take it (API.md "Strictness")
        before = self.value("work/desk")
        self.assertEqual(curl(self.d, "GET", K + "work/desk?access_token=" + TOKEN).status, 200)
        r = curl(self.d, "PUT", K + "work/desk?access_token=" + TOKEN, "9")
        self.assert_refused(r, 400, "bad_request")
        self.assertIn("access_token", r.json()["message"])
        self.assertEqual(self.value("work/desk"), before)

    def test_failed_credentials_are_rate_limited(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=20)
        statuses = []
        for _ in range(30):  # within two seconds at most: one holds 15
            conn.request("GET", K + "home/temp", headers=BAD)
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
        conn.close()
        self.assertIn(429, statuses)
        self.assertEqual(set(statuses), {401, 429})
        time.sleep(1.1)  # the next second starts over
        self.assertEqual(curl(self.d, "GET", K + "work/desk", headers=ADMIN).status, 200)

    def test_sessions(self):
        c = Client(self.d)
        self.assertFalse(c.welcome["auth_required"])  # anonymous may read home/#
        m = c.request("get", key="work/desk")
        self.assertEqual((m["type"], m["error"]), ("error", "unauthorized"), m)
        self.assertEqual(c.request("get", key="home/temp")["value"], 21)
        m = c.request("set", key="work/desk", text="no")
        self.assertEqual(m["error"], "unauthorized", m)
        ok = c.request("subscribe", pattern="#")
        self.assertEqual(ok["type"], "ok", ok)
        sub = ok["sub"]
        while True:  # the snapshot holds only readable keys
            m = c.recv()
            if m["type"] == "sync":
                break
            self.assertTrue(m["key"].startswith("home/"), m)
        curl(self.d, "PUT", K + "work/desk", "y", ADMIN)
        curl(self.d, "PUT", K + "home/temp", "22", ADMIN)
        m = c.recv()  # the work/ change is not delivered
        self.assertEqual((m["type"], m["key"], m["value"]), ("event", "home/temp", 22), m)
        self.assertEqual(m["sub"], sub)
        # a wrong token changes nothing; the admin token opens everything
        m = c.request("auth", token="wrong")
        self.assertEqual(m["error"], "unauthorized", m)
        m = c.request("auth", token=TOKEN)
        self.assertEqual((m["type"], m["principal"]), ("ok", "admin"), m)
        self.assertEqual(c.request("get", key="work/desk")["text"], "y")
        curl(self.d, "PUT", K + "work/door", "open", ADMIN)
        m = c.recv()  # now work/ changes reach the same subscription
        self.assertEqual((m["key"], m["sub"]), ("work/door", sub), m)
        c.close()

    def test_cli(self):
        env = dict(os.environ, ALMANAC_SERVER=f"127.0.0.1:{self.d.tcp_port}",
                   ALMANAC_HTTP=f"127.0.0.1:{self.d.port}")
        env.pop("ALMANAC_TOKEN", None)
        run = lambda *a, **kw: subprocess.run([harness.BINARY, *a], capture_output=True, env=kw.get("env", env), timeout=20)  # noqa: E731
        r = run("get", "work/desk")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"unauthorized", r.stderr)
        curl(self.d, "PUT", K + "work/cli", "open", ADMIN)
        r = run("--token", TOKEN, "get", "work/cli")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, b"open"), r.stderr)
        r = run("export", env=dict(env, ALMANAC_TOKEN=TOKEN))
        self.assertIn(b"work/cli", r.stdout)
        self.assertNotIn(b"work/cli", run("export").stdout)  # anonymous: home/ only
        r = run("--token", "wrong", "get", "home/temp")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"unauthorized", r.stderr)


class Leaks(unittest.TestCase):
    """What the first attack on access control found: a history page that
    hinted at hidden records, and ls that named branches with nothing
    readable below."""

    def test_history_and_ls_say_nothing_of_hidden_keys(self):
        d = Daemon(["--admin_token", TOKEN, "--anonymous_read", "+/public/#"]).start()
        try:
            for key in ("alice/public/p", "bob/private/x", "bob/private/x", "carol/y"):
                self.assertEqual(curl(d, "PUT", K + key, "1", ADMIN).status // 100, 2)
            r = curl(d, "GET", "/api/v1/history/%2B/private/x?limit=1")
            self.assertEqual(r.status, 401, r)  # meets nothing readable
            r = curl(d, "GET", "/api/v1/history/%23?limit=1&order=desc")
            self.assertEqual([x["key"] for x in r.json()["records"]], ["alice/public/p"], r)
            self.assertIsNone(r.json()["next"], r)  # no hint of bob's or carol's records
            r = curl(d, "GET", "/api/v1/history/%2B/%2B/%2B?limit=1")
            self.assertEqual(r.json()["records"][0]["key"], "alice/public/p")
            self.assertIsNone(r.json()["next"], r)
            self.assertEqual([c["name"] for c in curl(d, "GET", "/api/v1/ls").json()["children"]],
                             ["alice"])
            # a branch with nothing readable answers as one that does not exist
            self.assertEqual(curl(d, "GET", "/api/v1/ls/bob").json(), {"children": []})
            self.assertEqual(curl(d, "GET", "/api/v1/ls/dave").json(), {"children": []})
            # the number of keys below a folder only when all of them may be read
            r = curl(d, "GET", "/api/v1/ls/alice")
            self.assertEqual(r.json()["children"],
                             [{"name": "public", "value": False, "children": True, "keys": 1}])
            self.assertEqual(curl(d, "GET", "/api/v1/ls").json()["children"],
                             [{"name": "alice", "value": False, "children": True}])
            # a substring search finds only what may be read
            r = curl(d, "GET", "/api/v1/keys/%23?contains=p")
            self.assertEqual([x["key"] for x in r.json()["entries"]], ["alice/public/p"], r)
        finally:
            d.stop()
            d.cleanup()


class Tokens(unittest.TestCase):
    """Tokens made by an admin over /api/v1/tokens: their privileges on HTTP
    and sessions, revocation and expiry at once, restarts, the CLI, and a
    schema-2 database taking them after its migration."""

    def setUp(self):
        self.d = Daemon(["--admin_token", TOKEN]).start()
        self.addCleanup(self.d.cleanup)
        for key in ("home/temp", "work/desk"):
            curl(self.d, "PUT", K + key, "1", ADMIN)

    def make(self, name, **privs):
        r = curl(self.d, "POST", "/api/v1/tokens", json.dumps(dict(name=name, **privs)), ADMIN)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["name"], name)
        self.assertTrue(r.json()["token"].startswith("alm_"))
        return r.json()["token"]

    def test_privileges_revocation_expiry_restart(self):
        reader = self.make("reader", read=["home/#"])
        writer = self.make("writer", read=["work/#"], write=["work/#"])
        brief = self.make("brief", read=["#"], expires="3s")
        brief_until = time.time() + 3
        # at once: a loaded machine may take seconds over what follows
        self.assertEqual(curl(self.d, "GET", K + "x?access_token=" + brief).status, 404)
        R, W = {"Authorization": f"Bearer {reader}"}, {"Authorization": f"Bearer {writer}"}
        self.assertEqual(curl(self.d, "GET", K + "home/temp", headers=R).status, 200)
        r = curl(self.d, "GET", K + "work/desk", headers=R)
        self.assertEqual((r.status, r.json()["error"]), (403, "forbidden"))
        self.assertIn("work/desk", r.json()["message"])
        self.assertEqual(curl(self.d, "PUT", K + "home/temp", "2", R).status, 403)
        self.assertEqual(curl(self.d, "PUT", K + "work/new", "2", W).status, 201)
        self.assertEqual(curl(self.d, "PUT", K + "home/new", "2", W).status, 403)
        self.assertEqual(curl(self.d, "DELETE", K + "work/%23", headers=W).status, 200)
        self.assertEqual(curl(self.d, "GET", K + "work/desk", headers=ADMIN).status, 404)
        # tokens are the admin's to list, without their secrets
        listed = curl(self.d, "GET", "/api/v1/tokens", headers=ADMIN)
        self.assertEqual(sorted(t["name"] for t in listed.json()["tokens"]),
                         ["brief", "reader", "writer"])
        for secret in (reader, writer, brief):
            self.assertNotIn(secret, listed.body.decode())
        self.assertEqual(curl(self.d, "GET", "/api/v1/tokens", headers=R).status, 403)
        self.assertEqual(curl(self.d, "POST", "/api/v1/tokens", '{"name":"x"}', W).status, 403)
        r = curl(self.d, "POST", "/api/v1/tokens", '{"name":"reader"}', ADMIN)
        self.assertEqual(r.status, 412, r)  # the name is taken
        r = curl(self.d, "POST", "/api/v1/tokens", '{"name":"bad","read":["a/#/b"]}', ADMIN)
        self.assertEqual((r.status, r.json()["error"]), (400, "invalid_body"), r)
        # a session and an SSE stream with the reader see home/ only; when the
        # token is revoked both end at once, with unauthorized
        c = Client(self.d)
        self.assertEqual(c.request("auth", token=reader)["principal"], "reader")
        sub = c.request("subscribe", pattern="#")["sub"]
        while c.recv()["type"] != "sync":
            pass
        sse = SSE(self.d, "/api/v1/events/%23?live_only=1&access_token=" + reader)
        curl(self.d, "PUT", K + "work/new", "3", ADMIN)
        curl(self.d, "PUT", K + "home/temp", "4", ADMIN)
        m = c.recv()
        self.assertEqual((m["key"], m["sub"]), ("home/temp", sub), m)
        self.assertEqual(sse.next_event(), ("put", "home/temp"))
        r = curl(self.d, "DELETE", "/api/v1/tokens/reader", headers=ADMIN)
        self.assertEqual(r.status, 200, r)
        revoked_at = time.time()
        self.assertEqual(curl(self.d, "GET", K + "home/temp", headers=R).status, 401)
        m = c.recv()
        self.assertEqual((m["type"], m["error"]), ("error", "unauthorized"), m)
        self.assertIn("reader", m["message"])
        self.assertIsNone(c.recv())  # closed
        self.assertEqual(sse.next_event(), ("error", "unauthorized"))
        self.assertTrue(sse.ended())
        self.assertLess(time.time() - revoked_at, 2.5)
        c.close()
        self.assertEqual(curl(self.d, "DELETE", "/api/v1/tokens/reader", headers=ADMIN).status, 404)
        time.sleep(max(0, brief_until + 0.2 - time.time()))  # brief has expired
        self.assertEqual(curl(self.d, "GET", K + "home/temp", headers={
            "Authorization": f"Bearer {brief}"}).status, 401)
        # a restart keeps the tokens (and the revocation)
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        self.assertEqual(curl(self.d, "GET", K + "work/new", headers=W).status, 200)
        self.assertEqual(curl(self.d, "GET", K + "home/temp", headers=R).status, 401)
        log = self.d.log_text()
        for secret in (TOKEN, reader, writer, brief):
            self.assertNotIn(secret, log)

    def test_cli(self):
        env = dict(os.environ, ALMANAC_HTTP=f"127.0.0.1:{self.d.port}", ALMANAC_TOKEN=TOKEN,
                   ALMANAC_SERVER=f"127.0.0.1:{self.d.tcp_port}")
        run = lambda *a: subprocess.run([harness.BINARY, *a], capture_output=True, env=env, timeout=20)  # noqa: E731
        r = run("token", "create", "dash", "--read", "home/#", "--write", "home/lights/#")
        self.assertEqual(r.returncode, 0, r.stderr)
        secret = r.stdout.decode().strip()
        self.assertTrue(secret.startswith("alm_"))
        self.assertEqual(run("token", "ls").stdout.decode(),
                         'dash read ["home/#"] write ["home/lights/#"]\n')
        r = subprocess.run([harness.BINARY, "--token", secret, "get", "home/temp"],
                           capture_output=True, env=dict(env, ALMANAC_TOKEN=""), timeout=20)
        self.assertEqual((r.returncode, r.stdout), (0, b"1\n"), r.stderr)
        self.assertEqual(run("token", "rm", "dash").stdout, b"revoked dash\n")
        self.assertEqual(run("token", "ls").stdout, b"")
        self.assertEqual(run("token", "rm", "dash").returncode, 1)

    def test_schema_2_database_takes_tokens(self):
        data = tempfile.mkdtemp(prefix="almanac-schema2-")
        self.addCleanup(shutil.rmtree, data, True)
        shutil.copy(os.path.join(harness.ROOT, "tests", "fixtures", "schema-2.db"),
                    os.path.join(data, "almanac.db"))
        d = Daemon(["--admin_token", TOKEN], data_dir=data).start()
        self.addCleanup(d.cleanup)
        self.assertIn("applied schema migration 3", d.log_text())
        self.assertNotIn("applied schema migration 2", d.log_text())
        info = curl(d, "GET", "/api/v1/info", headers=ADMIN).json()
        self.assertEqual(info["schema_version"], 6)
        e = curl(d, "GET", K + "home/kitchen/temp?envelope=1", headers=ADMIN).json()
        self.assertEqual((e["rev"], e["value"]), (6, {"v": 21.5}))
        e = curl(d, "GET", K + "home/kitchen/mood?envelope=1", headers=ADMIN).json()
        self.assertEqual((e["text"], e["labels"]), ("warm", {"unit": "C"}))
        self.assertEqual(curl(d, "GET", K + "bin/blob", headers=ADMIN).body, b"\x00\x01\xfe\xff")
        r = curl(d, "POST", "/api/v1/tokens", '{"name":"t","read":["home/#"]}', ADMIN)
        self.assertEqual(r.status, 201, r)
        h = {"Authorization": f"Bearer {r.json()['token']}"}
        self.assertEqual(curl(d, "GET", K + "home/kitchen/mood", headers=h).body, b"warm")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw(der, size):
    """An ECDSA signature from DER (openssl dgst) to JOSE's r || s."""
    assert der[0] == 0x30
    i = 3 if der[1] & 0x80 else 2
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return out


def jwt(claims, key, alg="HS256"):
    """A JWT: HMAC with `key` (bytes), or RSA/ECDSA with the private key
    file `key` (str) through the openssl command."""
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    if alg == "none":
        return f"{head}.{body}."
    if alg.startswith("HS"):
        sig = hmac.new(key, signing, hashlib.sha256).digest()
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing,
                             capture_output=True, check=True).stdout
        if alg.startswith("ES"):
            sig = der_to_raw(sig, 32)
    return f"{head}.{body}.{b64url(sig)}"


SECRET = b"an-hs256-secret-of-at-least-32-bytes"


class Jwts(unittest.TestCase):
    """JWTs from an identity provider: privileges from the almanac claim,
    exp/nbf/iss/aud, the algorithm the key allows and no other, and an
    expiring JWT ending its session and stream."""

    def setUp(self):
        self.d = Daemon(env={"ALMANAC_JWT_KEY": SECRET.decode()}).start()
        self.addCleanup(self.d.cleanup)
        self.now = int(time.time())
        admin = jwt({"sub": "root", "almanac": {"admin": True}}, SECRET)
        self.admin = {"Authorization": f"Bearer {admin}"}
        for key in ("home/temp", "work/desk"):
            self.assertEqual(curl(self.d, "PUT", K + key, "1", self.admin).status, 201)

    def test_privileges_and_claims(self):
        alice = jwt({"sub": "alice", "exp": self.now + 600,
                     "almanac": {"read": ["home/#"], "write": ["home/lights/#"]}}, SECRET)
        A = {"Authorization": f"Bearer {alice}"}
        self.assertEqual(curl(self.d, "GET", K + "home/temp", headers=A).body, b"1")
        r = curl(self.d, "GET", K + "work/desk", headers=A)
        self.assertEqual((r.status, r.json()["error"]), (403, "forbidden"))
        self.assertIn("jwt:alice may not read work/desk", r.json()["message"])
        self.assertEqual(curl(self.d, "PUT", K + "home/lights/1", "on", A).status, 201)
        self.assertEqual(curl(self.d, "PUT", K + "home/temp", "9", A).status, 403)
        self.assertEqual(curl(self.d, "GET", K + "home/temp?access_token=" + alice).status, 200)
        # loopback is not trusted once a credential is configured
        self.assertEqual(curl(self.d, "GET", K + "home/temp").status, 401)
        for claims, key, alg, why in [
                ({"exp": self.now - 1}, SECRET, "HS256", "expired"),
                ({"nbf": self.now + 600}, SECRET, "HS256", "not valid yet"),
                ({"almanac": {"admin": True}}, b"another-secret-that-is-32-bytes-long",
                 "HS256", "jwt_key"),
                ({"almanac": {"admin": True}}, SECRET, "none", "not valid"),
                ({"almanac": {"read": "#"}}, SECRET, "HS256", "array of patterns")]:
            r = curl(self.d, "GET", K + "home/temp",
                     headers={"Authorization": f"Bearer {jwt(claims, key, alg)}"})
            self.assertEqual((r.status, r.json()["error"]), (401, "unauthorized"), claims)
            self.assertIn(why, r.json()["message"])
            self.assertTrue(r.headers["www-authenticate"].startswith("Bearer"))
        c = Client(self.d)
        self.assertEqual(c.request("auth", token=alice)["principal"], "jwt:alice")
        self.assertEqual(c.request("get", key="work/desk")["error"], "forbidden")
        c.close()
        log = self.d.log_text()
        self.assertNotIn(alice, log)
        self.assertNotIn(SECRET.decode(), log)

    def test_expiry_ends_sessions_and_streams(self):
        brief = jwt({"sub": "brief", "exp": self.now + 2, "almanac": {"read": ["#"]}}, SECRET)
        c = Client(self.d)
        c.send({"type": "hello", "id": 0, "protocol": "1.0", "token": brief})
        self.assertEqual(c.recv()["type"], "ok")
        c.request("subscribe", pattern="home/#", live_only=True)
        self.assertEqual(c.recv()["type"], "sync")
        sse = SSE(self.d, "/api/v1/events/home/%23?live_only=1&access_token=" + brief)
        curl(self.d, "PUT", K + "home/temp", "2", self.admin)
        self.assertEqual(c.recv()["key"], "home/temp")
        self.assertEqual(sse.next_event(), ("put", "home/temp"))
        m = c.recv()  # within a second of exp
        self.assertEqual((m["type"], m["error"]), ("error", "unauthorized"), m)
        self.assertIsNone(c.recv())
        self.assertEqual(sse.next_event(), ("error", "unauthorized"))
        self.assertTrue(sse.ended())
        self.assertLess(time.time(), self.now + 2 + 2.5)
        c.close()

    def test_public_keys_issuer_audience(self):
        tmp = tempfile.mkdtemp(prefix="almanac-jwt-")
        self.addCleanup(shutil.rmtree, tmp, True)
        keys = {}
        for alg, gen in [("RS256", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                         ("ES256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])]:
            priv, pub = os.path.join(tmp, alg + ".key"), os.path.join(tmp, alg + ".pub")
            subprocess.run(["openssl", "genpkey", *gen, "-out", priv], check=True,
                           capture_output=True)
            subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True,
                           capture_output=True)
            keys[alg] = (priv, pub)
        for alg, (priv, pub) in keys.items():
            with self.subTest(alg=alg):
                d = Daemon(["--jwt_key", pub, "--jwt_issuer", "https://idp.example",
                            "--jwt_audience", "almanac"]).start()
                self.addCleanup(d.cleanup)
                good = {"sub": "dev", "iss": "https://idp.example", "aud": ["almanac"],
                        "exp": self.now + 600, "almanac": {"read": ["#"], "write": ["#"]}}
                t = jwt(good, priv, alg)
                self.assertEqual(curl(d, "PUT", K + "a", "1", {"Authorization": f"Bearer {t}"})
                                 .status, 201)
                with open(pub, "rb") as f:
                    confused = jwt(good, f.read(), "HS256")  # HMAC over the public key
                for bad in [jwt(dict(good, iss="https://evil.example"), priv, alg),
                            jwt(dict(good, aud="other"), priv, alg), confused]:
                    r = curl(d, "GET", K + "a", headers={"Authorization": f"Bearer {bad}"})
                    self.assertEqual(r.status, 401, r)
                d.stop()
        # the other family's key does not verify either
        t = jwt({"almanac": {"admin": True}}, keys["ES256"][0], "ES256")
        d = Daemon(["--jwt_key", keys["RS256"][1]]).start()
        self.addCleanup(d.cleanup)
        self.assertEqual(curl(d, "GET", K + "a", headers={"Authorization": f"Bearer {t}"}).status,
                         401)

    def test_bad_keys_stop_the_start(self):
        tmp = tempfile.mkdtemp(prefix="almanac-jwt-")
        self.addCleanup(shutil.rmtree, tmp, True)
        notkey = os.path.join(tmp, "not.pem")
        with open(notkey, "w") as f:
            f.write("-----BEGIN NOTHING-----\n")
        # a bad option exits 2; a key file found wrong at start, 1
        for args, text, code in [(["--jwt_key", "short-secret"], b"32 characters", 2),
                                 (["--jwt_key", notkey], b"public key", 1)]:
            r = subprocess.run([harness.BINARY, "serve", "--http_listen", "127.0.0.1:0",
                                "--tcp_listen", "off", "--data_dir", tmp, *args],
                               capture_output=True, timeout=20)
            self.assertEqual(r.returncode, code, r)
            self.assertIn(text, r.stderr)
            self.assertNotIn(b"short-secret", r.stderr)


class FromMqtt(unittest.TestCase):
    def test_filtered_subscription_sees_only_readable_changes_from_mqtt(self):
        broker = Broker().start()
        self.addCleanup(broker.cleanup)
        d = Daemon(["--admin_token", TOKEN, "--bridge_url", broker.url]).start()
        self.addCleanup(d.cleanup)
        r = curl(d, "POST", "/api/v1/tokens", '{"name":"home","read":["home/#"]}', ADMIN)
        secret = r.json()["token"]
        c = Client(d)
        c.request("auth", token=secret)
        sub = c.request("subscribe", pattern="#", live_only=True)["sub"]
        self.assertEqual(c.recv()["type"], "sync")
        sse = SSE(d, "/api/v1/events/%23?live_only=1&access_token=" + secret)
        for topic in ("work/door", "home/door", "office/x", "home/temp"):
            broker.pub(topic, "1")
        wait_for(lambda: curl(d, "GET", K + "home/temp", headers=ADMIN).status == 200,
                 what="the bridge to bring home/temp")
        self.assertEqual(curl(d, "GET", K + "office/x", headers=ADMIN).status, 200)
        got = [c.recv() for _ in range(2)]
        self.assertEqual([(m["sub"], m["key"]) for m in got],
                         [(sub, "home/door"), (sub, "home/temp")])
        self.assertEqual([sse.next_event(), sse.next_event()],
                         [("put", "home/door"), ("put", "home/temp")])
        c.sock.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            c.recv()  # nothing of work/ or office/
        c.close()
        sse.conn.close()


class Required(unittest.TestCase):
    def test_auth_required_and_hello_token(self):
        d = Daemon(["--admin_token", TOKEN]).start()
        try:
            c = Client(d)
            self.assertTrue(c.welcome["auth_required"])
            self.assertEqual(c.request("get", key="a")["error"], "unauthorized")
            c.send({"type": "hello", "id": 7, "protocol": "1.0", "token": TOKEN})
            self.assertEqual(c.recv()["type"], "ok")
            self.assertEqual(c.request("set", key="a", text="1")["type"], "ok")
            c.close()
            self.assertEqual(curl(d, "GET", K + "a").status, 401)
        finally:
            d.stop()
            d.cleanup()

    def test_a_session_that_never_authenticates_is_ended(self):
        # Anonymous may do nothing: a session that presents no credential
        # within 10 s gives its max_sessions slot back.
        d = Daemon(["--admin_token", TOKEN]).start()
        self.addCleanup(d.cleanup)
        idle, good = Client(d), Client(d)
        self.assertEqual(good.request("auth", token=TOKEN)["type"], "ok")
        start = time.time()
        m = idle.recv()
        self.assertEqual((m["type"], m["error"]), ("error", "unauthorized"), m)
        self.assertIn("credential", m["message"])
        self.assertIsNone(idle.recv())
        self.assertTrue(10 <= time.time() - start < 13)
        self.assertEqual(good.request("ping")["type"], "pong")  # the other stays
        idle.close()
        good.close()

    def test_bad_options_stop_the_start(self):
        for args, text in [(["--anonymous_read", "a/#/b"], b"anonymous_read"),
                           (["--admin_token", "short"], b"16 characters")]:
            r = subprocess.run([harness.BINARY, "serve", "--http_listen", "127.0.0.1:0",
                                "--tcp_listen", "off", "--data_dir", "/nonexistent/x", *args],
                               capture_output=True, timeout=20)
            self.assertEqual(r.returncode, 2, r)
            self.assertIn(text, r.stderr)
            self.assertNotIn(b"short", r.stderr)  # a secret is never echoed


class Tls(unittest.TestCase):
    """HTTPS and wss on http_listen with a certificate made by the test."""

    def test_https_and_wss(self):
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out",
                            cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                           check=True, capture_output=True, timeout=60)
            d = Daemon(["--http_tls_cert", cert, "--http_tls_key", key,
                        "--admin_token", TOKEN]).start()
            try:
                base = f"https://127.0.0.1:{d.port}"
                def curl_tls(*args):
                    r = subprocess.run(["curl", "-sS", "--cacert", cert, "-w", "\n%{http_code}",
                                        *args], capture_output=True, timeout=20)
                    return r.stdout.decode().rsplit("\n", 1)
                body, code = curl_tls("-X", "PUT", "-H", f"Authorization: Bearer {TOKEN}",
                                      "-d", "on", base + K + "tls/lamp")
                self.assertEqual(code, "201", body)
                body, code = curl_tls("-H", f"Authorization: Bearer {TOKEN}", base + K + "tls/lamp")
                self.assertEqual((code, body), ("200", "on"))
                # plain HTTP to the TLS port gets no answer
                r = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{d.port}/health"],
                                   capture_output=True, timeout=20)
                self.assertNotEqual(r.returncode, 0)
                # a WebSocket session over TLS (wss), authenticated in hello
                ctx = ssl.create_default_context(cafile=cert)
                raw = socket.create_connection(("127.0.0.1", d.port), timeout=20)
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                s.sendall(b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                f = s.makefile("rb")
                self.assertIn(b" 101 ", f.readline())
                while f.readline() not in (b"\r\n", b""):
                    pass

                def frame():
                    head = f.read(2)
                    n = head[1] & 0x7F
                    if n == 126:
                        n = int.from_bytes(f.read(2), "big")
                    return json.loads(f.read(n))

                def send(msg):
                    data = json.dumps(msg).encode()
                    mask = os.urandom(4)
                    hdr = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else \
                        bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
                    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

                self.assertTrue(frame()["auth_required"])
                send({"type": "hello", "id": 1, "protocol": "1.0", "token": TOKEN})
                self.assertEqual(frame()["type"], "ok")
                send({"type": "get", "id": 2, "key": "tls/lamp"})
                self.assertEqual(frame()["text"], "on")
                s.close()
            finally:
                d.stop()
                d.cleanup()


class ProtectedMode(unittest.TestCase):
    """No credential configured: loopback has every right, another address
    none (Redis's protected mode), on HTTP and sessions alike."""

    def test_fresh_install_refuses_other_addresses(self):
        ip = own_address()
        if ip is None:
            self.skipTest("this machine has no non-loopback IPv4 address")
        http, tcp = free_port(), free_port()
        d = Daemon(["--http_listen", f"0.0.0.0:{http}", "--tcp_listen", f"0.0.0.0:{tcp}"])
        d.log = open(d.log_path, "ab")
        d.proc = subprocess.Popen([harness.BINARY, "serve", "--data_dir", d.data_dir, *d.args],
                                  stdout=d.log, stderr=d.log)
        try:
            d.port = http
            wait_for(lambda: "ready" in d.log_text(), what="the start")
            self.assertEqual(curl(d, "PUT", K + "k", "1").status, 201)  # loopback: local
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://{ip}:{http}/api/v1/keys/k"], capture_output=True,
                               timeout=20)
            self.assertEqual(r.stdout, b"401", r)
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://{ip}:{http}/health"], capture_output=True, timeout=20)
            self.assertEqual(r.stdout, b"200", r)
            s = socket.create_connection((ip, tcp), timeout=10)
            f = s.makefile("rb")
            self.assertTrue(json.loads(f.readline())["auth_required"])
            s.sendall(b'{"type":"set","id":1,"key":"k","text":"2"}\n')
            self.assertEqual(json.loads(f.readline())["error"], "unauthorized")
            s.close()
            self.assertEqual(curl(d, "GET", K + "k").body, b"1")
        finally:
            d.stop()
            d.cleanup()


if __name__ == "__main__":
    harness.main()
