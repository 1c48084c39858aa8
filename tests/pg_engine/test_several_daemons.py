"""Several real `tsls server` processes on one real PostgreSQL database, driven by our client library
over Unix sockets: racing for the last CALs, one of them killed -9 under load, PostgreSQL itself
restarted under load (`pg_ctl restart -m immediate`). After each: the ledger's invariants hold
(`tsls check --database`), and every license any daemon acknowledged is in the database.

TSLS_PG_ROUNDS sets the racing test's rounds (default 5)."""
import os
import random
import signal
import subprocess
import sys

import psycopg
import pytest_twisted
from twisted.internet import defer, error, protocol, reactor, threads

from clients.connection import connect
from clients.tssim import hardware_id
from tsls.core.activation import Activation, ActivationStatus
from tsls.core.licensing import Change, Decision, Outcome
from tsls.core.model import CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.errors import Code, TslsError
from tsls.server.app import load_identity
from tsls.server.pgstore import PgLicenseStore, check_ledger_pg

ROUNDS = int(os.environ.get("TSLS_PG_ROUNDS", "5"))
TIMEOUT = 30
LEADER_LINE = b"runs the background jobs"


class Daemon(protocol.ProcessProtocol):
    """A `tsls server --database DSN` process. ``listening`` fires when it says so; ``leading`` when
    it says it runs the background jobs; ``ended`` when it exits."""

    def __init__(self, name, socket_path):
        self.name = name
        self.endpoint = f"unix:{socket_path}"
        self.listening = defer.Deferred()
        self.leading = defer.Deferred()
        self.ended = defer.Deferred()
        self.output = b""

    def outReceived(self, data):
        # Only the last few KiB are kept and searched: a daemon under load logs every event.
        self.output = (self.output[-200:] + data)[-8192:]
        if not self.listening.called and b"listening on" in self.output:
            self.listening.callback(self)
        if not self.leading.called and LEADER_LINE in self.output:
            self.leading.callback(self)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"{self.name} exited before listening:\n{self.output.decode()}"))
        self.ended.callback(reason.value)

    def kill(self, sig=signal.SIGKILL):
        os.kill(self.transport.pid, sig)
        return self.ended.addTimeout(TIMEOUT, reactor)


def start(dsn, tmp_path, name, env=None, extra=()):
    data_dir = tmp_path / name
    data_dir.mkdir(mode=0o700)
    daemon = Daemon(name, str(data_dir / "ls.sock"))
    args = [sys.executable, "-m", "tsls.cli", "server", "--database", dsn, "--data-dir", str(data_dir),
            "--listen", daemon.endpoint, "--clearinghouse-url", "http://127.0.0.1:9", *extra]
    daemon.transport = reactor.spawnProcess(daemon, sys.executable, args, env={**(env or os.environ), "PYTHONFAULTHANDLER": "1"})
    return daemon


@defer.inlineCallbacks
def start_all(dsn, tmp_path, n, **kwargs):
    daemons = [start(dsn, tmp_path, f"d{i}", **kwargs) for i in range(n)]
    try:
        yield defer.gatherResults([d.listening.addTimeout(TIMEOUT, reactor) for d in daemons], consumeErrors=True)
    except BaseException:
        yield stop_all(daemons)
        raise
    return daemons


@defer.inlineCallbacks
def stop_all(daemons):
    for d in daemons:
        if not d.ended.called:
            d.transport.signalProcess("TERM")
    yield defer.DeferredList([d.ended for d in daemons]).addTimeout(TIMEOUT, reactor)


def prepare(dsn, cals=0):
    store = PgLicenseStore.open(dsn)
    try:
        load_identity(store, "7")
        with store.transaction():
            store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35))
        if cals:
            add_pack(store, cals, 0)
    finally:
        store.close()


def add_pack(store, cals, n):
    with store.transaction():
        store.add_key_pack(f"P{n:04d}".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code=f"R{n:04d}".ljust(25, "0")),
                           ProductVersion.W2003, CalType.PER_DEVICE, cals, 0)


