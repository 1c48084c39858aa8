"""Ctrl-C (SIGINT) on the command-line clients, as real subprocesses against an in-process lab: the
device store keeps every license the server handed out, the summary so far is printed, exit 130.
The tests wait for the server's own events (licenses issued), never for time."""
import json
import os
import stat
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from tests.harness import Lab, running

TIMEOUT = 60


@pytest.fixture
def lab(tmp_path):
    (tmp_path / "lab").mkdir(mode=0o700)
    yield from running(Lab(tmp_path / "lab"))


class Client(protocol.ProcessProtocol):
    def __init__(self):
        self.out, self.err = b"", b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    @classmethod
    def spawn(cls, module, *argv):
        client = cls()
        client.transport = reactor.spawnProcess(client, sys.executable, [sys.executable, "-m", module, *argv],
                                                env=os.environ.copy())
        return client


def after_events(lab, name, n):
    """Fires once the license server has committed ``n`` events called ``name``."""
    seen, fired = [], defer.Deferred()

    def follow(event):
        if event["name"] == name:
            seen.append(event)
            if len(seen) == n and not fired.called:
                fired.callback(seen)
    lab.ls.server.followers.add(follow)
    fired.addBoth(lambda r: (lab.ls.server.followers.discard(follow), r)[1])
    return fired


@pytest_twisted.inlineCallbacks
def test_ctrl_c_during_a_long_logon_keeps_the_licenses_prints_the_rows_and_exits_130(lab, tmp_path, capsys):
    state = tmp_path / "ts"
    issued = after_events(lab, "TEMPORARY_ISSUED", 25)
    client = Client.spawn("clients.tssim", "--server", lab.endpoint, "--state-dir", str(state), "--name", "TS01",
                          "--json", "logon", "--count", "100000")
    yield issued.addTimeout(TIMEOUT, reactor)
    client.transport.signalProcess("INT")
    code = yield client.ended.addTimeout(TIMEOUT, reactor)
    assert code == 130, client.err.decode()
    assert b"Traceback" not in client.err and b"NameError" not in client.err
    rows = json.loads(client.out)       # the 25th license may still have been on its way
    assert len(rows) >= 24 and [r["machine"] for r in rows] == [f"pc{i:03d}" for i in range(1, len(rows) + 1)]
    assert client.err.decode().startswith(f"interrupted: after {len(rows)} logons")

    path = state / "devices.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not (state / "devices.json.new").exists()
    held = {machine: by_version["2003"]["license_id"] for machine, by_version in json.loads(path.read_text()).items()}
    for r in rows:
        assert held[r["machine"]] == r["license"]["license_id"]
    # Every license the server issued is held by its device, except at most the one in flight at Ctrl-C.
    licenses = yield lab.admin(capsys, "licenses", "--terminal-server", "TS01")
    missing = [lic for lic in licenses if held.get(lic["machine"]) != lic["license_id"]]
    assert len(licenses) >= len(rows) and len(missing) <= 1, missing


@pytest_twisted.inlineCallbacks
def test_ctrl_c_during_a_load_counts_the_requests_in_flight_as_interrupted(lab):
    answered = after_events(lab, "TEMPORARY_ISSUED", 50)
    client = Client.spawn("clients.load", "--server", lab.endpoint, "-n", "2", "--pipeline", "4",
                          "--count", "10000000", "--no-progress", "--json", "--seed", "1")
    yield answered.addTimeout(TIMEOUT, reactor)
    client.transport.signalProcess("INT")
    code = yield client.ended.addTimeout(TIMEOUT, reactor)
    assert code == 130, client.err.decode()
    summary = json.loads(client.out)
    assert summary["interrupted"] is True and summary["answers"] >= 50
    assert "CONNECTION_LOST" not in summary["refusals"]
    assert summary["requests"] == summary["answers"] + summary["interrupted_requests"]
    assert client.err.decode() == f"interrupted: {summary['interrupted_requests']} requests were in flight\n"
