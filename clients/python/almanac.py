"""almanac — a Python client of the almanac MQTT state store.

One module, standard library only:

- ``Client``: the HTTP API (urllib), synchronous: get, set, delete, pattern
  get (following cursors), ls, history, publish, info, tokens.
- ``Session``: the session protocol (asyncio streams over the TCP session
  port or the Unix socket, one JSON message a line): the same requests, and
  subscriptions that deliver the snapshot, ``sync``, then live events, and
  that resume with ``since`` after a dropped connection.

    import almanac
    db = almanac.Client("http://127.0.0.1:8480", token=None)
    db.set("home/kitchen/temp", 21.5)
    db.get("home/kitchen/temp")["value"]            # 21.5

    async def watch():
        async with await almanac.Session.connect("127.0.0.1", 8481) as s:
            async for m in await s.subscribe("home/#"):
                print(m["type"], m.get("key"), m.get("rev"))

Errors are ``AlmanacError`` with the server's ``code`` (``not_found``,
``forbidden``, …) and, over HTTP, the ``status``; ``offline`` when a session
request is made while its connection is down.

Invariants of ``Session`` (as in the JavaScript client, almanac.js):

1. A subscription's ``last_rev`` is a rev every change up to which was
   delivered: it moves with ``sync`` and with the events of a replay or the
   live phase, never with a snapshot's events (they come in key order) nor
   with transient publishes (they carry the rev of an earlier change).
2. A request is sent only while the connection is ready (welcome in, token
   presented); otherwise it raises ``offline`` at once, and a drop fails
   every request in flight with that code.
3. A subscription is registered when its ``ok`` is read, before the next
   line is, so the events that follow it always find it.
"""

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["AlmanacError", "Client", "Session", "Subscription", "value_of", "value_fields"]
__version__ = "1.0.0"


