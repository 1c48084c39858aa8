"""Reads that never stall grants: the administrator's lists and status, off the writer.

A read runs ``view(snapshot, now, *args)`` on a read-only connection of its own (a SQLite WAL
snapshot, or a PostgreSQL REPEATABLE READ READ ONLY transaction: tsls.server.readstore) in a small
pool of reader threads, never inside the writer's batch and never in the reactor's thread; the
reader's SQL releases the GIL, so a long export or a status poll costs grants only its Python.

It starts once the writer's next batch is durable (its fsync done, tsls/server/writer.py): a job
that reads and writes nothing marks its place, so a connection that pipelines a change and then a
read sees its change, and what is due to expire has expired (each batch sweeps first), as when
reads were jobs; but the read itself, a scan of a million rows, say, runs outside the batch, and no
logon waits for it. On SQLite its snapshot, opened after that fsync, holds everything committed by
then: it may also show a later batch whose COMMIT returned but whose fsync has not completed (whose
answers have not left yet); only a crash of the machine in that instant could take that back.

The reader threads run at a lower CPU priority than the rest of the daemon (READER_NICENESS): where
the machine is busy, as when an export, the daemon and the terminal servers share two cores, the
scheduler gives the reactor's thread the CPU first and the export's pages come a little later.
(bench.readstall at 1,000,000 licenses: grants/s while exporting 0.74-0.75 of nobody reading without
it, 0.83-0.88 with it; docs/performance.md.)

Without a read store (tests of the operations on one in-memory connection), the same view runs as
a writer job on the writer's own connection (``store.read_snapshot()``).
"""
from __future__ import annotations

import os
import threading
import time

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

READERS = 2
READER_NICENESS = 10        # how much lower than the daemon's the reader threads' CPU priority is
LATELY = 1.0                # seconds after a read during which the writer commits in the reactor's thread


class Reads:
    def __init__(self, reactor, writer, store=None, readers: int = READERS) -> None:
        """``store``: a tsls.server.readstore ReadStore or PgReadStore, or None (run views as jobs)."""
        self.reactor = reactor
        self.writer = writer
        self.store = store
        self._pool = None if store is None else ThreadPool(1, readers, name="tsls-reader")
        self._running = 0               # reads in the reader threads now
        self._ended = float("-inf")     # when the last one ended (time.monotonic)

    def start(self) -> None:
        if self._pool is not None:
            self._pool.start()

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self.store.close()

    def read(self, view, *args) -> defer.Deferred:
        if self._pool is None:
            return self.writer.submit(lambda store, now: view(store.read_snapshot(), now, *args))
        def run(now):
            _lower_priority()
            with self.store.snapshot() as snap:
                return view(snap, now, *args)

        def start(now):
            self._running += 1
            return threads.deferToThreadPool(self.reactor, self._pool, run, now).addBoth(ended)

        def ended(result):
            self._running -= 1
            self._ended = time.monotonic()
            return result
        return self.writer.submit(_batch_time).addCallback(start)

    def lately(self) -> bool:
        """Readers at work now or in the last LATELY seconds (an export asks page after page, and
        its client works between them): the writer then commits in the reactor's thread."""
        return self._running > 0 or time.monotonic() - self._ended < LATELY


def _batch_time(store, now: int) -> int:
    return now


_lowered = threading.local()


def _lower_priority() -> None:
    """Make this reader thread yield the CPU to the reactor's thread and the writer's: on a busy
    machine a long export then takes longer, rather than grants. Linux gives each thread its own
    nice value; elsewhere, or when refused, the reader runs at the daemon's priority."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + READER_NICENESS, 19))
    except (AttributeError, OSError):
        pass
