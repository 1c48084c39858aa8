"""The SQLite engine of the storage seam, on real SQLite files."""
import contextlib
import sqlite3
import json

import attrs
import pytest

from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.core.events import Event, EventId
from tsls.core.licensing import Change, Decision, Outcome
from tsls.core.model import CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.server.storage import EventFilter, LicenseFilter, Registration
from tsls.server.ledgerbase import REVOKED_HOLDING_SQL
from tsls.server import store as store_module
from tsls.server.store import MIGRATIONS, LicenseStore
from tsls.sqlite import open_database


def test_a_schema_3_database_keeps_its_activation_and_registrations(tmp_path):
    path = str(tmp_path / "ls.sqlite")
    db = open_database(path, {n: MIGRATIONS[n] for n in (1, 2, 3)}, "license server")
    old = {"activation_status": "activated", "license_server_id": "L" * 35, "activation_method": "telephone",
           "activated_at": "1800000000", "clearinghouse_certificate": "C" * 35, "seed": "7",
           "terminal_server:ts1": json.dumps({"secret": "s1", "group": True, "registered_at": 1700000000}),
           "terminal_server:ts2": json.dumps({"secret": "s2", "group": False, "registered_at": 1700000001})}
    db.executemany("INSERT INTO meta VALUES (?, ?)", old.items())
    db.close()

    store = LicenseStore.open(path)
    assert store.activation() == Activation(ActivationStatus.ACTIVATED, "L" * 35, ActivationMethod.TELEPHONE,
                                            1800000000, "C" * 35)
    assert store.registrations() == (Registration("ts1", "s1", 1700000000, True),
                                     Registration("ts2", "s2", 1700000001, False))
    keys = [k for (k,) in store.db.execute("SELECT key FROM meta")]
    assert keys == ["seed"]
    store.close()


def test_a_new_database_is_not_activated_and_has_no_registrations(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    assert store.activation() == Activation()
    assert store.registration("ts1") is None
    store.close()


def test_a_write_drops_the_cached_copy_of_what_it_changed(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        assert store.registration("ts1") is None          # cached as absent...
        store.save_registration(Registration("ts1", "s", 5))
        assert store.registration("ts1") == Registration("ts1", "s", 5)    # ...and the write drops the copy
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35, ActivationMethod.AUTOMATIC, 9))
    assert store.activation().activated
    store.close()


def _cal(hwid, pack, status=LicenseStatus.ACTIVE, expires_at=100):
    return License(0, LicenseKind.PERMANENT, status, hwid, "m", "u", "ts", ProductVersion.W2003, pack, False, 0,
                   expires_at)


