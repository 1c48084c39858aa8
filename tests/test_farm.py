"""The README's 2019 farm: two license servers with their own databases, the CALs split, one taken
down, the session host moving to the other, a migration through the Clearinghouse; the Diagnoser at
each step. Real daemons on loopback (ephemeral ports, real SQLite), the real command-line clients."""
import json
import os

import pytest_twisted
from twisted.internet import defer, reactor

from clients import admin, tssim
from clients.cli import Failed
from tests.harness import clearinghouse_port
from tsls.clearinghouse.client import ClearinghouseClient
from tsls.clearinghouse.service import make_service as make_clearinghouse
from tsls.core.model import ProductVersion
from tsls.errors import TslsError
from tsls.server.service import LicenseServerService

TIMEOUT = 20


@defer.inlineCallbacks
def run(module, argv, capsys):
    capsys.readouterr()
    args = module.parser().parse_args([*argv, "--json"])
    status = 0
    try:
        yield defer.ensureDeferred(module.command(reactor, args)).addTimeout(TIMEOUT, reactor)
    except Failed as e:
        status = e.status
    except TslsError as e:
        return 1, {"error": e.to_json()}
    return status, json.loads(capsys.readouterr().out)


@pytest_twisted.inlineCallbacks
def test_the_readme_farm(tmp_path, capsys):
    ch = make_clearinghouse(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "ch.sqlite"))
    ch.startService()
    ch_url = f"http://127.0.0.1:{(yield clearinghouse_port(ch))}"
    servers, endpoints = [], []
    for n in (1, 2):
        (tmp_path / f"ls{n}").mkdir(mode=0o700)
        ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / f"ls{n}" / "ls.sqlite"),
                                  ClearinghouseClient(ch_url), seed="7", version=ProductVersion.W2019)
        ls.startService()
        port = yield ls.listener.listening
        servers.append(ls)
        endpoints.append(f"tcp:127.0.0.1:{port.getHost().port}")
    try:
        def lsadmin(n, *argv):
            return run(admin, ["--server", endpoints[n - 1], "--credential", servers[n - 1].credential_path,
                               "--clearinghouse", ch_url, "--operator-credential", ch.credential_path, *argv], capsys)

        def ts19(*argv, version="2019"):
            return run(tssim, ["--name", "TS19", "--version", version, "--state-dir", str(tmp_path / "ts"),
                               "--connect-timeout", "2", "--server", endpoints[0], "--server", endpoints[1], *argv],
                       capsys)

        yield lsadmin(1, "activate")
        yield lsadmin(2, "activate")
        _, a = yield lsadmin(1, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per_device", "--quantity", "5")
        _, b = yield lsadmin(1, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per_device", "--quantity", "5")
        yield lsadmin(1, "install", "--retail", a["retail_code"])
        yield lsadmin(2, "install", "--retail", b["retail_code"])
        _, rows = yield ts19("logon", "pc1", "pc2", "pc3", "pc4", "pc5", "pc6", "--times", "2")
        last = {r["machine"]: r for r in rows if r["round"] == 2}
        assert [last[f"pc{i}"]["outcome"] for i in range(1, 7)] == ["upgraded"] * 5 + ["temporary"]
        assert last["pc6"]["reason"] == "NO_LICENSE_AVAILABLE" and {r["served_by"] for r in rows} == {endpoints[0]}
        status, d = yield ts19("diagnose")
        assert status == 0 and d["status"] == "VALID_LS" and [s["usable"] for s in d["servers"]] == [False, True]
        assert "all 5 are issued" in d["messages"][0]
        status, d = yield ts19("diagnose", version="2022")          # a newer host: both servers are too old
        assert status == tssim.REFUSED and d["status"] == "LOWER_VERSION" and d["status_code"] == 4

        yield servers[0].stopService()                                # the first license server goes down
        _, rows = yield ts19("logon", "pc1", "pc6", "--times", "2")
        assert [(r["machine"], r["outcome"], r["served_by"]) for r in rows] == [
            ("pc1", "temporary_issued", endpoints[1]), ("pc6", "temporary_issued", endpoints[1]),
            ("pc1", "upgraded", endpoints[1]), ("pc6", "upgraded", endpoints[1])]
        status, d = yield ts19("diagnose")
        assert status == 0 and [s["status"] for s in d["servers"]] == ["NOT_CONNECTABLE", "VALID_LS"]
        assert "is not available" in d["messages"][0]

        _, migrated = yield lsadmin(2, "migrate", "--reason", "not_working", "--retail", a["retail_code"])
        assert migrated["key_pack"]["total"] == 5 and migrated["source_running"] is False    # event 93 on ls2
        _, events = yield lsadmin(2, "events")
        assert 93 in [e["event_id"] for e in events]
        _, packs = yield lsadmin(2, "keypacks")
        assert sorted((p["total"], p["issued"]) for p in packs) == [(5, 0), (5, 2)]
        _, purchases = yield lsadmin(1, "clearinghouse", "purchases")
        assert {p["bound_to"] for p in purchases} == {(yield lsadmin(2, "status"))[1]["activation"]["license_server_id"]}
    finally:
        for ls in servers:
            if ls.running:
                yield ls.stopService()
        yield ch.stopService()


@pytest_twisted.inlineCallbacks
def test_a_license_server_with_no_cal_left_refers_the_session_host_to_another(tmp_path, capsys):
    from tsls.clearinghouse.testing import FakeClearinghouse
    servers, endpoints = [], []
    try:
        for n, refer in ((2, ()), (1, None)):
            (tmp_path / f"ls{n}").mkdir(mode=0o700)
            ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / f"ls{n}" / "ls.sqlite"),
                                      FakeClearinghouse(), seed="7", referrals=tuple(endpoints) if refer is None else ())
            ls.startService()
            port = yield ls.listener.listening
            servers.append(ls)
            endpoints.append(f"tcp:127.0.0.1:{port.getHost().port}")
        ls2, ls1 = endpoints
        for ls, endpoint, quantity in zip(servers, endpoints, (5, 1)):
            conn = yield defer.ensureDeferred(_admin(ls, endpoint))
            yield conn.request("activate", method="automatic", contact={"first_name": "A", "last_name": "B",
                                                                         "company": "C", "country_region": "D"})
            yield conn.request("install_key_pack", purchase={"program": "retail", "retail_code": f"{quantity}" * 25,
                                                             "cal_type": "per_device", "quantity": quantity})
            yield conn.close()
        argv = ["--name", "TS03", "--version", "2003", "--state-dir", str(tmp_path / "ts"), "--server", ls1]
        _, rows = yield run(tssim, [*argv, "logon", "pc1", "pc2", "--times", "4"], capsys)
        final = {r["machine"]: r for r in rows if r["round"] == 4}
        assert final["pc1"]["served_by"] == ls1 and final["pc1"]["license"]["kind"] == "permanent"
        # pc2 found no CAL left on ls1, which referred it to ls2 (not in the host's list): a CAL from ls2
        assert final["pc2"]["served_by"] == ls2 and final["pc2"]["license"]["kind"] == "permanent"
        assert [r["outcome"] for r in rows if r["machine"] == "pc2"] == ["temporary_issued", "temporary",
                                                                          "upgraded", "existing"]
    finally:
        for ls in servers:
            yield ls.stopService()


