"""The PostgreSQL ledger on a real PostgreSQL (tests/pg.py): schema and migrations, what the database
itself refuses, the store's reads and writes, and losing the connection."""
import attrs
import psycopg
import pytest

from tsls.core.activation import Activation, ActivationStatus
from tsls.core.events import Event, EventId
from tsls.core.licensing import Change, Decision, Outcome
from tsls.core.model import CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.errors import Code, TslsError
from tsls.server.storage import LicenseFilter, Registration
from tsls.server.pgstore import SCHEMA_VERSION, Connector, PgLicenseStore, check_ledger_pg, safe_dsn
from tsls.sqlite import StoreError

NOW = 1_800_000_000
RETAIL = PurchaseRef(Program.RETAIL, retail_code="R" * 25)


def cal(hwid, pack_id, status=LicenseStatus.ACTIVE, version=ProductVersion.W2003):
    return License(0, LicenseKind.PERMANENT, status, hwid, "m", "u", "TS", version, pack_id, True, NOW, NOW + 86400 * 60)


def temporary(hwid):
    return License(0, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE, hwid, "m", "u", "TS", ProductVersion.W2003, None,
                   False, NOW, NOW + 86400 * 90)


@pytest.fixture
def store(pg):
    s = PgLicenseStore.open(pg)
    yield s
    s.close()


@pytest.fixture
def pack(store):
    with store.transaction():
        return store.add_key_pack("K" * 35, RETAIL, ProductVersion.W2003, CalType.PER_DEVICE, 2, NOW)


def raw(dsn):
    return psycopg.connect(dsn, autocommit=True)


def grant(store, hwid, pack_id):
    with store.transaction():
        return store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal(hwid, pack_id), pack_delta=1),)))


def test_a_new_database_gets_the_schema_and_opens_again(pg):
    PgLicenseStore.open(pg).close()
    PgLicenseStore.open(pg).close()
    with raw(pg) as db:
        assert db.execute("SELECT what, version FROM tsls_schema").fetchone() == ("license server", SCHEMA_VERSION)


def test_a_database_from_a_newer_tsls_is_refused_untouched(pg):
    PgLicenseStore.open(pg).close()
    with raw(pg) as db:
        db.execute("UPDATE tsls_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        PgLicenseStore.open(pg)
    with raw(pg) as db:
        assert db.execute("SELECT version FROM tsls_schema").fetchone() == (99,)


def test_a_database_that_is_not_tsls_is_refused_untouched(pg):
    with raw(pg) as db:
        db.execute("CREATE TABLE orders (id int)")
    with pytest.raises(StoreError, match="not a tsls license server database"):
        PgLicenseStore.open(pg)
    with raw(pg) as db:
        tables = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert tables == [("orders",)]


def test_another_tsls_database_is_refused(pg):
    with raw(pg) as db:
        db.execute("CREATE TABLE tsls_schema (one BOOLEAN PRIMARY KEY DEFAULT true, what TEXT, version INT)")
        db.execute("INSERT INTO tsls_schema (what, version) VALUES ('clearinghouse', 1)")
    with pytest.raises(StoreError, match="not a tsls license server database"):
        PgLicenseStore.open(pg)


def test_the_database_counts_issued_and_refuses_more_live_cals_than_the_pack_holds(store, pack, pg):
    grant(store, "h1", pack.id)
    grant(store, "h2", pack.id)
    assert [p.issued for p in store.key_packs()] == [2]
    # Even SQL that goes around the store cannot issue a third CAL from a pack of two.
    with raw(pg) as db, pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO licenses (kind, status, hwid, machine, \"user\", terminal_server, product_version, "
                   "key_pack, validated, issued_at, expires_at) VALUES ('permanent', 'active', 'h3', 'm', 'u', 'TS', "
                   "'2003', %s, true, 0, 1)", (pack.id,))
    with store.transaction(), pytest.raises(psycopg.errors.CheckViolation):
        with store.savepoint():
            store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal("h3", pack.id), pack_delta=1),)))
    assert check_ledger_pg(pg) == []


