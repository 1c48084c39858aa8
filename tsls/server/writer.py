"""Group commit: every request that touches the ledger runs here, one batch at a time.

Requests that arrive while a batch runs wait in a queue; the next batch takes them all (up to
MAX_BATCH) and shares one COMMIT. Each request runs inside its own savepoint, so a refusal undoes
only its own writes, except a request that decides before it writes (``writes_last``: a logon),
which needs none. The events a batch adds are written together once its jobs are done. No answer
leaves before the transaction that holds its writes is durable.

SQLite (the pipeline). A batch's jobs run in the reactor's thread; its COMMIT runs in the commit
thread, while the reactor's thread reads and parses the next requests and writes answers (the
next batch's jobs wait for it: they use the same connection) and shapes the answers the jobs left
for then (``Later``); the fsync that makes it durable runs in the writer's thread while the
reactor's thread runs the next batch. While readers are at work (``commit_here``: an export, the
status), the COMMIT runs in the reactor's thread after the jobs instead: the readers then share the
second core with the commit thread, which would wait for a CPU while the reactor waits for it:

    reactor:  [jobs 1]          [jobs 2]          [jobs 3]          ...
    commit:           [COMMIT 1]        [COMMIT 2]        [COMMIT 3]
    writer:                     [fsync  (1)     ][fsync (2, 3)     ] ...
    answers:                                    ^ batch 1          ^ batches 2 and 3

- The writer's connection runs in WAL mode with synchronous=NORMAL. SQLite then writes every frame
  of a transaction to the -wal file, its commit frame last, before COMMIT returns, but does not
  fsync it ("Writers sync the WAL on every transaction commit if PRAGMA synchronous is set to FULL
  but omit this sync if PRAGMA synchronous is set to NORMAL", https://sqlite.org/wal.html). So the
  COMMIT is a write() of a few pages and returns in well under a millisecond.
- Right after a batch's COMMIT, the writer's thread fdatasyncs the -wal file through a descriptor
  of its own (tsls.sqlite.WalFile; an fsync flushes the file's writes made before it started,
  through any descriptor). A batch's answers (its Deferreds, and ``on_events`` for followers) are
  released only when an fsync that STARTED after that batch's COMMIT returned has completed: its
  frames, commit frame included, are then on disk, and recovery after a crash replays them. At most
  one fsync is in flight: batches that commit meanwhile wait for the next one and share it.
- Checkpoints never run in the reactor's thread. The writer's connection has wal_autocheckpoint=0;
  after an fsync, when more than CHECKPOINT_PAGES frames wait (tsls/server/store.py), a PASSIVE
  checkpoint runs from a connection of its own in a thread of its own (so fsyncs go on during it:
  a checkpoint with a million licenses writes thousands of scattered pages). With synchronous=NORMAL
  SQLite syncs the WAL before a checkpoint copies it and the database after ("the WAL file is
  synchronized before each checkpoint and the database file is synchronized after each completed
  checkpoint", https://sqlite.org/pragma.html#pragma_synchronous); it may copy frames of batches not
  yet synced by us, which only makes them durable sooner. Once a checkpoint has copied every frame,
  the writer's next COMMIT restarts the WAL from its start, with a new salt; SQLite syncs that new
  header itself (the same page: "the WAL file header is synchronized when a WAL file begins to be
  reused after a checkpoint"), once per restart, inside that COMMIT. Frames left from before the
  restart no longer match the salt and are never replayed. A checkpoint that runs while batches
  commit can never copy every frame (they add more), so the WAL would never restart and would grow
  without end (it did: 0.9 GB in a minute of bench.scaling). So the long checkpoints run beside the
  batches (up to CHECKPOINT_PASSES, while what is left is large: each has less to copy), then no
  batch starts while a last one copies what is left, SQLite's sync of the database included: a
  pause, once per CHECKPOINT_PAGES frames, of at most 11-14 ms with 1,000 licenses and 35-46 ms with
  1,000,000 in bench.scaling (one checkpoint beside the batches left pauses of up to 200 ms there).
  The WAL thus stays bounded (bench.scaling: 60-110 MB at most) unless a reader holds a snapshot
  for long.
- A process killed (kill -9) loses nothing that COMMIT wrote: the frames are in the operating
  system's cache. The fsync is for the machine's crash or power loss.
- A COMMIT that fails is rolled back (tsls.server.store.LicenseStore.commit), its batch answered
  STORAGE_ERROR ("nothing was changed": SQLite acknowledged no commit frame, and its frames, if any,
  are overwritten by the next transaction), and the next batch may begin, as before the pipeline:
  the batches committed before it are not touched and still get their fsync.
- An fsync that fails (OSError) is another matter: after it, Linux may have dropped the dirty
  pages it could not write and a later fsync would report success. Whatever was committed but not
  yet synced can no longer be trusted, so those batches are answered STORAGE_ERROR (their change
  may or may not survive), and the writer refuses every later request with STORAGE_UNAVAILABLE
  until the daemon is restarted (it stays up, and says why in its log once). A failed checkpoint
  is taken the same way (SQLite's own sync of the WAL is part of it).

Jobs are Python, which holds the GIL in either thread: running them in the writer's thread, as tsls
first did, made every SQLite statement hand the GIL back and forth between the two threads, and
cost about a sixth of the throughput (docs/performance.md). A COMMIT is one statement that holds
the GIL only to start and to return: SQLite writes the batch's pages to the WAL, page by page,
with the GIL released (about a tenth of the reactor's time when the COMMIT ran there). The fsync and the
checkpoint release the GIL for their whole duration. One thread uses the writer's connection at a
time: the reactor's for BEGIN and the jobs, then the commit thread's for the COMMIT, and no batch
begins until that COMMIT has returned (``_committing``); the writer's at ``close``.

PostgreSQL (``store.jobs_in_thread``): every statement is a network round trip, so a whole batch,
COMMIT included (synchronous_commit), runs in the writer's thread, and the next batch starts when it
returns. ``threaded=False`` (tests of the layers above, with no reactor running) runs each batch at
once in the calling thread inside ``store.transaction()``, which syncs before it returns.
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tsls.errors import Code, TslsError

MAX_BATCH = 512
_NOTHING = nullcontext()
CHECKPOINT_PASSES = 4       # checkpoints beside the batches, at most, before the short one they wait for


def writes_last(job: Callable) -> Callable:
    """Mark a job that writes nothing until its decision is complete (its refusals write only events,
    which the store holds until the batch's jobs are done): it runs without a savepoint."""
    job.writes_last = True
    return job


class Later:
    """A job's answer to shape once its batch's COMMIT is under way: ``fn(*args)``, which must touch no
    store (a grant's license JSON and token, from its decision). On SQLite the reactor's thread shapes
    the batch's answers while the commit thread runs its COMMIT (it would wait for it otherwise), not
    inside the batch's jobs, which no other batch may run beside; elsewhere, just before delivering."""
    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable, *args) -> None:
        self.fn, self.args = fn, args


