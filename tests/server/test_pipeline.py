"""The SQLite writer's pipeline (tsls/server/writer.py) on a real ledger file: a batch's answers wait
for an fsync of the WAL that started after its COMMIT, the next batch runs meanwhile, and a failed
fsync stops every later change. The fsync is the store's ``sync`` seam, held or failed by the test;
the reactor is a queue the test turns by hand (the writer's threads post to it), so nothing sleeps."""
import errno
import json
import os
import queue
import sqlite3
import threading
import time

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tsls.core.licensing import TerminalServer
from tsls.core.model import CalType, ProductVersion
from tsls.errors import Code, TslsError
from tsls.server.app import load_identity
from tsls.server.ledger import Ledger
from tsls.server.protocol import LicenseFactory
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter

TS = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)
WAIT = 10


class Reactor:
    """What the writer asks of a reactor: calls for its next turn, and calls posted by its threads."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()

    def callLater(self, delay, f, *args):
        call = Call(f, args)
        self.calls.put(call)
        return call

    def callFromThread(self, f, *args):
        self.calls.put(Call(f, args))

    def until(self, done) -> None:
        """Turn until ``done()``, at most WAIT seconds (``done`` may wait on the writer's threads)."""
        deadline = time.monotonic() + WAIT
        while not done():
            try:
                call = self.calls.get(timeout=0.01)
            except queue.Empty:
                assert time.monotonic() < deadline, "the writer never got there"
                continue
            call()


class Call:
    def __init__(self, f, args) -> None:
        self.f, self.args, self.cancelled = f, args, False

    def cancel(self) -> None:
        self.cancelled = True

    def __call__(self) -> None:
        if not self.cancelled:
            self.f(*self.args)


class HeldSync:
    """The store's fsync: real, but each call first waits for a permit the test gives (``allow``)."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.calls = 0
        self.holding = False        # set once the writer runs (the identity is written before)

    def __call__(self, fd) -> None:
        if not self.holding:
            return os.fdatasync(fd)
        self.calls += 1
        assert self.permits.acquire(timeout=WAIT), "the test never let the fsync go"
        os.fdatasync(fd)

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


class FailingSync:
    """The store's fsync: real, or an I/O error while ``set`` (as a failing disk gives), ``clear`` again."""

    def __init__(self) -> None:
        self._failing = threading.Event()
        self.set, self.clear = self._failing.set, self._failing.clear

    def __call__(self, fd) -> None:
        if self._failing.is_set():
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)


def outcome(d):
    """The Deferred's result now (None while it has none)."""
    box = []
    d.addBoth(lambda r: (box.append(r), r)[1])
    return box[0] if box else None


@pytest.fixture
def ledger_on(tmp_path):
    made = []

    def make(sync):
        path = str(tmp_path / "ls.sqlite")
        store = LicenseStore.open(path, sync=sync)
        identity = load_identity(store, "1")     # a durable transaction of its own, before the writer starts
        if isinstance(sync, HeldSync):
            sync.holding = True
        reactor = Reactor()
        clock = Clock()
        clock.advance(1_800_000_000)
        writer = BatchWriter(reactor, clock, store)
        writer.start()
        made.append((reactor, writer, sync))
        return reactor, writer, Ledger(writer, identity), path

    yield make
    for reactor, writer, sync in made:
        if isinstance(sync, HeldSync):
            sync.allow(100)                          # a test that failed midway must not hold the stop
        stopped = []
        writer.stop().addBoth(stopped.append)
        reactor.until(lambda: stopped)          # the threads stopped and the store closed


