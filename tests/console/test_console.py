"""The console over HTTP (no browser): who may look and change, what it shows against what the
protocol answers, and /metrics against the ledger. The daemon is real (loopback, real SQLite)."""
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from tests.console.harness import ConsoleDaemon, Http
from tests.harness import activate_and_install, logon, running, with_timeout


@pytest.fixture
def served(tmp_path):
    yield from running(ConsoleDaemon(tmp_path))


@pytest_twisted.inlineCallbacks
def test_nothing_is_shown_or_changed_without_a_session(served):
    http = Http(served.url)
    response, body = yield http.get("/")
    assert response.code == 401 and b"tsls-admin console" in body
    for path in ("/api/dashboard", "/api/licenses", "/api/events", "/api/hosts", "/api/history",
                 "/api/reports/cals.csv", "/api/events/stream"):
        response, body = yield http.get(path)
        assert response.code == 401, path
        assert b"BAD_CREDENTIALS" in body
    code, answer = yield http.post("/api/revoke", {"license_id": 1})
    assert code == 401 and answer["error"]["code"] == "BAD_CREDENTIALS"


@pytest_twisted.inlineCallbacks
def test_a_link_logs_in_once_with_a_strict_http_only_cookie(served):
    url = yield served.link()
    http = Http(served.url)
    response, _ = yield http.get(url)
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = yield http.get_json("/api/session")
    assert session["role"] == "admin" and session["csrf"]
    again = Http(served.url)
    response, body = yield again.get(url)
    assert response.code == 403 and not again.cookies
    response, _ = yield Http(served.url).get(served.url + "/login?token=made-up")
    assert response.code == 403


@pytest_twisted.inlineCallbacks
def test_a_change_needs_the_csrf_token_and_an_administrator(served):
    admin = yield served.admin()
    yield activate_and_install(admin)
    ts = yield served.terminal_server()
    for _ in range(2):
        answer = yield logon(ts, "pc1")
    license_id = answer["license"]["license_id"]
    http = Http(served.url)
    yield http.login((yield served.link()))
    code, answer = yield http.post("/api/revoke", {"license_id": license_id}, csrf="wrong")
    assert code == 403 and answer["error"]["code"] == "NOT_PERMITTED"
    code, answer = yield http.post("/api/revoke", {"license_id": license_id},
                                   headers={"origin": ["http://evil.example"]})
    assert code == 403
    viewer = Http(served.url)
    session = yield viewer.login((yield served.link("viewer")))
    assert session["role"] == "viewer"
    code, answer = yield viewer.post("/api/revoke", {"license_id": license_id})
    assert code == 403 and "viewer" in answer["error"]["message"]
    listed = yield admin.request("list_licenses", hwid="hw-pc1", kind="permanent")
    assert listed[0]["status"] == "active"          # nothing refused above changed anything
    code, answer = yield http.post("/api/revoke", {"license_id": license_id})
    assert code == 200, answer
    listed = yield admin.request("list_licenses", hwid="hw-pc1", kind="permanent")
    assert listed[0]["status"] == "revoked"


@pytest_twisted.inlineCallbacks
def test_a_refusal_comes_back_with_its_code_and_a_message_for_a_person(served):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=5)         # 20% of 5: one revocation at a time
    ts = yield served.terminal_server()
    ids = []
    for device in ("pc1", "pc2"):
        yield logon(ts, device)
        answer = yield logon(ts, device)
        ids.append(answer["license"]["license_id"])
    http = Http(served.url)
    yield http.login((yield served.link()))
    rooms = yield http.get_json("/api/revocations")
    assert [(r["product_version"], r["left"]) for r in rooms] == [("2003", 1)]
    code, _ = yield http.post("/api/revoke", {"license_id": ids[0]})
    assert code == 200
    rooms = yield http.get_json("/api/revocations")
    assert rooms[0]["left"] == 0 and rooms[0]["next_allowed_at"]
    code, answer = yield http.post("/api/revoke", {"license_id": ids[1]})
    assert code == 409
    assert answer["error"]["code"] == "REVOCATION_LIMIT"
    assert answer["error"]["human"].startswith("The revocation limit is reached")
    assert rooms[0]["next_allowed_at"] in answer["error"]["message"]