def test_a_seat_goes_back_when_a_cal_expires(store, pack, pg):
    grant(store, "h1", pack.id)
    with store.transaction():
        swept = store.sweep(NOW + 86400 * 61)
    assert [d.outcome for d in swept] == [Outcome.EXPIRED]
    assert [p.issued for p in store.key_packs()] == [0]
    with store.transaction():
        assert [p.issued for p in store.key_packs()] == [0]
        assert [e.event_id for _, e in store.events()] == [EventId.LICENSE_EXPIRED]
    assert check_ledger_pg(pg) == []


def test_one_live_cal_and_one_temporary_license_per_device_and_version(store, pack):
    grant(store, "h1", pack.id)
    with pytest.raises(psycopg.errors.UniqueViolation):
        grant(store, "h1", pack.id)
    with store.transaction():
        store.apply(Decision(Outcome.TEMPORARY_ISSUED, None, changes=(Change(temporary("h1")),)))
    with pytest.raises(psycopg.errors.UniqueViolation):
        with store.transaction():
            store.apply(Decision(Outcome.TEMPORARY_ISSUED, None, changes=(Change(temporary("h1")),)))
    assert [p.issued for p in store.key_packs()] == [1]


def test_licenses_are_never_deleted(store, pack, pg):
    grant(store, "h1", pack.id)
    with raw(pg) as db, pytest.raises(psycopg.errors.RaiseException):
        db.execute("DELETE FROM licenses")


def test_a_refused_request_undoes_its_writes_and_events_only(store, pack):
    with store.transaction():
        with store.savepoint():
            store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal("h1", pack.id), pack_delta=1),)))
            store.add_events([Event(NOW, EventId.CAL_ISSUED, "kept")])
        with pytest.raises(TslsError):
            with store.savepoint():
                store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(cal("h2", pack.id), pack_delta=1),)))
                store.add_events([Event(NOW, EventId.CAL_ISSUED, "undone")])
                raise TslsError(Code.NO_LICENSE_AVAILABLE, "no")
        assert [p.issued for p in store.key_packs()] == [1]
    assert [e.message for _, e in store.new_events] == ["kept"]
    with store.transaction():
        assert [lic.hwid for lic in store.licenses()] == ["h1"]
        assert [e.message for _, e in store.events()] == ["kept"]


def test_settings_kept_by_one_daemon_follow_what_another_writes(pg):
    a, b = PgLicenseStore.open(pg), PgLicenseStore.open(pg)
    try:
        for enabled in (True, False, True):
            with a.transaction():
                a.set_security_group_policy(enabled)
                a.save_registration(Registration("TS01", "s", NOW, in_group=enabled))
                a.save_activation(Activation(ActivationStatus.ACTIVATED if enabled else ActivationStatus.DEACTIVATED))
            with b.transaction():
                assert b.security_group_policy() is enabled
                assert b.registration("TS01").in_group is enabled
                assert b.activation().status is (ActivationStatus.ACTIVATED if enabled else ActivationStatus.DEACTIVATED)
    finally:
        a.close()
        b.close()


def test_a_lost_connection_refuses_with_storage_unavailable_and_the_next_batch_reconnects(store, pack, pg):
    with raw(pg) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (store.backend_pid,))
    with pytest.raises(TslsError) as refused:
        grant(store, "h1", pack.id)
    assert refused.value.code is Code.STORAGE_UNAVAILABLE
    grant(store, "h1", pack.id)
    assert [p.issued for p in store.key_packs()] == [1]


def test_check_reports_what_is_wrong(store, pack, pg):
    grant(store, "h1", pack.id)
    with raw(pg) as db:
        db.execute("ALTER TABLE licenses DISABLE TRIGGER count_issued")
        db.execute("UPDATE licenses SET status = 'expired'")
    assert check_ledger_pg(pg) == [f"key pack {'K' * 35}: issued 1 but 0 live CALs"]


