"""The console: a twisted.web resource the license server daemon serves on its own endpoint.

Who may look: a browser that opened a one-time link minted by the daemon for an administrator
proven over the socket protocol (``tsls-admin console``: the ``console_link`` operation). The link
sets a session cookie (HttpOnly, SameSite=Strict, Secure under TLS). Two roles: ``admin`` may
change things, ``viewer`` only reads. A change is a POST with a JSON body and the session's CSRF
token in a header; it goes through the same LicenseServer method as the protocol operation.

Reads never touch the writer: they run in a small pool of reader threads on read-only SQLite
connections (tsls.server.readstore), one snapshot per answer. /metrics is served here too, open
to whoever can reach the endpoint (as exporters are), and it holds no device, user or license id.
"""
from __future__ import annotations

import json
import secrets
import urllib.parse
from importlib import resources

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server as web
from zope.interface import implementer

from tsls.console import views
from tsls.console.metrics import Metrics
from tsls.core.events import EventId
from tsls.core.labtime import parse_date
from tsls.errors import Code, TslsError
from tsls.server.app import event_json
from tsls.server.readstore import LICENSE_EXACT, LICENSE_SORTS, ReadStore

LINK_LIFETIME = 600.0           # seconds a one-time link may wait to be opened
SESSION_LIFETIME = 12 * 3600.0  # seconds a browser session lasts
COOKIE = "tsls_console"
CSRF_HEADER = b"x-tsls-csrf"
ROLES = ("admin", "viewer")
READERS = 2                     # reader threads: reads never queue behind a slow one for long
PAGE_MAX = 500
MAX_BODY = 64 * 1024            # bytes a request's body may hold
STREAM_BEHIND = 1024 * 1024     # bytes of events a browser that stopped reading may fall behind

STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}

# What an error code means to a person at the console; the server's own message follows it.
HUMAN = {
    Code.REVOCATION_LIMIT: "The revocation limit is reached for this version.",
    Code.NOT_REVOCABLE: "This license cannot be revoked.",
    Code.UNKNOWN_LICENSE: "There is no such license (was it removed meanwhile?).",
    Code.UNKNOWN_TERMINAL_SERVER: "That terminal server is not registered.",
    Code.NOT_PERMITTED: "Your session may only look, not change anything: ask for an administrator's link.",
    Code.BAD_CREDENTIALS: "You are not logged in, or your session ended: run tsls-admin console for a new link.",
    Code.BAD_REQUEST: "The console sent a request the server did not understand.",
    Code.TOO_LARGE: "The request was too large.",
    Code.STORAGE_ERROR: "The license server could not save the change; nothing was changed.",
    Code.SHUTTING_DOWN: "The license server is shutting down.",
    Code.INTERNAL_ERROR: "The license server failed on this request; nothing was changed.",
}
STATUS = {Code.TOO_LARGE: 413, Code.BAD_CREDENTIALS: 401, Code.NOT_PERMITTED: 403, Code.BAD_REQUEST: 400, Code.NOT_FOUND: 404,
          Code.INTERNAL_ERROR: 500, Code.STORAGE_ERROR: 503, Code.SHUTTING_DOWN: 503}


@attrs.frozen
class Session:
    role: str
    csrf: str = attrs.field(repr=False)
    expires: float


@attrs.frozen
class Raw:
    """A non-JSON answer (CSV)."""

    content_type: str
    body: bytes
    filename: str | None = None


