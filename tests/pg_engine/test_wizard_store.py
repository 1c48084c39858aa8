"""The wizard's store methods (set_key_pack_total, delete_all_cals) on both engines: SQLite and a real
PostgreSQL (tests/pg.py)."""
import pytest

from tests.pg_engine.test_pgstore import NOW, RETAIL, grant, temporary
from tsls.core.licensing import Change, Decision, Outcome
from tsls.core.model import CalType, ProductVersion
from tsls.server.check import ledger_problems
from tsls.server.pgstore import PgLicenseStore
from tsls.server.store import LicenseStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = LicenseStore.open(str(tmp_path / "ls.sqlite"), initialise=True)
    else:
        s = PgLicenseStore.open(request.getfixturevalue("pg"))
    yield s
    s.close()


def test_a_conversion_changes_the_total_and_a_rebuild_deletes_every_cal(store):
    with store.transaction():
        pack = store.add_key_pack("K" * 35, RETAIL, ProductVersion.W2019, CalType.PER_DEVICE, 10, NOW)
    grant(store, "hw1", pack.id)
    with store.transaction():
        store.apply(Decision(Outcome.TEMPORARY_ISSUED, None, changes=(Change(temporary("hw2")),)))
        store.set_key_pack_total("K" * 35, 4)
    with store.transaction():
        assert (store.key_pack("K" * 35).total, store.key_pack("K" * 35).issued) == (4, 1)
        store.record_per_user(NOW, "alice", "hw3", "m", "TS")
    with store.transaction():
        assert store.delete_all_cals() == (1, 2)
    with store.transaction():
        assert store.key_packs() == () and store.key_pack("K" * 35) is None
        assert store.license_counts() == {}
        assert store.per_user_logons(0, NOW + 1) == []
