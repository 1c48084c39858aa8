"""The counts status reads (license_counts) stay exact through the writer's batches, where the store
holds a batch's changes to them and writes them when its jobs end (SQLite migrations 10 and 11): any
mix of logons (their new licenses built with the id the store says, the one SQLite gives, or id 0) and
reports (no savepoint), revocations, a rebuild, requests refused before or after
writing (their savepoint undone), one that fails after writing without a savepoint (its batch rolled
back), and the sweep each batch begins with. After every batch `tsls check`'s invariants hold and the
ledger's devices are answered as SQL answers them (the store's set of devices, LicenseStore._devices),
also when another connection gave a device a license between two batches.

TSLS_BATCH_EXAMPLES runs more examples (default 30)."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsls.core.activation import Activation, ActivationStatus
from tsls.core.licensing import Logon, TerminalServer, device_logon, report_logon, revoke
from tsls.core.model import DAY, CalType, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.errors import Code, TslsError
from tsls.server.check import ledger_problems
from tsls.server.storage import LicenseFilter
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter, PartlyWritten, writes_last

NOW = 1_800_000_000
DEVICES = tuple(f"pc{i}" for i in range(5))
VERSIONS = (ProductVersion.W2003, ProductVersion.W2008)


class _Clock:
    def seconds(self):
        return NOW


def _logon(hwid, version, report, reserve=True):
    """``reserve``: the new license is built with the id the store says it gets (as the ledger's logons are),
    which must be the one SQLite gives (max(id) + 1), whatever came before; else with id 0."""
    def job(store, now):
        ts = TerminalServer(f"TS{version.value}", version, CalType.PER_DEVICE)
        new_id = store.next_license_id() if reserve else 0
        if reserve:
            assert new_id == store.db.execute("SELECT coalesce(max(id), 0) + 1 FROM licenses").fetchone()[0]
        logon = Logon(hwid, hwid, hwid, None, new_id)
        decision = store.apply(device_logon(ts, logon, store.world(hwid, True, "7"), now))
        if report and decision.license is not None:
            store.apply(report_logon(decision.license.id, hwid, store.world(hwid, True, "7"), now))
        return decision.outcome
    return writes_last(job) if not report else job


def _revoke(pick):
    def job(store, now):
        held = store.licenses(LicenseFilter(), limit=10**9)
        if not held:
            return None
        return store.apply(revoke(held[pick % len(held)], store.key_packs(), tuple(store.revoked_holding(now)), now))
    return job


def _refused_after_writing(hwid, version):
    def job(store, now):
        _logon(hwid, version, report=True)(store, now)
        raise TslsError(Code.BAD_REQUEST, "refused after it wrote")
    return job


def _partly_written(hwid, version):
    def job(store, now):
        _logon(hwid, version, report=False)(store, now)
        raise TslsError(Code.BAD_REQUEST, "failed after it wrote, without a savepoint")
    return writes_last(job)


def _rebuild(store, now):
    store.delete_all_cals()


def _install(version, total):
    def job(store, now):
        n = len(store.key_packs()) + 1
        store.add_key_pack(f"KP{n:033d}", PurchaseRef(Program.RETAIL, retail_code=f"{n:025d}"), version,
                           CalType.PER_DEVICE, total, now)
    return job


device = st.sampled_from(DEVICES)
version = st.sampled_from(VERSIONS)
jobs = st.one_of(
    st.builds(_logon, device, version, st.booleans(), st.booleans()),
    st.builds(_revoke, st.integers(0, 40)),
    st.builds(_refused_after_writing, device, version),
    st.builds(_install, version, st.integers(1, 3)),
    st.just(_rebuild),
)
# (the batch's jobs, whether it ends with a request that fails after writing without a savepoint, days
# before it, a device another connection gives a license before it, or None)
batch = st.tuples(st.lists(jobs, min_size=1, max_size=8), st.booleans(), st.integers(0, 120),
                  st.one_of(st.none(), st.tuples(device, version)))


@settings(max_examples=int(os.environ.get("TSLS_BATCH_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batches=st.lists(batch, min_size=1, max_size=12))
def test_the_counts_and_the_set_of_devices_stay_exact_through_any_batches(tmp_path_factory, batches):
    global NOW
    path = str(tmp_path_factory.mktemp("batches") / "ls.sqlite")
    store = LicenseStore.open(path)
    store.db.execute("PRAGMA synchronous=OFF")      # a test's throwaway file
    with store.transaction():
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35))
    writer = BatchWriter(None, _Clock(), store, threaded=False)
    start = NOW
    try:
        for batch_jobs, partly, days, elsewhere in batches:
            NOW += days * DAY
            if elsewhere is not None:      # another daemon on the file (the set of devices is built again)
                other = LicenseStore.open(path)
                try:
                    with other.transaction():
                        other.sweep(NOW)        # as a daemon's writer begins each batch (a CAL that ran out)
                        _logon(*elsewhere, report=False)(other, NOW)
                except TslsError:
                    pass
                finally:
                    other.close()
            if partly:
                batch_jobs = [*batch_jobs, _partly_written(DEVICES[len(batch_jobs) % len(DEVICES)], VERSIONS[0])]
            try:
                writer._run(batch_jobs, NOW)
            except PartlyWritten:
                pass                    # the whole batch rolled back
            assert ledger_problems(store.db.execute) == []
            with store.transaction():
                for hwid in DEVICES:
                    assert len(store.licenses_of(hwid)) == len(store.db.execute("SELECT id FROM licenses WHERE hwid = ?", (hwid,)).fetchall())
    finally:
        NOW = start
        store.close()


def test_an_update_that_fails_in_a_request_without_a_savepoint_moves_no_count(tmp_path):
    # A device whose CAL ran out comes back and gets it again (its first write an UPDATE from expired to
    # active). Should that UPDATE fail (disk full, an I/O error: here a trigger refuses it), nothing was
    # written, so the request is refused alone and its batch commits: its count must not have moved.
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    store.db.execute("PRAGMA synchronous=OFF")
    with store.transaction():
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35))
    writer = BatchWriter(None, _Clock(), store, threaded=False)
    writer._run([_install(ProductVersion.W2003, 2)], NOW)
    for _ in range(2):
        writer._run([_logon("pc0", ProductVersion.W2003, report=True)], NOW)
    later = NOW + 200 * DAY
    writer._run([], later)                  # the sweep: its CAL expired
    assert [lic.status for lic in store.licenses(LicenseFilter(hwid="pc0"))][-1] is LicenseStatus.EXPIRED
    store.db.execute("CREATE TEMP TRIGGER refuse BEFORE UPDATE ON main.licenses "
                     "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    (ok, failure), = writer._run([_logon("pc0", ProductVersion.W2003, report=False)], later)[1]
    assert not ok and failure.check(Exception)
    store.db.execute("DROP TRIGGER temp.refuse")
    assert ledger_problems(store.db.execute) == []
    store.close()
