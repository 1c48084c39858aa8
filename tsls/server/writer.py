"""Group commit: every request that touches the ledger runs here, one batch at a time.

Requests that arrive while a batch is committing wait in a queue; the next batch takes them all
and shares one durable COMMIT. Each request runs inside its own savepoint, so a refusal undoes
only its own writes, except a request that decides before it writes (``writes_last``: a logon),
which needs none. The events a batch adds are written together once its jobs are done. No answer
leaves before the COMMIT that holds its writes has returned.

A batch's jobs run in the reactor's thread, one after another; only its COMMIT (the fsync, the one
slow step) runs in the writer's thread, and the reactor goes on reading requests meanwhile. Jobs
are Python, which holds the GIL in either thread: running them in the writer's thread, as tsls
first did, made every SQLite statement hand the GIL back and forth between the two threads, and
cost about a sixth of the throughput (docs/performance.md). One thread uses the store at a time.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tsls.errors import Code, TslsError

MAX_BATCH = 512


def writes_last(job: Callable) -> Callable:
    """Mark a job that writes nothing until its decision is complete (its refusals write only events,
    which the store holds until the batch's jobs are done): it runs without a savepoint."""
    job.writes_last = True
    return job


class PartlyWritten(Exception):
    """A job run without a savepoint failed after writing: only rolling back its batch undoes it."""


@contextlib.contextmanager
def _nothing():
    yield


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
        self._running = False
        self._idle: list[defer.Deferred] = []
        self._pool = ThreadPool(1, 1, name="tsls-writer")
        self._stopped = False
        self._threaded = threaded

    def start(self) -> None:
        self._pool.start()

    def submit(self, job: Callable) -> defer.Deferred:
        """Run ``job(store, now)`` in the next batch; fire with its result once committed.

        A job refuses by raising TslsError (its writes are undone) or by returning one (its writes,
        such as the event that records the refusal, are kept)."""
        if self._stopped:
            return defer.fail(TslsError(Code.SHUTTING_DOWN, "the license server is shutting down"))
        d = defer.Deferred()
        self._queue.append((job, d))
        if not self._running:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        if not self._queue:
            self._running = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._running = True
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        now = int(self.clock.seconds())
        jobs = [job for job, _ in batch]
        if self._threaded and getattr(self._store, "jobs_in_thread", False):
            # A store whose every statement is a network round trip (PostgreSQL) runs the whole batch
            # in the writer's thread, so the reactor never waits on the database.
            done = threads.deferToThreadPool(self._reactor, self._pool, self._run, jobs, now)
        elif self._threaded:
            done = self._run_then_commit(jobs, now)
        else:
            done = defer.maybeDeferred(self._run, jobs, now)
        done.addBoth(self._deliver, batch)

    def _run(self, jobs, now):
        """The whole batch at once, COMMIT included, in the calling thread."""
        store = self._store
        with store.transaction():
            results = self._jobs(jobs, now)
        return store.new_events, results

    def _run_then_commit(self, jobs, now) -> defer.Deferred:
        """The batch's jobs here, then its COMMIT in the writer's thread; fires once committed."""
        store = self._store
        transaction = store.transaction()
        try:
            transaction.__enter__()
        except Exception:
            return defer.fail()
        try:
            results = self._jobs(jobs, now)
        except BaseException:
            failure = Failure()
            try:
                transaction.__exit__(failure.type, failure.value, failure.getTracebackObject())   # ROLLBACK
            except BaseException:
                failure = Failure()         # the rollback failed too: that is what is reported
            return defer.fail(failure)

        def commit():
            transaction.__exit__(None, None, None)
            return store.new_events, results
        return threads.deferToThreadPool(self._reactor, self._pool, commit)

    def _jobs(self, jobs, now) -> list:
        store = self._store
        held = getattr(store, "held_events", None)
        with held() if held is not None else _nothing():
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
            if self.on_events is not None and new_events:
                self.on_events(new_events)
        for (job, d), (ok, value) in zip(batch, results):
            if isinstance(value, Failure):
                self.log.failure("request failed inside the ledger", value)
                value = TslsError(Code.INTERNAL_ERROR, "the license server failed on this request; nothing was changed")
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        self._next_batch()

    def stop(self) -> defer.Deferred:
        """Refuse new work, let queued work commit, then stop the thread and close the store."""
        self._stopped = True
        d = defer.Deferred()
        if self._running:
            self._idle.append(d)
        else:
            d.callback(None)

        def close(_):
            done = threads.deferToThreadPool(self._reactor, self._pool, self._store.close)
            done.addBoth(lambda r: (self._pool.stop(), r)[1])
            return done

        return d.addCallback(close)
