"""The daemons' ready line: `tsls lab|server|clearinghouse` as real processes on ephemeral ports print one
line of JSON with the ports they bound, and the lab's license server calls the Clearinghouse on the port
it really bound. A port in use is one clear line on stderr and exit 1."""
import json
import os
import sys

import pytest_twisted
from twisted.internet import defer, protocol, reactor

from clients import admin

TIMEOUT = 30
ANY = "tcp:0:interface=127.0.0.1"


class Daemon(protocol.ProcessProtocol):
    """A `tsls` daemon process: ``ready`` fires with its ready line (a dict), ``ended`` with its exit code."""

    def __init__(self):
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data):
        self.out += data
        for line in self.out.splitlines():
            if line.startswith(b'{"event": "ready"') and not self.ready.called:
                self.ready.callback(json.loads(line))

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"exited before ready:\n{self.out.decode()}{self.err.decode()}"))
        self.ended.callback(reason.value.exitCode)

    @classmethod
    def spawn(cls, *argv):
        daemon = cls()
        daemon.transport = reactor.spawnProcess(daemon, sys.executable, [sys.executable, "-m", "tsls.cli", *argv],
                                                env=os.environ.copy())
        return daemon

    @defer.inlineCallbacks
    def stop(self):
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        code = yield self.ended.addTimeout(TIMEOUT, reactor)
        return code


@pytest_twisted.inlineCallbacks
def test_lab_on_ephemeral_ports_wires_the_bound_clearinghouse_port_through(tmp_path, capsys):
    lab = Daemon.spawn("lab", "--data-dir", str(tmp_path), "--listen", ANY, "--clearinghouse-listen", ANY,
                       "--console-listen", ANY)
    try:
        ready = yield lab.ready.addTimeout(TIMEOUT, reactor)
        ch, ls = ready["clearinghouse"], ready["license_server"]
        assert (ready["command"], ready["pid"], ready["data_dir"]) == ("tsls lab", lab.transport.pid, str(tmp_path))
        assert ch["port"] > 0 and ch["url"] == f"http://127.0.0.1:{ch['port']}" and not ch["tls"]
        assert ls["endpoint"] == f"tcp:127.0.0.1:{ls['port']}" and ls["clearinghouse_url"] == ch["url"]
        assert ready["console"]["url"] == f"http://127.0.0.1:{ready['console']['port']}"
        # Activation goes license server -> Clearinghouse: it works only if the bound port was wired through.
        args = admin.parser().parse_args(["--server", ls["endpoint"], "--credential", str(tmp_path / "admin.secret"),
                                          "--json", "activate"])
        capsys.readouterr()
        yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(TIMEOUT, reactor)
        assert json.loads(capsys.readouterr().out)["status"] == "activated"

        # The same ports again: one clear line, exit 1, no traceback.
        again = Daemon.spawn("lab", "--data-dir", str(tmp_path / "again"), "--listen", ls["endpoint"].replace(
            "tcp:127.0.0.1:", "tcp:") + ":interface=127.0.0.1", "--clearinghouse-listen", ANY,
            "--console-listen", "none")
        code = yield again.ended.addTimeout(TIMEOUT, reactor)
        assert code == 1
        assert again.err.decode().splitlines() == [
            f"tsls: cannot listen: Couldn't listen on 127.0.0.1:{ls['port']}: [Errno 98] Address already in use."]
        assert b"Traceback" not in again.out + again.err
        assert b'"event": "ready"' not in again.out
    finally:
        assert (yield lab.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_server_and_clearinghouse_alone_print_their_ready_lines(tmp_path):
    ch = Daemon.spawn("clearinghouse", "--data-dir", str(tmp_path), "--listen", ANY)
    try:
        ready = yield ch.ready.addTimeout(TIMEOUT, reactor)
        assert ready["command"] == "tsls clearinghouse" and "license_server" not in ready
        url = ready["clearinghouse"]["url"]
        ls = Daemon.spawn("server", "--data-dir", str(tmp_path), "--listen", ANY, "--clearinghouse-url", url,
                          "--log-json")
        try:
            ready = yield ls.ready.addTimeout(TIMEOUT, reactor)
            assert ready["command"] == "tsls server" and "clearinghouse" not in ready
            assert ready["license_server"]["clearinghouse_url"] == url and ready["license_server"]["port"] > 0
        finally:
            assert (yield ls.stop()) == 0
    finally:
        assert (yield ch.stop()) == 0