class Console:
    """The console's state: links, sessions, readers, live followers. One per daemon."""

    log = Logger()

    def __init__(self, reactor, license_server, reads, operations=()) -> None:
        """``reads``: a SQLite database's path, or a read store (tsls.server.readstore.PgReadStore)."""
        self.reactor = reactor
        self.server = license_server
        self.clock = license_server.writer.clock           # lab time when the daemon runs a lab clock
        self.reads = ReadStore(reads) if isinstance(reads, str) else reads
        self.metrics = Metrics(self.reads, self.clock, operations)
        self.base_url: str | None = None
        self._links: dict[str, tuple[str, float]] = {}
        self._sessions: dict[str, Session] = {}
        self._streams: set = set()
        self._scrapers: list[defer.Deferred] = []
        self._pool = ThreadPool(1, READERS, name="tsls-console")
        license_server.console = self

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> defer.Deferred:
        for request in list(self._streams):
            request.unregisterProducer()
            request.finish()
        self._streams.clear()
        self._sessions.clear()
        done = threads.deferToThreadPool(self.reactor, self._pool, lambda: None)

        def close(_):
            self._pool.stop()
            self.reads.close()
        return done.addBoth(close)

    def listening(self, port, secure: bool) -> None:
        host = port.getHost()
        address = host.host if host.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        self.base_url = f"{'https' if secure else 'http'}://{address}:{host.port}"

    # --- links and sessions ------------------------------------------------------------------------

    def mint_link(self, role: str) -> dict:
        """For an administrator proven over the protocol: a link a browser opens once."""
        if role not in ROLES:
            raise TslsError(Code.BAD_REQUEST, f"unknown console role {role!r}; expected admin or viewer")
        if self.base_url is None:
            raise TslsError(Code.CONSOLE_DISABLED, "the console is not listening yet")
        now = self.reactor.seconds()
        self._links = {t: v for t, v in self._links.items() if v[1] > now}
        token = secrets.token_urlsafe(32)
        self._links[token] = (role, now + LINK_LIFETIME)
        return {"url": f"{self.base_url}/login?token={token}", "role": role, "expires_in": int(LINK_LIFETIME)}

    def _open_link(self, token: str) -> tuple[str, Session] | None:
        role, expires = self._links.pop(token, (None, 0.0))
        now = self.reactor.seconds()
        if role is None or expires <= now:
            return None
        self._sessions = {s: v for s, v in self._sessions.items() if v.expires > now}
        sid = secrets.token_urlsafe(32)
        session = self._sessions[sid] = Session(role, secrets.token_urlsafe(24), now + SESSION_LIFETIME)
        return sid, session

    def session_of(self, request) -> Session | None:
        sid = request.getCookie(COOKIE.encode())
        session = self._sessions.get(sid.decode("ascii", "replace")) if sid else None
        if session is None or session.expires <= self.reactor.seconds():
            return None
        return session

    def logout(self, request) -> None:
        sid = request.getCookie(COOKIE.encode())
        if sid:
            self._sessions.pop(sid.decode("ascii", "replace"), None)

    # --- reads ---------------------------------------------------------------------------------------

    def read(self, view, *args) -> defer.Deferred:
        """``view(snapshot, *args)`` in a reader thread, on one snapshot of the ledger."""
        def run():
            with self.reads.snapshot() as snap:
                return view(snap, *args)
        return threads.deferToThreadPool(self.reactor, self._pool, run)

    def scrape(self) -> defer.Deferred:
        """/metrics. Scrapes that arrive while one is being made share it: on a large ledger a scrape
        takes a while (docs/performance.md), and scrapers must not pile up in the reader threads."""
        waiter = defer.Deferred()
        self._scrapers.append(waiter)
        if len(self._scrapers) == 1:
            def fan_out(result):
                waiters, self._scrapers = self._scrapers, []
                for w in waiters:
                    w.errback(result) if isinstance(result, Failure) else w.callback(result)
            threads.deferToThreadPool(self.reactor, self._pool, self.metrics.scrape).addBoth(fan_out)
        return waiter

    def now(self) -> int:
        return int(self.clock.seconds())

    def follow(self, request) -> None:
        """Server-sent events: each event the writer commits, as it is published. A browser that stops
        reading may fall STREAM_BEHIND bytes behind; then its stream is closed (the page reconnects
        and fetches what it missed from /api/events), so it cannot make the daemon buffer without bound."""
        stream = _Stream()
        request.registerProducer(stream, True)

        def send(event):
            data = f"id: {event['id']}\nevent: ledger\ndata: {json.dumps(event)}\n\n".encode()
            if stream.paused:
                stream.behind += len(data)
                if stream.behind > STREAM_BEHIND:
                    self.server.followers.discard(send)
                    request.unregisterProducer()
                    request.finish()
                    return
            request.write(data)

        self._streams.add(request)
        self.server.followers.add(send)

        def gone(_):
            self._streams.discard(request)
            self.server.followers.discard(send)
        request.notifyFinish().addBoth(gone)

    # --- the Clearinghouse, counted ---------------------------------------------------------------

    def counted(self, clearinghouse):
        return _CountedClearinghouse(clearinghouse, self.metrics)