@pytest_twisted.inlineCallbacks
def test_the_licenses_page_pages_sorts_filters_and_searches(served):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=3)
    ts = yield served.terminal_server("TS01")
    other = yield served.terminal_server("TS02")
    for i in range(7):
        yield logon(ts if i % 2 else other, f"pc{i}")
    http = Http(served.url)
    yield http.login((yield served.link("viewer")))
    everything = yield admin.request("list_licenses")
    page = yield http.get_json("/api/licenses?limit=3&sort=license_id&dir=asc")
    assert page["total"] == len(everything) == 7
    assert [r["license_id"] for r in page["rows"]] == [r["license_id"] for r in everything[:3]]
    page2 = yield http.get_json("/api/licenses?limit=3&offset=3&sort=license_id&dir=asc")
    assert [r["license_id"] for r in page2["rows"]] == [r["license_id"] for r in everything[3:6]]
    by_machine = yield http.get_json("/api/licenses?sort=machine&dir=desc")
    assert [r["machine"] for r in by_machine["rows"]] == sorted((r["machine"] for r in everything), reverse=True)
    ts01 = yield http.get_json("/api/licenses?terminal_server=TS01")
    theirs = yield admin.request("list_licenses", terminal_server="TS01")
    assert sorted(r["license_id"] for r in ts01["rows"]) == sorted(r["license_id"] for r in theirs)
    found = yield http.get_json("/api/licenses?q=pc5")
    assert [r["machine"] for r in found["rows"]] == ["pc5"]
    none = yield http.get_json("/api/licenses?q=%25")          # a literal %, not a wildcard
    assert none["total"] == 0
    yield http.get_json("/api/licenses?sort=secret", expect=400)


@pytest_twisted.inlineCallbacks
def test_the_dashboard_agrees_with_the_protocols_status(served):
    admin = yield served.admin()
    http = Http(served.url)
    yield http.login((yield served.link("viewer")))
    board = yield http.get_json("/api/dashboard")
    assert board["activation"]["status"] == "not_activated"
    assert any("not activated" in a["message"] for a in board["alerts"])
    yield activate_and_install(admin, quantity=4)
    ts = yield served.terminal_server()
    for i in range(6):
        yield logon(ts, f"pc{i}")
        yield logon(ts, f"pc{i}")
    status = yield admin.request("status")
    board = yield http.get_json("/api/dashboard")
    assert board["activation"]["license_server_id"] == status["activation"]["license_server_id"]
    assert board["licenses"] == status["licenses"]
    assert [(c["total"], c["issued"], c["available"]) for c in board["cals"]] == \
        [(p["total"], p["issued"], p["available"]) for p in status["key_packs"]] == [(4, 4, 0)]
    assert any("none left" in a["message"] for a in board["alerts"])
    assert not any("not activated" in a["message"] or "certificate" in a["message"] for a in board["alerts"])


@pytest_twisted.inlineCallbacks
def test_session_hosts_and_the_policy_switch_go_through_the_same_operations(served):
    admin = yield served.admin()
    yield admin.request("register_terminal_server", name="TSREG")
    http = Http(served.url)
    yield http.login((yield served.link()))
    code, answer = yield http.post("/api/hosts/group", {"name": "TSREG", "member": True})
    assert code == 200
    code, answer = yield http.post("/api/hosts/group", {"name": "NOPE", "member": True})
    assert code == 409 and answer["error"]["code"] == "UNKNOWN_TERMINAL_SERVER"
    code, _ = yield http.post("/api/policy", {"security_group": True})
    assert code == 200
    listed = yield admin.request("list_terminal_servers")
    hosts = yield http.get_json("/api/hosts")
    assert listed["security_group_policy"] is hosts["security_group_policy"] is True
    assert [(t["name"], t["group"]) for t in listed["terminal_servers"]] == \
        [(t["name"], t["group"]) for t in hosts["terminal_servers"] if t["registered"]] == [("TSREG", True)]


