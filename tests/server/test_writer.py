"""The writer's jobs on a real SQLite ledger: savepoints for jobs that may write before they refuse,
none for jobs that decide first (``writes_last``), and a batch's events written together."""
import pytest

from tsls.core.events import Event, EventId
from tsls.errors import Code, TslsError
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter, PartlyWritten, writes_last

NOW = 1_800_000_000


@pytest.fixture
def store(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    yield store
    store.close()


def _event(text):
    return Event(NOW, EventId.POLICY_CHANGED, text)


def _run(store, *jobs):
    """One batch of ``jobs``, committed: (results, the events it published)."""
    writer = BatchWriter(None, None, store, threaded=False)
    with store.transaction():
        results = writer._jobs(list(jobs), NOW)
    return results, [(i, e.message) for i, e in store.new_events]


def _messages(store):
    return [(i, e.message) for i, e in store.events()]


def test_a_batch_writes_its_events_together_in_order_with_their_row_ids(store):
    def one(s, now):
        s.add_events([_event("a"), _event("b")])
        return "one"

    def two(s, now):
        s.add_events([_event("c")])
        return "two"

    results, published = _run(store, one, writes_last(two))
    assert results == [(True, "one"), (True, "two")]
    assert published == [(1, "a"), (2, "b"), (3, "c")]
    assert _messages(store) == published
    _, published = _run(store, writes_last(one))
    assert published == [(4, "a"), (5, "b")]
    assert _messages(store)[-2:] == published


def test_a_job_that_decides_first_and_refuses_keeps_its_events_and_one_that_raises_drops_them(store):
    def returns_refusal(s, now):
        s.add_events([_event("refusal on record")])
        return TslsError(Code.NOT_IN_GROUP, "no")

    def raises(s, now):
        s.add_events([_event("dropped")])
        raise TslsError(Code.INVALID_LICENSE, "no")

    def fails(s, now):
        s.add_events([_event("dropped too")])
        raise ValueError("a bug")

    results, published = _run(store, writes_last(returns_refusal), writes_last(raises), writes_last(fails))
    assert [ok for ok, _ in results] == [False, False, False]
    assert results[1][1].code is Code.INVALID_LICENSE
    assert results[2][1].check(ValueError)
    assert published == [(1, "refusal on record")]
    assert _messages(store) == published


def test_a_job_without_a_savepoint_that_fails_after_writing_rolls_back_its_whole_batch(store):
    def earlier(s, now):
        s.set_prevent_upgrade_policy(True)
        s.add_events([_event("earlier")])

    def writes_then_fails(s, now):
        s.set_security_group_policy(True)
        raise TslsError(Code.NOT_IN_GROUP, "too late to refuse")

    with pytest.raises(PartlyWritten):
        _run(store, earlier, writes_last(writes_then_fails))
    assert not store.prevent_upgrade_policy() and not store.security_group_policy()
    assert _messages(store) == []
    results, published = _run(store, earlier)      # the ledger is usable after
    assert results == [(True, None)] and published == [(1, "earlier")]


def test_a_refusal_in_a_savepoint_undoes_only_its_own_writes_and_events(store):
    def kept(s, now):
        s.set_prevent_upgrade_policy(True)
        s.add_events([_event("kept")])

    def undone(s, now):
        s.set_security_group_policy(True)
        s.add_events([_event("undone")])
        raise TslsError(Code.NOT_IN_GROUP, "no")

    def after(s, now):
        s.add_events([_event("after")])

    results, published = _run(store, kept, undone, writes_last(after))
    assert [ok for ok, _ in results] == [True, False, True]
    assert published == [(1, "kept"), (2, "after")]
    assert store.prevent_upgrade_policy() and not store.security_group_policy()
    assert _messages(store) == published


def test_events_added_outside_a_batch_are_written_at_once(store):
    with store.transaction():
        store.add_events([_event("now")])
        assert _messages(store) == [(1, "now")]
    assert [(i, e.message) for i, e in store.new_events] == [(1, "now")]


# --- license_counts: what a batch inserts and changes is counted by the store when its jobs end (migrations 10, 11) ---

def test_a_batchs_inserted_licenses_are_counted_exactly_through_updates_refusals_and_rollbacks(store, tmp_path):
    from tsls.core.licensing import Change, Decision, Outcome
    from tsls.core.model import License, LicenseKind, LicenseStatus, ProductVersion
    from tsls.server.check import check_ledger

    def temporary(hwid, version=ProductVersion.W2003):
        return License(0, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE, hwid, "m", "u", "ts", version, None, False,
                       NOW, NOW + 100)

    def give(hwid, version=ProductVersion.W2003):
        def job(s, now):
            lic = temporary(hwid, version)
            return s.apply(Decision(Outcome.TEMPORARY_ISSUED, lic, changes=(Change(lic),))).license
        return writes_last(job)

    def upgrade_in_same_batch(s, now):          # moved from a count held, not yet written
        [lic] = s.licenses_of("d1")
        gone = lic.with_status(LicenseStatus.UPGRADED)
        s.apply(Decision(Outcome.UPGRADED, gone, changes=(Change(gone, was=lic),)))
        return s.license_counts()

    def expire_without_was(s, now):             # the store reads the license as it was to move its count
        [lic] = s.licenses_of("d2")
        gone = lic.with_status(LicenseStatus.EXPIRED)
        s.apply(Decision(Outcome.EXPIRED, gone, changes=(Change(gone),)))

    def refused_after_insert(s, now):           # in a savepoint: its insert and its count undone
        lic = temporary("undone")
        s.apply(Decision(Outcome.TEMPORARY_ISSUED, lic, changes=(Change(lic),)))
        raise TslsError(Code.NOT_IN_GROUP, "no")

    results, _ = _run(store, give("d1"), give("d2", ProductVersion.W2008), writes_last(upgrade_in_same_batch),
                      refused_after_insert, give("d3"), writes_last(expire_without_was))
    assert [ok for ok, _ in results] == [True, True, True, False, True, True]
    assert results[2][1] == {"temporary:upgraded": 1, "temporary:active": 1}      # read inside the batch: exact
    counted = dict(store.db.execute("SELECT kind || ':' || status, count(*) FROM licenses GROUP BY kind, status"))
    assert store.license_counts() == counted == {"temporary:upgraded": 1, "temporary:active": 1, "temporary:expired": 1}

    def fails_after_writing(s, now):            # no savepoint: the whole batch is rolled back, its counts too
        lic = temporary("d4")
        s.apply(Decision(Outcome.TEMPORARY_ISSUED, lic, changes=(Change(lic),)))
        raise ValueError("a bug")

    with pytest.raises(PartlyWritten):
        _run(store, give("d5"), writes_last(fails_after_writing))
    assert store.license_counts() == counted
    assert check_ledger(str(tmp_path / "ls.sqlite")) == []
