"""The terminal-server simulator against real daemons: discovery order, grace period, renewal."""
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from clients.tssim import DeviceStore, TerminalServer, TerminalServerState
from tests.harness import Daemon, activate_and_install
from tsls.core.labtime import parse_date
from tsls.core.model import DAY
from tsls.public import hardware_id

NOW = 1_800_000_000


def down(tmp_path) -> str:
    """A license server endpoint nobody listens on (a socket file that does not exist)."""
    return f"unix:{tmp_path}/no-license-server.sock"


def simulator(tmp_path, servers, name="TS01", version="2003"):
    """The simulated terminal server, its local time on a task.Clock (it keeps lab time as an
    offset from it, learnt from each license server's hello)."""
    clock = Clock()
    clock.advance(NOW)
    return TerminalServer(reactor, name, version, "per_device", servers, DeviceStore(str(tmp_path / "devices.json")),
                          TerminalServerState(str(tmp_path / "ts.json"), clock=clock))


def test_hardware_id_matches_what_an_rdp_client_sends():
    assert hardware_id("lictest").startswith("00000104") and len(hardware_id("lictest")) == 40


@pytest_twisted.inlineCallbacks
def test_a_down_license_server_is_skipped_and_the_next_one_serves(tmp_path, daemon):
    ts = simulator(tmp_path, [down(tmp_path), daemon.endpoint])
    try:
        row = yield defer.ensureDeferred(ts.logon("pc1", "alice"))
    finally:
        yield defer.ensureDeferred(ts.close())
    assert row["served_by"] == daemon.endpoint and row["outcome"] == "temporary_issued"


@pytest_twisted.inlineCallbacks
def test_a_refusing_license_server_is_skipped_for_one_that_has_cals(tmp_path, daemon):
    other = Daemon(tmp_path / "other")
    (tmp_path / "other").mkdir()
    yield other.start()
    try:
        admin = yield other.admin()
        yield activate_and_install(admin)
        ts = simulator(tmp_path, [daemon.endpoint, other.endpoint])
        yield defer.ensureDeferred(ts.logon("pc1", "alice"))          # temporary, from the first
        row = yield defer.ensureDeferred(ts.logon("pc1", "alice"))
        yield defer.ensureDeferred(ts.close())
        assert row["served_by"] == daemon.endpoint and row["reason"] == "NOT_ACTIVATED"
    finally:
        yield other.stop()


@pytest_twisted.inlineCallbacks
def test_with_no_license_server_grace_admits_then_refuses(tmp_path):
    ts = simulator(tmp_path, [down(tmp_path)])
    row = yield defer.ensureDeferred(ts.logon("pc1", "alice"))
    assert row["outcome"] == "admitted_grace" and row["served_by"] is None and row["grace_days_left"] == 120
    assert row["reason"] == "SERVER_UNREACHABLE"
    assert row["message"].startswith("no license server answered; admitted in the grace period: 120 days left")
    state = ts.state.data["TS01"]
    state["clock_offset"] = 121 * DAY          # as if the lab clock had moved 121 days
    row = yield defer.ensureDeferred(ts.logon("pc1", "alice"))
    assert row["outcome"] == "refused" and row["reason"] == "NO_LICENSE_SERVER"


@pytest_twisted.inlineCallbacks
def test_a_cal_due_for_renewal_is_refused_when_no_license_server_answers(tmp_path, daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    ts = simulator(tmp_path, [daemon.endpoint])
    yield defer.ensureDeferred(ts.logon("pc1", "alice"))
    row = yield defer.ensureDeferred(ts.logon("pc1", "alice"))
    yield defer.ensureDeferred(ts.close())
    assert row["license"]["kind"] == "permanent"
    offline = simulator(tmp_path, [down(tmp_path)])
    offline.devices = ts.devices
    offline.state = ts.state
    row = yield defer.ensureDeferred(offline.logon("pc1", "alice"))
    assert row["outcome"] == "admitted_license"
    expires = parse_date(row["license"]["expires_at"])
    ts.state.data["TS01"]["clock_offset"] = expires - DAY - ts.state.clock.seconds()     # a day before it runs out
    row = yield defer.ensureDeferred(offline.logon("pc1", "alice"))
    assert row["outcome"] == "refused" and row["reason"] == "RENEWAL_FAILED"


def test_the_command_says_no_license_server_answered_and_exits_3_when_refused(tmp_path):
    import json
    import subprocess
    import sys

    def tsls_ts(*argv):
        return subprocess.run([sys.executable, "-m", "clients.tssim", "--server", down(tmp_path), "--state-dir", str(tmp_path),
                               "--connect-timeout", "5", *argv], capture_output=True, text=True, timeout=60)

    done = tsls_ts("logon", "pc1", "pc2")
    assert done.returncode == 0, done.stderr
    assert "SERVER_UNREACHABLE" in done.stdout
    assert "pc1 (and 1 more): no license server answered; admitted in the grace period: 120 days left" in done.stdout
    state = json.loads((tmp_path / "terminal-servers.json").read_text())
    state["TS01"]["clock_offset"] = 121 * DAY
    (tmp_path / "terminal-servers.json").write_text(json.dumps(state))
    done = tsls_ts("logon", "pc1")
    assert done.returncode == 3 and done.stderr == "1 of 1 logons refused\n"
    assert "NO_LICENSE_SERVER" in done.stdout and "the grace period ended" in done.stdout