def test_a_license_filter_matches_every_field_given(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        pack = store.add_key_pack("K" * 35, PurchaseRef(Program.RETAIL, retail_code="R" * 25), ProductVersion.W2003,
                                  CalType.PER_DEVICE, 5, 0)
        for hwid, status, expires_at in (("a", LicenseStatus.ACTIVE, 100), ("b", LicenseStatus.REVOKED, 50),
                                         ("c", LicenseStatus.REVOKED, 150)):
            store.apply(Decision(Outcome.UPGRADED, None, changes=(Change(_cal(hwid, pack.id, status, expires_at)),)))
    assert [lic.hwid for lic in store.licenses(LicenseFilter())] == ["a", "b", "c"]
    assert [lic.hwid for lic in store.licenses(LicenseFilter(status=LicenseStatus.REVOKED, expires_after=60))] == ["c"]
    assert [lic.hwid for lic in store.revoked_holding(60)] == ["c"]     # the revocation limit's, by its index
    plan = store.db.execute("EXPLAIN QUERY PLAN " + REVOKED_HOLDING_SQL.format(place="?"), (60,)).fetchall()
    assert "licenses_revoked" in str(plan)
    assert [lic.hwid for lic in store.licenses(LicenseFilter(key_pack=pack.id, hwid="a"))] == ["a"]
    assert store.licenses(LicenseFilter(kind=LicenseKind.TEMPORARY)) == []
    assert store.license_counts() == {"permanent:active": 1, "permanent:revoked": 2}
    store.close()


def test_an_event_filter_keeps_the_newest_that_match_oldest_first(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        store.add_events([Event(at, EventId.CAL_ISSUED if at % 2 else EventId.CAL_RENEWED, f"e{at}", hwid=f"h{at % 3}")
                          for at in range(10)])
    messages = [e.message for _, e in store.events(EventFilter(event_ids=(int(EventId.CAL_ISSUED),)), limit=3)]
    assert messages == ["e5", "e7", "e9"]
    assert [e.message for _, e in store.events(EventFilter(hwid="h0", since=3))] == ["e3", "e6", "e9"]
    store.close()


def test_a_batchs_events_are_written_as_they_were_added_however_many(tmp_path):
    """A batch's held events go in statements of many rows and the rest one by one: every one, in order,
    with consecutive ids, the same as the committed (id, event) pairs the log and followers are given."""
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        store.add_events([Event(1, EventId.ACTIVATED, "before")])
    added = [Event(at, EventId.TEMPORARY_ISSUED if at % 3 else EventId.LOGON_REFUSED, f"e{at}", f"TS{at % 2}",
                   f"h{at}", None if at % 5 == 0 else f"u{at}", at if at % 2 else None)
             for at in range(2, 2 + 2 * store_module._EVENTS_AT_ONCE + 7)]
    with store.transaction(), store.held_events():
        store.add_events(added[:3])
        store.add_events(added[3:])
    assert store.new_events == list(zip(range(2, 2 + len(added)), added))
    assert store.events(limit=10**6) == [(1, Event(1, EventId.ACTIVATED, "before")), *store.new_events]
    assert store.db.execute("SELECT DISTINCT name FROM events WHERE event_id = 1101").fetchall() == [("TEMPORARY_ISSUED",)]
    store.close()


def test_the_license_counts_status_reads_follow_every_write_and_a_migrated_ledger(tmp_path):
    """status reads license_counts (kept by the store and triggers) instead of counting every license; the counts
    equal the ledger's through inserts, changes of status and the migration of an older ledger."""
    from tsls.server.check import check_ledger

    path = str(tmp_path / "ls.sqlite")
    db = open_database(path, {n: MIGRATIONS[n] for n in range(1, 7)}, "license server")
    db.execute("INSERT INTO licenses (kind, status, hwid, machine, user, terminal_server, product_version, key_pack, "
               "validated, issued_at, expires_at) VALUES ('temporary', 'active', 'h0', 'm', 'u', 'ts', '2003', NULL, "
               "0, 0, 100), ('temporary', 'upgraded', 'h1', 'm', 'u', 'ts', '2003', NULL, 0, 0, 100)")
    db.close()
    store = LicenseStore.open(path)
    assert store.license_counts() == {"temporary:active": 1, "temporary:upgraded": 1}
    with store.transaction():
        pack = store.add_key_pack("K" * 35, PurchaseRef(Program.RETAIL, retail_code="R" * 25), ProductVersion.W2003,
                                  CalType.PER_DEVICE, 5, 0)
        for hwid in ("a", "b", "c"):
            store.apply(Decision(Outcome.UPGRADED, _cal(hwid, pack.id), changes=(Change(_cal(hwid, pack.id), 1),)))
        revoked = store.licenses(LicenseFilter(hwid="a"))[0]
        revoked = attrs.evolve(revoked, status=LicenseStatus.REVOKED)
        store.apply(Decision(Outcome.REVOKED, revoked, changes=(Change(revoked, -1),)))
    with store.transaction():
        store.sweep(1000)               # everything active expires
    counted = dict(store.db.execute("SELECT kind || ':' || status, count(*) FROM licenses GROUP BY kind, status"))
    assert store.license_counts() == counted == {"temporary:expired": 1, "temporary:upgraded": 1,
                                                 "permanent:revoked": 1, "permanent:expired": 2}
    store.close()
    assert check_ledger(path) == []


def test_a_schema_8_ledger_gets_its_counts_by_version_and_check_verifies_them(tmp_path):
    """Migration 9: license_counts by kind, status and product version (the console's dashboard and
    /metrics read them instead of grouping every license), kept through every write; tsls check
    compares them with the licenses, and an index finds the revoked licenses."""
    from tsls.server.check import check_ledger
    from tsls.server.readstore import ReadStore

    path = str(tmp_path / "ls.sqlite")
    db = open_database(path, {n: MIGRATIONS[n] for n in range(1, 9)}, "license server")
    db.execute("INSERT INTO licenses (kind, status, hwid, machine, user, terminal_server, product_version, key_pack, "
               "validated, issued_at, expires_at) VALUES ('temporary', 'active', 'h0', 'm', 'u', 'ts', '2003', NULL, "
               "0, 0, 100), ('temporary', 'active', 'h1', 'm', 'u', 'ts', '2008', NULL, 0, 0, 100), "
               "('temporary', 'upgraded', 'h2', 'm', 'u', 'ts', '2008', NULL, 0, 0, 100)")
    db.close()
    assert check_ledger(path) == []              # a schema 8 file, checked as it is (read-only, not migrated)
    store = LicenseStore.open(path)
    reads = ReadStore(path)

    def counts():
        with reads.snapshot() as snap:
            return snap.license_counts(), snap.kind_status_counts()

    assert counts() == ({("temporary", "active", "2003"): 1, ("temporary", "active", "2008"): 1,
                         ("temporary", "upgraded", "2008"): 1}, {"temporary:active": 2, "temporary:upgraded": 1})
    with store.transaction():
        pack = store.add_key_pack("K" * 35, PurchaseRef(Program.RETAIL, retail_code="R" * 25), ProductVersion.W2012,
                                  CalType.PER_DEVICE, 5, 0)
        for hwid in ("a", "b"):
            cal = attrs.evolve(_cal(hwid, pack.id), product_version=ProductVersion.W2012)
            store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, 1),)))
        revoked = attrs.evolve(store.licenses(LicenseFilter(hwid="a"))[0], status=LicenseStatus.REVOKED)
        store.apply(Decision(Outcome.REVOKED, revoked, changes=(Change(revoked, -1),)))
    counted = {(k, s, v): n for k, s, v, n in store.db.execute(
        "SELECT kind, status, product_version, count(*) FROM licenses GROUP BY 1, 2, 3")}
    assert counts()[0] == counted == {("temporary", "active", "2003"): 1, ("temporary", "active", "2008"): 1,
                                      ("temporary", "upgraded", "2008"): 1, ("permanent", "active", "2012"): 1,
                                      ("permanent", "revoked", "2012"): 1}
    assert store.license_counts() == counts()[1] == {"temporary:active": 2, "temporary:upgraded": 1,
                                                     "permanent:active": 1, "permanent:revoked": 1}
    with reads.snapshot() as snap:
        assert [lic.hwid for lic in snap.revoked_holding(0)] == ["a"]
        plan = snap.run("EXPLAIN QUERY PLAN SELECT * FROM licenses WHERE status = 'revoked' AND expires_at > 0")
        assert "licenses_revoked" in " ".join(str(row) for row in plan)
    reads.close()
    store.close()
    assert check_ledger(path) == []
    db = sqlite3.connect(path)
    db.execute("UPDATE license_counts SET n = 3 WHERE product_version = '2008' AND status = 'active'")
    db.commit()
    db.close()
    assert check_ledger(path) == ["license counts: 3 temporary active 2008 kept for status, 1 in the ledger"]