@pytest_twisted.inlineCallbacks
def test_reports_and_history_match_the_ledger(served):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=3)
    yield admin.request("install_key_pack", purchase={"program": "retail", "retail_code": "U" * 25,
                                                      "cal_type": "per_user", "quantity": 2})
    ts = yield served.terminal_server()
    tsu = yield served.terminal_server("TSU", mode="per_user")
    for i in range(5):
        yield logon(ts, f"pc{i}")
        yield logon(ts, f"pc{i}")
        yield logon(tsu, f"u{i % 3}")
    http = Http(served.url)
    yield http.login((yield served.link("viewer")))
    usage = yield http.get_json("/api/reports/usage")
    report = yield admin.request("usage_report")
    assert usage["users"] == report["users"] and usage["users_seen"] == 3
    response, body = yield http.get("/api/reports/usage.csv")
    assert body.decode().splitlines()[0] == "user,logons,last_seen" and len(body.decode().splitlines()) == 4
    response, body = yield http.get("/api/reports/cals.csv")
    lines = body.decode().splitlines()
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/csv") and len(lines) == 1 + 3
    history = yield http.get_json("/api/history")
    points = {v["product_version"]: v["points"][-1] for v in history["versions"]}
    assert points["2003"] == {"day": history["days"][-1], "installed": 3, "issued": 3}


@pytest_twisted.inlineCallbacks
def test_metrics_agree_with_the_ledger_after_a_load(served):
    admin = yield served.admin()
    yield activate_and_install(admin, quantity=10)
    ts = yield served.terminal_server()
    logons = []
    for i in range(25):
        logons.append(logon(ts, f"pc{i}"))
    yield defer.gatherResults(logons)
    second = yield defer.gatherResults([logon(ts, f"pc{i}") for i in range(25)])
    revoked = next(a["license"]["license_id"] for a in second if a["license"]["kind"] == "permanent")
    yield admin.request("revoke", license_id=revoked)
    with pytest.raises(Exception):
        yield admin.request("revoke", license_id=10**6)
    http = Http(served.url)
    response, body = yield http.get("/metrics")           # open to whoever reaches the endpoint, like exporters
    assert response.code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    status = yield admin.request("status")
    packs = yield admin.request("list_key_packs")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("tsls_cals_installed", version="2003", cal_type="per_device") == sum(p["total"] for p in packs)
    assert value("tsls_cals_issued", version="2003", cal_type="per_device") == sum(p["issued"] for p in packs)
    assert value("tsls_cals_available", version="2003", cal_type="per_device") == sum(p["available"] for p in packs)
    for key, count in status["licenses"].items():
        kind, state = key.split(":")
        assert value("tsls_licenses", kind=kind, status=state, version="2003") == count
    assert value("tsls_activation_state", state="activated") == 1
    assert value("tsls_revocations_left", version="2003") == 1          # 20% of 10, one used
    logon_answers = [a for a in second]
    assert sum(v for (name, labels), v in samples.items()
               if name == "tsls_requests_total" and ("operation", "logon") in labels) == 50
    assert value("tsls_requests_total", operation="logon", outcome="upgraded", reason="") == \
        sum(1 for a in logon_answers if a["outcome"] == "upgraded") == 10
    assert value("tsls_requests_total", operation="revoke", outcome="refused", reason="UNKNOWN_LICENSE") == 1
    assert value("tsls_grant_seconds_count") == 50
    assert value("tsls_clearinghouse_calls_total", operation="activate", outcome="ok") == 1
    assert value("tsls_clearinghouse_calls_total", operation="install", outcome="ok") == 1
    # No device, user, machine or license id in any label.
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert not any("pc" in v or "hw-" in v or v == str(revoked) for v in labels)


@pytest_twisted.inlineCallbacks
def test_the_console_link_needs_a_console(daemon):
    admin = yield daemon.admin()
    with pytest.raises(Exception) as caught:
        yield admin.request("console_link")
    assert caught.value.code.value == "CONSOLE_DISABLED"


@pytest_twisted.inlineCallbacks
def test_committed_events_stream_to_a_session_as_server_sent_events(served):
    import treq

    http = Http(served.url)
    yield http.login((yield served.link("viewer")))
    ts = yield served.terminal_server("TSSSE")
    response = yield with_timeout(treq.get(served.url + "/api/events/stream", cookies=http.cookies,
                                           unbuffered=True, persistent=False))
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    received, arrived = [], defer.Deferred()

    def chunk(data):
        received.append(data)
        if b"hw-streamed" in b"".join(received) and not arrived.called:
            arrived.callback(None)
    ended = treq.collect(response, chunk)
    ended.addErrback(lambda f: None)
    answer = yield logon(ts, "streamed")
    yield with_timeout(arrived)
    text = b"".join(received).decode()
    assert "event: ledger" in text and "TEMPORARY_ISSUED" in text
    assert f'"license_id": {answer["license"]["license_id"]}' in text


