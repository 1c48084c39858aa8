"""What every logon reads from the SQLite store's caches (7edc6ba, 58afac2): the settings
(``logon_settings``: the security group policy, activation, the Prevent License Upgrade policy), the
world of a device that holds nothing (``world``, kept while nothing it holds changes) and the next
license's id (``next_license_id``) are what the database says after any mix of changes to them,
requests undone (their savepoint), batches rolled back, and commits by another connection, on a
real SQLite file."""
import random
import sqlite3

import pytest

from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.core.licensing import Logon, TerminalServer, World, device_logon
from tsls.core.model import CalType, ProductVersion, Program, PurchaseRef
from tsls.server.app import load_identity
from tsls.server.store import LicenseStore

NOW = 1_800_000_000
TS = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)


class Undone(Exception):
    """A request refused after it wrote: its savepoint is undone."""


def _as_sql_says(store):
    """(settings, packs, next id) read with SQL, past every cache (the held Issued changes added)."""
    db = store.db
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'policy:%'").fetchall())
    status = db.execute("SELECT status FROM activation").fetchone()
    settings = (meta.get("policy:security_group") == "on", status is not None and status[0] == "activated",
                meta.get("policy:prevent_upgrade") == "on")
    packs = [(i, issued + store._issued.get(i, 0), total) for i, issued, total in
             db.execute("SELECT id, issued, total FROM key_packs ORDER BY id")]
    next_id = db.execute("SELECT coalesce(max(id), 0) + 1 FROM licenses").fetchone()[0]
    return settings, packs, next_id


def _check(store):
    settings, packs, next_id = _as_sql_says(store)
    assert store.logon_settings() == settings
    world = store.world("f" * 40, settings[1], "1", settings[2])      # a device that holds nothing
    assert world == World(settings[1], world.packs, (), "1", settings[2])
    assert [(p.id, p.issued, p.total) for p in world.packs] == packs
    assert store.next_license_id() == next_id


def _change(store, r, n):
    what = r.randrange(7)
    if what == 0:
        store.set_security_group_policy(r.random() < 0.5)
    elif what == 1:
        store.set_prevent_upgrade_policy(r.random() < 0.5)
    elif what == 2:
        on = r.random() < 0.7
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "LS", ActivationMethod.AUTOMATIC, NOW) if on
                              else Activation())
    elif what == 3:
        store.add_key_pack(f"kp{n}", PurchaseRef(Program.RETAIL, "ABCDE" * 5), ProductVersion.W2003,
                           CalType.PER_DEVICE, r.randint(1, 3), NOW)
    else:                   # a logon, as the ledger's job makes it
        hwid = f"{r.randrange(8):040x}"
        in_group_only, activated, prevent_upgrade = store.logon_settings()
        world = store.world(hwid, activated, "1", prevent_upgrade)
        store.apply(device_logon(TS, Logon(hwid, hwid, hwid, None, store.next_license_id()), world, NOW))


@pytest.mark.parametrize("seed", range(6))
def test_what_a_logon_reads_from_the_caches_is_what_the_database_says(tmp_path, seed):
    r = random.Random(seed)
    path = str(tmp_path / "ls.sqlite")
    store = LicenseStore.open(path)
    load_identity(store, "1")
    try:
        for n in range(120):
            if r.random() < 0.15:       # another connection commits a change (PRAGMA data_version)
                other = sqlite3.connect(path)
                other.execute("INSERT INTO meta (key, value) VALUES ('policy:security_group', ?) ON CONFLICT (key) "
                              "DO UPDATE SET value = excluded.value", (r.choice(["on", "off"]),))
                other.commit()
                other.close()
            store.begin()
            with store.held_events():
                store.sweep(NOW)
                _check(store)
                for k in range(r.randint(1, 5)):
                    try:
                        with store.savepoint():
                            _change(store, r, f"{n}.{k}")
                            _check(store)
                            if r.random() < 0.25:
                                raise Undone
                    except Undone:
                        pass
                    _check(store)
            _check(store)
            if r.random() < 0.2:
                store.rollback()
            else:
                store.commit()
            store.begin()
            _check(store)
            store.rollback()
    finally:
        store.close()


def test_a_device_that_holds_nothing_sees_the_same_world_until_what_it_holds_changes(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    load_identity(store, "1")
    try:
        store.begin()
        first = store.world("a" * 40, True, "1")
        assert store.world("b" * 40, True, "1") is first
        assert store.world("b" * 40, False, "1").activated is False
        assert store.world("b" * 40, True, "2").seed == "2"
        assert store.world("b" * 40, True, "1", prevent_upgrade=True).prevent_upgrade is True
        store.add_key_pack("kp", PurchaseRef(Program.RETAIL, "ABCDE" * 5), ProductVersion.W2003, CalType.PER_DEVICE,
                           5, NOW)
        [pack] = store.world("c" * 40, True, "1").packs
        assert pack.key_pack_id == "kp" and pack.total == 5
        store.rollback()
        store.begin()
        assert store.world("c" * 40, True, "1").packs == ()     # the key pack was undone
        store.rollback()
    finally:
        store.close()