def test_the_read_stores_event_counts_follow_new_events_for_each_filter(tmp_path):
    """An export's pages each say how many events match: SQLite's read store counts the events
    written since the last count for that filter and adds them (readstore.EventCounts), which must
    always equal counting them all, whatever is written between two counts."""
    from tsls.server.readstore import ReadStore

    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    reads = ReadStore(path)
    filters = [EventFilter(), EventFilter(event_ids=(int(EventId.CAL_ISSUED),)), EventFilter(hwid="h1"),
               EventFilter(since=5), EventFilter(hwid="h1", event_ids=(int(EventId.CAL_RENEWED),), since=3)]
    at = 0
    for round_ in range(6):
        with store.transaction():
            store.add_events([Event(at + i, EventId.CAL_ISSUED if (at + i) % 3 else EventId.CAL_RENEWED, "e",
                                    hwid=f"h{(at + i) % 4}") for i in range(round_ * 3)])
        at += round_ * 3
        with reads.snapshot() as snap:
            for which in filters[: round_ + 1]:         # some filters first counted only later
                where, params = snap._event_where(which)
                everything = snap.run(f"SELECT count(*) FROM events WHERE {' AND '.join(['1 = 1', *where])}",
                                      params).fetchone()[0]
                assert snap.count_events(which) == everything
                assert snap.count_events(which) == everything          # counted again in the same snapshot
    assert everything > 0
    reads.close()
    store.close()