@pytest_twisted.inlineCallbacks
def test_tsls_admin_console_prints_the_link(served, capsys):
    from clients import admin
    from twisted.internet import reactor

    args = admin.parser().parse_args(["--server", served.endpoint, "--credential", served.service.credential_path,
                                      "--json", "console", "--viewer"])
    capsys.readouterr()
    yield with_timeout(defer.ensureDeferred(admin.command(reactor, args)))
    import json
    link = json.loads(capsys.readouterr().out)
    assert link["role"] == "viewer" and link["url"].startswith(served.url + "/login?token=")
    session = yield Http(served.url).login(link["url"])
    assert session["role"] == "viewer"


@pytest_twisted.inlineCallbacks
def test_the_console_over_tls_from_its_endpoint_string_sets_a_secure_cookie(tmp_path):
    import treq
    from twisted.internet import reactor, ssl
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    from tsls.clearinghouse.testing import FakeClearinghouse
    from tsls.certs import make_certs
    from tsls.server.service import LicenseServerService

    paths = make_certs(str(tmp_path / "tls"))
    service = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "ls.sqlite"),
                                   FakeClearinghouse(),
                                   console_listen=f"ssl:0:interface=127.0.0.1:privateKey={paths['server']}")
    service.startService()
    try:
        port = (yield service.listener.listening).getHost().port
        yield service.console_listener.listening
        from clients.connection import connect
        admin = yield with_timeout(connect(reactor, f"tcp:127.0.0.1:{port}"))
        yield admin.hello_admin(service.server.identity.admin_secret)
        link = (yield admin.request("console_link"))["url"]
        yield admin.close()
        assert link.startswith("https://127.0.0.1:")
        with open(paths["ca"]) as f:
            ca = ssl.Certificate.loadPEM(f.read())
        client = treq.client.HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=ca)))
        response = yield with_timeout(client.get(link))
        yield treq.content(response)
        cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
        assert response.code == 200 and "; Secure" in cookie and "HttpOnly" in cookie
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_scrapes_that_arrive_together_share_one_read(served, monkeypatch):
    console = served.service.console
    made = []
    scrape = console.metrics.scrape
    monkeypatch.setattr(console.metrics, "scrape", lambda: (made.append(1), scrape())[1])
    answers = yield defer.gatherResults([console.scrape() for _ in range(5)])
    assert len(made) == 1 and len(set(answers)) == 1 and b"tsls_activation_state" in answers[0]
    yield console.scrape()
    assert len(made) == 2


@pytest_twisted.inlineCallbacks
def test_a_hostile_operation_name_is_answered_as_without_metrics_and_counted_as_other(served):
    from tsls.errors import TslsError

    admin = yield served.admin()
    for op in (["x"], {"a": 1}, 7, "no-such-op"):
        with pytest.raises(TslsError) as caught:
            yield admin.request(op)
        assert caught.value.code.value in ("BAD_REQUEST", "UNKNOWN_OPERATION"), caught.value
    response, body = yield Http(served.url).get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    operations = {s.labels["operation"] for s in families["tsls_requests"].samples}
    assert "other" in operations and operations <= served.service.console.metrics.operations | {"other"}


@pytest_twisted.inlineCallbacks
def test_logging_out_ends_the_session(served):
    http = Http(served.url)
    yield http.login((yield served.link()))
    code, _ = yield http.post("/api/logout", {})
    assert code == 200
    yield http.get_json("/api/session", expect=401)


