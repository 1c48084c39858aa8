"""The README's walk-through, end to end: both daemons on loopback (ephemeral ports, real SQLite),
driven by the real command-line clients, in-process."""
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.harness import Lab, running
from tsls.clearinghouse.client import ClearinghouseClient
from tsls.server.service import LicenseServerService

TIMEOUT = 10


@pytest.fixture
def lab(tmp_path):
    yield from running(Lab(tmp_path))


@pytest_twisted.inlineCallbacks
def test_the_readme_walk_through(lab, capsys, tmp_path):
    activation = yield lab.admin(capsys, "activate")
    assert activation["status"] == "activated" and len(activation["license_server_id"]) == 35
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                           "--quantity", "5")
    code = sold["retail_code"]
    pack = yield lab.admin(capsys, "install", "--retail", code)
    assert (pack["total"], pack["available"]) == (5, 5)

    devices = [f"pc{i}" for i in range(1, 7)]
    rows = yield lab.ts(capsys, "logon", *devices, "--times", "2")
    final = {r["machine"]: r["license"]["kind"] for r in rows if r["round"] == 2}
    assert sorted(final.values()) == ["permanent"] * 5 + ["temporary"]
    packs = yield lab.admin(capsys, "keypacks")
    assert packs[0]["available"] == 0
    again = yield lab.ts(capsys, "logon", *devices)
    assert {r["machine"]: r["license"]["kind"] for r in again} == final
    assert {r["outcome"] for r in again} == {"existing", "temporary"}
    packs = yield lab.admin(capsys, "keypacks")
    assert packs[0]["issued"] == 5

    yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-user", "--quantity", "2",
                    "--retail", "PERUSER2CALS0000000000000")
    yield lab.admin(capsys, "install", "--retail", "PERUSER2CALS0000000000000")
    users = [f"desk{i}:user{i}" for i in range(10)]
    rows = yield lab.ts(capsys, "logon", *users, name="TSU", mode="per-user")
    assert {r["outcome"] for r in rows} == {"per_user"}
    report = yield lab.admin(capsys, "usage")
    assert report["users_seen"] == 10 and report["per_user_cals_installed"] == 2
    packs = yield lab.admin(capsys, "keypacks")
    assert [p["available"] for p in packs if p["cal_type"] == "per_user"] == [2]

    yield lab.stop()
    restarted = Lab(tmp_path)
    yield restarted.start()
    lab.ls, lab.ch, lab.endpoint, lab.ch_url = restarted.ls, restarted.ch, restarted.endpoint, restarted.ch_url
    lab.operator_credential = restarted.operator_credential
    lab.credential = restarted.credential
    status = yield lab.admin(capsys, "status")
    assert status["activation"]["status"] == "activated"
    assert sorted((p["cal_type"], p["issued"], p["available"]) for p in status["key_packs"]) == \
        [("per_device", 5, 0), ("per_user", 0, 2)]
    again = yield lab.ts(capsys, "logon", *devices)
    assert {r["machine"]: r["license"]["kind"] for r in again} == final
    purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
    assert {p["bound_to"] for p in purchases} == {activation["license_server_id"]}


@pytest_twisted.inlineCallbacks
def test_telephone_activation_through_the_clearinghouse(lab, capsys):
    status = yield lab.admin(capsys, "status")
    call = yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", status["product_id"])
    result = yield lab.admin(capsys, "activate", "--telephone", call["license_server_id"], call["certificate"])
    assert result == {**result, "status": "activated", "method": "telephone",
                      "license_server_id": call["license_server_id"]}


@pytest_twisted.inlineCallbacks
def test_a_purchase_installed_on_one_server_cannot_be_installed_on_another(lab, capsys, tmp_path):
    yield lab.admin(capsys, "activate")
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                           "--quantity", "5")
    yield lab.admin(capsys, "install", "--retail", sold["retail_code"], "--quantity", "3")
    second = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "second.sqlite"),
                                  ClearinghouseClient(lab.ch_url), credential_path=str(tmp_path / "second.secret"))
    second.startService()
    try:
        port = yield second.listener.listening
        first_endpoint, lab.endpoint = lab.endpoint, f"tcp:127.0.0.1:{port.getHost().port}"
        first_credential, lab.credential = lab.credential, second.credential_path
        yield lab.admin(capsys, "activate")
        error = yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
        assert error["error"]["code"] == "PURCHASE_BOUND"
        lab.endpoint, lab.credential = first_endpoint, first_credential
        error = yield lab.admin(capsys, "install", "--retail", sold["retail_code"], "--quantity", "3")
        assert error["error"]["code"] == "QUANTITY_EXCEEDED"
    finally:
        yield second.stopService()


@pytest_twisted.inlineCallbacks
def test_a_rebuilt_server_recovers_its_cals(lab, capsys, tmp_path):
    yield lab.admin(capsys, "activate")
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2008", "--cal-type", "per-device",
                           "--quantity", "7")
    yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
    rebuilt = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "rebuilt.sqlite"),
                                   ClearinghouseClient(lab.ch_url), credential_path=str(tmp_path / "rebuilt.secret"))
    rebuilt.startService()
    try:
        port = yield rebuilt.listener.listening
        lab.endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
        lab.credential = rebuilt.credential_path
        activation = yield lab.admin(capsys, "activate")
        recovered = yield lab.admin(capsys, "recover", "--retail", sold["retail_code"])
        assert [(p["product_version"], p["total"]) for p in recovered["key_packs"]] == [("2008", 7)]
        purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
        assert [p["bound_to"] for p in purchases] == [activation["license_server_id"]]
    finally:
        yield rebuilt.stopService()


@pytest_twisted.inlineCallbacks
def test_a_registered_terminal_server_in_the_group_gets_licenses_with_its_secret_file(lab, capsys, tmp_path):
    secret = str(tmp_path / "ts01.secret")
    yield lab.admin(capsys, "terminal-servers", "register", "TS01", "--secret-file", secret)
    yield lab.admin(capsys, "terminal-servers", "group-add", "TS01")
    yield lab.admin(capsys, "policy", "on")
    member = yield lab.ts(capsys, "--secret-file", secret, "logon", "pc1")
    stranger = yield lab.ts(capsys, "logon", "pc2", name="TS02")
    assert member[0]["outcome"] == "temporary_issued"
    assert (stranger[0]["outcome"], stranger[0]["reason"]) == ("refused", "NOT_IN_GROUP")
