"""Lifetimes, the lab clock, revocation and the event log, on the real daemon."""
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.harness import Daemon, activate_and_install, logon, running, with_timeout
from tsls.errors import Code, TslsError
from tsls.labclock import LabClock


@pytest.fixture
def lab(tmp_path):
    yield from running(Daemon(tmp_path, lab_clock=LabClock(reactor)))


@defer.inlineCallbacks
def cals_for(ts, n):
    tokens = {}
    for i in range(n):
        yield logon(ts, f"pc{i}")
        answer = yield logon(ts, f"pc{i}")
        assert answer["outcome"] == "upgraded"
        tokens[i] = answer["license"]
    return tokens


@pytest_twisted.inlineCallbacks
def test_ninety_five_lab_days_renew_the_cals_in_use_and_expire_the_rest(lab):
    admin = yield lab.admin()
    yield activate_and_install(admin, quantity=10)
    ts = yield lab.terminal_server()
    cals = yield cals_for(ts, 10)
    yield admin.request("set_clock", to="+85d")
    outcomes = []
    for i in range(5):
        answer = yield logon(ts, f"pc{i}", cals[i]["token"])
        outcomes.append(answer["outcome"])
    assert outcomes == ["renewed"] * 5
    yield admin.request("set_clock", to="+10d")
    packs = yield admin.request("list_key_packs")
    assert packs[0]["available"] == 5
    expired = yield admin.request("list_licenses", kind="permanent", status="expired")
    assert sorted(lic["machine"] for lic in expired) == [f"pc{i}" for i in range(5, 10)]
    renewed = yield admin.request("list_events", event_id=1103)
    gone = yield admin.request("list_events", event_id=1104)
    assert len(renewed) == 5 and len([e for e in gone if e["license_id"] in
                                      {lic["license_id"] for lic in expired}]) == 5


@pytest_twisted.inlineCallbacks
def test_revocation_stops_at_the_limit_and_names_the_date(lab):
    admin = yield lab.admin()
    yield activate_and_install(admin, quantity=10)
    ts = yield lab.terminal_server()
    cals = yield cals_for(ts, 3)
    first = yield admin.request("revoke", license_id=cals[0]["license_id"])
    assert first["license"]["status"] == "revoked"
    yield admin.request("revoke", license_id=cals[1]["license_id"])
    with pytest.raises(TslsError) as e:
        yield admin.request("revoke", license_id=cals[2]["license_id"])
    assert e.value.code is Code.REVOCATION_LIMIT
    next_at = e.value.details["next_allowed_at"]
    assert next_at == min(cals[0]["expires_at"], cals[1]["expires_at"]) and next_at in e.value.message
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 1
    limit_events = yield admin.request("list_events", event_id=81)
    assert len(limit_events) == 1


@pytest_twisted.inlineCallbacks
def test_per_user_and_temporary_licenses_cannot_be_revoked(lab):
    admin = yield lab.admin()
    ts = yield lab.terminal_server()
    temp = (yield logon(ts, "pc1"))["license"]
    for request in ({"license_id": temp["license_id"]}, {"user": "alice"}):
        with pytest.raises(TslsError) as e:
            yield admin.request("revoke", **request)
        assert e.value.code is Code.NOT_REVOCABLE


@pytest_twisted.inlineCallbacks
def test_the_lab_clock_refuses_to_go_backwards_or_to_parse_nonsense(lab):
    admin = yield lab.admin()
    for to, code in (("2001-01-01", Code.CLOCK_BACKWARDS), ("+3y", Code.BAD_REQUEST), ("soon", Code.BAD_REQUEST)):
        with pytest.raises(TslsError) as e:
            yield admin.request("set_clock", to=to)
        assert e.value.code is code


@pytest_twisted.inlineCallbacks
def test_without_the_lab_clock_the_clock_cannot_be_set(tmp_path):
    daemon = Daemon(tmp_path)
    yield daemon.start()
    try:
        admin = yield daemon.admin()
        with pytest.raises(TslsError) as e:
            yield admin.request("set_clock", to="+1d")
        assert e.value.code is Code.LAB_CLOCK_DISABLED
    finally:
        yield daemon.stop()


@pytest_twisted.inlineCallbacks
def test_lab_time_survives_a_restart(tmp_path):
    first = Daemon(tmp_path, lab_clock=LabClock(reactor))
    yield first.start()
    admin = yield first.admin()
    moved = yield admin.request("set_clock", to="+30d")
    yield first.stop()
    second = Daemon(tmp_path, first.clearinghouse, lab_clock=LabClock(reactor))
    yield second.start()
    try:
        admin = yield second.admin()
        status = yield admin.request("status")
        assert status["now"] >= moved["now"]
    finally:
        yield second.stop()


@pytest_twisted.inlineCallbacks
def test_followers_see_events_as_they_are_committed(lab):
    follower = yield lab.admin()
    seen = defer.Deferred()
    original = follower.lineReceived

    def received(line):
        if b'"event"' in line and not seen.called:
            seen.callback(line)
        else:
            original(line)
    follower.lineReceived = received
    yield follower.request("follow_events")
    ts = yield lab.terminal_server()
    yield logon(ts, "pc1")
    line = yield with_timeout(seen)
    assert b'"event_id":1101' in line


@pytest_twisted.inlineCallbacks
def test_a_failed_expiry_sweep_is_logged_and_the_next_one_runs(tmp_path):
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from tsls.server.service import LicenseServerService

    clock = Clock()
    service = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "ls.sqlite"), None,
                                   sweep_every=60, timer_clock=clock)
    failures, calls = [], []

    def failing(job):
        calls.append(job)
        return defer.fail(TslsError(Code.STORAGE_ERROR, "disk on fire"))
    observer = lambda event: event.get("log_failure") and failures.append(event)  # noqa: E731
    globalLogPublisher.addObserver(observer)
    service.startService()
    service.writer.submit = failing
    try:
        clock.advance(60)
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(observer)
        del service.writer.submit
        yield service.stopService()
    assert len(calls) == 2 and len(failures) == 2


@pytest_twisted.inlineCallbacks
def test_a_lab_database_reopened_with_lab_clock_opens_at_the_labs_last_date(tmp_path):
    # Made with --lab-start (a lab file's daemon), moved a month; reopened with --lab-clock: the kept
    # start counts again, not today, so nothing jumps years ahead and no CAL expires.
    from tsls.core.labtime import parse_date
    from tsls.core.model import iso
    from tsls.labclock import StillClock
    from tsls.server.store import LicenseStore
    start = parse_date("2025-01-06T08:00:00Z")
    first = Daemon(tmp_path, lab_clock=LabClock(StillClock(start, reactor)))
    yield first.start()
    try:
        admin = yield first.admin()
        yield activate_and_install(admin, quantity=3)
        ts = yield first.terminal_server()
        yield cals_for(ts, 3)
        moved = yield admin.request("set_clock", to="+30d")
    finally:
        yield first.stop()
    store = LicenseStore.open(first.path)
    try:
        assert store.lab_clock_start() == start
    finally:
        store.close()
    again = Daemon(tmp_path, lab_clock=LabClock(reactor))
    yield again.start()
    try:
        admin = yield again.admin()
        status = yield admin.request("status")
        assert status["now"] == moved["now"] == iso(start + 30 * 86400)
        active = yield admin.request("list_licenses", kind="permanent", status="active")
        assert len(active) == 3
    finally:
        yield again.stop()