@implementer(IPushProducer)
class _Stream:
    """Told by the transport when the browser's unread events fill its buffer."""

    def __init__(self) -> None:
        self.paused = False
        self.behind = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.behind = 0

    def stopProducing(self) -> None:
        self.paused = True


class _CountedClearinghouse:
    """The Clearinghouse client with each call's outcome counted in /metrics."""

    def __init__(self, client, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    def __getattr__(self, name):
        method = getattr(self._client, name)
        if not callable(method) or name.startswith("_"):
            return method

        def call(*args, **kwargs):
            d = defer.maybeDeferred(method, *args, **kwargs)

            def count(result):
                self._metrics.clearinghouse_call(name, result)
                return result
            return d.addBoth(count)
        return call


class ConsoleResource(resource.Resource):
    isLeaf = True

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, request):
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
                          b"base-uri 'none'; form-action 'self'")
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        try:
            if getattr(request, "too_large", False):
                raise TslsError(Code.TOO_LARGE, f"a request's body may be at most {MAX_BODY // 1024} KiB")
            if path.startswith("/static/") and method == "GET":
                return self._static(request, path[len("/static/"):])
            if path == "/login" and method == "GET":
                return self._login(request)
            if path == "/metrics" and method == "GET":
                return self._deferred(request, self.console.scrape().addCallback(
                    lambda text: Raw("text/plain; version=0.0.4; charset=utf-8", text)))
            session = self.console.session_of(request)
            if path == "/" and method == "GET":
                return self._static(request, "index.html") if session else self._page(
                    request, 401, "Log in to the tsls console",
                    "Run <code>tsls-admin console</code> and open the link it prints.")
            handler = ROUTES.get((method, path))
            if handler is None:
                raise TslsError(Code.NOT_FOUND, f"no {method} {path} here")
            if session is None:
                raise TslsError(Code.BAD_CREDENTIALS, "log in first: tsls-admin console prints a link")
            if method == "POST":
                body = self._checked_change(request, session)
                return self._deferred(request, defer.maybeDeferred(handler, self, request, session, body))
            return self._deferred(request, defer.maybeDeferred(handler, self, request, session))
        except TslsError as e:
            self._error(request, e)
            return web.NOT_DONE_YET

    def _checked_change(self, request, session: Session) -> dict:
        """A change: an administrator's session, its CSRF token in a header, a JSON body, no other origin."""
        token = request.getHeader(CSRF_HEADER) or b""
        if not secrets.compare_digest(token, session.csrf.encode()):
            raise TslsError(Code.NOT_PERMITTED, "a change needs the session's CSRF token")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != host:
            raise TslsError(Code.NOT_PERMITTED, "a change must come from the console's own pages")
        if session.role != "admin":
            raise TslsError(Code.NOT_PERMITTED, "a viewer's session cannot change anything")
        if not (request.getHeader(b"content-type") or b"").startswith(b"application/json"):
            raise TslsError(Code.BAD_REQUEST, "a change is sent as JSON")
        try:
            body = json.loads(request.content.read(MAX_BODY) or b"{}")
        except ValueError:
            raise TslsError(Code.BAD_REQUEST, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise TslsError(Code.BAD_REQUEST, "the request body is a JSON object")
        return body

    # --- answers -------------------------------------------------------------------------------------

    def _deferred(self, request, d: defer.Deferred):
        finished = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def ok(value):
            if finished or value is web.NOT_DONE_YET:
                return
            if isinstance(value, Raw):
                request.setHeader(b"content-type", value.content_type.encode())
                if value.filename:
                    request.setHeader(b"content-disposition", f'attachment; filename="{value.filename}"'.encode())
                request.setHeader(b"cache-control", b"no-store")
                request.write(value.body)
            else:
                self._json(request, 200, value)
            request.finish()

        def failed(f: Failure):
            if finished:
                return
            if not f.check(TslsError):
                self.console.log.failure("console request {path} failed", f, path=request.path.decode("utf-8", "replace"))
                error = TslsError(Code.INTERNAL_ERROR, "the console failed on this request")
            else:
                error = f.value
            self._error(request, error)

        d.addCallbacks(ok, failed)
        return web.NOT_DONE_YET

    def _json(self, request, status: int, body) -> None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body, separators=(",", ":")).encode())

    def _error(self, request, error: TslsError) -> None:
        body = error.to_json()
        body["human"] = HUMAN.get(error.code, "The license server refused this.")
        self._json(request, STATUS.get(error.code, 409), {"error": body})
        request.finish()

    def _static(self, request, name: str):
        if name not in STATIC:
            raise TslsError(Code.NOT_FOUND, "no such file")
        request.setHeader(b"content-type", STATIC[name].encode())
        request.setHeader(b"cache-control", b"no-store" if name == "index.html" else b"max-age=60")
        return resources.files("tsls.console").joinpath("static", name).read_bytes()

    def _page(self, request, status: int, title: str, text: str, refresh: str | None = None) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        meta = f'<meta http-equiv="refresh" content="0;url={refresh}">' if refresh else ""
        return (f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{title}</title>'
                f'<link rel="stylesheet" href="/static/console.css"></head><body class="bare"><main>'
                f'<h1>{title}</h1><p>{text}</p></main></body></html>').encode()

    def _login(self, request) -> bytes:
        token = (request.args.get(b"token") or [b""])[0].decode("ascii", "replace")
        opened = self.console._open_link(token)
        if opened is None:
            return self._page(request, 403, "This link cannot log you in",
                              "A console link works once, for ten minutes. Run <code>tsls-admin console</code> "
                              "for a new one.")
        sid, session = opened
        secure = "; Secure" if request.isSecure() else ""
        request.setHeader(b"set-cookie", f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict{secure}; "
                                         f"Max-Age={int(SESSION_LIFETIME)}".encode())
        # A page of our own that moves on, rather than a redirect: the move is then a same-site
        # navigation, so the SameSite=Strict cookie goes with it whatever opened the link.
        return self._page(request, 200, "Logged in", 'Opening <a href="/">the console</a>…', refresh="/")