def test_a_schema_5_database_gets_its_counts_by_version_and_check_verifies_them(pg):
    """Migration 6, as SQLite's 9: license_counts by kind, status and product version, kept by the
    trigger through every write and verified by tsls check; the revoked licenses have an index."""
    from tsls.server.pgstore import MIGRATIONS, migrate
    from tsls.server.readstore import PgReadStore

    with raw(pg) as db:
        migrate(db, "test", {n: MIGRATIONS[n] for n in range(1, 6)})
        db.execute('INSERT INTO licenses (kind, status, hwid, machine, "user", terminal_server, product_version, '
                   "key_pack, validated, issued_at, expires_at) VALUES ('temporary', 'active', 'h0', 'm', 'u', 'ts', "
                   "'2003', NULL, false, 0, 100), ('temporary', 'active', 'h1', 'm', 'u', 'ts', '2008', NULL, false, "
                   "0, 100)")
    assert check_ledger_pg(pg) == []
    store = PgLicenseStore.open(pg)
    try:
        with store.transaction():
            pack = store.add_key_pack("K" * 35, RETAIL, ProductVersion.W2012, CalType.PER_DEVICE, 2, NOW)
        with store.transaction():
            store.apply(Decision(Outcome.UPGRADED, None, changes=(
                Change(cal("a", pack.id, version=ProductVersion.W2012), pack_delta=1),)))
        with store.transaction():
            revoked = attrs.evolve(store.licenses(LicenseFilter(hwid="a"))[0], status=LicenseStatus.REVOKED)
            store.apply(Decision(Outcome.REVOKED, revoked, changes=(Change(revoked, -1),)))
        assert store.license_counts() == {"temporary:active": 2, "permanent:revoked": 1}
        assert [lic.hwid for lic in store.revoked_holding(NOW)] == ["a"] and store.revoked_holding(NOW + 86400 * 60) == []
    finally:
        store.close()
    reads = PgReadStore(Connector(pg))
    try:
        with reads.snapshot() as snap:
            assert snap.license_counts() == {("temporary", "active", "2003"): 1, ("temporary", "active", "2008"): 1,
                                             ("permanent", "revoked", "2012"): 1}
            assert snap.kind_status_counts() == {"temporary:active": 2, "permanent:revoked": 1}
            assert [lic.hwid for lic in snap.revoked_holding(0)] == ["a"]
    finally:
        reads.close()
    assert check_ledger_pg(pg) == []
    with raw(pg) as db:
        assert db.execute("SELECT to_regclass('licenses_revoked') IS NOT NULL").fetchone()[0]
        db.execute("UPDATE license_counts SET n = 3 WHERE product_version = '2008'")
    assert check_ledger_pg(pg) == ["license counts: 3 temporary active 2008 kept for status, 1 in the ledger"]


def test_check_on_a_database_that_is_not_tsls(pg):
    assert check_ledger_pg(pg) == ["not a tsls license server database: it has no tsls_schema table"]


def test_no_password_in_a_dsn_nor_in_a_repr(pg, pg_cluster):
    with pytest.raises(StoreError, match="holds a password") as refused:
        PgLicenseStore.open(pg.replace("tsls@", f"tsls:{pg_cluster.password}@"))
    assert pg_cluster.password not in str(refused.value)
    s = PgLicenseStore.open(pg, password=pg_cluster.password)
    try:
        assert pg_cluster.password not in repr(s) + repr(s.connector)
    finally:
        s.close()
    assert pg_cluster.password not in safe_dsn(f"postgresql://tsls:{pg_cluster.password}@/x")


def test_a_wrong_password_is_refused_without_showing_it(pg, monkeypatch):
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(StoreError, match="cannot reach PostgreSQL") as refused:
        PgLicenseStore.open(pg, password="not-the-password")
    assert "not-the-password" not in str(refused.value)