def test_a_grant_keeps_the_cached_key_packs_in_step_with_the_table(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    ref = PurchaseRef(Program.RETAIL, retail_code="A" * 25)
    with store.transaction():
        one = store.add_key_pack("K1".ljust(35, "0"), ref, ProductVersion.W2003, CalType.PER_DEVICE, 5, 0)
        two = store.add_key_pack("K2".ljust(35, "0"), ref, ProductVersion.W2003, CalType.PER_DEVICE, 5, 0)
        assert [p.issued for p in store.key_packs()] == [0, 0]
    with store.transaction():
        cal = _cal("h1", two.id)
        store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, pack_delta=+1),)))
        kept = store.key_packs()
        assert [p.issued for p in kept] == [0, 1]
        store._forget()
        assert store.key_packs() == kept            # as the table has them
    with store.transaction():
        with contextlib.suppress(ValueError), store.savepoint():
            cal = _cal("h2", one.id)
            store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, pack_delta=+1),)))
            raise ValueError("undone")
        assert [p.issued for p in store.key_packs()] == [0, 1]
    store.close()


def test_an_update_the_core_says_the_old_of_writes_what_differs_and_the_row_ends_as_the_license(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        pack = store.add_key_pack("K1".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code="A" * 25),
                                  ProductVersion.W2003, CalType.PER_DEVICE, 5, 0)
        new = _cal("h1", pack.id)
        cal = store.apply(Decision(Outcome.UPGRADED, new, changes=(Change(new, 1),))).license
        statements = []
        store.db.set_trace_callback(statements.append)
        renewed = attrs.evolve(cal, expires_at=500, renewals=1)
        store.apply(Decision(Outcome.RENEWED, renewed, changes=(Change(renewed, was=cal),)))
        store.apply(Decision(Outcome.VALIDATED, renewed, changes=(Change(renewed, was=renewed),)))   # nothing differs
        gone = attrs.evolve(renewed, status=LicenseStatus.REVOKED)
        store.apply(Decision(Outcome.REVOKED, gone, changes=(Change(gone, -1, was=renewed),)))
        store.db.set_trace_callback(None)
        assert store.license(cal.id) == gone
        updates = sorted({s for s in statements if s.startswith("UPDATE licenses")})     # (triggers repeat one)
        assert updates == ['UPDATE licenses SET "expires_at" = 500, "renewals" = 1 WHERE id = 1',
                           """UPDATE licenses SET "status" = 'revoked' WHERE id = 1"""]
        assert store.key_packs()[0].issued == 0
    store.close()


def test_a_batch_writes_its_grants_issued_once_per_key_pack_when_its_jobs_end(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    ref = PurchaseRef(Program.RETAIL, retail_code="A" * 25)
    with store.transaction():
        one = store.add_key_pack("K1".ljust(35, "0"), ref, ProductVersion.W2003, CalType.PER_DEVICE, 5, 0)
        two = store.add_key_pack("K2".ljust(35, "0"), ref, ProductVersion.W2003, CalType.PER_DEVICE, 1, 0)

    def table():
        return [n for (n,) in store.db.execute("SELECT issued FROM key_packs ORDER BY id")]

    def grant(hwid, pack):
        cal = _cal(hwid, pack.id)
        return store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, pack_delta=+1),))).license

    statements = []
    with store.transaction():
        with store.held_events():
            store.key_packs()
            store.db.set_trace_callback(statements.append)
            grant("h1", one)
            grant("h2", one)
            assert store.changes() == store.db.total_changes + 2     # the held changes count as written
            grant("h3", two)
            assert [p.issued for p in store.key_packs()] == [2, 1]     # the decisions read them at once
            assert table() == [0, 0]                                  # the table when the jobs end
        assert table() == [2, 1]
        assert sorted({s for s in statements if s.startswith("UPDATE key_packs")}) == [     # (triggers repeat one)
            "UPDATE key_packs SET issued = issued + 1 WHERE id = 2", "UPDATE key_packs SET issued = issued + 2 WHERE id = 1"]
        store.db.set_trace_callback(None)
        with store.held_events():
            with pytest.raises(sqlite3.IntegrityError):                # a pack's CHECK still refuses at once
                with store.savepoint():
                    grant("h4", two)
            grant("h5", one)
            with contextlib.suppress(ValueError), store.savepoint():      # earlier requests' changes stay
                grant("h6", one)
                raise ValueError("undone")
            assert table() == [3, 1]
            assert [p.issued for p in store.key_packs()] == [3, 1]
    store._forget()
    assert [p.issued for p in store.key_packs()] == table() == [3, 1]
    with pytest.raises(ValueError), store.transaction(), store.held_events():     # a batch rolled back
        grant("h7", one)
        raise ValueError("undone")
    assert [p.issued for p in store.key_packs()] == table() == [3, 1]
    store.close()


