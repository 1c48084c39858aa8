"""Recovery moves a purchase and never adds CALs (issue 11, item 2), end to end: a Clearinghouse
daemon and two license servers on loopback, real SQLite, driven by tsls-admin; the lab-wide
`tsls check --clearinghouse` reports double circulation and whether it is on record."""
import os
import subprocess
import sys

import pytest_twisted
from twisted.internet import reactor

from tests.harness import Lab
from tsls.clearinghouse.client import ClearinghouseClient
from tsls.server.check import check_lab
from tsls.server.service import LicenseServerService


def lab_check(lab, *servers):
    return check_lab(str(lab.data / "clearinghouse.sqlite"), [str(s) for s in servers])


@pytest_twisted.inlineCallbacks
def test_recovery_moves_cals_and_the_lab_check_reports_double_circulation(tmp_path, capsys):
    lab = Lab(tmp_path)
    yield lab.start()
    a_db, b_db = tmp_path / "license-server.sqlite", tmp_path / "rebuilt.sqlite"
    b = None
    try:
        a = (lab.ls, lab.endpoint, lab.credential)
        yield lab.admin_on(capsys, a, "activate")
        sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                               "--quantity", "5")
        code = sold["retail_code"]
        yield lab.admin_on(capsys, a, "install", "--retail", code)
        assert lab_check(lab, a_db) == []

        b = yield lab.start_another_server(b_db)
        yield lab.admin_on(capsys, b, "activate")
        recovered = yield lab.admin_on(capsys, b, "recover", "--retail", code)
        assert [p["total"] for p in recovered["key_packs"]] == [5]
        again = yield lab.admin_on(capsys, b, "recover", "--retail", code)        # already held: the same pack
        assert [p["key_pack_id"] for p in again["key_packs"]] == [p["key_pack_id"] for p in recovered["key_packs"]]
        packs = yield lab.admin_on(capsys, b, "keypacks")
        assert [(p["total"], p["available"]) for p in packs] == [(5, 5)]
        recovered_events = yield lab.admin_on(capsys, b, "events", "--event-id", "1114")
        assert len(recovered_events) == 1 and "5 CALs of purchase" in recovered_events[0]["message"]

        # A has not contacted the Clearinghouse since: 10 CALs circulate, and that is on record.
        [problem] = lab_check(lab, a_db, b_db)
        assert problem.startswith("double circulation: purchase retail:" + code) and "5 CALs but 10" in problem
        assert "on record at the Clearinghouse" in problem and "NOT on record" not in problem
        done = subprocess.run([sys.executable, "-m", "tsls.cli", "check", "--clearinghouse",
                               str(tmp_path / "clearinghouse.sqlite"), "--server", str(a_db), "--server", str(b_db)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "double circulation" in done.stdout

        # A's next contact (here its restart) retires its key pack: no new CAL from it, the issued ones stay.
        yield lab.ls.stopService()
        lab.ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(a_db), ClearinghouseClient(lab.ch_url),
                                      seed="42")
        lab.ls.startService()
        port = yield lab.ls.listener.listening
        yield lab.ls.checked_in
        a = (lab.ls, f"tcp:127.0.0.1:{port.getHost().port}", lab.ls.credential_path)
        packs = yield lab.admin_on(capsys, a, "keypacks")
        assert [(p["total"], p["available"], p["retired_at"] is not None) for p in packs] == [(5, 0, True)]
        events = yield lab.admin_on(capsys, a, "events", "--event-id", "1115")
        assert len(events) == 1 and "retired" in events[0]["message"]
        assert lab_check(lab, a_db, b_db) == []

        # Back again onto A: B's pack is retired at the Clearinghouse; A never holds more than 5 available.
        back = yield lab.admin_on(capsys, a, "recover", "--retail", code)
        assert [p["total"] for p in back["key_packs"]] == [5]
        packs = yield lab.admin_on(capsys, a, "keypacks")
        assert sum(p["available"] for p in packs) == 5
        assert "on record" in lab_check(lab, a_db, b_db)[0]
        # B's next contact, though refused (the purchase is bound to A now), retires B's key pack.
        refused = yield lab.admin_on(capsys, b, "install", "--retail", code)
        assert refused["error"]["code"] == "PURCHASE_BOUND"
        packs = yield lab.admin_on(capsys, b, "keypacks")
        assert [p["available"] for p in packs] == [0]
        assert lab_check(lab, a_db, b_db) == []
        purchases = yield lab.admin(capsys, "clearinghouse", "purchases")
        assert [(m["quantity"]) for m in purchases[0]["moves"]] == [5, 5]
    finally:
        if b is not None:
            yield b[0].stopService()
        yield lab.stop()


def test_double_circulation_not_on_record_is_reported(tmp_path):
    """A key pack copied into a second server's database (never issued to it): the check says so."""
    import sqlite3

    from tsls.clearinghouse.store import ClearinghouseStore
    from tsls.core.activation import ActivationMethod
    from tsls.core.clearinghouse import Sale, Server, ServerStatus
    from tsls.core.model import CalType, Program, ProductVersion, Purchase, PurchaseRef
    from tsls.server.store import LicenseStore

    ref = PurchaseRef(Program.RETAIL, retail_code="Q" * 25)
    ch = ClearinghouseStore(str(tmp_path / "ch.sqlite"))
    with ch.transaction():
        ch.put_server(Server("S" * 35, "12345-123-1234567-12345", ServerStatus.ACTIVATED, ActivationMethod.AUTOMATIC, {}, 0, ""))
        ch.add_sale(ref.reference, Sale(Purchase(ref, ProductVersion.W2003, CalType.PER_DEVICE, 5)), 0)
        ch.put_sale(ref.reference, Sale(Purchase(ref, ProductVersion.W2003, CalType.PER_DEVICE, 5), 5, "S" * 35))
        ch.add_key_pack("K" * 35, ref.reference, "S" * 35, 5, 0)
    ch.close()
    for name in ("one.sqlite", "two.sqlite"):
        store = LicenseStore.open(str(tmp_path / name))
        with store.transaction():
            store.add_key_pack("K" * 35, ref, ProductVersion.W2003, CalType.PER_DEVICE, 5, 0)
        store.close()
    problems = check_lab(str(tmp_path / "ch.sqlite"), [str(tmp_path / "one.sqlite"), str(tmp_path / "two.sqlite")])
    assert len(problems) == 1 and "5 CALs but 10" in problems[0] and "NOT on record" in problems[0]
    assert check_lab(str(tmp_path / "ch.sqlite"), [str(tmp_path / "one.sqlite")]) == []
    db = sqlite3.connect(str(tmp_path / "ch.sqlite"))
    db.execute("UPDATE sales SET installed = 4")
    db.commit()
    db.close()
    assert any("installed 4 but its live key packs hold 5" in p for p in check_lab(str(tmp_path / "ch.sqlite"), []))
    assert os.path.exists(tmp_path / "ch.sqlite")