class PartlyWritten(Exception):
    """A job run without a savepoint failed after writing: only rolling back its batch undoes it."""


class BatchWriter:
    log = Logger()

    def __init__(self, reactor, clock, store, on_events: Callable | None = None, threaded: bool = True) -> None:
        """``threaded=False`` runs each batch at once in the calling thread: for tests of the layers
        above (protocol, operations) with no reactor running."""
        self._reactor = reactor
        self.clock = clock
        self._store = store
        self.on_events = on_events          # called in the reactor with the events each batch committed
        self._queue: deque = deque()
        self._running = False               # a batch is in the writer's thread (PostgreSQL)
        self._idle: list[defer.Deferred] = []
        self._pool = ThreadPool(1, 1, name="tsls-writer")
        self._stopped = False
        self._threaded = threaded
        # The SQLite pipeline: jobs in the reactor's thread, COMMIT in the commit thread, fsync in the
        # writer's (module docstring).
        self._pipelined = threaded and not getattr(store, "jobs_in_thread", False)
        self._scheduled = None              # the reactor's call that runs the next batch
        self._unsynced: list = []           # (batch, outcome) committed, waiting for an fsync to start
        self._syncing: list | None = None   # (batch, outcome) the fsync in flight covers
        self._checkpointing: defer.Deferred | None = None
        self._quiet = False                 # no batch starts: a checkpoint copies the WAL's last frames
        self._checkpoints = ThreadPool(1, 1, name="tsls-checkpoint") if self._pipelined else None
        self._commits = ThreadPool(1, 1, name="tsls-commit") if self._pipelined else None
        self._committing = False            # a batch's COMMIT is in the commit thread: no batch may begin
        self._last_pass = None              # the checkpoint's last pass, waiting for that COMMIT to return
        # While this says so, a batch's COMMIT runs in the reactor's thread after its jobs, as it did
        # before the commit thread (tsls.server.reads.Reads.lately: readers at work).
        self.commit_here: Callable[[], bool] | None = None
        self._broken: TslsError | None = None     # once storage failed: every later request refused
        # Bench only (bench/daemon.py --timings): called with (size, jobs s, COMMIT s) after each
        # batch's COMMIT, (batches, fsync s) after each fsync, (frames, copied, s, paused) after each checkpoint (paused: the short one no batch runs beside).
        self.timings = None
        # A context entered while a batch's answers are told, or None: the protocol's factory
        # (tsls.server.protocol.LicenseFactory) writes each connection's answers of the batch together
        # once they are all told.
        self.around_answers = None

    def start(self) -> None:
        self._pool.start()
        if self._pipelined:
            self._store.checkpoint_in_background()
            self._checkpoints.start()
            self._commits.start()

    def submit(self, job: Callable, waiter=None) -> defer.Deferred | None:
        """Run ``job(store, now)`` in the next batch; fire with its result once durably committed.

        A job refuses by raising TslsError (its writes are undone) or by returning one (its writes,
        such as the event that records the refusal, are kept). ``waiter``: told instead of a new
        Deferred, through the same two methods, ``callback(result)`` or ``errback(error)`` (a
        TslsError), and None is returned: a logon's answer needs no Deferred (protocol.py)."""
        if self._stopped or self._broken is not None:
            error = self._broken or TslsError(Code.SHUTTING_DOWN, "the license server is shutting down")
            if waiter is None:
                return defer.fail(error)
            waiter.errback(error)
            return None
        d = defer.Deferred() if waiter is None else waiter
        self._queue.append((job, d))
        if self._pipelined:
            if self._scheduled is None:
                # The next turn of the reactor: requests read meanwhile join the batch.
                self._scheduled = self._reactor.callLater(0, self._next_batch)
        elif not self._running:
            self._next_batch()
        return d if waiter is None else None

    def _take(self):
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        return batch, [job for job, _ in batch], int(self.clock.seconds())

    def _next_batch(self) -> None:
        if self._pipelined:
            return self._next_pipelined()
        if not self._queue:
            self._running = False
            self._check_idle()
            return
        self._running = True
        batch, jobs, now = self._take()
        if self._threaded:
            # A store whose every statement is a network round trip (PostgreSQL) runs the whole batch
            # in the writer's thread, so the reactor never waits on the database.
            done = threads.deferToThreadPool(self._reactor, self._pool, self._run, jobs, now)
        else:
            done = defer.maybeDeferred(self._run, jobs, now)
        done.addBoth(self._deliver, batch)
        done.addBoth(lambda _: self._next_batch())

    def _run(self, jobs, now):
        """The whole batch at once, COMMIT (and its sync) included, in the calling thread."""
        store = self._store
        with store.transaction():
            results = self._jobs(jobs, now)
        return store.new_events, results

    def _next_pipelined(self) -> None:
        """One batch: its jobs here, in the reactor's thread, then its COMMIT in the commit thread;
        its answers wait for the fsync after that COMMIT."""
        self._scheduled = None
        if not self._queue or self._broken is not None or self._quiet or self._committing:
            self._check_idle()
            return
        batch, jobs, now = self._take()
        started = time.perf_counter()
        outcome = self._run_jobs(jobs, now)
        if isinstance(outcome, Failure):
            self._deliver(outcome, batch)       # nothing of it was committed: nothing to wait for
            self._next_soon()
            return
        self._committing = True
        ran = time.perf_counter()
        if self.commit_here is not None and self.commit_here():
            # Readers at work (an export, say) share the second core with the commit thread, which would
            # then wait for a CPU while the reactor waits for it: with 1,000,000 licenses grants' p99
            # beside an export rose 1.29x, against 1.08x with the COMMIT here (docs/performance.md).
            done = defer.maybeDeferred(self._commit)
        else:
            done = threads.deferToThreadPool(self._reactor, self._commits, self._commit)
        done.addBoth(self._committed, batch, outcome, ran - started)
        self._shape(outcome[1])             # while the COMMIT runs in its thread (or, here, once it has)

    def _run_jobs(self, jobs, now):
        """BEGIN and the batch's jobs: (new events, results), or a Failure (rolled back: nothing was written)."""
        store = self._store
        try:
            store.begin()
        except Exception:
            return Failure()
        try:
            results = self._jobs(jobs, now)
        except BaseException:
            failure = Failure()
            try:
                store.rollback()
            except BaseException:
                failure = Failure()         # the rollback failed too: that is what is reported
            return failure
        return store.new_events, results

    def _commit(self) -> float:
        """In the commit thread: the batch's COMMIT (not yet durable); how long it took."""
        started = time.perf_counter()
        self._store.commit()
        return time.perf_counter() - started

    def _committed(self, result, batch, outcome, jobs_took: float) -> None:
        """Back in the reactor's thread once the COMMIT returned (or failed: then nothing of the batch
        was committed, and the next batch may begin, as after a refusal)."""
        self._committing = False
        if isinstance(result, Failure):
            self._deliver(result, batch)
        elif self._broken is not None:      # storage failed meanwhile: this commit cannot be trusted either
            self._fail_unsynced([(batch, outcome)])
        else:
            if self.timings is not None:
                self.timings.batch(len(batch), jobs_took, result)
            self._unsynced.append((batch, outcome))
            self._sync()
        if self._last_pass is not None:     # the checkpoint's last pass waited for this COMMIT
            start, self._last_pass = self._last_pass, None
            start()
        self._next_soon()

    def _next_soon(self) -> None:
        """The next batch at the reactor's next turn, if requests wait (those read meanwhile join it)."""
        if self._queue and self._scheduled is None and self._broken is None:
            self._scheduled = self._reactor.callLater(0, self._next_batch)
        self._check_idle()

    def _jobs(self, jobs, now) -> list:
        store = self._store
        with store.held_events():
            return self._each(store, jobs, now)

    def _each(self, store, jobs, now) -> list:
        results = []
        store.sweep(now)
        # A job marked ``writes_last`` decides before it writes anything, so a refusal has nothing to
        # undo and needs no savepoint; a store that counts its writes (``changes``) proves it: should
        # such a job fail after writing, the whole batch is rolled back rather than keep part of it.
        changes = getattr(store, "changes", None)
        for job in jobs:
            if changes is not None and getattr(job, "writes_last", False):
                mark, written = store.events_mark(), changes()
                try:
                    result = job(store, now)
                except Exception as e:
                    if changes() != written:
                        raise PartlyWritten("a request failed after it had written; the batch is rolled back") from e
                    store.drop_events(mark)
                    results.append((False, e if isinstance(e, TslsError) else Failure()))
                else:
                    results.append((not isinstance(result, TslsError), result))
                continue
            try:
                with store.savepoint():
                    result = job(store, now)
                results.append((not isinstance(result, TslsError), result))
            except TslsError as e:
                results.append((False, e))
            except Exception:
                results.append((False, Failure()))
        return results

    def _shape(self, results: list) -> None:
        """Shape the answers the jobs left for later (``Later``), in place."""
        for i, (ok, value) in enumerate(results):
            if type(value) is Later:
                try:
                    results[i] = (True, value.fn(*value.args))
                except Exception:
                    self.log.failure("an answer could not be shaped")
                    results[i] = (False, TslsError(Code.INTERNAL_ERROR, "the license server failed on this request "
                                                   "after making its change"))

    def _deliver(self, outcome, batch) -> None:
        if isinstance(outcome, Failure):
            if outcome.check(TslsError) and outcome.value.code is Code.STORAGE_UNAVAILABLE:
                self.log.warn("a batch of {n} requests was refused: {why}", n=len(batch), why=outcome.value.message)
                error = outcome.value
            else:
                self.log.failure("a batch of {n} requests could not be committed", outcome, n=len(batch))
                error = TslsError(Code.STORAGE_ERROR, "the license server could not commit the change; nothing was "
                                  "changed")
            results = [(False, error)] * len(batch)
        else:
            new_events, results = outcome
            self._shape(results)            # (already done on SQLite, while the COMMIT ran)
            if self.on_events is not None and new_events:
                self.on_events(new_events)
        with self.around_answers or _NOTHING:
            for (job, d), (ok, value) in zip(batch, results):
                if isinstance(value, Failure):
                    self.log.failure("request failed inside the ledger", value)
                    value = TslsError(Code.INTERNAL_ERROR, "the license server failed on this request; nothing was changed")
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)

    def _sync(self) -> None:
        """Start an fsync for every batch committed so far, unless one is in flight (then they share
        the next one). Called only after those batches' COMMITs returned, so the fsync starts after."""
        if self._syncing is not None or not self._unsynced or self._broken is not None:
            return
        covered, self._unsynced = self._unsynced, []
        self._syncing = covered
        done = threads.deferToThreadPool(self._reactor, self._pool, self._sync_in_thread)
        done.addBoth(self._synced, covered)

    def _sync_in_thread(self):
        started = time.perf_counter()
        self._store.sync()
        return time.perf_counter() - started, self._checkpointing is None and self._store.checkpoint_due()

    def _synced(self, result, covered) -> None:
        self._syncing = None
        if isinstance(result, Failure):
            self._break(result, "an fsync of the ledger's WAL failed", covered)
            return
        took, checkpoint = result
        if self.timings is not None:
            self.timings.sync(len(covered), took)
        if self._broken is not None:        # a checkpoint failed while this fsync ran: it proves nothing
            self._fail_unsynced(covered)
            return
        for batch, outcome in covered:
            self._deliver(outcome, batch)
        self._sync()
        if checkpoint and self._checkpointing is None:
            self._checkpoint()
        self._check_idle()

    def _checkpoint(self) -> None:
        """PASSIVE checkpoints. The long ones run while batches go on committing, so none can copy
        what the batches add meanwhile, and SQLite restarts the WAL only once every frame is copied.
        They run again while what is left is large (each has less to copy); then no batch starts
        (requests queue) while a last one copies the few frames left, and the next batch's COMMIT
        restarts the WAL from its start, so the WAL stays bounded."""
        passes = [0]

        def run():
            started = time.perf_counter()
            frames, copied = self._store.checkpoint()
            return frames, copied, time.perf_counter() - started

        def beside(result):
            if isinstance(result, Failure):
                return last(result)
            if self.timings is not None:
                self.timings.checkpoint(*result, paused=False)
            passes[0] += 1
            if passes[0] < CHECKPOINT_PASSES and self._store.checkpoint_left() > self._store.checkpoint_pages // 20:
                threads.deferToThreadPool(self._reactor, self._checkpoints, run).addBoth(beside)
                return
            self._quiet = True

            def start_last():
                threads.deferToThreadPool(self._reactor, self._checkpoints, run).addBoth(last)
            if self._committing:            # a COMMIT in flight would add frames the last pass must copy
                self._last_pass = start_last
            else:
                start_last()

        def last(result):
            self._checkpointing = None
            self._quiet = False
            if isinstance(result, Failure):
                self._break(result, "a checkpoint of the ledger's WAL failed", [])
                return
            if self.timings is not None:
                self.timings.checkpoint(*result, paused=True)
            self._next_soon()
        self._checkpointing = threads.deferToThreadPool(self._reactor, self._checkpoints, run)
        self._checkpointing.addBoth(beside)

    def _break(self, failure: Failure, what: str, covered: list) -> None:
        """Storage failed: what is committed but not synced cannot be trusted; refuse from now on."""
        if self._broken is None:
            self.log.failure("{what}: the license server refuses every change from now on; restart it once the "
                             "disk is sound (changes answered STORAGE_ERROR may or may not have been kept)",
                             failure, what=what)
            reason = failure.getErrorMessage()
            self._broken = TslsError(Code.STORAGE_UNAVAILABLE, f"the license server's storage failed ({what}: "
                                     f"{reason}); it refuses every change until it is restarted; nothing was changed")
        self._fail_unsynced(covered)
        queued, self._queue = self._queue, deque()
        for _, d in queued:
            d.errback(self._broken)
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._check_idle()

    def _fail_unsynced(self, covered: list) -> None:
        """Answer STORAGE_ERROR to ``covered`` and to every batch committed since (an fsync in flight
        answers its own batches when it returns, seeing the writer broken)."""
        pending, self._unsynced = covered + self._unsynced, []
        error = TslsError(Code.STORAGE_ERROR, "the license server could not make the change durable (its storage "
                          "failed); it may or may not have been kept")
        for batch, _ in pending:
            for _, d in batch:
                d.errback(error)

    def _busy(self) -> bool:
        return bool(self._queue or self._running or self._scheduled is not None or self._syncing is not None
                    or self._unsynced or self._checkpointing is not None or self._committing)

    def _check_idle(self) -> None:
        if self._idle and not self._busy():
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self, before_close: Callable[[], None] | None = None) -> defer.Deferred:
        """Refuse new work, let queued work commit and be synced, then stop the threads and close the
        store. ``before_close`` runs just before: the readers close their connections then, so the
        writer's is the last one closed, and SQLite, which checkpoints and removes the WAL when the
        last connection to a database closes (a read-only one cannot), leaves the file whole."""
        self._stopped = True
        d = defer.Deferred()
        if self._busy():
            self._idle.append(d)
        else:
            d.callback(None)

        def close(_):
            if before_close is not None:
                before_close()
            if self._checkpoints is not None:
                self._checkpoints.stop()        # idle by now: no checkpoint or COMMIT in flight
                self._commits.stop()
            done = threads.deferToThreadPool(self._reactor, self._pool, self._store.close)
            done.addBoth(lambda r: (self._pool.stop(), r)[1])
            return done

        return d.addCallback(close)
