"""Wiring: the license server as a Twisted service. Nothing here decides anything."""
from __future__ import annotations

import gc
import os

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from tsls.labclock import LabClock
from tsls.public import write_secret
from tsls.listener import Listener, server_endpoint
from tsls.server.app import LicenseServer, load_identity
from tsls.server.records import event_json
from tsls.server.protocol import LicenseFactory
from tsls.server.reads import Reads
from tsls.server.readstore import ReadStore
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter


SWEEP_EVERY = 60.0
SUMMARY_EVERY = 60.0        # seconds between log lines summing up the routine grant events
GC_THRESHOLD = (10_000, 20, 20)     # the young generation collected every 10,000 allocations, not 700


def tune_gc() -> None:
    """For a daemon's process, once its services have started (``tsls server``, bench.daemon; never
    in tests, which start many daemons in one process): what start-up built (modules, the ledger's
    caches) is frozen out of the collector's reach, and the collector runs less often. Python's
    defaults spent about a tenth of a grant's CPU collecting at 100 connections x 16 in flight (gen 1
    and 2 passes over the in-flight requests and everything alive); memory is still freed by
    reference counts as before, only cyclic garbage waits a little longer. No full collection first:
    with a large ledger in memory it would cost start-up a second."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def is_dsn(database: str) -> bool:
    """A PostgreSQL DSN rather than a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))
log = Logger()


class _WriterService(Service):
    def __init__(self, writer: BatchWriter, reads: Reads) -> None:
        self.writer = writer
        self.reads = reads

    def startService(self):
        super().startService()
        self.writer.start()
        self.reads.start()

    def stopService(self):
        super().stopService()
        return self.writer.stop(before_close=self.reads.stop)


class _ConsoleService(Service):
    def __init__(self, console) -> None:
        self.console = console

    def startService(self):
        super().startService()
        self.console.start()

    def stopService(self):
        super().stopService()
        return self.console.stop()