class AlmanacError(Exception):
    """An error answered by the server (``code`` is its ``error``) or made
    here (``offline``, ``closed``)."""

    def __init__(self, code, message=None, status=None, sub=None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.status = status
        self.sub = sub


def value_of(envelope):
    """The value an envelope carries: JSON as it is (``value``), a text as a
    str, anything else as bytes; None for a deletion."""
    if "value" in envelope:
        return envelope["value"]
    if "text" in envelope:
        return envelope["text"]
    if "base64" in envelope:
        return base64.b64decode(envelope["base64"])
    return None


def value_fields(value):
    """The fields of a session ``set`` or ``publish`` for ``value``: str as
    ``text``, bytes as ``base64``, anything else as JSON ``value``."""
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    return {"value": value}


def _body(value, content_type):
    """The HTTP body and content type for ``value`` (as value_fields)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), content_type or "application/octet-stream"
    if isinstance(value, str):
        return value.encode(), content_type or "text/plain; charset=utf-8"
    return json.dumps(value).encode(), content_type or "application/json"


def _path(key):
    """A key or pattern as the rest of a URL path (``#`` as %23)."""
    return urllib.parse.quote(key, safe="/")


def _params(items):
    """A query string from (name, value) pairs whose value is not None."""
    out = []
    for name, value in items:
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        out.append((name, str(value)))
    return "?" + urllib.parse.urlencode(out) if out else ""


class Client:
    """The HTTP API of one server, synchronous (urllib).

    ``base_url`` is ``http(s)://host:port``; ``token`` a token or JWT sent as
    ``Authorization: Bearer``; ``timeout`` in seconds for each request.
    """

    def __init__(self, base_url="http://127.0.0.1:8480", token=None, timeout=30.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method, path, body=None, headers=None, expect_json=True):
        """One request; returns (status, headers, parsed JSON or raw bytes).
        An error status raises AlmanacError with the server's code."""
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=body, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                data = r.read()
                status, rheaders = r.status, r.headers
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                err = json.loads(data)
                code, message = err.get("error", "internal"), err.get("message")
            except ValueError:
                code, message = "internal", data.decode(errors="replace")
            raise AlmanacError(code, message, status=e.code) from None
        except urllib.error.URLError as e:
            raise AlmanacError("offline", str(e.reason)) from None
        if expect_json and data:
            return status, rheaders, json.loads(data)
        return status, rheaders, data

    # ---- keys ----

    def get(self, key):
        """The entry of ``key`` as a dict (the envelope: key, rev, ts, type,
        value|text|base64, labels, origin); AlmanacError ``not_found`` when
        there is none. ``value_of(entry)`` gives its value."""
        return self.request("GET", f"/api/v1/keys/{_path(key)}?envelope=1")[2]

    def get_raw(self, key):
        """The stored bytes of ``key`` and their content type."""
        _, headers, data = self.request("GET", f"/api/v1/keys/{_path(key)}", expect_json=False)
        return data, headers.get("Content-Type")

    def set(self, key, value, content_type=None, labels=None, if_rev=None, ttl=None):
        """Sets ``key``: bytes as they are, str as text, anything else as
        JSON (``content_type`` overrides). ``if_rev``: the rev the key must
        have (0: it must not exist), else ``rev_mismatch``. Returns
        {"key", "rev", "ts"}, once committed."""
        body, ctype = _body(value, content_type)
        headers = {"Content-Type": ctype}
        for name, v in (labels or {}).items():
            headers[f"X-Almanac-Label-{name}"] = v
        if if_rev == 0:
            headers["If-None-Match"] = "*"
        elif if_rev is not None:
            headers["If-Match"] = f'"{if_rev}"'
        if ttl is not None:
            headers["X-Almanac-TTL"] = str(ttl)
        return self.request("PUT", f"/api/v1/keys/{_path(key)}", body, headers)[2]

    def delete(self, key_or_pattern, if_rev=None):
        """Deletes a key ({"deleted": 1, "rev"}; ``not_found`` when absent)
        or every key a pattern matches ({"deleted": n})."""
        headers = {"If-Match": f'"{if_rev}"'} if if_rev is not None else {}
        return self.request("DELETE", f"/api/v1/keys/{_path(key_or_pattern)}", headers=headers)[2]

    def pget(self, pattern, limit=None, after=None, contains=None):
        """One page of the entries matching ``pattern``: {"entries", "next"}."""
        q = _params([("limit", limit), ("after", after), ("contains", contains)])
        return self.request("GET", f"/api/v1/keys/{_path(pattern)}{q}")[2]

    def pget_all(self, pattern, limit=None, contains=None):
        """Every entry matching ``pattern``, following the cursors."""
        entries, after = [], None
        while True:
            page = self.pget(pattern, limit=limit, after=after, contains=contains)
            entries += page["entries"]
            after = page.get("next")
            if after is None:
                return entries

    def ls(self, key=None):
        """The children of ``key`` (the root without one): a list of
        {"name", "value", "children", "keys"?}."""
        path = "/api/v1/ls" + (f"/{_path(key)}" if key else "")
        return self.request("GET", path)[2]["children"]

    def publish(self, key, value, content_type=None):
        """A transient publish: subscribers and MQTT see it, nothing is stored."""
        body, ctype = _body(value, content_type)
        self.request("POST", f"/api/v1/publish/{_path(key)}", body, {"Content-Type": ctype})

    def batch(self, ops):
        """Operations applied all-or-nothing in one commit: their results."""
        body = json.dumps({"ops": ops}).encode()
        return self.request("POST", "/api/v1/batch", body, {"Content-Type": "application/json"})[2]["results"]

    # ---- history ----

    def history(self, pattern, start=None, stop=None, limit=None, order=None, after=None,
                every=None, labels=None, exclude=None):
        """One page of history: {"records", "next"}. ``start``/``stop`` are
        µs or RFC 3339; ``labels``/``exclude`` dicts of label filters."""
        items = [("start", start), ("stop", stop), ("limit", limit), ("order", order),
                 ("after", after), ("every", every)]
        items += [(f"label.{k}", v) for k, v in (labels or {}).items()]
        items += [(f"exclude.{k}", v) for k, v in (exclude or {}).items()]
        return self.request("GET", f"/api/v1/history/{_path(pattern)}{_params(items)}")[2]

    def history_all(self, pattern, **options):
        """Every history record matching, following the cursors."""
        options.pop("after", None)
        records, after = [], None
        while True:
            page = self.history(pattern, after=after, **options)
            records += page["records"]
            after = page.get("next")
            if after is None:
                return records

    # ---- the server, tokens ----

    def info(self):
        return self.request("GET", "/api/v1/info")[2]

    def create_token(self, name, read=(), write=(), admin=False, expires=None):
        """A new token (admin only); returns its secret, shown only once."""
        spec = {"name": name, "read": list(read), "write": list(write), "admin": admin}
        if expires is not None:
            spec["expires"] = expires
        body = json.dumps(spec).encode()
        return self.request("POST", "/api/v1/tokens", body, {"Content-Type": "application/json"})[2]["token"]

    def tokens(self):
        """The tokens (admin only), without secrets: [{"name", "read",
        "write", "admin", "created", "last_used", …}]."""
        return self.request("GET", "/api/v1/tokens")[2]["tokens"]

    def delete_token(self, name):
        self.request("DELETE", f"/api/v1/tokens/{urllib.parse.quote(name, safe='')}")


class Session:
    """The session protocol over TCP (``host``, ``port``) or a Unix socket
    (``unix``), with asyncio. Make one with ``await Session.connect(...)``.

    ``token`` is presented with ``auth`` on every connection. After a drop
    it reconnects (``reconnect``; a backoff from ``backoff`` seconds
    doubling to ``max_backoff``) and resumes every subscription with
    ``since`` (see the module's head). ``ssl`` is passed to asyncio for a
    TLS session port.
    """

    def __init__(self, host="127.0.0.1", port=8481, unix=None, token=None, reconnect=True,
                 backoff=1.0, max_backoff=10.0, ssl=None, limit=64 * 1024 * 1024):
        self.host, self.port, self.unix, self.ssl = host, port, unix, ssl
        self.token = token
        self.reconnect = reconnect
        self.backoff = self.initial_backoff = backoff
        self.max_backoff = max_backoff
        self.limit = limit
        self.welcome = None
        self.principal = None
        self._writer = None
        self._next_id = 1
        self._pending = {}  # id → (future, on_reply)
        self._subs = {}  # server sub id → Subscription
        self._resumable = []  # subscriptions renewed after a drop
        self._ready = asyncio.Event()
        self._closed = False
        self._runner = None
        self._first = None
        self.on_error = None  # called with an AlmanacError about the session (revoked token…)

    @classmethod
    async def connect(cls, host="127.0.0.1", port=8481, **options):
        """A ready session: connected, welcomed, the token presented."""
        s = cls(host, port, **options)
        s._first = asyncio.get_running_loop().create_future()
        s._runner = asyncio.create_task(s._run())
        try:
            await s._first
        except BaseException:
            await s.close()
            raise
        return s

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    @property
    def ready(self):
        return self._ready.is_set()

    async def wait_ready(self, timeout=None):
        """Waits until the connection is ready again (after a drop)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self):
        """Ends the session for good; subscriptions end."""
        self._closed = True
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
        self._drop(AlmanacError("closed", "closed by the client"))
        for sub in list(self._resumable):
            sub._end(None)
        self._resumable.clear()

    def abort(self):
        """Drops the connection at once, as a network failure would (the
        session reconnects if it should). For tests and for a client that
        knows its link is dead."""
        if self._writer is not None:
            self._writer.transport.abort()

    # ---- the connection ----

    async def _open(self):
        if self.unix:
            return await asyncio.open_unix_connection(self.unix, limit=self.limit, ssl=self.ssl)
        return await asyncio.open_connection(self.host, self.port, limit=self.limit, ssl=self.ssl)

    async def _run(self):
        """Connects, serves the connection until it drops, and again."""
        while not self._closed:
            try:
                reader, writer = await self._open()
            except OSError as e:
                if self._fail_first(AlmanacError("offline", str(e))):
                    return
                await self._sleep()
                continue
            self._writer = writer
            try:
                refused = await self._serve(reader, writer)
            finally:
                writer.close()
            if refused is not None:  # the token: no point in trying again
                self._closed = True
                self._drop(refused)
                for sub in list(self._resumable):
                    sub._end(refused)
                if not self._fail_first(refused) and self.on_error:
                    self.on_error(refused)
                return
            dropped = AlmanacError("offline", "the connection dropped")
            self._drop(dropped)
            if self._fail_first(dropped):
                return
            if not self.reconnect:
                self._closed = True
                for sub in list(self._resumable):
                    sub._end(dropped)
                return
            await self._sleep()

    def _fail_first(self, err):
        """Before the first ready connection, a failure is connect()'s."""
        if self._first is not None and not self._first.done():
            self._first.set_exception(err)
            self._closed = True
            return True
        return False

    async def _sleep(self):
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, self.max_backoff)

    async def _serve(self, reader, writer):
        """Reads the welcome, starts the session (token, subscriptions) and
        dispatches every line until the connection ends. Returns the
        AlmanacError of a refused token, else None."""
        refused = []

        async def start():
            try:
                await self._start()
            except AlmanacError as e:
                if e.code != "offline":
                    refused.append(e)
                    writer.transport.abort()

        starter = None
        try:
            line = await reader.readline()
            if not line:
                return None
            self.welcome = json.loads(line)
            self.backoff = self.initial_backoff
            starter = asyncio.create_task(start())
            while True:
                line = await reader.readline()
                if not line:
                    break
                self._receive(json.loads(line))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if starter is not None and not starter.done():
                starter.cancel()
        return refused[0] if refused else None

    async def _start(self):
        """The token first, then every resumable subscription; then ready.
        A subscription the principal may no longer have ends with the error."""
        if self.token:
            ok = await self._send("auth", {"token": self.token})
            self.principal = ok.get("principal")
        for sub in list(self._resumable):
            try:
                await sub._renew()
            except AlmanacError as e:
                if e.code == "offline":
                    raise
                sub._end(e)
        self._ready.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    def _drop(self, err):
        self._ready.clear()
        self._writer = None
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for sub in list(self._subs.values()):
            if sub not in self._resumable:
                sub._end(err if err.code != "closed" else None)
        self._subs.clear()
        for sub in self._resumable:
            sub.server_id = None

    def _receive(self, m):
        kind = m.get("type")
        if kind in ("event", "sync"):
            sub = self._subs.get(m.get("sub"))
            if sub is not None:
                sub._deliver(m)
            return
        if kind == "error" and m.get("id") is None:
            err = AlmanacError(m.get("error"), m.get("message"), sub=m.get("sub"))
            if "sub" in m:
                sub = self._subs.pop(m["sub"], None)
                if sub is not None:
                    sub._end(err)
            if self.on_error:
                self.on_error(err)
            return
        entry = self._pending.pop(m.get("id"), None)
        if entry is None:
            return
        fut, on_reply = entry
        if fut.done():
            return
        if kind == "error":
            fut.set_exception(AlmanacError(m.get("error"), m.get("message")))
            return
        if on_reply is not None:
            on_reply(m)  # invariant 3
        fut.set_result(m)

    def _send(self, type_, fields, on_reply=None):
        """Sends a request on the current connection, ready or not; a future
        of its reply."""
        fut = asyncio.get_running_loop().create_future()
        if self._writer is None or self._writer.is_closing():
            fut.set_exception(AlmanacError("offline", "not connected"))
            return fut
        rid = self._next_id
        self._next_id += 1
        self._pending[rid] = (fut, on_reply)
        self._writer.write((json.dumps({"type": type_, "id": rid, **fields}) + "\n").encode())
        return fut

    async def request(self, type_, **fields):
        """Any request of the protocol; returns its reply message."""
        if not self.ready and type_ != "auth":
            raise AlmanacError("offline", "not connected")
        return await self._send(type_, fields)

    # ---- requests ----

    async def auth(self, token):
        """Replaces the principal; presented again after every reconnection."""
        ok = await self.request("auth", token=token)
        self.token = token
        self.principal = ok.get("principal")
        return self.principal

    async def get(self, key):
        """The entry of ``key`` (with ``content_type``); ``not_found``."""
        m = await self.request("get", key=key)
        m.pop("id", None)
        m.pop("type", None)
        return m

    async def set(self, key, value, **options):
        """Sets ``key`` (value_fields); options ``content_type``,
        ``labels``, ``if_rev``, ``ttl``. Returns {"rev", "ts"}."""
        m = await self.request("set", key=key, **value_fields(value), **options)
        return {"rev": m["rev"], "ts": m["ts"]}

    async def publish(self, key, value, **options):
        await self.request("publish", key=key, **value_fields(value), **options)

    async def delete(self, key_or_pattern, **options):
        """Returns the number of keys deleted."""
        return (await self.request("delete", key=key_or_pattern, **options))["deleted"]

    async def pget(self, pattern, **options):
        """One page: {"entries", "next"}; options ``limit``, ``after``,
        ``contains``."""
        m = await self.request("pget", pattern=pattern, **options)
        return {"entries": m["entries"], "next": m.get("next")}

    async def pget_all(self, pattern, **options):
        entries, after = [], options.pop("after", None)
        while True:
            page = await self.pget(pattern, **options, **({"after": after} if after is not None else {}))
            entries += page["entries"]
            after = page["next"]
            if after is None:
                return entries

    async def ls(self, key=None):
        m = await self.request("ls", **({"key": key} if key else {}))
        return m["children"]

    async def history(self, pattern, **options):
        """One page: {"records", "next"}; options as the request's."""
        m = await self.request("history", pattern=pattern, **options)
        return {"records": m["records"], "next": m.get("next")}

    async def history_all(self, pattern, **options):
        records, after = [], options.pop("after", None)
        while True:
            page = await self.history(pattern, **options, **({"after": after} if after is not None else {}))
            records += page["records"]
            after = page["next"]
            if after is None:
                return records

    async def ping(self):
        await self.request("ping")

    async def subscribe(self, pattern, resume=True, **request):
        """A Subscription to ``pattern`` once the server said ``ok``;
        ``request`` are the request's fields (``since``, ``start``,
        ``live_only``, ``unique``, ``labels``, ``exclude_labels``). With
        ``resume`` it is renewed with ``since`` after a dropped connection;
        without, it ends with the connection."""
        sub = Subscription(self, pattern, request)
        await sub._begin(request)
        if resume:
            self._resumable.append(sub)
        return sub


class Subscription:
    """The messages of one subscription, for ``async for``: dicts with
    ``type`` ``event`` (an envelope, ``content_type`` for the type; or
    ``deleted``), ``sync`` (with ``rev``), or ``reset`` (history could not
    serve a resumption: a fresh snapshot and ``sync`` follow). The iteration
    ends when the subscription is closed; an error that ends it is raised."""

    def __init__(self, session, pattern, request):
        self.session = session
        self.pattern = pattern
        self.request = dict(request)
        self.server_id = None
        self.last_rev = request.get("since") or 0
        self._in_snapshot = False
        self._queue = asyncio.Queue()
        self._done = False

    async def _begin(self, fields):
        snapshot = "since" not in fields and "start" not in fields and not fields.get("live_only")

        def registered(ok):
            self.server_id = ok["sub"]
            self._in_snapshot = snapshot
            self.session._subs[ok["sub"]] = self

        await self.session._send("subscribe", {"pattern": self.pattern, **fields}, registered)

    async def _renew(self):
        if self._done:
            return
        rest = {k: v for k, v in self.request.items() if k not in ("since", "start")}
        if self.last_rev > 0:
            filters = {k: v for k, v in rest.items() if k != "live_only"}
            try:
                await self._begin({**filters, "since": self.last_rev})
                return
            except AlmanacError as e:
                if e.code != "history_gone":
                    raise
            self._queue.put_nowait({"type": "reset", "rev": self.last_rev})
            self.last_rev = 0
            await self._begin(rest)
            return
        await self._begin(self.request)

    def _deliver(self, m):
        if m["type"] == "sync":
            self._in_snapshot = False
            self.last_rev = max(self.last_rev, m["rev"])
        elif not self._in_snapshot and not m.get("transient") and m.get("rev", 0) > self.last_rev:
            self.last_rev = m["rev"]  # invariant 1
        self._queue.put_nowait(m)

    def _end(self, err):
        if self._done:
            return
        self._done = True
        if self in self.session._resumable:
            self.session._resumable.remove(self)
        if self.server_id is not None and self.session._subs.get(self.server_id) is self:
            del self.session._subs[self.server_id]
        self._queue.put_nowait(err)  # None: the end

    async def get(self, timeout=None):
        """The next message; raises StopAsyncIteration at the end, or the
        error that ended the subscription."""
        m = await asyncio.wait_for(self._queue.get(), timeout)
        if m is None:
            self._queue.put_nowait(None)  # stays ended
            raise StopAsyncIteration
        if isinstance(m, AlmanacError):
            self._queue.put_nowait(None)
            raise m
        return m

    async def close(self):
        """Unsubscribes and ends the iteration."""
        server_id = self.server_id
        while not self._queue.empty():
            self._queue.get_nowait()
        self._end(None)
        if server_id is not None and self.session.ready:
            try:
                await self.session.request("unsubscribe", sub=server_id)
            except AlmanacError as e:
                if e.code != "offline":
                    raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.get()
