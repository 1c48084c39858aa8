"""Crashes lose nothing: kill -9 the real license server under load, many times, and check that the
ledger's invariants hold and that every license it ever acknowledged is in the database.

TSLS_CRASH_KILLS sets the number of kills (default 50; docs/reliability.md has longer runs)."""
import os
import random
import signal
import sqlite3
import sys

import pytest_twisted
from twisted.internet import defer, error, reactor

from clients.connection import connect
from tests.harness import DaemonProcess, start_server_process
from tsls.core.activation import Activation, ActivationStatus
from tsls.core.model import CalType, Program, ProductVersion, PurchaseRef
from tsls.errors import TslsError
from tsls.public import hardware_id
from tsls.server.app import load_identity
from tsls.server.check import check_ledger
from tsls.server.store import LicenseStore

KILLS = int(os.environ.get("TSLS_CRASH_KILLS", "50"))
TIMEOUT = 20
DEVICES = 3000
TERMINAL_SERVERS = 3


@defer.inlineCallbacks
def kill_at_random(daemon, rng, within):
    """SIGKILL the daemon at a random moment in the next ``within`` seconds; fires once it is gone."""
    wait = defer.Deferred()
    reactor.callLater(rng.uniform(0.0, within), wait.callback, None)
    yield wait
    os.kill(daemon.transport.pid, signal.SIGKILL)
    yield daemon.ended.addTimeout(TIMEOUT, reactor)


def prepare(data_dir, cals):
    store = LicenseStore.open(os.path.join(data_dir, "license-server.sqlite"))
    load_identity(store, "7")
    with store.transaction():
        store.add_key_pack("C" * 35, PurchaseRef(Program.RETAIL, retail_code="C" * 25), ProductVersion.W2003,
                           CalType.PER_DEVICE, cals, 0)
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35))
    store.close()


@defer.inlineCallbacks
def terminal_server(name, endpoint, rng, acknowledged):
    """Log random devices on, pipelining, reporting success; record every license acknowledged."""
    try:
        conn = yield connect(reactor, endpoint)
        yield conn.hello_terminal_server(name, "2003", "per_device")
        while True:
            batch = [f"dev{rng.randrange(DEVICES)}" for _ in range(20)]
            answers = yield defer.gatherResults(
                [conn.request("logon", hwid=hardware_id(m), machine=m, user="u") for m in batch], consumeErrors=True)
            for answer in answers:
                lic = answer["license"]
                acknowledged[lic["license_id"]] = (lic["hwid"], lic["kind"])
            yield defer.gatherResults([conn.request("logon_succeeded", hwid=a["license"]["hwid"],
                                                    license=a["license"]["token"]) for a in answers],
                                      consumeErrors=True)
    except (TslsError, defer.FirstError, error.ConnectionDone, error.ConnectionLost):
        return                      # the server died under us: that is the point


def lost(path, acknowledged):
    """Acknowledged licenses the database does not hold as acknowledged."""
    db = sqlite3.connect(path)
    try:
        rows = dict((r[0], (r[1], r[2])) for r in db.execute("SELECT id, hwid, kind FROM licenses"))
    finally:
        db.close()
    return {lid: ack for lid, ack in acknowledged.items() if rows.get(lid) != ack}


@pytest_twisted.inlineCallbacks
def test_kill_nine_under_load_loses_nothing_and_over_issues_nothing(tmp_path):
    data_dir = str(tmp_path)
    socket_path = str(tmp_path / "ls.sock")
    prepare(data_dir, cals=1000)         # fewer CALs than devices: the pool runs dry under load
    db_path = os.path.join(data_dir, "license-server.sqlite")
    rng = random.Random(2026)
    acknowledged = {}
    for kill in range(KILLS):
        daemon = start_server_process(data_dir, socket_path)
        yield daemon.listening.addTimeout(TIMEOUT, reactor)
        load = [terminal_server(f"TS{i}", f"unix:{socket_path}", rng, acknowledged) for i in range(TERMINAL_SERVERS)]
        yield kill_at_random(daemon, rng, 0.15)
        yield defer.gatherResults(load).addTimeout(TIMEOUT, reactor)
        assert check_ledger(db_path) == [], f"after kill {kill + 1}"
        assert lost(db_path, acknowledged) == {}, f"after kill {kill + 1}"
    assert len(acknowledged) > KILLS, "the load never got going: the test proves nothing"
    print(f"{KILLS} kills survived; {len(acknowledged)} acknowledged licenses all present; invariants hold")