class Load:
    """Terminal servers logging random devices on, pipelined, each reporting its successful logons.
    Every license acknowledged is recorded; refusals are counted by code."""

    def __init__(self, rng, devices):
        self.rng = rng
        self.devices = devices
        self.acknowledged = {}          # license id -> (hwid, kind)
        self.granted = {}               # daemon name -> permanent CALs it acknowledged as issued
        self.refused = {}               # code -> count
        self.answers = 0
        self.stopping = False
        self.dry = set()                # terminal servers told NO_LICENSE_AVAILABLE since the flag was cleared
        self._progress = []

    def progress(self, n):
        """Fires once ``n`` more answers have come back."""
        d = defer.Deferred()
        self._progress.append((self.answers + n, d))
        return d.addTimeout(TIMEOUT, reactor)

    def _answered(self, daemon, ts_name, answer):
        self.answers += 1
        lic = answer["license"]
        if lic is not None:
            self.acknowledged[lic["license_id"]] = (lic["hwid"], lic["kind"])
        if answer["outcome"] == "upgraded":
            self.granted[daemon.name] = self.granted.get(daemon.name, 0) + 1
        if answer.get("reason") == "NO_LICENSE_AVAILABLE":
            self.dry.add(ts_name)
        for target, d in list(self._progress):
            if self.answers >= target:
                self._progress.remove((target, d))
                d.callback(None)

    @defer.inlineCallbacks
    def terminal_server(self, daemon, name, logons=None, pipeline=8):
        """Log on ``logons`` devices (or until ``stopping``). Ends quietly when its daemon dies."""
        try:
            conn = yield connect(reactor, daemon.endpoint)
        except (error.ConnectError, TslsError):
            return
        try:
            try:
                yield conn.hello_terminal_server(name, "2003", "per_device")
            except (TslsError, error.ConnectionDone, error.ConnectionLost):
                return
            done = 0
            while not self.stopping and (logons is None or done < logons):
                batch = [f"dev{self.rng.randrange(self.devices)}" for _ in range(pipeline)]
                done += len(batch)
                results = yield defer.DeferredList(
                    [conn.request("logon", hwid=hardware_id(m), machine=m, user="u") for m in batch], consumeErrors=True)
                reports = []
                for ok, value in results:
                    if not ok:
                        self._refusal(value, conn)
                        continue
                    self._answered(daemon, name, value)
                    lic = value["license"]
                    if lic is not None and lic["kind"] == "temporary" and not lic.get("validated"):
                        reports.append(conn.request("logon_succeeded", hwid=lic["hwid"], license=lic["token"]))
                for ok, value in (yield defer.DeferredList(reports, consumeErrors=True)):
                    if not ok:
                        self._refusal(value, conn)
        except _Gone:
            return
        finally:
            if conn.transport.connected:
                conn.transport.loseConnection()

    def _refusal(self, failure, conn):
        failure.trap(TslsError, error.ConnectionDone, error.ConnectionLost)
        if not conn.transport.connected:
            raise _Gone()               # its daemon died: end this terminal server
        code = failure.value.code.value
        self.refused[code] = self.refused.get(code, 0) + 1


class _Gone(Exception):
    pass


def lost(dsn, acknowledged):
    """Acknowledged licenses the database does not hold as acknowledged (a permanent CAL must still be live)."""
    with psycopg.connect(dsn) as db:
        rows = {r[0]: r[1:] for r in db.execute("SELECT id, hwid, kind, status FROM licenses")}
    missing = {}
    for lid, (hwid, kind) in acknowledged.items():
        row = rows.get(lid)
        if row is None or row[:2] != (hwid, kind) or (kind == "permanent" and row[2] != "active"):
            missing[lid] = (hwid, kind, row)
    return missing


def live_cals(dsn):
    with psycopg.connect(dsn) as db:
        return db.execute("SELECT count(*) FROM licenses WHERE kind = 'permanent' AND status = 'active'").fetchone()[0]


def tsls_check(dsn, env=None):
    return subprocess.run([sys.executable, "-m", "tsls.cli", "check", "--database", dsn], capture_output=True,
                          text=True, timeout=TIMEOUT, env={**(env or os.environ), "PYTHONFAULTHANDLER": "1"})


@pytest_twisted.inlineCallbacks
def test_three_daemons_racing_for_the_last_cals_never_over_issue(pg, pg_cluster, tmp_path):
    """Each round installs a few CALs and six terminal servers, two on each daemon, log on more devices
    than there are CALs until every one of them has been told the pool is dry."""
    prepare(pg)
    # The daemons read the password from a file; nothing in their environment or command line.
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    daemons = yield start_all(pg, tmp_path, 3, env=env, extra=("--database-password-file", pg_cluster.password_file))
    store = PgLicenseStore.open(pg)
    load = Load(random.Random(18), devices=400)
    installed = 0
    try:
        for n in range(ROUNDS):
            cals = 5 + n % 3
            add_pack(store, cals, n + 1)
            installed += cals
            load.dry.clear()
            terminal_servers = [(d, f"TS{i}{j}") for i, d in enumerate(daemons) for j in range(2)]
            while len(load.dry) < len(terminal_servers):
                yield defer.gatherResults([load.terminal_server(d, name, logons=48) for d, name in terminal_servers])
            assert check_ledger_pg(pg) == [], f"round {n + 1}"
            assert lost(pg, load.acknowledged) == {}, f"round {n + 1}"
            assert live_cals(pg) == installed, f"round {n + 1}: every CAL installed is taken, and no more"
    finally:
        store.close()
        yield stop_all(daemons)
    assert load.refused == {}, "nothing is refused while PostgreSQL is up"
    assert sum(load.granted.values()) == installed, "every CAL granted was acknowledged once"
    assert len(load.granted) >= 2, f"the CALs went through one daemon only: {load.granted}"
    assert tsls_check(pg).returncode == 0
    print(f"{ROUNDS} rounds, {installed} CALs raced for by 3 daemons (granted per daemon: {load.granted}); "
          f"{len(load.acknowledged)} acknowledged licenses all stored")