# --- the API -------------------------------------------------------------------------------------

def _arg(request, name: str, default: str | None = None) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def _int_arg(request, name: str, default: int, lo: int, hi: int) -> int:
    text = _arg(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise TslsError(Code.BAD_REQUEST, f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise TslsError(Code.BAD_REQUEST, f"{name} must be from {lo} to {hi}")
    return value


def api_session(res, request, session):
    c = res.console
    return {"role": session.role, "csrf": session.csrf, "product_id": c.server.identity.product_id}


def api_logout(res, request, session, body):
    res.console.logout(request)
    request.setHeader(b"set-cookie", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0".encode())
    return {"logged_out": True}


def api_dashboard(res, request, session):
    c = res.console
    return c.read(views.dashboard, c.now(), c.server.identity.product_id, c.server.records.lab_clock is not None)


def api_licenses(res, request, session):
    exact = {name: _arg(request, name) for name in LICENSE_EXACT if _arg(request, name)}
    sort = _arg(request, "sort", "license_id")
    if sort not in LICENSE_SORTS:
        raise TslsError(Code.BAD_REQUEST, f"cannot sort by {sort!r}")
    search = _arg(request, "q")
    if search is not None and len(search) > 128:
        raise TslsError(Code.BAD_REQUEST, "a search is at most 128 characters")
    return res.console.read(views.licenses_page, exact, search or None, sort, _arg(request, "dir") == "desc",
                            _int_arg(request, "offset", 0, 0, 10**9), _int_arg(request, "limit", 50, 1, PAGE_MAX))


def api_revocations(res, request, session):
    return res.console.read(views.revocations, res.console.now())


def api_revoke(res, request, session, body):
    license_id = body.get("license_id")
    if type(license_id) is not int:
        raise TslsError(Code.BAD_REQUEST, "license_id must be a whole number")
    return res.console.server.revoke(license_id)


def api_events(res, request, session):
    c = res.console

    def shaped(snap):
        return [event_json(row_id, e) for row_id, e in snap.events(_int_arg(request, "after", 0, 0, 10**12),
                                             _int_arg(request, "limit", 200, 1, 1000))
                if isinstance(e.event_id, EventId)]
    return c.read(shaped)


def api_stream(res, request, session):
    request.setHeader(b"content-type", b"text/event-stream")
    request.setHeader(b"cache-control", b"no-store")
    request.write(b": following the ledger's committed events\n\n")
    res.console.follow(request)
    return web.NOT_DONE_YET


def _period(request, now: int) -> tuple[int, int]:
    try:
        start = parse_date(_arg(request, "start")) if _arg(request, "start") else 0
        end = parse_date(_arg(request, "end")) if _arg(request, "end") else now + 1
    except TslsError:
        raise
    except ValueError:
        raise TslsError(Code.BAD_REQUEST, "dates are ISO dates, e.g. 2026-01-31") from None
    if end < start:
        raise TslsError(Code.BAD_REQUEST, "the report's end is before its start")
    return start, end


def api_usage(res, request, session):
    return res.console.read(views.usage, *_period(request, res.console.now()))


def api_usage_csv(res, request, session):
    d = res.console.read(views.usage, *_period(request, res.console.now()))
    return d.addCallback(lambda r: Raw("text/csv; charset=utf-8", views.to_csv(r["users"], ["user", "logons", "last_seen"]),
                                       "per-user-usage.csv"))


CAL_COLUMNS = ["license_id", "status", "hwid", "machine", "user", "terminal_server", "product_version", "key_pack_id",
               "issued_at", "expires_at", "renewals"]


def api_cals(res, request, session):
    return res.console.read(views.issued_cals, _int_arg(request, "limit", 1000, 1, 100_000))


def api_cals_csv(res, request, session):
    return res.console.read(views.issued_cals).addCallback(
        lambda rows: Raw("text/csv; charset=utf-8", views.to_csv(rows, CAL_COLUMNS), "issued-cals.csv"))


def api_hosts(res, request, session):
    return res.console.read(views.terminal_servers)


def api_group(res, request, session, body):
    name, member = body.get("name"), body.get("member")
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not isinstance(member, bool):
        raise TslsError(Code.BAD_REQUEST, "name (a terminal server) and member (true or false) are needed")
    return res.console.server.set_group_membership(name, member)


def api_policy(res, request, session, body):
    enabled = body.get("security_group")
    if not isinstance(enabled, bool):
        raise TslsError(Code.BAD_REQUEST, "security_group must be true or false")
    return res.console.server.set_security_group_policy(enabled)


def api_history(res, request, session):
    return res.console.read(views.history, res.console.now())


ROUTES = {
    ("GET", "/api/session"): api_session,
    ("POST", "/api/logout"): api_logout,
    ("GET", "/api/dashboard"): api_dashboard,
    ("GET", "/api/licenses"): api_licenses,
    ("GET", "/api/revocations"): api_revocations,
    ("POST", "/api/revoke"): api_revoke,
    ("GET", "/api/events"): api_events,
    ("GET", "/api/events/stream"): api_stream,
    ("GET", "/api/reports/usage"): api_usage,
    ("GET", "/api/reports/usage.csv"): api_usage_csv,
    ("GET", "/api/reports/cals"): api_cals,
    ("GET", "/api/reports/cals.csv"): api_cals_csv,
    ("GET", "/api/hosts"): api_hosts,
    ("POST", "/api/hosts/group"): api_group,
    ("POST", "/api/policy"): api_policy,
    ("GET", "/api/history"): api_history,
}


class _Request(web.Request):
    """A request whose body is kept up to MAX_BODY bytes only; a longer one is answered TOO_LARGE, so
    no client can make the console store a body of any size (a change's JSON is a few dozen bytes)."""

    received = 0
    too_large = False

    def handleContentChunk(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_BODY:
            self.too_large = True
            return
        super().handleContentChunk(data)


def site(console: Console) -> web.Site:
    s = web.Site(ConsoleResource(console), requestFactory=_Request)
    s.displayTracebacks = False
    s.noisy = False
    return s