def test_what_an_update_changes_is_every_column_that_differs_from_the_license_as_read():
    from tsls.server.ledgerbase import LICENSE_COLUMNS, changed_columns
    was = License(7, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE, "h", "m", "u", "ts", ProductVersion.W2003, None,
                  False, 1, 2, 0)
    assert changed_columns(Change(was)) is None
    assert changed_columns(Change(was, was=was)) == ()
    other = License(7, LicenseKind.PERMANENT, LicenseStatus.EXPIRED, "h2", "m2", "u2", "ts2", ProductVersion.W2008, 3,
                    True, 4, 5, 6)
    for n, name in enumerate(LICENSE_COLUMNS):
        assert changed_columns(Change(attrs.evolve(was, **{name: getattr(other, name)}), was=was)) == (n,)
    assert changed_columns(Change(other, was=was)) == tuple(range(len(LICENSE_COLUMNS)))


def test_a_devices_licenses_are_read_by_id_and_through_the_partial_indexes_of_cals_on_a_migrated_ledger(tmp_path):
    path = str(tmp_path / "ls.sqlite")
    db = open_database(path, {n: MIGRATIONS[n] for n in range(1, 8)}, "license server")
    assert {"licenses_hwid"} <= {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    store = LicenseStore.open(path)
    indexes = {n for (n,) in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "licenses_hwid" not in indexes and "one_temporary" not in indexes and "licenses_hwid_rest" in indexes
    with store.transaction():
        pack = store.add_key_pack("K1".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code="A" * 25),
                                  ProductVersion.W2003, CalType.PER_DEVICE, 9, 0)
        temporary = License(0, LicenseKind.TEMPORARY, LicenseStatus.UPGRADED, "h1", "m", "u", "ts",
                            ProductVersion.W2003, None, True, 0, 100)
        written = [store.apply(Decision(Outcome.UPGRADED, lic, changes=(Change(lic),))).license for lic in (
            _cal("h1", pack.id, LicenseStatus.EXPIRED), _cal("h2", pack.id), temporary,
            _cal("h1", pack.id, LicenseStatus.REVOKED), _cal("h1", pack.id))]
    mine = [lic for lic in written if lic.hwid == "h1"]
    assert store.licenses_of("h1") == tuple(mine)                      # outside a transaction: by hardware ID
    assert store.licenses(LicenseFilter(hwid="h1")) == mine
    assert store.licenses(LicenseFilter(hwid="h1", status=LicenseStatus.REVOKED)) == [mine[2]]
    with store.transaction():
        # inside one: the temporary license by its id (kept in _devices), the CALs through their indexes
        assert store.licenses_of("h1") == tuple(mine) and store.licenses_of("h3") == ()
        assert store._devices[hash("h1")] == mine[1].id and store._devices[hash("h2")] == 0
        from tsls.server.store import _by_id
        plan = " ".join(row[-1] for row in store.db.execute("EXPLAIN QUERY PLAN " + _by_id(1), (3, "h1", "h1", "h1")))
        assert "SCAN" not in plan and "PRIMARY KEY" in plan and "one_live_cal" in plan and "licenses_hwid_rest" in plan
    store.close()


# --- a device's licenses: the set of devices that have one (LicenseStore._devices) -----------------------

def _give(store, hwid, version=ProductVersion.W2003):
    """A temporary license for the device (one per version)."""
    lic = License(0, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE, hwid, "m", "u", "ts", version, None, False, 0, 100)
    return store.apply(Decision(Outcome.TEMPORARY_ISSUED, lic, changes=(Change(lic),))).license


def device_lookups(store) -> list:
    """What ``licenses_of`` answers through a device's life: no license, one written, one written and
    undone, after a restart of the transaction. Both engines must answer the same (the PostgreSQL
    engine's test runs this too)."""
    seen = []
    with store.transaction():
        seen.append(store.licenses_of("none"))
        first = _give(store, "d1")
        seen.append(store.licenses_of("d1") == (first,))
        seen.append(store.licenses_of("d2"))
    with pytest.raises(RuntimeError):
        with store.transaction():
            _give(store, "d2")
            seen.append(len(store.licenses_of("d2")))
            raise RuntimeError("undone")
    with store.transaction():
        seen.append(store.licenses_of("d2"))            # the write was undone: none, though its bit stays
        seen.append(store.licenses_of("d1") == (first,))
        second = _give(store, "d1", ProductVersion.W2008)
        seen.append(store.licenses_of("d1") == (first, second))
    seen.append(store.licenses_of("d1") == (first, second))     # outside a transaction: SQL, the same
    return seen


DEVICE_LOOKUPS = [(), True, (), 1, (), True, True, True]


def _selects(store):
    """The SELECTs of licenses the connection runs, as a list that fills."""
    statements = []
    store.db.set_trace_callback(lambda sql: statements.append(sql) if "FROM licenses" in sql else None)
    return statements


def test_a_device_without_a_license_is_answered_without_sql_and_one_with_a_license_from_sql(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    assert device_lookups(store) == DEVICE_LOOKUPS
    selects = _selects(store)
    with store.transaction():
        assert store.licenses_of("never seen") == ()
        assert selects == []                            # certainly none: no SQL
        assert len(store.licenses_of("d1")) == 2
        assert len(selects) == 1
    store.close()


def test_the_set_of_devices_is_built_from_the_ledger_and_again_after_another_connection_wrote(tmp_path):
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    with store.transaction():
        given = [_give(store, f"dev{i}") for i in range(5)] + [_give(store, "two\nlines")]
    store.close()

    store = LicenseStore.open(path)         # built at its first BEGIN, from the table
    with store.transaction():
        assert [store.licenses_of(lic.hwid) for lic in given] == [(lic,) for lic in given]
        assert store.licenses_of("other") == ()
    other = LicenseStore.open(path)
    with other.transaction():
        late = _give(other, "late")
    other.close()
    with store.transaction():               # another connection committed: built again
        assert store.licenses_of("late") == (late,)
    store.close()


def test_a_checkpoint_from_its_own_connection_does_not_make_the_set_of_devices_be_built_again(tmp_path, monkeypatch):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    store.checkpoint_in_background()
    with store.transaction():
        _give(store, "d1")
    builds = []
    monkeypatch.setattr(store, "_index_devices", lambda: builds.append(1))
    store.checkpoint()
    with store.transaction():
        assert len(store.licenses_of("d1")) == 1
    assert builds == []
    store.close()


def test_a_begin_whose_set_of_devices_could_not_be_built_leaves_no_transaction_and_builds_it_next_time(tmp_path,
                                                                                                       monkeypatch):
    # Building the set opens a connection of its own (it can fail: no descriptor left with 1,000 terminal
    # servers connected, say). The BEGIN must not stay open (every later batch would fail), and the set of
    # before must not be taken as current: a device another connection gave a license would be "none".
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    with store.transaction():
        _give(store, "d1")                  # the set is built, and then kept
    other = LicenseStore.open(path)
    with other.transaction():
        late = _give(other, "late")
    other.close()
    real = sqlite3.connect

    def refused(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")
    monkeypatch.setattr(store_module.sqlite3, "connect", refused)
    with pytest.raises(sqlite3.OperationalError):
        store.begin()
    assert not store.db.in_transaction
    monkeypatch.setattr(store_module.sqlite3, "connect", real)
    with store.transaction():
        assert store.licenses_of("late") == (late,)
    store.close()


def _by_sql(store, hwid):
    """A device's licenses as SQL alone says them ("hwid = ?"), for ``licenses_of`` to be held to."""
    rows = store.db.execute(f"SELECT {store_module._COLUMNS} FROM licenses WHERE hwid = ? ORDER BY id", (hwid,))
    return tuple(store_module.license_row(r) for r in rows)


def test_the_entries_built_from_a_ledger_hold_every_temporary_license_of_each_device(tmp_path, monkeypatch):
    # Built a few ids at a time, so that a range holds a hardware ID with a newline (read one by one) and
    # the next does not (read joined); devices with temporary licenses of two versions, a comma in one.
    monkeypatch.setattr(store_module, "_DEVICES_STEP", 2)
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    devices = ("plain", "a,b", "two\nlines", "cal only", "x\x00y")
    with store.transaction():
        pack = store.add_key_pack("K1".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code="A" * 25),
                                  ProductVersion.W2003, CalType.PER_DEVICE, 9, 0)
        for hwid in devices[:3] + devices[4:]:
            _give(store, hwid)
        for hwid in devices[1:4]:
            cal = _cal(hwid, pack.id)
            store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, pack_delta=+1),)))
        for hwid in ("a,b", "two\nlines"):
            _give(store, hwid, ProductVersion.W2008)
    store.close()

    store = LicenseStore.open(path)         # built at its first BEGIN, from the table alone
    with store.transaction():
        for hwid in devices:
            temporary = {i for (i,) in store.db.execute(
                "SELECT id FROM licenses WHERE hwid = ? AND kind = 'temporary'", (hwid,))}
            held = store._devices[hash(hwid)]
            assert temporary <= ({held} if type(held) is int else set(held)), hwid
            assert store.licenses_of(hwid) == _by_sql(store, hwid) != (), hwid
        assert len(store.licenses_of("a,b")) == len(store.licenses_of("two\nlines")) == 3
        assert store.licenses_of("a") == store.licenses_of("two") == store.licenses_of("x") == ()
    store.close()