def test_a_refusal_after_a_failed_write_undoes_it_and_the_batch_goes_on(store, pack):
    """In the batch's pipeline a write's failure is known only at the next sync: a request refused
    meanwhile still undoes it, and the next request and the COMMIT go through."""
    grant(store, "h1", pack.id)
    grant(store, "h2", pack.id)
    with store.transaction():
        with pytest.raises(TslsError):
            with store.savepoint():
                other = store.licenses(LicenseFilter(hwid="h2"))[0]
                store.apply(Decision(Outcome.RENEWED, None, changes=(    # an UPDATE giving h1 a second live CAL
                    Change(attrs.evolve(other, hwid="h1")),)))
                raise TslsError(Code.NO_LICENSE_AVAILABLE, "refused after the write")
        with store.savepoint():
            store.add_events([Event(NOW, EventId.CAL_ISSUED, "next request")])
    assert [e.message for _, e in store.new_events] == ["next request"]
    with store.transaction():
        assert [len(store.licenses(LicenseFilter(hwid=h))) for h in ("h1", "h2")] == [1, 1]


def test_a_failed_write_found_at_the_end_of_its_request_fails_that_request_only(store, pack):
    grant(store, "h1", pack.id)
    grant(store, "h2", pack.id)
    with store.transaction():
        with pytest.raises(psycopg.errors.UniqueViolation):
            with store.savepoint():
                other = store.licenses(LicenseFilter(hwid="h2"))[0]
                store.apply(Decision(Outcome.RENEWED, None, changes=(Change(attrs.evolve(other, hwid="h1")),)))
                store.add_events([Event(NOW, EventId.CAL_RENEWED, "undone")])
        with store.savepoint():
            store.add_events([Event(NOW, EventId.CAL_ISSUED, "next request")])
    assert [e.message for _, e in store.new_events] == ["next request"]
    with store.transaction():
        assert [len(store.licenses(LicenseFilter(hwid=h))) for h in ("h1", "h2")] == [1, 1]


def test_a_batch_whose_transaction_failed_is_never_reported_committed(store, pack):
    with pytest.raises(psycopg.errors.DivisionByZero):
        with store.transaction():
            store._w("SELECT 1/0")      # fails outside any request's savepoint
            store.add_events([Event(NOW, EventId.CAL_ISSUED, "never")])
    assert store.new_events == []
    with store.transaction():
        assert store.license_counts() == {}


def test_a_daemon_stuck_inside_a_batch_loses_the_ledger_lock_and_the_others_go_on(pg, pack, monkeypatch):
    """A daemon stopped between two statements of a batch (SIGSTOP, a hung host) holds the ledger lock:
    PostgreSQL ends its session after idle_in_transaction_session_timeout, and its batch never commits."""
    monkeypatch.setattr(Connector, "idle_in_transaction_ms", 500)
    stuck, other = PgLicenseStore.open(pg), PgLicenseStore.open(pg)
    try:
        batch = stuck.transaction()
        batch.__enter__()                       # holds the ledger lock, then goes quiet
        stuck.add_events([Event(NOW, EventId.CAL_ISSUED, "never committed")])
        grant(other, "h1", pack.id)             # waits for the lock, then goes on
        with pytest.raises(TslsError) as refused:
            batch.__exit__(None, None, None)
        assert refused.value.code is Code.STORAGE_UNAVAILABLE
        grant(stuck, "h2", pack.id)             # and the stuck one is back by itself
        with other.transaction():
            assert [e.message for _, e in other.events()] == []
            assert [p.issued for p in other.key_packs()] == [2]
    finally:
        stuck.close()
        other.close()


def test_a_devices_licenses_are_answered_as_the_sqlite_engine_answers_them(store):
    from tests.server.test_store import DEVICE_LOOKUPS, device_lookups
    assert device_lookups(store) == DEVICE_LOOKUPS      # the SQLite engine answers "none" from a set in memory; this one reads SQL