def licenses_in(path) -> int:
    """What another connection sees committed (durable or not)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM licenses").fetchone()[0]
    finally:
        db.close()


def test_answers_wait_for_an_fsync_begun_after_their_commit_while_the_next_batches_run(ledger_on):
    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.calls == 1)           # batch 1 committed; its fsync started, and is held
    assert licenses_in(path) == 1
    assert outcome(first) is None                    # no answer before the fsync

    second = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: licenses_in(path) == 2)    # batch 2's jobs ran and its COMMIT returned meanwhile
    third = ledger.logon(TS, "33" * 20, "PC3", "carol", None)
    reactor.until(lambda: licenses_in(path) == 3)    # and batch 3's
    assert held.calls == 1                           # one fsync in flight at most: 2 and 3 wait for the next
    assert (outcome(first), outcome(second), outcome(third)) == (None, None, None)

    held.allow(2)
    reactor.until(lambda: outcome(first) is not None)
    assert outcome(first)["outcome"] == "temporary_issued"
    reactor.until(lambda: outcome(third) is not None)
    assert outcome(second)["outcome"] == outcome(third)["outcome"] == "temporary_issued"
    assert held.calls == 2                           # batches 2 and 3 shared the second fsync


def test_a_batch_committed_while_an_fsync_runs_is_not_answered_by_that_fsync(ledger_on):
    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.calls == 1)
    second = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: licenses_in(path) == 2)
    held.allow(1)                                    # the first fsync returns...
    reactor.until(lambda: outcome(first) is not None)
    assert outcome(first)["outcome"] == "temporary_issued"
    reactor.until(lambda: held.calls == 2)           # ...and the one for batch 2, begun after its COMMIT, is held
    assert outcome(second) is None
    held.allow(1)
    reactor.until(lambda: outcome(second) is not None)
    assert outcome(second)["outcome"] == "temporary_issued"


def test_a_failed_fsync_answers_storage_error_then_every_change_is_refused_as_unavailable(ledger_on):
    fails = FailingSync()
    reactor, writer, ledger, path = ledger_on(fails)
    granted = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: outcome(granted) is not None)
    assert outcome(granted)["outcome"] == "temporary_issued"

    fails.set()
    lost = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: outcome(lost) is not None)
    error = outcome(lost).value
    assert isinstance(error, TslsError) and error.code is Code.STORAGE_ERROR
    assert "may or may not" in error.message

    fails.clear()                                    # a later fsync might well "succeed": it proves nothing
    later = ledger.logon(TS, "33" * 20, "PC3", "carol", None)
    error = outcome(later).value
    assert error.code is Code.STORAGE_UNAVAILABLE and "restarted" in error.message
    assert licenses_in(path) == 2                    # the refused logon never ran


class Waiter:
    """What the protocol hands a logon instead of taking a Deferred (its ``_Logon`` slot)."""

    def __init__(self) -> None:
        self.told = []

    def callback(self, result) -> None:
        self.told.append(("answer", result))

    def errback(self, error) -> None:
        self.told.append(("error", error))


def test_a_waiter_is_told_as_a_deferred_would_be_once_the_fsync_after_its_commit_returned(ledger_on):
    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    granted, refused = Waiter(), Waiter()
    assert ledger.logon(TS, "11" * 20, "PC1", "alice", None, granted) is None
    reactor.until(lambda: held.calls == 1)
    assert licenses_in(path) == 1 and granted.told == []        # committed, not yet durable: nothing told
    held.allow(1)
    reactor.until(lambda: granted.told)
    [(how, answer)] = granted.told
    assert how == "answer" and answer["outcome"] == "temporary_issued"

    ledger.logon(TS, "11" * 20, "PC1", "alice", "TSLS1.1." + "0" * 32, refused)
    held.allow(1)
    reactor.until(lambda: refused.told)
    [(how, error)] = refused.told
    assert how == "error" and error.code is Code.INVALID_LICENSE


def test_a_waiter_is_told_storage_error_after_a_failed_fsync_and_unavailable_at_once_after(ledger_on):
    fails = FailingSync()
    reactor, writer, ledger, path = ledger_on(fails)
    fails.set()
    lost, later = Waiter(), Waiter()
    ledger.logon(TS, "22" * 20, "PC2", "bob", None, lost)
    reactor.until(lambda: lost.told)
    assert lost.told[0][0] == "error" and lost.told[0][1].code is Code.STORAGE_ERROR
    assert ledger.logon(TS, "33" * 20, "PC3", "carol", None, later) is None
    assert later.told[0][0] == "error" and later.told[0][1].code is Code.STORAGE_UNAVAILABLE   # at once


def test_a_read_starts_only_once_the_batch_of_its_place_is_durable(ledger_on):
    from tsls.server.readstore import ReadStore
    from tsls.server.reads import Reads

    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    reads = Reads(reactor, writer, ReadStore(path))
    reads.start()
    try:
        ran = threading.Event()

        def view(snapshot, now):
            ran.set()
            return snapshot.db.execute("SELECT count(*) FROM licenses").fetchone()[0]

        first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
        reactor.until(lambda: held.calls == 1)
        read = reads.read(view)                      # its place: batch 2, committed while batch 1's fsync is held
        reactor.until(lambda: writer._unsynced)
        held.allow(1)
        reactor.until(lambda: outcome(first) is not None)
        reactor.until(lambda: held.calls == 2)       # batch 2's own fsync, held
        assert not ran.is_set() and outcome(read) is None
        held.allow(1)
        reactor.until(lambda: outcome(read) is not None)
        assert outcome(read) == 1
    finally:
        reads.stop()


class HeldCommit:
    """The writer's connection, whose COMMITs each wait for a permit the test gives (``allow``), or
    fail while ``failing`` is set, as a full disk makes them."""

    def __init__(self, db) -> None:
        self._db = db
        self.permits = threading.Semaphore(0)
        self.commits = 0
        self.failing = False

    def execute(self, sql, *args):
        if sql == "COMMIT":
            self.commits += 1
            assert self.permits.acquire(timeout=WAIT), "the test never let the COMMIT go"
            if self.failing:
                raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def __getattr__(self, name):
        return getattr(self._db, name)


def drain(reactor) -> None:
    """Turn the reactor until nothing is left to do at once (the writer's threads may post more later)."""
    while True:
        try:
            call = reactor.calls.get(timeout=0.05)
        except queue.Empty:
            return
        call()


@pytest.fixture
def held_commit(ledger_on):
    reactor, writer, ledger, path = ledger_on(os.fdatasync)
    store = writer._store
    held = store.db = HeldCommit(store.db)
    yield reactor, writer, ledger, path, held
    held.allow(100)


def test_the_next_batch_begins_only_once_the_commit_in_its_own_thread_returned(held_commit):
    reactor, writer, ledger, path, held = held_commit
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.commits == 1)        # batch 1's jobs ran; its COMMIT waits in the commit thread
    ran = []
    second = writer.submit(lambda store, now: ran.append(store.db.in_transaction) or "done")
    drain(reactor)                                   # the reactor turns meanwhile...
    assert ran == [] and outcome(first) is None      # ...but no batch began on the connection in use
    held.allow(2)
    reactor.until(lambda: outcome(second) is not None)
    assert ran == [True] and outcome(second) == "done"
    assert outcome(first)["outcome"] == "temporary_issued"
    assert licenses_in(path) == 1


