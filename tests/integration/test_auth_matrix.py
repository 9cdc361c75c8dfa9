"""The access-control matrix: every HTTP route and every session request,
made by each kind of principal, with the status or error code asserted and,
for every refusal, the whole store (an admin's export) unchanged.

Principals: anonymous; a token that reads home/#; a token that reads and
writes work/# (another pattern than the one asked for); the admin token; a
JWT that reads home/#; an expired JWT, a JWT with a bad signature and a
revoked token, each claiming admin. Each request comes from a loopback
address of its own (127.0.0.N), so the limit on failed credentials a second
per address never answers in place of the check under test."""
import base64
import hashlib
import hmac
import http.client
import itertools
import json
import os
import socket
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon  # noqa: E402

K = "/api/v1/keys/"
ADMIN_TOKEN = "matrix-admin-token-0815"
SECRET = b"matrix-jwt-secret-of-at-least-32-bytes"
FIXTURE = {"home/temp": "21", "home/lights/1": "on", "work/desk": "oak"}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims, key=SECRET):
    """An HS256 JWT with `claims`."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


# What each principal may do to home/…: a set of kinds of operation, or
# None for one whose credential fails (401 for everything but open routes).
# "anyread" is a pattern read over everything (export), filtered to what is
# readable: allowed to whoever reads something.
PRINCIPALS = {
    "anonymous": set(),
    "reader": {"read", "anyread", "session"},
    "writer_other": {"anyread", "session"},
    "admin": {"read", "write", "admin", "sys", "anyread", "session"},
    "jwt_reader": {"read", "anyread", "session"},
    "expired_jwt": None,
    "bad_signature": None,
    "revoked": None,
}
ANONYMOUS_MAY = {"session"}  # a WebSocket opens; its requests are checked

# (name, method, path, body, kind, status when allowed)
ROUTES = [
    ("get", "GET", K + "home/temp", None, "read", 200),
    ("head", "HEAD", K + "home/temp", None, "read", 200),
    ("pattern get", "GET", K + "home/%23", None, "read", 200),
    ("put", "PUT", K + "home/temp", "22", "write", 200),
    ("put new", "PUT", K + "home/new", "1", "write", 201),
    ("delete", "DELETE", K + "home/temp", None, "write", 200),
    ("pattern delete", "DELETE", K + "home/%23", None, "write", 200),
    ("publish", "POST", "/api/v1/publish/home/temp", "x", "write", 202),
    ("ls", "GET", "/api/v1/ls/home", None, "read", 200),
    ("batch", "POST", "/api/v1/batch",
     json.dumps({"ops": [{"op": "set", "key": "home/b", "value": 1}]}), "write", 200),
    ("events", "GET", "/api/v1/events/home/%23", None, "read", 200),
    ("history", "GET", "/api/v1/history/home/temp", None, "read", 200),
    ("export", "GET", "/api/v1/export", None, "anyread", 200),
    ("import", "POST", "/api/v1/import", json.dumps({"key": "home/imp", "value": 1}) + "\n",
     "write", 200),
    ("info", "GET", "/api/v1/info", None, "sys", 200),
    ("metrics", "GET", "/metrics", None, "sys", 200),
    ("tokens list", "GET", "/api/v1/tokens", None, "admin", 200),
    ("tokens create", "POST", "/api/v1/tokens", json.dumps({"name": "made"}), "admin", 201),
    ("tokens delete", "DELETE", "/api/v1/tokens/nobody", None, "admin", 404),
    ("websocket", "GET", "/api/v1/ws", None, "session", 101),
    ("health", "GET", "/health", None, "open", 200),
    ("ready", "GET", "/ready", None, "open", 200),
    ("dashboard", "GET", "/", None, "open", 200),
]

# (name, request fields, kind); the reply type when allowed is "error"-free.
REQUESTS = [
    ("get", {"type": "get", "key": "home/temp"}, "read"),
    ("pget", {"type": "pget", "pattern": "home/#"}, "read"),
    ("set", {"type": "set", "key": "home/temp", "text": "22"}, "write"),
    ("publish", {"type": "publish", "key": "home/temp", "text": "x"}, "write"),
    ("delete", {"type": "delete", "key": "home/temp"}, "write"),
    ("pattern delete", {"type": "delete", "key": "home/#"}, "write"),
    ("history", {"type": "history", "pattern": "home/temp"}, "read"),
    ("ls", {"type": "ls", "key": "home"}, "read"),
    ("subscribe", {"type": "subscribe", "pattern": "home/#"}, "read"),
    ("will", {"type": "will", "last_will": [{"key": "home/temp", "text": "off"}],
              "grave_goods": ["home/lights/#"]}, "write"),
    ("lock", {"type": "lock", "key": "home/temp"}, "write"),
    ("ping", {"type": "ping"}, "open"),
]

addresses = (f"127.0.0.{n}" for n in itertools.cycle(range(2, 255)))


class Matrix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--admin_token", ADMIN_TOKEN, "--jwt_key", SECRET.decode()]).start()
        now = int(time.time())
        tokens = {"admin": ADMIN_TOKEN,
                  "jwt_reader": jwt({"sub": "jr", "exp": now + 3600,
                                     "almanac": {"read": ["home/#"]}}),
                  "expired_jwt": jwt({"sub": "old", "exp": now - 5,
                                      "almanac": {"admin": True}}),
                  "bad_signature": jwt({"sub": "evil", "almanac": {"admin": True}},
                                       key=b"another-secret-of-at-least-32-bytes!")}
        for name, privs in [("reader", {"read": ["home/#"]}),
                            ("writer_other", {"read": ["work/#"], "write": ["work/#"]}),
                            ("revoked", {"admin": True})]:
            r = cls.http("POST", "/api/v1/tokens", json.dumps(dict(name=name, **privs)),
                         ADMIN_TOKEN, "127.0.0.1")
            assert r[0] == 201, r
            tokens[name] = json.loads(r[2])["token"]
        assert cls.http("DELETE", "/api/v1/tokens/revoked", None, ADMIN_TOKEN,
                        "127.0.0.1")[0] == 200
        cls.tokens = tokens

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        log = cls.d.log_text()
        cls.d.cleanup()
        assert rc == 0, rc
        for secret in [ADMIN_TOKEN, SECRET.decode(), *cls.tokens.values()]:
            assert secret not in log, "a secret is in the log"

    @classmethod
    def http(cls, method, path, body, token, source):
        """(status, headers, body) of one request from `source`."""
        c = http.client.HTTPConnection("127.0.0.1", cls.d.port, timeout=10,
                                       source_address=(source, 0))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if path == "/api/v1/ws":
            headers.update({"Upgrade": "websocket", "Connection": "Upgrade",
                            "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                            "Sec-WebSocket-Protocol": "almanac.v1"})
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        # A stream (SSE) or an upgraded socket: the status line is the answer.
        streaming = r.status == 101 or r.getheader("Content-Type") == "text/event-stream"
        data = b"" if streaming or method == "HEAD" else r.read()
        result = (r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        c.close()
        return result

    def admin(self, method, path, body=None):
        return self.http(method, path, body, ADMIN_TOKEN, "127.0.0.1")

    def reset(self):
        """The fixture keys, and nothing else; the export as it is then."""
        self.admin("DELETE", K + "%23")
        ops = [{"op": "set", "key": k, "value": v} for k, v in FIXTURE.items()]
        status, _, body = self.admin("POST", "/api/v1/batch", json.dumps({"ops": ops}))
        self.assertEqual(status, 200, body)
        return self.state()

    def state(self):
        status, _, body = self.admin("GET", "/api/v1/export")
        self.assertEqual(status, 200, body)
        tokens = json.loads(self.admin("GET", "/api/v1/tokens")[2])["tokens"]
        for t in tokens:
            del t["last_used"]  # a presented token is used, even when refused
        return body, tokens

    def expect(self, who, kind):
        """(allowed, the refusal's status and code)."""
        may = PRINCIPALS[who]
        if kind == "open":
            return True, None
        if may is None:
            return False, (401, "unauthorized")
        if who == "anonymous":
            return kind in ANONYMOUS_MAY, (401, "unauthorized")
        return kind in may, (403, "forbidden")

    def test_every_route(self):
        for who in PRINCIPALS:
            token = self.tokens.get(who)
            for name, method, path, body, kind, ok_status in ROUTES:
                with self.subTest(who=who, route=name):
                    before = self.reset()
                    status, headers, data = self.http(method, path, body, token, next(addresses))
                    allowed, refusal = self.expect(who, kind)
                    if allowed:
                        self.assertEqual(status, ok_status, data)
                        continue
                    self.assertEqual(status, refusal[0], data)
                    if method != "HEAD":
                        self.assertEqual(json.loads(data)["error"], refusal[1], data)
                    if status == 401:
                        self.assertTrue(headers.get("www-authenticate", "").startswith("Bearer"))
                    elif method != "HEAD" and kind in ("read", "write"):
                        # 403 names the key or pattern
                        key = urllib.parse.unquote(path.split("/", 4)[-1])
                        self.assertIn(key if "/" in key else "home", json.loads(data)["message"])
                    self.assertEqual(self.state(), before, "a refused request changed the store")

    def test_filtered_reads_see_only_what_is_readable(self):
        self.reset()
        for who, visible in [("reader", {"home/temp", "home/lights/1"}),
                             ("jwt_reader", {"home/temp", "home/lights/1"}),
                             ("writer_other", {"work/desk"})]:
            status, _, body = self.http("GET", "/api/v1/export", None, self.tokens[who],
                                        next(addresses))
            keys = {json.loads(line)["key"] for line in body.decode().splitlines()}
            self.assertEqual((status, keys), (200, visible), who)

    def session(self, token):
        """A TCP session from an address of its own, with hello (and token)."""
        s = socket.create_connection(("127.0.0.1", self.d.tcp_port), timeout=10,
                                     source_address=(next(addresses), 0))
        f = s.makefile("rb")
        self.assertEqual(json.loads(f.readline())["type"], "welcome")
        hello = {"type": "hello", "id": 0, "protocol": "1.0"}
        if token:
            hello["token"] = token
        s.sendall((json.dumps(hello) + "\n").encode())
        return s, f, json.loads(f.readline())

    def request(self, s, f, msg):
        s.sendall((json.dumps(msg) + "\n").encode())
        while True:
            m = json.loads(f.readline())
            if m.get("id") == msg["id"] and m["type"] != "event":
                return m

    def test_every_session_request(self):
        for who in PRINCIPALS:
            token = self.tokens.get(who)
            s, f, hello = self.session(token)
            with self.subTest(who=who, request="hello"):
                if PRINCIPALS[who] is None:
                    self.assertEqual(hello.get("error"), "unauthorized", hello)
                else:
                    self.assertEqual(hello["type"], "ok", hello)
            if token:
                with self.subTest(who=who, request="auth"):
                    m = self.request(s, f, {"type": "auth", "id": 99, "token": token})
                    self.assertEqual(m.get("error", "ok"),
                                     "unauthorized" if PRINCIPALS[who] is None else "ok", m)
            for n, (name, fields, kind) in enumerate(REQUESTS, 1):
                with self.subTest(who=who, request=name):
                    before = self.reset()
                    m = self.request(s, f, dict(fields, id=n))
                    allowed, refusal = self.expect(who, kind)
                    if allowed:
                        self.assertNotEqual(m["type"], "error", m)
                        if name == "subscribe":
                            m = self.request(s, f, {"type": "unsubscribe", "id": 100,
                                                    "sub": m["sub"]})
                            self.assertEqual(m["type"], "ok", m)
                        if name == "lock":
                            m = self.request(s, f, {"type": "unlock", "id": 101,
                                                    "key": "home/temp"})
                            self.assertEqual(m["type"], "ok", m)
                        if name == "will":  # no will left to apply at the end
                            m = self.request(s, f, {"type": "will", "id": 102, "last_will": [],
                                                    "grave_goods": []})
                            self.assertEqual(m["type"], "ok", m)
                        continue
                    self.assertEqual((m["type"], m["error"]), ("error", refusal[1]), m)
                    self.assertEqual(self.state(), before, "a refused request changed the store")
            f.close()
            s.close()


if __name__ == "__main__":
    import harness
    harness.main()