@pytest_twisted.inlineCallbacks
def test_sigterm_answers_or_cleanly_refuses_what_is_in_flight_then_exits(tmp_path):
    data_dir = str(tmp_path)
    socket_path = str(tmp_path / "ls.sock")
    prepare(data_dir, cals=50)
    daemon = start_server_process(data_dir, socket_path)
    yield daemon.listening.addTimeout(TIMEOUT, reactor)
    conn = yield connect(reactor, f"unix:{socket_path}")
    yield conn.hello_terminal_server("TS1", "2003", "per_device")
    first = defer.Deferred()
    outcomes = []

    def settle(result, machine):
        outcomes.append((machine, result))
        if not first.called:
            first.callback(None)

    pending = []
    for i in range(500):
        d = conn.request("logon", hwid=hardware_id(f"m{i}"), machine=f"m{i}", user="u")
        d.addBoth(settle, f"m{i}")
        pending.append(d)
    yield first.addTimeout(TIMEOUT, reactor)
    os.kill(daemon.transport.pid, signal.SIGTERM)
    reason = yield daemon.ended.addTimeout(TIMEOUT, reactor)
    yield defer.DeferredList(pending).addTimeout(TIMEOUT, reactor)
    assert reason.exitCode == 0
    answered = {m: r["license"]["license_id"] for m, r in outcomes if isinstance(r, dict)}
    refused = {m: r.value.code.value for m, r in outcomes if not isinstance(r, dict)}
    # Lines the server read are answered or refused SHUTTING_DOWN; lines still unread in the socket when it
    # closed fail in the client with CONNECTION_LOST, and were never carried out.
    assert set(refused.values()) <= {"SHUTTING_DOWN", "CONNECTION_LOST"} and len(answered) + len(refused) == 500
    db = sqlite3.connect(os.path.join(data_dir, "license-server.sqlite"))
    try:
        licensed = {hwid for (hwid,) in db.execute("SELECT hwid FROM licenses")}
    finally:
        db.close()
    assert not {m for m in refused if hardware_id(m) in licensed}
    assert lost(os.path.join(data_dir, "license-server.sqlite"),
                {lid: (hardware_id(m), "temporary") for m, lid in answered.items()}) == {}
    assert check_ledger(os.path.join(data_dir, "license-server.sqlite")) == []


@pytest_twisted.inlineCallbacks
def test_kill_nine_loses_no_acknowledged_clearinghouse_sale_or_install(tmp_path):
    from tsls.clearinghouse.client import ClearinghouseClient
    from tsls.core.model import Purchase
    from tsls.public import read_secret

    rng = random.Random(7)
    acknowledged_sales, acknowledged_packs = set(), {}
    server = None
    for kill in range(max(KILLS // 2, 10)):
        daemon = DaemonProcess()
        args = [sys.executable, "-m", "tsls.cli", "clearinghouse", "--data-dir", str(tmp_path),
                "--listen", "tcp:0:interface=127.0.0.1"]
        daemon.transport = reactor.spawnProcess(daemon, sys.executable, args, env=os.environ.copy())
        yield daemon.listening.addTimeout(TIMEOUT, reactor)
        port = int(daemon.output.decode().split("port=")[1].split(")")[0])
        ch = ClearinghouseClient(f"http://127.0.0.1:{port}",
                                 operator_secret=read_secret(str(tmp_path / "operator.secret")))
        if server is None:
            activation = yield ch.activate("12345-678-1234567-12345", {"first_name": "A", "last_name": "B",
                                                                        "company": "C", "country_region": "D"})
            server = {k: activation[k] for k in ("license_server_id", "product_id", "certificate")}

        first = defer.Deferred()        # the first install acknowledged in this round

        @defer.inlineCallbacks
        def load(i):
            code = f"K{kill:04d}{i:04d}".ljust(25, "0")
            try:
                yield ch.sell(Purchase.from_json({"program": "retail", "retail_code": code, "product_version": "2003",
                                                  "cal_type": "per_device", "quantity": 3}))
                acknowledged_sales.add(code)
                pack = yield ch.install(server, PurchaseRef(Program.RETAIL, retail_code=code), quantity=2)
                acknowledged_packs[pack["key_pack"]["key_pack_id"]] = code
                if not first.called:
                    first.callback(None)
            except TslsError:
                return          # the Clearinghouse died under us

        work = [load(i) for i in range(30)]
        done = defer.DeferredList(work)
        done.addCallback(lambda _: None if first.called else first.callback(None))
        # Kill once the load is under way (an event, not a time window that a loaded machine may miss),
        # at a random moment in the next 0.1 s.
        yield first.addTimeout(TIMEOUT, reactor)
        yield kill_at_random(daemon, rng, 0.1)
        yield done.addTimeout(TIMEOUT, reactor)
        db = sqlite3.connect(str(tmp_path / "clearinghouse.sqlite"))
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            sales = {r[0] for r in db.execute("SELECT key FROM sales")}
            packs = dict(db.execute("SELECT key_pack_id, sale FROM key_packs").fetchall())
            over = db.execute("SELECT count(*) FROM sales s WHERE installed != "
                              "(SELECT coalesce(sum(quantity), 0) FROM key_packs k WHERE k.sale = s.key)").fetchone()
        finally:
            db.close()
        assert {f"retail:{c}" for c in acknowledged_sales} <= sales, f"after kill {kill + 1}"
        assert all(packs.get(k) == f"retail:{c}" for k, c in acknowledged_packs.items()), f"after kill {kill + 1}"
        assert over == (0,), f"after kill {kill + 1}: installed counts disagree with the key packs issued"
    assert acknowledged_packs, "the load never got going: the test proves nothing"
    print(f"Clearinghouse: {max(KILLS // 2, 10)} kills; {len(acknowledged_sales)} sales and "
          f"{len(acknowledged_packs)} installs acknowledged, all present")
