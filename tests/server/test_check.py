import sqlite3

import pytest

from tsls.core.licensing import Decision, Change, Outcome
from tsls.core.model import CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.server.check import check_ledger
from tsls.server.store import LicenseStore
from tsls.sqlite import StoreError

NOW = 1_800_000_000


def cal(hwid, pack_id):
    return License(0, LicenseKind.PERMANENT, LicenseStatus.ACTIVE, hwid, "m", "u", "TS", ProductVersion.W2003,
                   pack_id, True, NOW, NOW + 86400 * 60)


@pytest.fixture
def ledger(tmp_path):
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    with store.transaction():
        pack = store.add_key_pack("K" * 35, PurchaseRef(Program.RETAIL, retail_code="R" * 25), ProductVersion.W2003,
                                  CalType.PER_DEVICE, 5, NOW)
        store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal("h1", pack.id), pack_delta=1),)))
    store.close()
    return path


def test_a_consistent_ledger_passes(ledger):
    assert check_ledger(ledger) == []


def test_an_issued_count_that_disagrees_with_the_licenses_is_reported(ledger):
    db = sqlite3.connect(ledger)
    db.execute("UPDATE key_packs SET issued = 2")
    db.commit()
    db.close()
    assert check_ledger(ledger) == [f"key pack {'K' * 35}: issued 2 but 1 live CALs"]


def test_the_schema_refuses_a_second_live_cal_for_one_device(ledger):
    db = sqlite3.connect(ledger)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO licenses (kind, status, hwid, machine, user, terminal_server, product_version, "
                   "key_pack, validated, issued_at, expires_at) "
                   "VALUES ('permanent', 'active', 'h1', 'm', 'u', 'TS', '2003', 1, 1, 0, 1)")


def test_a_database_from_a_newer_tsls_is_refused_and_left_untouched(ledger):
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    before = open(ledger, "rb").read()
    with pytest.raises(StoreError, match="newer"):
        LicenseStore.open(ledger)
    assert open(ledger, "rb").read() == before


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable tsls database"):
        LicenseStore.open(str(path))
    assert path.read_bytes() == b"this is not a database at all" * 100


def test_another_programs_database_is_refused(tmp_path):
    path = str(tmp_path / "other.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a tsls"):
        LicenseStore.open(path)


def test_check_reports_a_file_that_is_not_a_database_instead_of_failing(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"garbage" * 100)
    assert check_ledger(str(path))[0].startswith("not a usable tsls license server database")