def test_links_and_sessions_expire_on_time(tmp_path):
    """Links last ten minutes and work once; sessions last twelve hours (real time, not the lab clock)."""
    import types

    from twisted.internet.task import Clock

    from tsls.console.app import LINK_LIFETIME, SESSION_LIFETIME, Console

    clock = Clock()
    server = types.SimpleNamespace(writer=types.SimpleNamespace(clock=clock), console=None)
    console = Console(clock, server, str(tmp_path / "none.sqlite"))
    console.base_url = "http://127.0.0.1:1"
    token = console.mint_link("viewer")["url"].split("token=")[1]
    clock.advance(LINK_LIFETIME)
    assert console._open_link(token) is None                # too late
    token = console.mint_link("admin")["url"].split("token=")[1]
    clock.advance(LINK_LIFETIME - 1)
    sid, session = console._open_link(token)
    assert session.role == "admin" and console._open_link(token) is None      # once only

    class Request:
        def getCookie(self, name):
            return sid.encode()
    assert console.session_of(Request()) is session
    clock.advance(SESSION_LIFETIME)
    assert console.session_of(Request()) is None
    with pytest.raises(Exception):
        console.mint_link("root")


@pytest_twisted.inlineCallbacks
def test_a_request_body_past_64_kib_is_refused_unread(served):
    http = Http(served.url)
    yield http.login((yield served.link()))
    code, answer = yield http.post("/api/policy", {"security_group": True, "padding": "x" * (70 * 1024)})
    assert code == 413 and answer["error"]["code"] == "TOO_LARGE"
    assert (yield http.get_json("/api/hosts"))["security_group_policy"] is False
    code, _ = yield http.post("/api/policy", {"security_group": True, "padding": "x" * 1024})
    assert code == 200


@pytest_twisted.inlineCallbacks
def test_a_browser_that_stops_reading_live_events_is_cut_off_past_1_mib(served, monkeypatch):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from tsls.console.app import STREAM_BEHIND

    http = Http(served.url)
    yield http.login((yield served.link("viewer")))
    console = served.service.console
    followed = defer.Deferred()
    follow = console.follow
    monkeypatch.setattr(console, "follow", lambda request: (follow(request), followed.callback(request)))
    before = len(console.server.followers)

    class NeverReads(Protocol):
        def connectionMade(self):
            self.transport.write(b"GET /api/events/stream HTTP/1.1\r\nHost: console\r\n"
                                 b"Cookie: tsls_console=" + http.cookies["tsls_console"].encode() + b"\r\n\r\n")
            self.transport.pauseProducing()         # never read what the console sends

    port = int(served.url.rsplit(":", 1)[1])
    client = yield with_timeout(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), NeverReads()))
    request = yield with_timeout(followed)
    assert len(console.server.followers) == before + 1
    event = {"id": 0, "message": "x" * 10_000}
    for i in range(3 * STREAM_BEHIND // 10_000):
        for follower in list(console.server.followers):
            follower({**event, "id": i})
    assert len(console.server.followers) == before and request.finished and not console._streams
    client.transport.abortConnection()


def test_a_slow_ledger_read_is_reused_for_ten_times_as_long(monkeypatch):
    """On a very large ledger a scrape's reads take seconds; they are then reused, not redone each second."""
    from tsls.console import metrics

    reads, now = [], [100.0]
    ledger = metrics._Ledger(None, None)
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])

    def read(took):
        def _read():
            reads.append(took)
            now[0] += took
            yield f"families of read {len(reads)}"
        return _read

    monkeypatch.setattr(ledger, "_read", read(0.01))
    assert list(ledger.collect()) == ["families of read 1"]
    assert list(ledger.collect()) == ["families of read 2"]        # fast: read again every time
    monkeypatch.setattr(ledger, "_read", read(2.0))
    assert list(ledger.collect()) == ["families of read 3"]
    now[0] += 19.0                                                 # 2 s read: reused until 20 s after it ended
    assert list(ledger.collect()) == ["families of read 3"]
    now[0] += 1.5
    assert list(ledger.collect()) == ["families of read 4"]


def test_the_expiring_alert_speaks_of_one_license_in_the_singular():
    from tsls.console.views import alerts
    activated = {"status": "activated", "certificate": True}
    one = [a["message"] for a in alerts(activated, [], [], 1)]
    two = [a["message"] for a in alerts(activated, [], [], 2)]
    assert "1 license expires within 7 days unless its device logs on again." in one
    assert "2 licenses expire within 7 days unless their devices log on again." in two
