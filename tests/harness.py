"""The test harness: what several test modules use to run tsls for real.

- ``running``: a fixture's body for anything with start() and stop() Deferreds;
- ``Daemon``: the license server in-process, on an ephemeral loopback port and real SQLite, with the
  Clearinghouse fake (tsls.clearinghouse.testing) unless given one; ``logon`` and
  ``activate_and_install`` drive it through our client library;
- ``Lab``: both daemons in-process, driven by the real command-line clients (the README's path);
- ``DaemonProcess`` / ``start_server_process``: a ``tsls server`` process, for crash and failover tests.
"""
import json
import os
import sys

import pytest_twisted
from twisted.internet import defer, protocol, reactor

from clients import admin, tssim
from clients.cli import Failed
from clients.connection import connect
from tsls.clearinghouse.client import ClearinghouseClient
from tsls.clearinghouse.service import make_service as make_clearinghouse
from tsls.clearinghouse.testing import CONTACT, FakeClearinghouse
from tsls.errors import TslsError
from tsls.labclock import LabClock
from tsls.server.service import LicenseServerService


def running(harness):
    """A fixture's body for a test harness with start() and stop() Deferreds: started, yielded, stopped."""
    pytest_twisted.blockon(harness.start())
    yield harness
    pytest_twisted.blockon(harness.stop())


RETAIL = {"program": "retail", "retail_code": "R" * 25}
TIMEOUT = 10


def with_timeout(d):
    return d.addTimeout(TIMEOUT, reactor)


class Daemon:
    def __init__(self, tmp_path, clearinghouse=None, clock=None, lab_clock=None, version=None):
        self.path = str(tmp_path / "ls.sqlite")
        self.version = version
        self.clearinghouse = clearinghouse or FakeClearinghouse()
        self.clock = clock
        self.lab_clock = lab_clock
        self.service = None

    def service_options(self) -> dict:
        """What the daemon's LicenseServerService is given besides its listener, ledger and Clearinghouse."""
        return {"clock": self.clock, "seed": "1", "lab_clock": self.lab_clock, "version": self.version}

    @defer.inlineCallbacks
    def start(self):
        self.service = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", self.path, self.clearinghouse,
                                            **self.service_options())
        self.service.startService()
        port = yield self.service.listener.listening
        self.endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
        self.connections = []

    @defer.inlineCallbacks
    def connect(self):
        conn = yield with_timeout(connect(reactor, self.endpoint))
        self.connections.append(conn)
        return conn

    @defer.inlineCallbacks
    def admin(self):
        conn = yield self.connect()
        yield conn.hello_admin(self.service.server.identity.admin_secret)
        return conn

    @defer.inlineCallbacks
    def terminal_server(self, name="TS01", version="2003", mode="per_device", secret=None):
        conn = yield self.connect()
        yield conn.hello_terminal_server(name, version, mode, secret)
        return conn

    @defer.inlineCallbacks
    def stop(self):
        for conn in self.connections:
            if conn.transport.connected:
                yield conn.close()
        yield self.service.stopService()


@defer.inlineCallbacks
def logon(ts, device, license=None, report=True):
    answer = yield ts.request("logon", hwid=f"hw-{device}", machine=device, user=f"user-{device}", license=license)
    if report and answer["license"]:
        yield ts.request("logon_succeeded", hwid=f"hw-{device}", license=answer["license"]["token"])
    return answer


@defer.inlineCallbacks
def activate_and_install(admin, quantity=5, cal_type="per_device"):
    yield admin.request("activate", method="automatic", contact=CONTACT)
    pack = yield admin.request("install_key_pack", purchase={**RETAIL, "cal_type": cal_type, "quantity": quantity})
    return pack


