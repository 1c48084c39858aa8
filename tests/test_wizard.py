"""The Manage RDS CALs wizard end to end (issue 15 items 4-7): a Clearinghouse daemon and license
servers on loopback, real SQLite, driven by tsls-admin (docs/wizard.md)."""
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from clients.connection import connect
from tsls.public import read_secret

from tests.harness import Lab
from tsls.core import phonecodes
from tsls.core.model import ProductVersion
from tsls.clearinghouse.client import ClearinghouseClient
from tsls.server.check import check_lab
from tsls.server.service import LicenseServerService


def lab_check(lab, *others):
    return check_lab(str(lab.data / "clearinghouse.sqlite"), [str(lab.data / "license-server.sqlite"), *others])


def mistype(code: str, at: int) -> str:
    """``code`` with the character at ``at`` replaced by another of the alphabet."""
    other = next(ch for ch in phonecodes.ALPHABET if ch != code[at])
    return code[:at] + other + code[at + 1:]


@pytest_twisted.inlineCallbacks
def test_install_by_the_key_pack_id_read_out_on_the_telephone(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    try:
        yield lab.admin(capsys, "activate")
        status = yield lab.admin(capsys, "status")
        ls_id = status["activation"]["license_server_id"]
        sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per-device",
                               "--quantity", "10")
        issued = yield lab.admin(capsys, "clearinghouse", "issue", "--license-server-id", phonecodes.grouped(ls_id),
                                 "--retail", sold["retail_code"], "--quantity", "4")
        kp = issued["key_pack"]["key_pack_id"]
        assert issued["key_pack"]["quantity"] == 4 and len(kp) == 35

        # a mistyped character anywhere: refused where it is typed, nothing installed, the Clearinghouse not asked
        for at in (0, 17, 34):
            refused = yield lab.admin(capsys, "install", "--key-pack-id", phonecodes.grouped(mistype(kp, at)))
            assert refused["error"]["code"] == "MISTYPED_CODE"
        # well formed but for another server: refused as such
        other = phonecodes.make(phonecodes.Kind.KEY_PACK, "X" * 35)
        refused = yield lab.admin(capsys, "install", "--key-pack-id", other)
        assert refused["error"]["code"] == "CODE_FOR_ANOTHER_SERVER"
        # well formed, for this server, never issued: the Clearinghouse does not know it
        never = phonecodes.make(phonecodes.Kind.KEY_PACK, ls_id)
        refused = yield lab.admin(capsys, "install", "--key-pack-id", never)
        assert refused["error"]["code"] == "UNKNOWN_KEY_PACK"
        packs = yield lab.admin(capsys, "keypacks")
        assert packs == []

        pack = yield lab.admin(capsys, "install", "--key-pack-id", phonecodes.grouped(kp).lower())
        assert (pack["key_pack_id"], pack["total"], pack["cal_type"], pack["product_version"]) == \
            (kp, 4, "per_device", "2019")
        again = yield lab.admin(capsys, "install", "--key-pack-id", kp)          # typed twice: installed once
        assert again["key_pack_id"] == kp
        packs = yield lab.admin(capsys, "keypacks")
        assert [(p["key_pack_id"], p["total"]) for p in packs] == [(kp, 4)]
        purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
        [p] = [p for p in purchases if p["retail_code"] == sold["retail_code"]]
        assert (p["installed"], p["remaining"], p["bound_to"]) == (4, 6, ls_id)
    finally:
        yield lab.stop()


