"""The SQLite writer's COMMIT in a thread of its own (tsls/server/writer.py), at the edges the
pipeline's tests (test_pipeline.py) leave: the daemon stopping while a COMMIT is in flight, an fsync
failing while one is, and the checkpoint's last (paused) pass waiting for one. The COMMIT, the fsync
and the checkpoint are real, each held or failed by the test; the reactor is a queue the test turns
by hand, so nothing sleeps."""
import os
import threading

import pytest
from twisted.internet.task import Clock

from tests.server.test_pipeline import TS, WAIT, HeldCommit, Reactor, drain, licenses_in, outcome
from tsls.errors import Code, TslsError
from tsls.server.app import load_identity
from tsls.server.ledger import Ledger
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter


class Gate:
    """A thread's call that waits for a permit the test gives (``allow``); ``calls`` counts them."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.calls = 0
        _GATES.append(self)

    def wait(self) -> None:
        self.calls += 1
        assert self.permits.acquire(timeout=WAIT), "the test never let it go"

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


_GATES: list = []       # every gate of the running test: opened at its end, so that its writer stops


@pytest.fixture
def make_writer(tmp_path):
    made = []

    def make(sync=os.fdatasync):
        store = LicenseStore.open(str(tmp_path / "ls.sqlite"), sync=sync)
        identity = load_identity(store, "1")
        reactor = Reactor()
        clock = Clock()
        clock.advance(1_800_000_000)
        writer = BatchWriter(reactor, clock, store)
        writer.start()
        held = store.db = HeldCommit(store.db)
        writer.stopped = None
        made.append((reactor, writer, held))
        return reactor, writer, Ledger(writer, identity), str(tmp_path / "ls.sqlite"), held

    yield make
    for reactor, writer, held in made:       # a test that failed midway must not leave threads behind
        held.allow(100)
        for gate in _GATES:
            gate.allow(100)
        _stop(reactor, writer)
    _GATES.clear()


def _stop(reactor, writer) -> list:
    if writer.stopped is None:
        writer.stopped = []
        writer.stop().addBoth(writer.stopped.append)
    reactor.until(lambda: writer.stopped)
    return writer.stopped


def test_stop_waits_for_the_commit_in_flight_and_its_fsync_then_closes(make_writer):
    reactor, writer, ledger, path, held = make_writer()
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.commits == 1)        # its COMMIT waits in the commit thread
    stopped = writer.stopped = []
    writer.stop().addBoth(stopped.append)
    drain(reactor)
    assert stopped == [] and outcome(first) is None  # not closed under the COMMIT
    later = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    assert outcome(later).value.code is Code.SHUTTING_DOWN
    held.allow(1)
    reactor.until(lambda: stopped)
    assert stopped == [None]
    assert outcome(first)["outcome"] == "temporary_issued"
    assert licenses_in(path) == 1


def test_an_fsync_failing_while_a_commit_is_in_flight_fails_that_batch_too(make_writer):
    gate, fails = Gate(), threading.Event()

    def sync(fd):
        gate.wait()
        if fails.is_set():
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    ready = threading.Event()

    def sync_once_ready(fd):        # load_identity's own durable transaction is not held
        return sync(fd) if ready.is_set() else os.fdatasync(fd)

    reactor, writer, ledger, path, held = make_writer(sync_once_ready)
    ready.set()
    held.allow(1)
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: gate.calls == 1)          # batch 1 committed; its fsync is held
    second = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: held.commits == 2)        # batch 2's COMMIT waits in the commit thread
    fails.set()
    gate.allow(1)                                   # batch 1's fsync fails
    reactor.until(lambda: outcome(first) is not None)
    assert outcome(first).value.code is Code.STORAGE_ERROR
    assert outcome(second) is None                  # its COMMIT has not returned yet
    third = ledger.logon(TS, "33" * 20, "PC3", "carol", None)
    assert outcome(third).value.code is Code.STORAGE_UNAVAILABLE
    held.allow(1)                                   # batch 2's COMMIT returns: it cannot be trusted
    reactor.until(lambda: outcome(second) is not None)
    error = outcome(second).value
    assert isinstance(error, TslsError) and error.code is Code.STORAGE_ERROR and "may or may not" in error.message
    assert gate.calls == 1                          # no fsync after the failed one
    assert _stop(reactor, writer) == [None]


def test_the_checkpoints_last_pass_waits_for_the_commit_in_flight_and_no_batch_runs_beside_it(make_writer):
    reactor, writer, ledger, path, held = make_writer()
    store = writer._store
    checkpoints = Gate()
    real = store.checkpoint

    def checkpoint():
        checkpoints.wait()
        return real()
    store.checkpoint = checkpoint
    store.checkpoint_pages = 1      # a checkpoint after every fsync
    held.allow(1)
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: outcome(first) is not None and checkpoints.calls == 1)   # the first pass, held
    second = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: held.commits == 2)        # batch 2's COMMIT waits in the commit thread
    checkpoints.allow(1)                            # the first pass copied everything: the last is next...
    reactor.until(lambda: writer._last_pass is not None)
    drain(reactor)
    assert checkpoints.calls == 1                   # ...but waits for the COMMIT in flight
    third = ledger.logon(TS, "33" * 20, "PC3", "carol", None)
    held.allow(1)                                   # batch 2's COMMIT returns: the last pass starts
    reactor.until(lambda: checkpoints.calls == 2)
    drain(reactor)
    assert held.commits == 2 and outcome(third) is None     # no batch while the last pass runs
    checkpoints.allow(100)
    held.allow(100)
    reactor.until(lambda: outcome(third) is not None)
    assert outcome(second)["outcome"] == outcome(third)["outcome"] == "temporary_issued"
    assert licenses_in(path) == 3
    assert _stop(reactor, writer) == [None]