def test_a_commit_that_fails_in_its_thread_is_storage_error_and_the_next_batch_works(held_commit):
    reactor, writer, ledger, path, held = held_commit
    held.failing = True
    lost = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    held.allow(1)
    reactor.until(lambda: outcome(lost) is not None)
    error = outcome(lost).value
    assert isinstance(error, TslsError) and error.code is Code.STORAGE_ERROR
    assert "nothing was changed" in error.message
    assert licenses_in(path) == 0

    held.failing = False
    granted = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    held.allow(1)
    reactor.until(lambda: outcome(granted) is not None)
    assert outcome(granted)["outcome"] == "temporary_issued"
    assert licenses_in(path) == 1


class Recorded(StringTransport):
    """A transport that keeps each write call as it came (write, or writeSequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def write(self, data) -> None:
        self.calls.append([data])
        super().write(data)

    def writeSequence(self, seq) -> None:
        self.calls.append(list(seq))
        super().writeSequence(seq)


def test_a_connections_answers_of_one_batch_leave_in_one_write_in_order_once_durable(ledger_on):
    # tsls.server.protocol.LicenseFactory is the writer's around_answers: held while the batch is told
    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    server = type("Server", (), {"logon": staticmethod(ledger.logon), "writer": writer})()
    factory = LicenseFactory(server, clock=Clock())
    assert writer.around_answers is factory
    connections = []
    for n in range(2):
        protocol, transport = factory.buildProtocol(None), Recorded()
        protocol.makeConnection(transport)
        protocol.role, protocol.terminal_server = "terminal_server", TS
        connections.append((protocol, transport))
    first, second = connections
    first[0].dataReceived(b'{"id":1,"op":"logon","hwid":"' + b"a1" * 20 + b'","machine":"M1","user":"u"}\n'
                          b'{"id":"two","op":"logon","hwid":"' + b"a2" * 20 + b'","machine":"M2","user":"u",'
                          b'"license":"TSLS1.1.' + b"0" * 32 + b'"}\n'
                          b'{"id":3,"op":"logon","hwid":"' + b"a3" * 20 + b'","machine":"M\\u00e9","user":"u"}\n')
    second[0].dataReceived(b'{"id":4,"op":"logon","hwid":"' + b"b4" * 20 + b'","machine":"M4","user":"u"}\n')
    reactor.until(lambda: held.calls == 1)
    assert licenses_in(path) == 3 and first[1].calls == second[1].calls == []     # committed, not yet durable
    held.allow(1)
    reactor.until(lambda: second[1].calls)
    [answers] = first[1].calls                  # one call, three answers, in request order
    assert [json.loads(a)["id"] for a in answers] == [1, "two", 3]
    assert [json.loads(a)["ok"] for a in answers] == [True, False, True]
    assert json.loads(answers[1])["error"]["code"] == "INVALID_LICENSE"
    assert json.loads(answers[2])["result"]["license"]["machine"] == "Mé"
    assert all(a == json.dumps(json.loads(a), separators=(",", ":")).encode() + b"\n" for a in answers)
    assert second[1].calls == [[second[1].value()]] and json.loads(second[1].value())["id"] == 4
    assert not first[0]._answers and not second[0]._answers and factory._held_connections == []


def test_answers_left_for_later_are_shaped_while_the_commit_runs_and_told_once_durable(held_commit):
    from tsls.server.writer import Later

    reactor, writer, ledger, path, held = held_commit
    shaped = []

    def shape(n):
        shaped.append((n, writer._committing))       # its batch's COMMIT was handed over and has not returned
        return {"n": n}

    def job(store, now):
        return Later(shape, 7)

    def broken(store, now):
        return Later(lambda: 1 / 0)

    told = writer.submit(job)
    failed = writer.submit(broken)
    granted = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.commits == 1)
    drain(reactor)
    assert shaped == [(7, True)]                     # shaped by the reactor while the COMMIT waits
    assert outcome(told) is None and outcome(granted) is None
    held.allow(1)
    reactor.until(lambda: outcome(granted) is not None)
    assert outcome(told) == {"n": 7}
    assert outcome(granted)["outcome"] == "temporary_issued" and outcome(granted)["license"]["token"].startswith("TSLS1.")
    error = outcome(failed).value                    # its change (none here) was made: the answer says so
    assert error.code is Code.INTERNAL_ERROR and "after making its change" in error.message


class CommitThreads:
    """The writer's connection, noting which thread ran each COMMIT."""

    def __init__(self, db) -> None:
        self._db = db
        self.threads: list[str] = []

    def execute(self, sql, *args):
        if sql == "COMMIT":
            self.threads.append(threading.current_thread().name)
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_while_commit_here_says_so_the_commit_runs_in_the_reactors_thread_and_answers_still_wait(ledger_on):
    held = HeldSync()
    reactor, writer, ledger, path = ledger_on(held)
    noted = writer._store.db = CommitThreads(writer._store.db)
    writer.commit_here = lambda: True                # readers at work (tsls.server.reads.Reads.lately)
    first = ledger.logon(TS, "11" * 20, "PC1", "alice", None)
    reactor.until(lambda: held.calls == 1)
    assert noted.threads == [threading.current_thread().name]     # the test's thread turns the reactor
    assert outcome(first) is None                    # committed, not yet durable
    held.allow(1)
    reactor.until(lambda: outcome(first) is not None)
    assert outcome(first)["outcome"] == "temporary_issued"

    writer.commit_here = lambda: False               # nobody reading: the commit thread
    second = ledger.logon(TS, "22" * 20, "PC2", "bob", None)
    reactor.until(lambda: held.calls == 2)
    assert "tsls-commit" in noted.threads[1]           # the commit thread (PoolThread-tsls-commit-0)
    held.allow(1)
    reactor.until(lambda: outcome(second) is not None)
    assert outcome(second)["outcome"] == "temporary_issued"


def test_reads_say_they_were_at_work_while_one_runs_and_for_a_while_after(ledger_on, monkeypatch):
    from tsls.server import reads as reads_module
    from tsls.server.readstore import ReadStore
    from tsls.server.reads import Reads

    reactor, writer, ledger, path = ledger_on(os.fdatasync)
    reads = Reads(reactor, writer, ReadStore(path))
    reads.start()
    try:
        assert not reads.lately()
        go = threading.Event()

        def view(snapshot, now):
            assert go.wait(WAIT)
            return "read"

        read = reads.read(view)
        reactor.until(lambda: reads._running == 1)
        assert reads.lately()                         # at work now
        go.set()
        reactor.until(lambda: outcome(read) is not None)
        assert outcome(read) == "read" and reads.lately()     # and for LATELY seconds after
        monkeypatch.setattr(reads_module, "LATELY", 0.0)
        assert not reads.lately()
    finally:
        reads.stop()
