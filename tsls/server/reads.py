"""Reads that never stall grants: the administrator's lists and status, off the writer.

A read runs ``view(snapshot, now, *args)`` on a read-only connection of its own (a SQLite WAL
snapshot, or a PostgreSQL REPEATABLE READ READ ONLY transaction: tsls.server.readstore) in a small
pool of reader threads, never inside the writer's batch and never in the reactor's thread; the
reader's SQL releases the GIL, so a long export or a status poll costs grants only its Python.

It starts once the writer's next batch has committed: a job that reads and writes nothing marks its
place, so a connection that pipelines a change and then a read sees its change, and what is due
to expire has expired (each batch sweeps first), as when reads were jobs; but the read itself, a
scan of a million rows, say, runs outside the batch, and no logon waits for it.

Without a read store (tests of the operations on one in-memory connection), the same view runs as
a writer job on the writer's own connection (``store.read_snapshot()``).
"""
from __future__ import annotations

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

READERS = 2


class Reads:
    def __init__(self, reactor, writer, store=None, readers: int = READERS) -> None:
        """``store``: a tsls.server.readstore ReadStore or PgReadStore, or None (run views as jobs)."""
        self.reactor = reactor
        self.writer = writer
        self.store = store
        self._pool = None if store is None else ThreadPool(1, readers, name="tsls-reader")

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
            with self.store.snapshot() as snap:
                return view(snap, now, *args)
        return self.writer.submit(_batch_time).addCallback(
            lambda now: threads.deferToThreadPool(self.reactor, self._pool, run, now))


def _batch_time(store, now: int) -> int:
    return now