class Lab:
    def __init__(self, data, lab_clock=False):
        self.data = data
        self.lab_clock = LabClock(reactor) if lab_clock else None

    @defer.inlineCallbacks
    def start(self):
        self.ch = make_clearinghouse(reactor, "tcp:0:interface=127.0.0.1", str(self.data / "clearinghouse.sqlite"),
                                     clock=self.lab_clock)
        self.ch.startService()
        port = yield clearinghouse_port(self.ch)
        self.ch_url = f"http://127.0.0.1:{port}"
        self.operator_credential = self.ch.credential_path
        self.ls = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(self.data / "license-server.sqlite"),
                                       ClearinghouseClient(self.ch_url), seed="42", lab_clock=self.lab_clock)
        self.ls.startService()
        port = yield self.ls.listener.listening
        self.endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
        self.credential = self.ls.credential_path

    @defer.inlineCallbacks
    def stop(self):
        yield self.ls.stopService()
        yield self.ch.stopService()

    @defer.inlineCallbacks
    def start_another_server(self, db):
        """Another license server on the same Clearinghouse: (service, endpoint, credential path), the shape
        ``admin_on`` takes; ``(lab.ls, lab.endpoint, lab.credential)`` is the first one."""
        server = LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", str(db), ClearinghouseClient(self.ch_url),
                                      credential_path=str(db) + ".secret")
        server.startService()
        port = yield server.listener.listening
        yield server.checked_in
        return server, f"tcp:127.0.0.1:{port.getHost().port}", server.credential_path

    def admin_on(self, capsys, server, *argv):
        """``admin`` against one of the lab's license servers (from then on, until switched again)."""
        self.endpoint, self.credential = server[1], server[2]
        return self.admin(capsys, *argv)

    @defer.inlineCallbacks
    def admin(self, capsys, *argv):
        """Run one tsls-admin command; return its --json output."""
        capsys.readouterr()
        args = admin.parser().parse_args(["--server", self.endpoint, "--clearinghouse", self.ch_url, "--json",
                                          "--credential", self.credential,
                                          "--operator-credential", self.operator_credential, *argv])
        try:
            yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(TIMEOUT, reactor)
        except TslsError as e:      # what the command prints with --json, before exiting 1
            return {"error": e.to_json()}
        return json.loads(capsys.readouterr().out)

    @defer.inlineCallbacks
    def ts(self, capsys, *argv, name="TS01", version="2003", mode="per-device"):
        capsys.readouterr()
        args = tssim.parser().parse_args(["--server", self.endpoint, "--state-dir", str(self.data), "--json",
                                          "--name", name, "--version", version, "--mode", mode, *argv])
        try:
            yield defer.ensureDeferred(tssim.command(reactor, args)).addTimeout(TIMEOUT, reactor)
        except TslsError as e:
            return [{"error": e.to_json()}]
        except Failed as e:             # some logon was refused: printed, then exit 3
            assert e.status == tssim.REFUSED
        return json.loads(capsys.readouterr().out)


def clearinghouse_port(service):
    from tsls.listener import Listener
    for child in getattr(service, "services", [service]):
        if isinstance(child, Listener):
            return child.listening.addCallback(lambda p: p.getHost().port)
    raise AssertionError("the Clearinghouse service has no Listener")


class DaemonProcess(protocol.ProcessProtocol):
    """A `tsls server` process; ``listening`` fires when it says so on stdout, ``ended`` when it exits."""

    def __init__(self):
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self.output = b""

    def outReceived(self, data):
        self.output += data
        if b"listening on" in self.output and not self.listening.called:
            self.listening.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"the server exited before listening:\n{self.output.decode()}"))
        self.ended.callback(reason.value)


def start_server_process(data_dir, socket_path):
    daemon = DaemonProcess()
    args = [sys.executable, "-m", "tsls.cli", "server", "--data-dir", data_dir, "--listen", f"unix:{socket_path}",
            "--clearinghouse-url", "http://127.0.0.1:9"]
    daemon.transport = reactor.spawnProcess(daemon, sys.executable, args, env=os.environ.copy())
    return daemon