class LicenseServerService(MultiService):
    """The writer starts first and stops last, so the listener drains into a live ledger."""

    def __init__(self, reactor, endpoint: str, db_path: str, clearinghouse, clock=None, seed: str | None = None,
                 lab_clock: LabClock | None = None, sweep_every: float = SWEEP_EVERY, credential_path: str | None = None,
                 timer_clock=None, console_listen: str | None = None, database_password: str | None = None,
                 version=None, initialise: bool = False, log_every_event: bool = False,
                 summary_every: float = SUMMARY_EVERY, referrals: tuple[str, ...] = (), publish_to: str | None = None):
        """``db_path``: a SQLite file, or a PostgreSQL DSN (postgresql://...) that any number of
        daemons share (its password, if any, in ``database_password``, never in the DSN).
        ``lab_clock``: run on a lab clock an administrator can move (its offset is restored from
        the database); otherwise ``clock`` (default: the reactor) gives real time. ``console_listen``:
        serve the web console and /metrics on this endpoint (docs/console.md). ``log_every_event``: a
        log line for every event; by default routine grant events (tsls.server.records.ROUTINE) are
        summed up in one line every ``summary_every`` seconds."""
        super().__init__()
        self.shared = None
        self._lab_clock = lab_clock
        shared = is_dsn(db_path)
        if shared:
            from tsls.server.pgstore import PgLicenseStore     # psycopg: the optional extra tsls[postgres]
            store = PgLicenseStore.open(db_path, database_password)
            if credential_path is None:
                raise ValueError("with a PostgreSQL database, say where the administrator's credential goes")
        else:
            store = LicenseStore.open(db_path, initialise=initialise)
        identity = load_identity(store, seed, version)
        # The administrator's credential, readable by its owner only, beside the database by default.
        self.credential_path = credential_path or os.path.join(os.path.dirname(os.path.abspath(db_path)), "admin.secret")
        write_secret(self.credential_path, identity.admin_secret)
        if lab_clock is not None:
            _keep_lab_start(store, lab_clock, reactor)
            lab_clock.offset = store.lab_clock_offset()
        clock = lab_clock or clock or reactor
        self.writer = BatchWriter(reactor, clock, store)
        if shared:
            from tsls.server.readstore import PgReadStore
            read_store = PgReadStore(store.connector)
        else:
            read_store = ReadStore(db_path)
        # Lists and status on read-only connections in reader threads, never in a write batch.
        self.reads = Reads(reactor, self.writer, read_store)
        self.writer.commit_here = self.reads.lately
        self.server = LicenseServer(self.writer, clearinghouse, identity, lab_clock, self.reads)
        self.server.ledger.referrals = tuple(referrals)     # where it refers requests it has no CAL for
        _WriterService(self.writer, self.reads).setServiceParent(self)
        if shared:
            from tsls.server.pgshared import SharedDatabase
            # Other daemons on the same database: their events for our followers, their clock moves,
            # and one of us at a time runs the periodic sweep.
            self.shared = SharedDatabase(reactor, store.connector, lambda: store.backend_pid, self._others_events,
                                         self._clock_moved if lab_clock is not None else None)
            self.shared.setServiceParent(self)
        self.server.records.log_every_event = log_every_event
        summary = TimerService(summary_every, self.server.records.summarise)
        summary.clock = timer_clock or reactor
        summary.setServiceParent(self)
        sweeper = TimerService(sweep_every, self._sweep)
        sweeper.clock = timer_clock or reactor
        sweeper.setServiceParent(self)
        factory = LicenseFactory(self.server, clock=reactor)
        self.console = None
        if console_listen is not None:
            reads = db_path
            if shared:
                from tsls.server.readstore import PgReadStore
                reads = PgReadStore(store.connector)
            self.console = self._console(reactor, console_listen, reads, factory)
        self.listener = Listener("license server", server_endpoint(reactor, endpoint), factory)
        self.listener.setServiceParent(self)
        if publish_to is not None:      # PublishLS: in the simulated directory, once the port is bound
            with store.transaction():
                scope = store.server_role()
            self.listener.listening_hook = lambda port: _publish(publish_to, port, scope)

    def _console(self, reactor, endpoint: str, reads, factory):
        from tsls.console.app import Console, site
        from tsls.server.protocol import _OPS

        console = Console(reactor, self.server, reads, {op for _, op in _OPS})
        factory.observe = console.metrics.observe
        self.server.activation.clearinghouse = console.counted(self.server.activation.clearinghouse)
        _ConsoleService(console).setServiceParent(self)
        self.console_listener = Listener("console", server_endpoint(reactor, endpoint), site(console))
        self.console_listener.setServiceParent(self)
        secure = endpoint.split(":", 1)[0] == "ssl"
        self.console_listener.listening_hook = lambda port: console.listening(port, secure)
        return console

    def _others_events(self, pairs) -> None:
        for row_id, event in pairs:
            shaped = event_json(row_id, event)
            for follower in list(self.server.followers):
                follower(shaped)

    def _clock_moved(self, offset: float) -> None:
        """Another daemon moved the shared lab clock (forward only)."""
        if self._lab_clock is not None and offset > self._lab_clock.offset:
            self._lab_clock.offset = offset

    def startService(self):
        super().startService()
        # Calls to the Clearinghouse a crash or an outage left pending are asked again (same
        # idempotency keys); then a contact: key packs a recovery elsewhere retired stop issuing.
        d = self.server.activation.finish_pending()
        d.addErrback(lambda f: log.warn("pending Clearinghouse calls not finished at start-up: {error}",
                                        error=f.getErrorMessage()))
        d.addCallback(lambda _: self.server.check_in())
        d.addErrback(lambda f: log.warn("no check-in with the Clearinghouse at start-up: {error}",
                                        error=f.getErrorMessage()))
        self.checked_in = d         # fires when that is done (tests wait on it)

    def _sweep(self):
        """Expire what is due even when nobody logs on (every batch sweeps first). A failed sweep
        is logged, and the next one runs as usual. On a shared PostgreSQL database, only the daemon
        holding the background jobs lock sweeps."""
        if self.shared is not None and not self.shared.leader:
            return
        d = self.writer.submit(lambda store, now: None)
        d.addErrback(lambda f: log.failure("periodic expiry sweep failed", f))


def _publish(path: str, port, scope) -> None:
    from tsls import directory
    from tsls.core.directory import Published
    host = port.getHost()
    if directory.publish(path, Published(f"tcp:{host.host}:{host.port}", scope)):
        log.info("published in the directory {path} as tcp:{host}:{port}", path=path, host=host.host, port=host.port)


def _keep_lab_start(store, lab_clock: LabClock, reactor) -> None:
    """The offset a database keeps counts from the instant its lab clock started: the lab's start
    (``--lab-start``, a StillClock, kept in the database) or real time. A database made with
    ``--lab-start`` and reopened with ``--lab-clock`` counts from its kept start again, so it opens at the
    lab's last date instead of today + the offset (where the sweep would expire every CAL)."""
    if lab_clock.start is not None:
        if store.lab_clock_start() != lab_clock.start:
            with store.transaction():
                store.set_lab_clock_start(lab_clock.start)
    elif lab_clock.on_real_time and store.lab_clock_start() is not None:
        lab_clock.stand_at(store.lab_clock_start(), reactor)