async def _admin(ls, endpoint):
    from clients.connection import connect
    conn = await connect(reactor, endpoint)
    await conn.hello_admin(ls.server.identity.admin_secret)
    return conn


@pytest_twisted.inlineCallbacks
def test_session_hosts_discover_the_license_servers_published_in_the_directory(tmp_path, capsys):
    from tsls import directory
    from tsls.clearinghouse.testing import FakeClearinghouse
    path = str(tmp_path / "directory.json")
    servers = []
    try:
        for n in (1, 2):
            (tmp_path / f"ls{n}").mkdir(mode=0o700)
            ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / f"ls{n}" / "ls.sqlite"),
                                      FakeClearinghouse(), seed="7", publish_to=path)
            ls.startService()
            yield ls.listener.listening
            servers.append(ls)
        published = directory.read(path)
        assert [e.scope.value for e in published] == ["domain", "domain"]
        first = published[0].endpoint
        yield servers[0].stopService()                  # still published, as in a directory: passed over
        _, rows = yield run(tssim, ["--name", "TS03", "--state-dir", str(tmp_path / "ts"), "--directory", path,
                                    "--connect-timeout", "2", "logon", "pc1"], capsys)
        assert rows[0]["served_by"] == published[1].endpoint != first
    finally:
        for ls in servers:
            if ls.running:
                yield ls.stopService()


@pytest_twisted.inlineCallbacks
def test_a_device_holding_a_license_from_a_rebuilt_license_server_is_licensed_afresh(tmp_path, capsys):
    from tsls.clearinghouse.testing import FakeClearinghouse
    (tmp_path / "ls").mkdir(mode=0o700)
    ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "ls" / "ls.sqlite"),
                              FakeClearinghouse(), seed="7")
    ls.startService()
    port = (yield ls.listener.listening).getHost().port
    argv = ["--name", "TS03", "--state-dir", str(tmp_path / "ts"), "--server", f"tcp:127.0.0.1:{port}"]
    _, rows = yield run(tssim, [*argv, "logon", "pc1"], capsys)
    assert rows[0]["outcome"] == "temporary_issued"
    yield ls.stopService()
    for name in os.listdir(tmp_path / "ls"):                       # rebuilt: a new database, same endpoint
        os.remove(tmp_path / "ls" / name)
    ls = LicenseServerService(reactor, f"tcp:{port}:interface=127.0.0.1", str(tmp_path / "ls" / "ls.sqlite"),
                              FakeClearinghouse(), seed="7")
    ls.startService()
    try:
        yield ls.listener.listening
        status, rows = yield run(tssim, [*argv, "logon", "pc1"], capsys)
        assert status == 0 and rows[0]["outcome"] == "temporary_issued" and rows[0]["license"]["license_id"] == 1
    finally:
        yield ls.stopService()