@pytest_twisted.inlineCallbacks
def test_kill_nine_of_one_daemon_under_load(pg, tmp_path):
    """The others go on, the background sweep moves to another daemon, nothing acknowledged is lost;
    events of any daemon reach the followers of every other."""
    prepare(pg, cals=150)
    daemons = yield start_all(pg, tmp_path, 3, extra=("--sweep-every", "0.2"))
    load = Load(random.Random(9), devices=300)
    try:
        leader = yield defer.DeferredList([d.leading for d in daemons], fireOnOneCallback=True).addTimeout(TIMEOUT, reactor)
        leader = leader[0]
        others = [d for d in daemons if d is not leader]
        running = [load.terminal_server(d, f"TS{d.name}{j}") for d in daemons for j in range(2)]
        yield load.progress(200)
        yield leader.kill()
        after_kill = len(load.acknowledged)
        yield load.progress(200)        # the others go on
        successor = yield defer.DeferredList([d.leading for d in others], fireOnOneCallback=True).addTimeout(TIMEOUT, reactor)
        load.stopping = True
        yield defer.gatherResults(running).addTimeout(TIMEOUT, reactor)
        assert len(load.acknowledged) > after_kill
        assert set(load.refused) <= {Code.STORAGE_UNAVAILABLE.value} and not load.refused, load.refused
        assert check_ledger_pg(pg) == []
        assert lost(pg, load.acknowledged) == {}

        # With no load left, only the background sweep expires anything: the new leader's. Its event
        # reaches a follower on the other survivor through LISTEN/NOTIFY.
        watcher = next(d for d in others if d is not successor[0])
        admin = yield connect(reactor, watcher.endpoint)
        with open(tmp_path / watcher.name / "admin.secret") as f:
            yield admin.hello_admin(f.read().strip())
        seen = defer.Deferred()
        admin.on_event = lambda e: seen.callback(e) if e["name"] == "LICENSE_EXPIRED" and not seen.called else None
        yield admin.request("follow_events")
        license_id = yield threads.deferToThread(due_now, pg)
        event = yield seen.addTimeout(TIMEOUT, reactor)
        assert event["license_id"] == license_id
        admin.transport.loseConnection()
    finally:
        load.stopping = True
        yield stop_all(daemons)
    assert tsls_check(pg).returncode == 0


def due_now(dsn):
    """A temporary license that ran out a second ago, written straight into the ledger."""
    store = PgLicenseStore.open(dsn)
    try:
        with store.transaction():
            import time
            now = int(time.time())
            lic = License(0, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE, "f" * 40, "late", "u", "TS", ProductVersion.W2003,
                          None, False, now - 90 * 86400, now - 1)
            return store.apply(Decision(Outcome.TEMPORARY_ISSUED, lic, changes=(Change(lic),))).license.id
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_postgresql_restarted_under_load(pg_own_cluster, tmp_path):
    """pg_ctl restart -m immediate (a crash, as far as PostgreSQL's data goes) while two daemons are
    busy: requests meanwhile are refused with STORAGE_UNAVAILABLE, service comes back by itself,
    nothing acknowledged is lost and the invariants hold."""
    cluster = pg_own_cluster
    dsn = cluster.new_database()
    prepare(dsn, cals=200)
    daemons = yield start_all(dsn, tmp_path, 2)
    load = Load(random.Random(5), devices=300)
    try:
        running = [load.terminal_server(d, f"TS{d.name}{j}") for d in daemons for j in range(2)]
        yield load.progress(200)
        before = dict(load.granted), len(load.acknowledged)
        yield threads.deferToThread(cluster.restart, "immediate")
        restarted_at = load.answers
        yield load.progress(400)        # back by itself
        load.stopping = True
        yield defer.gatherResults(running).addTimeout(TIMEOUT, reactor)
    finally:
        load.stopping = True
        yield stop_all(daemons)
    assert load.answers > restarted_at
    assert set(load.refused) == {Code.STORAGE_UNAVAILABLE.value}, f"refusals: {load.refused} (before: {before})"
    assert lost(dsn, load.acknowledged) == {}
    assert check_ledger_pg(dsn) == []
    checked = tsls_check(dsn)
    assert checked.returncode == 0 and "ledger invariants hold" in checked.stdout, checked.stdout + checked.stderr
    print(f"restart: {load.refused} refusals, {len(load.acknowledged)} acknowledged licenses all stored")