def test_a_device_another_connection_gave_a_second_temporary_license_is_not_given_a_third(tmp_path):
    # The device is known here (its entry holds its first temporary license's id): only the entries built
    # again at BEGIN hold the second, and without it the core would issue one more for that version.
    from tsls.core.licensing import Logon, TerminalServer, device_logon
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    with store.transaction():
        first = _give(store, "d1")
    other = LicenseStore.open(path)
    with other.transaction():
        second = _give(other, "d1", ProductVersion.W2008)
    other.close()
    with store.transaction():
        assert store.licenses_of("d1") == (first, second)
        ts = TerminalServer("TS08", ProductVersion.W2008, CalType.PER_DEVICE)
        decision = device_logon(ts, Logon("d1", "m", "u", None, store.next_license_id()),
                                store.world("d1", True, "7"), 50)
        assert decision.outcome is Outcome.TEMPORARY and decision.license == second and decision.changes == ()
    store.close()


def test_devices_whose_hashes_are_the_same_or_whose_ids_were_reused_are_each_answered_their_own(tmp_path,
                                                                                                  monkeypatch):
    # Entries are by the hash of a hardware ID, and a rebuild of the ledger (every license deleted) gives
    # the ids again: an entry may name another device's license, or one of its own of another kind;
    # SQL keeps each device's own, each once.
    monkeypatch.setattr(store_module, "hash", lambda hwid: 7, raising=False)      # every device collides
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    with store.transaction():
        _give(store, "d1")
        _give(store, "d2")
        _give(store, "d2", ProductVersion.W2008)
        assert store._devices == {7: (1, 2, 3)}
        assert [len(store.licenses_of(h)) for h in ("d1", "d2", "d3")] == [1, 2, 0]
    with store.transaction():
        store.delete_all_cals()
        pack = store.add_key_pack("K1".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code="A" * 25),
                                  ProductVersion.W2003, CalType.PER_DEVICE, 9, 0)
        cal = _cal("d1", pack.id)
        cal = store.apply(Decision(Outcome.UPGRADED, cal, changes=(Change(cal, pack_delta=+1),))).license
        again = _give(store, "d3")
        assert (cal.id, again.id) == (1, 2)          # ids 1 and 2, which the entry names still
        for hwid in ("d1", "d2", "d3"):
            assert store.licenses_of(hwid) == _by_sql(store, hwid)
        assert store.licenses_of("d1") == (cal,) and store.licenses_of("d3") == (again,)
    store.close()
