"""The license server daemon on real loopback sockets and real SQLite, driven by our client library.
The Clearinghouse is a fake here; tests/test_lab.py runs the real one."""
import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.harness import RETAIL, Daemon, activate_and_install, logon, with_timeout
from tsls.errors import Code, TslsError


@pytest_twisted.inlineCallbacks
def test_five_cals_serve_five_devices_and_the_sixth_keeps_a_temporary_license(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    ts = yield daemon.terminal_server()
    held = {}
    for _ in range(2):
        for i in range(6):
            answer = yield logon(ts, f"pc{i}", held.get(i))
            held[i] = answer["license"]["token"]
    kinds = []
    for i in range(6):
        answer = yield logon(ts, f"pc{i}", held[i])
        kinds.append(answer["license"]["kind"])
    assert sorted(kinds) == ["permanent"] * 5 + ["temporary"]
    packs = yield admin.request("list_key_packs")
    assert [(p["total"], p["issued"], p["available"]) for p in packs] == [(5, 5, 0)]


@pytest_twisted.inlineCallbacks
def test_pipelined_duplicate_logons_decrement_once(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    ts = yield daemon.terminal_server()
    yield logon(ts, "pc1")
    answers = yield defer.gatherResults([ts.request("logon", hwid="hw-pc1", machine="pc1", user="u")
                                         for _ in range(20)])
    assert {a["license"]["license_id"] for a in answers} == {answers[0]["license"]["license_id"]}
    assert answers[0]["outcome"] == "upgraded" and {a["outcome"] for a in answers[1:]} == {"existing"}
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 1


@pytest_twisted.inlineCallbacks
def test_two_terminal_servers_logging_one_device_on_at_once_decrement_once(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    ts1 = yield daemon.terminal_server("TS01")
    ts2 = yield daemon.terminal_server("TS02")
    yield logon(ts1, "pc1")
    a, b = yield defer.gatherResults([ts1.request("logon", hwid="hw-pc1", machine="pc1", user="u"),
                                      ts2.request("logon", hwid="hw-pc1", machine="pc1", user="u")])
    assert a["license"]["license_id"] == b["license"]["license_id"]
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 1


@pytest_twisted.inlineCallbacks
def test_unactivated_server_answers_with_temporary_licenses_and_says_why(daemon):
    ts = yield daemon.terminal_server()
    yield logon(ts, "pc1")
    answer = yield logon(ts, "pc1")
    assert answer["outcome"] == "temporary" and answer["reason"] == "NOT_ACTIVATED"


@pytest_twisted.inlineCallbacks
def test_per_user_logons_are_logged_and_never_counted(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin, quantity=2, cal_type="per_user")
    ts = yield daemon.terminal_server("TSU", mode="per_user")
    for i in range(10):
        answer = yield logon(ts, f"pc{i}")
        assert answer["outcome"] == "per_user" and answer["license"] is None
    report = yield admin.request("usage_report")
    assert report["users_seen"] == 10 and report["per_user_cals_installed"] == 2
    assert report["users_over_installed"] == 8
    packs = yield admin.request("list_key_packs")
    assert packs[0]["available"] == 2


@pytest_twisted.inlineCallbacks
def test_the_usage_report_starts_on_its_first_logon_and_takes_iso_dates(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin, quantity=1, cal_type="per_user")
    empty = yield admin.request("usage_report")
    assert empty["start"] is None and empty["users_seen"] == 0 and empty["per_day"] == []   # not 1970, not now
    ts = yield daemon.terminal_server("TSU", mode="per_user")
    yield logon(ts, "pc1")
    report = yield admin.request("usage_report")
    assert report["start"] == report["per_day"][0]["day"] + "T00:00:00Z" and report["users_seen"] == 1
    day = report["per_day"][0]["day"]
    same = yield admin.request("usage_report", start=f"{day}T00:00:00Z", end=report["end"])
    assert same["users_seen"] == 1 and same["start"] == f"{day}T00:00:00Z"
    later = yield admin.request("usage_report", start="9999-01-01", end="9999-12-31T23:59:59Z")
    assert later["users_seen"] == 0 and later["start"] == "9999-01-01T00:00:00Z"
    with pytest.raises(TslsError) as e:
        yield admin.request("usage_report", start="yesterday")
    assert e.value.code is Code.BAD_REQUEST


@pytest_twisted.inlineCallbacks
def test_a_forged_license_is_refused_with_a_code(daemon):
    ts = yield daemon.terminal_server()
    answer = yield logon(ts, "pc1")
    forged = answer["license"]["token"][:-1] + ("0" if answer["license"]["token"][-1] != "0" else "1")
    with pytest.raises(TslsError) as e:
        yield ts.request("logon", hwid="hw-pc1", machine="pc1", user="u", license=forged)
    assert e.value.code is Code.INVALID_LICENSE
    with pytest.raises(TslsError) as e:
        yield ts.request("logon", hwid="hw-pc2", machine="pc2", user="u", license=answer["license"]["token"])
    assert e.value.code is Code.INVALID_LICENSE


@pytest_twisted.inlineCallbacks
def test_everything_survives_a_restart(tmp_path):
    first = Daemon(tmp_path)
    yield first.start()
    admin = yield first.admin()
    yield activate_and_install(admin)
    ts = yield first.terminal_server()
    yield logon(ts, "pc1")
    cal = (yield logon(ts, "pc1"))["license"]
    yield first.stop()

    second = Daemon(tmp_path, first.clearinghouse)
    yield second.start()
    try:
        ts = yield second.terminal_server()
        again = yield logon(ts, "pc1", cal["token"])
        assert again["outcome"] == "existing" and again["license"]["license_id"] == cal["license_id"]
        admin = yield second.admin()
        status = yield admin.request("status")
        assert status["activation"]["status"] == "activated"
        assert status["key_packs"][0]["issued"] == 1
    finally:
        yield second.stop()


@pytest_twisted.inlineCallbacks
def test_a_clean_stop_leaves_the_database_whole_in_its_file_even_after_reads(tmp_path):
    """SQLite folds the WAL into the file and removes it when the last connection closes, if that one
    may write: the readers close before the writer, so the file alone holds every license."""
    import os
    import sqlite3
    daemon = Daemon(tmp_path)
    yield daemon.start()
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    ts = yield daemon.terminal_server()
    yield logon(ts, "pc1")
    yield admin.request("status")                   # reads, on the reader threads' own connections
    yield admin.request("list_licenses", limit=10)
    yield daemon.stop()
    assert not os.path.exists(daemon.path + "-wal") and not os.path.exists(daemon.path + "-shm")
    db = sqlite3.connect(f"file:{daemon.path}?mode=ro&immutable=1", uri=True)     # the file alone
    try:
        assert db.execute("SELECT count(*) FROM licenses").fetchone()[0] == 1
    finally:
        db.close()


@pytest_twisted.inlineCallbacks
def test_install_without_activation_is_refused_and_nothing_is_asked_of_the_clearinghouse(daemon):
    admin = yield daemon.admin()
    with pytest.raises(TslsError) as e:
        yield admin.request("install_key_pack", purchase={**RETAIL})
    assert e.value.code is Code.NOT_ACTIVATED
    assert daemon.clearinghouse.calls == []


@pytest_twisted.inlineCallbacks
def test_unreachable_clearinghouse_is_a_clear_error_and_licensing_goes_on(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    daemon.clearinghouse.reachable = False
    with pytest.raises(TslsError) as e:
        yield admin.request("install_key_pack", purchase={**RETAIL})
    assert e.value.code is Code.CLEARINGHOUSE_UNREACHABLE
    ts = yield daemon.terminal_server()
    yield logon(ts, "pc1")
    assert (yield logon(ts, "pc1"))["outcome"] == "upgraded"


@pytest_twisted.inlineCallbacks
def test_telephone_activation_takes_the_typed_codes_checked_against_the_product_id(daemon):
    from tsls.core import phonecodes
    admin = yield daemon.admin()
    product_id = daemon.service.server.identity.product_id
    lsid = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, product_id)
    cert = phonecodes.make(phonecodes.Kind.CERTIFICATE, lsid)
    for typed, code in ((("too-short", cert), Code.MISTYPED_CODE),
                        ((lsid[:7] + ("A" if lsid[7] != "A" else "B") + lsid[8:], cert), Code.MISTYPED_CODE),
                        ((phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, "11111-111-1111111-11111"), cert),
                         Code.CODE_FOR_ANOTHER_SERVER)):
        with pytest.raises(TslsError) as e:
            yield admin.request("activate", method="telephone", license_server_id=typed[0], certificate=typed[1])
        assert e.value.code is code
    status = yield admin.request("status")
    assert status["activation"]["status"] == "not_activated"      # nothing changed: type them again
    assert status["activation"]["problem"]["code"] == "CODE_FOR_ANOTHER_SERVER"
    assert "read the codes again" in status["activation"]["way_out"][0]
    with pytest.raises(TslsError) as e:
        yield admin.request("activate", method="telephone", license_server_id=lsid)
    assert e.value.code is Code.MISTYPED_CODE
    result = yield admin.request("activate", method="telephone", license_server_id=phonecodes.grouped(lsid),
                                 certificate=cert.lower())
    assert result["status"] == "activated" and result["method"] == "telephone" and result["license_server_id"] == lsid
    assert result["problem"] is None and result["way_out"] == []
    with pytest.raises(TslsError) as e:
        yield admin.request("activate", method="telephone", license_server_id=lsid, certificate=cert)
    assert e.value.code is Code.ALREADY_ACTIVATED


@pytest_twisted.inlineCallbacks
def test_bad_input_gets_coded_errors_and_the_connection_keeps_working(daemon):
    conn = yield daemon.connect()
    replies = []
    all_in = defer.Deferred()

    def received(line):
        replies.append(json.loads(line))
        if len(replies) == 11:
            all_in.callback(None)
    conn.lineReceived = received
    for raw in [b"not json", b"[1,2]", b'{"op":"logon"}', b'{"id":1,"op":"logon"}',
                b'{"id":2,"op":"hello","protocol":1,"role":"terminal_server","name":"T","version":"1995","mode":"per_device"}',
                b'{"id":3,"op":"hello","protocol":1,"role":"terminal_server","name":"T","version":"2000","mode":"per_user"}',
                b'{"id":4,"op":"hello","protocol":1,"role":"terminal_server","name":"T","version":"2003","mode":"per_device"}',
                b'{"id":5,"op":"status"}',
                b'{"id":6,"op":"frobnicate"}',
                b'{"id":7,"op":"logon","hwid":5,"machine":"m","user":"u"}',
                b'{"id":8,"op":"logon","hwid":"h","machine":"m","user":"u"}']:
        conn.sendLine(raw)
    yield with_timeout(all_in)
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies]
    assert codes == ["BAD_JSON", "BAD_REQUEST", "BAD_REQUEST", "HELLO_REQUIRED", "BAD_REQUEST", "MODE_UNSUPPORTED",
                     "ok", "NOT_PERMITTED", "UNKNOWN_OPERATION", "BAD_REQUEST", "ok"]


@pytest_twisted.inlineCallbacks
def test_an_oversize_line_closes_that_connection_only(daemon):
    ts = yield daemon.terminal_server()
    bad = yield daemon.connect()
    bad.transport.write(b"x" * (70 * 1024))
    yield with_timeout(bad.closed)
    answer = yield logon(ts, "pc1")
    assert answer["outcome"] == "temporary_issued"


@pytest_twisted.inlineCallbacks
def test_a_client_that_shuts_its_side_after_sending_still_gets_every_answer(daemon):
    from twisted.internet import protocol
    from twisted.internet.endpoints import clientFromString

    class Raw(protocol.Protocol):
        def __init__(self):
            self.data = b""
            self.closed = defer.Deferred()

        def dataReceived(self, data):
            self.data += data

        def connectionLost(self, reason):
            self.closed.callback(None)

    raw = yield clientFromString(reactor, daemon.endpoint).connect(protocol.Factory.forProtocol(Raw))
    raw.transport.write(b'{"id":1,"op":"hello","protocol":1,"role":"terminal_server","name":"T","version":"2003",'
                        b'"mode":"per_device"}\n{"id":2,"op":"logon","hwid":"h","machine":"m","user":"u"}\n')
    raw.transport.loseWriteConnection()          # what `nc -q1` does at the end of its input
    yield with_timeout(raw.closed)
    assert [json.loads(line)["id"] for line in raw.data.splitlines()] == [1, 2]