@pytest.mark.parametrize("program", [(), ("--open", "12345678", "ABCDEFGHJK12345")])
@pytest_twisted.inlineCallbacks
def test_convert_cals_then_rebuild_the_database_and_reinstall_by_recovery(tmp_path, capsys, program):
    lab = Lab(tmp_path)
    yield lab.start()
    try:
        yield lab.admin(capsys, "activate")
        sold = yield lab.admin(capsys, "clearinghouse", "sell", *program, "--version", "2019", "--cal-type",
                               "per-device", "--quantity", "10")
        program = program or ("--retail", sold["retail_code"])      # a retail code is made up at the sale
        pack = yield lab.admin(capsys, "install", *program, "--version", "2019", "--cal-type", "per-device")
        assert pack["total"] == 10, pack
        yield lab.ts(capsys, "logon", "pc1", "--times", "2", version="2019")        # a permanent CAL issued
        [before] = yield lab.admin(capsys, "keypacks")
        assert (before["total"], before["issued"]) == (10, 1)

        refused = yield lab.admin(capsys, "convert", pack["key_pack_id"], "--count", "10")
        assert refused["error"]["code"] == "NOT_ENOUGH_CALS"        # one of the ten is issued
        converted = yield lab.admin(capsys, "convert", pack["key_pack_id"], "--count", "6")
        new = converted["key_pack"]
        assert (new["cal_type"], new["total"], new["product_version"]) == ("per_user", 6, "2019")
        assert (converted["from"]["total"], converted["from"]["issued"]) == (4, 1)
        events = yield lab.admin(capsys, "events", "--event-id", "1116")
        assert len(events) == 1
        assert lab_check(lab) == []

        refused = yield lab.admin(capsys, "rebuild")
        assert refused["error"]["code"] == "CONFIRMATION_REQUIRED"
        rebuilt = yield lab.admin(capsys, "rebuild", "--yes")
        assert (rebuilt["deleted_key_packs"], rebuilt["deleted_licenses"]) == (2, 2)       # the CAL, its temporary license
        assert sorted((p["cal_type"], p["total"], p["issued"]) for p in rebuilt["key_packs"]) == \
            [("per_device", 4, 0), ("per_user", 6, 0)]
        assert rebuilt["not_recovered"] == []
        licenses = yield lab.admin(capsys, "licenses")
        assert licenses == []
        assert lab_check(lab) == []
        purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
        [p] = [p for p in purchases if p["reference"] == sold["reference"]]
        assert p["installed"] == 10            # a recovery never adds CALs
    finally:
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_converting_needs_a_2012_or_later_license_server(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    yield lab.ls.stopService()          # the same database, started again as a 2008 R2 license server
    lab.ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(tmp_path / "license-server.sqlite"),
                                  ClearinghouseClient(lab.ch_url), seed="42", version=ProductVersion.W2008R2)
    lab.ls.startService()
    port = yield lab.ls.listener.listening
    lab.endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
    try:
        yield lab.admin(capsys, "activate")
        sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2008", "--cal-type", "per-device",
                               "--quantity", "3")
        pack = yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
        refused = yield lab.admin(capsys, "convert", pack["key_pack_id"], "--count", "1")
        assert refused["error"]["code"] == "CONVERT_NOT_SUPPORTED"
    finally:
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_migrate_cals_from_another_license_server_by_each_route(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    a_db, b_db = tmp_path / "license-server.sqlite", tmp_path / "target.sqlite"
    b = None
    try:
        a = (lab.ls, lab.endpoint, lab.credential)
        b = yield lab.start_another_server(b_db)
        for which in (a, b):
            yield lab.admin_on(capsys, which, "activate")
        a_id = (yield lab.admin_on(capsys, a, "status"))["activation"]["license_server_id"]
        b_id = (yield lab.admin_on(capsys, b, "status"))["activation"]["license_server_id"]
        codes = []
        for _ in range(3):
            sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per-device",
                                   "--quantity", "5")
            codes.append(sold["retail_code"])
            yield lab.admin_on(capsys, a, "install", "--retail", sold["retail_code"])

        # 1. automatic, the source being replaced and running: its key pack is removed there (event 89)
        refused = yield lab.admin_on(capsys, b, "migrate", "--reason", "replaced", "--retail", codes[0])
        assert refused["error"]["code"] == "BAD_REQUEST"            # the source is named
        moved = yield lab.admin_on(capsys, b, "migrate", "--reason", "replaced", "--source-server", a[1],
                         "--source-credential", a[2], "--retail", codes[0])
        assert moved["key_pack"]["total"] == 5 and moved["source_running"] is True
        [removed] = moved["source_removed"]
        assert removed["retired_at"] is not None
        assert len((yield lab.admin_on(capsys, a, "events", "--event-id", "89"))) == 1
        assert lab_check(lab, str(b_db)) == []
        again = yield lab.admin_on(capsys, b, "migrate", "--reason", "not-working", "--retail", codes[0])
        assert again["error"]["code"] == "ALREADY_MIGRATED"

        # 2. telephone, the source offline (named by its OS and license server ID): event 93, on record
        issued = yield lab.admin(capsys, "clearinghouse", "migrate", "--license-server-id", b_id, "--reason",
                                 "replaced", "--source-license-server-id", a_id, "--retail", codes[1])
        kp = issued["key_pack"]["key_pack_id"]
        refused = yield lab.admin_on(capsys, b, "migrate", "--reason", "replaced", "--route", "telephone",
                           "--source-license-server-id", a_id, "--key-pack-id", kp)
        assert refused["error"]["code"] == "BAD_REQUEST"            # offline: its OS too
        moved = yield lab.admin_on(capsys, b, "migrate", "--reason", "replaced", "--route", "telephone",
                         "--source-license-server-id", a_id, "--source-os", "2019",
                         "--key-pack-id", phonecodes.grouped(kp))
        assert (moved["key_pack"]["key_pack_id"], moved["source_running"]) == (kp, False)
        assert len((yield lab.admin_on(capsys, b, "events", "--event-id", "93"))) == 1

        # 3. automatic, the source no longer works: event 93; A still holds its key packs: on record
        moved = yield lab.admin_on(capsys, b, "migrate", "--reason", "not_working", "--retail", codes[2])
        assert moved["key_pack"]["total"] == 5
        assert len((yield lab.admin_on(capsys, b, "events", "--event-id", "93"))) == 2
        problems = lab_check(lab, str(b_db))
        assert len(problems) == 2 and all("double circulation" in p and "on record at the Clearinghouse" in p
                                          and "NOT on record" not in p for p in problems)

        # removing from the source failed (tsls-admin migrate tells the target): on record there (event 90)
        conn = yield defer.ensureDeferred(connect(reactor, b[1]))
        yield defer.ensureDeferred(conn.hello_admin(read_secret(b[2])))
        yield conn.request("source_uninstall_failed", source=a_id, key_pack_ids=["X" * 35], message="refused")
        yield defer.ensureDeferred(conn.close())
        [failed] = yield lab.admin_on(capsys, b, "events", "--event-id", "90")
        assert a_id in failed["message"] and "refused" in failed["message"]
    finally:
        if b is not None:
            yield b[0].stopService()
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_a_conversion_the_clearinghouse_refuses_gives_the_cals_back(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    b = None
    try:
        a = (lab.ls, lab.endpoint, lab.credential)
        b = yield lab.start_another_server(tmp_path / "other.sqlite")
        for which in (a, b):
            yield lab.admin_on(capsys, which, "activate")
        sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per-device",
                               "--quantity", "10")
        pack = yield lab.admin_on(capsys, a, "install", "--retail", sold["retail_code"])
        yield lab.admin_on(capsys, b, "recover", "--retail", sold["retail_code"])     # A's key pack retired there
        refused = yield lab.admin_on(capsys, a, "convert", pack["key_pack_id"], "--count", "3")
        assert refused["error"]["code"] == "UNKNOWN_KEY_PACK"
        [kept] = yield lab.admin_on(capsys, a, "keypacks")
        assert kept["total"] == 10                  # given back, in the commit that recorded the refusal
        assert kept["retired_at"] is not None       # and the refusal's check-in retired it
        assert lab_check(lab, str(tmp_path / "other.sqlite")) == []
    finally:
        if b is not None:
            yield b[0].stopService()
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_the_wizard_s_ops_refuse_bad_input_with_stable_codes(tmp_path, capsys):
    from tests.harness import Daemon
    from tsls.clearinghouse.testing import FakeClearinghouse
    from tsls.errors import TslsError

    daemon = Daemon(tmp_path, clearinghouse=FakeClearinghouse())
    yield daemon.start()
    try:
        admin = yield daemon.admin()
        yield admin.request("activate", method="automatic", contact={"first_name": "A", "last_name": "B",
                                                                     "company": "C", "country_region": "D"})
        hostile = [
            ("convert_cals", {"key_pack_id": "", "count": 1}), ("convert_cals", {"key_pack_id": "X", "count": -1}),
            ("convert_cals", {"key_pack_id": "X" * 35, "count": 2**70}), ("convert_cals", {"key_pack_id": 5}),
            ("rebuild_database", {"confirm": "yes"}),
            ("migrate_cals", {"reason": "x", "route": "automatic"}),
            ("migrate_cals", {"reason": "replaced", "route": "automatic", "source": {"license_server_id": 5}}),
            ("migrate_cals", {"reason": "replaced", "route": "automatic", "source": {"license_server_id": "A",
                                                                                    "os": ["2019"]}}),
            ("migrate_cals", {"reason": "not_working", "route": 5}),
            ("migrate_cals", {"reason": "not_working", "route": "automatic", "purchase": {"program": "x"}}),
            ("migrate_cals", {"reason": "not_working", "route": "web", "key_pack_id": "short"}),
            ("migrate_cals", {"reason": "not_working", "route": "web", "source": [], "key_pack_id": "A" * 35}),
            ("uninstall_key_packs", {"key_pack_ids": [1, 2]}), ("uninstall_key_packs", {"key_pack_ids": ["nope"]}),
            ("source_uninstall_failed", {"source": "S", "key_pack_ids": "x", "message": "m"}),
            ("install_key_pack", {"key_pack_id": "A" * 35, "purchase": {}}),
            ("install_key_pack", {"key_pack_id": "Ä" * 35}),
        ]
        codes = set()
        for op, fields in hostile:
            try:
                yield admin.request(op, **fields)
            except TslsError as e:
                codes.add(e.code.value)
            else:
                raise AssertionError(f"{op} {fields} was accepted")
        assert codes <= {"BAD_REQUEST", "NOT_FOUND", "MISTYPED_CODE", "CONFIRMATION_REQUIRED", "INVALID_PURCHASE"}, codes
        assert (yield admin.request("list_key_packs")) == []
    finally:
        yield daemon.stop()
