"""What a daemon shares with the others on one PostgreSQL database, on a connection of its own:

- the background jobs (the periodic expiry sweep) run in one daemon at a time: the one holding a
  session-level advisory lock. When that daemon dies its connection goes, PostgreSQL releases the
  lock, and another daemon takes it at its next try (every ``poll`` seconds);
- events: every batch's COMMIT NOTIFYs the ids of its events (tsls/server/pgstore.py); this daemon
  reads those of other daemons and hands them to its followers, as its own writer does with its own;
- the lab clock: when another daemon moves it (a CLOCK_CHANGED event), this one reads the new offset.

The connection lives in a thread of its own (psycopg's synchronous API, blocking in notifies());
everything it finds is handed to the reactor with callFromThread.
"""
from __future__ import annotations

import threading

import psycopg
from twisted.application.service import Service
from twisted.internet import threads
from twisted.logger import Logger

from tsls.core.events import EventId
from tsls.server.ledgerbase import event_row
from tsls.server.pgstore import EVENTS_CHANNEL, JOBS, LOCK_CLASS, Connector

POLL = 0.25


class SharedDatabase(Service):
    log = Logger()

    def __init__(self, reactor, connector: Connector, own_pid, on_events, on_clock=None, poll: float = POLL) -> None:
        """``own_pid()``: the backend pid of this daemon's writer connection (its NOTIFYs are skipped:
        the writer publishes its own events). ``on_events(pairs)`` and ``on_clock(offset)`` are
        called in the reactor."""
        self._reactor = reactor
        self._connector = connector
        self._own_pid = own_pid
        self._on_events = on_events
        self._on_clock = on_clock
        self.poll = poll
        self.leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._became_leader: list = []

    def startService(self):
        super().startService()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tsls-pg-shared", daemon=True)
        self._thread.start()

    def stopService(self):
        super().stopService()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        return threads.deferToThread(thread.join)

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connector.connect()
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                self._try_lead(conn)
                # The connection is busy while notifies() runs: gather, then read the events.
                own = self._own_pid()
                notes = [n.payload for n in conn.notifies(timeout=self.poll, stop_after=256) if n.pid != own]
                if notes:
                    self._deliver(conn, notes)
            except psycopg.Error as e:
                if self.leader:
                    self.log.warn("lost the background jobs lock with the database connection: {why}", why=str(e))
                self._set_leader(False)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                self._stop.wait(self.poll)
            except Exception:
                self.log.failure("shared-database listener failed; it starts again")
                self._stop.wait(self.poll)
        if conn is not None:
            try:
                conn.close()        # releases the jobs lock
            except Exception:
                pass
        self._set_leader(False)

    def _try_lead(self, conn) -> None:
        if not self.leader:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, JOBS)).fetchone()[0]
            if got:
                self.log.info("this daemon runs the background jobs (expiry sweep) now")
                self._set_leader(True)

    def _set_leader(self, leader: bool) -> None:
        self.leader = leader

    def _deliver(self, conn, payloads: list[str]) -> None:
        """Each payload is "FIRST LAST": the ids of one batch's events, committed by another daemon."""
        ranges = [tuple(int(x) for x in p.split()) for p in payloads]
        rows = conn.execute('SELECT id, at, event_id, message, terminal_server, hwid, "user", license_id FROM events '
                            "WHERE id = ANY(%s) ORDER BY id",
                            ([i for first, last in ranges for i in range(first, last + 1)],)).fetchall()
        pairs = [(r[0], event_row(r)) for r in rows]
        if not pairs:
            return
        if self._on_clock is not None and any(e.event_id is EventId.CLOCK_CHANGED for _, e in pairs):
            row = conn.execute("SELECT value FROM meta WHERE key = 'lab_clock_offset'").fetchone()
            if row is not None:
                self._reactor.callFromThread(self._on_clock, float(row[0]))
        self._reactor.callFromThread(self._on_events, pairs)
