"""A real RDP client, FreeRDP's xfreerdp (headless under Xvfb), gets its CAL from the lab: both
daemons on loopback, the terminal-server simulator's RDP listener in front of them.

.ci/run installs freerdp2-x11, xvfb and xauth; these tests are skipped only where xfreerdp is absent."""
import hashlib
import json
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, utils

from clients.rdp.listen import listen, make_factory
from clients.tssim import ClientKeepsLicense, TerminalServer, TerminalServerState
from tests.harness import Lab, running
from tsls.public import hardware_id

pytestmark = pytest.mark.skipif(not (shutil.which("xfreerdp") and shutil.which("xvfb-run")),
                                reason="xfreerdp and xvfb-run are not installed (.ci/run installs freerdp2-x11 xvfb xauth)")
TIMEOUT = 60


class RdpLab:
    def __init__(self, tmp_path, mode="per-device", head=(), **timeouts):
        self.tmp = tmp_path
        self.lab = Lab(tmp_path, lab_clock=True)
        self.mode = mode
        self.head = list(head)          # license servers the discovery list tries before the lab's
        self.timeouts = timeouts
        self.summaries = []
        self.waiting = []

    @defer.inlineCallbacks
    def start(self):
        yield self.lab.start()
        state = TerminalServerState(str(self.tmp / "terminal-servers.json"))
        self.ts = TerminalServer(reactor, "TS01", "2003", self.mode.replace("-", "_"), [*self.head, self.lab.endpoint],
                                 ClientKeepsLicense(), state, **self.timeouts)
        factory = make_factory(self.ts, state, str(self.tmp))
        factory.observers.append(self._finished)
        self.port = yield listen(reactor, factory, "tcp:0:interface=127.0.0.1")

    def _finished(self, summary):
        self.summaries.append(summary)
        while self.waiting:
            self.waiting.pop(0).callback(summary)

    @defer.inlineCallbacks
    def stop(self):
        yield self.port.stopListening()
        yield self.ts.close()
        yield self.lab.stop()

    @defer.inlineCallbacks
    def connect(self, host, user="test"):
        """One xfreerdp run; returns (what the RDP front did, xfreerdp's stdout, the client's stored CAL)."""
        config = self.tmp / f"client-{host}"
        done = defer.Deferred()
        self.waiting.append(done)
        out, err, code = yield utils.getProcessOutputAndValue(
            "xvfb-run", ["-a", "xfreerdp", f"/v:127.0.0.1:{self.port.getHost().port}", "/sec:tls", "/cert:ignore",
                         f"/u:{user}", "/p:secret", f"/client-hostname:{host}", "/auth-only", "/timeout:20000",
                         "/log-level:DEBUG"],
            env={**os.environ, "XDG_CONFIG_HOME": str(config)}).addTimeout(TIMEOUT, reactor)
        summary = yield done.addTimeout(TIMEOUT, reactor)
        if summary["outcome"] in ("new_license", "upgrade_license", "valid_client"):
            # Licensed, then the capabilities exchange and finalization: the connection became active,
            # which is all /auth-only asks for.
            assert code == 0, (code, err.decode(errors="replace")[-2000:])
        else:
            assert code != 0
        cal = config / "freerdp" / "licenses" / (hashlib.sha1(host.encode()).hexdigest() + ".cal")
        return summary, out.decode(errors="replace"), json.loads(cal.read_bytes()) if cal.exists() else None


@pytest.fixture
def rdp(tmp_path):
    yield from running(RdpLab(tmp_path))


LICENSED = "CONNECTION_STATE_LICENSING --> CONNECTION_STATE_CAPABILITIES_EXCHANGE"


@defer.inlineCallbacks
def install(rdp, capsys, quantity):
    yield rdp.lab.admin(capsys, "activate")
    sold = yield rdp.lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                               "--quantity", str(quantity))
    yield rdp.lab.admin(capsys, "install", "--retail", sold["retail_code"])


@pytest_twisted.inlineCallbacks
def test_xfreerdp_gets_stores_presents_and_renews_its_cal(rdp, capsys):
    yield install(rdp, capsys, 2)
    hwid = hardware_id("lictest")

    first, out, cal = yield rdp.connect("lictest")
    assert LICENSED in out
    assert first["outcome"] == "new_license" and first["hwid"] == hwid
    assert cal == first["license"] and cal["kind"] == "temporary" and cal["hwid"] == hwid
    listed = yield rdp.lab.admin(capsys, "licenses")
    assert [(lic["license_id"], lic["kind"], lic["hwid"]) for lic in listed] == [(cal["license_id"], "temporary", hwid)]

    second, out, cal = yield rdp.connect("lictest")          # presents the temporary license: upgraded
    assert LICENSED in out and second["outcome"] == "upgrade_license"
    assert cal == second["license"] and cal["kind"] == "permanent"
    packs = yield rdp.lab.admin(capsys, "keypacks")
    assert packs[0]["issued"] == 1

    third, out, again = yield rdp.connect("lictest")         # presents the CAL: nothing changes
    assert LICENSED in out and third["outcome"] == "valid_client"
    assert again == cal
    packs = yield rdp.lab.admin(capsys, "keypacks")
    assert packs[0]["issued"] == 1                            # no second decrement

    listed = yield rdp.lab.admin(capsys, "licenses", "--kind", "permanent")
    assert [lic["license_id"] for lic in listed] == [cal["license_id"]]
    events = yield rdp.lab.admin(capsys, "events")
    assert [(e["event_id"], e["hwid"]) for e in events if e["hwid"]] == [(1101, hwid), (1102, hwid)]

    # Near the CAL's expiry, the next connection renews it: same CAL, later expiry, still one seat.
    from tsls.core.labtime import parse_date
    yield rdp.lab.admin(capsys, "clock", f"+{(parse_date(cal['expires_at']) - parse_date(cal['issued_at'])) // 86400 - 3}d")
    fourth, out, renewed = yield rdp.connect("lictest")
    assert LICENSED in out and fourth["outcome"] == "upgrade_license"
    assert renewed["license_id"] == cal["license_id"] and renewed["expires_at"] > cal["expires_at"]
    assert renewed["renewals"] == 1
    packs = yield rdp.lab.admin(capsys, "keypacks")
    assert packs[0]["issued"] == 1
    events = yield rdp.lab.admin(capsys, "events", "--event-id", "1103")
    assert [e["hwid"] for e in events] == [hwid]


@pytest_twisted.inlineCallbacks
def test_a_device_on_a_full_pool_keeps_its_temporary_license(rdp, capsys):
    yield install(rdp, capsys, 1)
    for host in ("first", "second"):
        yield rdp.connect(host)
    upgraded, _, cal = yield rdp.connect("first")
    assert upgraded["outcome"] == "upgrade_license" and cal["kind"] == "permanent"
    full, out, temporary = yield rdp.connect("second")       # no CAL left: the core keeps it temporary
    assert LICENSED in out and full["outcome"] == "valid_client" and temporary["kind"] == "temporary"
    packs = yield rdp.lab.admin(capsys, "keypacks")
    assert (packs[0]["issued"], packs[0]["available"]) == (1, 0)
    listed = yield rdp.lab.admin(capsys, "licenses", "--kind", "temporary")
    assert {lic["machine"] for lic in listed if lic["status"] == "active"} == {"second"}


@pytest.fixture
def rdp_per_user(tmp_path):
    yield from running(RdpLab(tmp_path, mode="per-user"))


@pytest_twisted.inlineCallbacks
def test_a_per_user_terminal_server_logs_the_user_and_stores_nothing(rdp_per_user, capsys):
    rdp = rdp_per_user
    yield rdp.lab.admin(capsys, "activate")
    yield rdp.lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-user", "--quantity",
                        "1", "--retail", "PERUSER1CAL00000000000000")
    yield rdp.lab.admin(capsys, "install", "--retail", "PERUSER1CAL00000000000000")
    for user in ("alice", "bob"):
        summary, out, cal = yield rdp.connect(f"desk-{user}", user=user)
        assert LICENSED in out and summary["outcome"] == "valid_client" and cal is None
    report = yield rdp.lab.admin(capsys, "usage")
    assert report["users_seen"] == 2 and report["per_user_cals_installed"] == 1


@pytest_twisted.inlineCallbacks
def test_the_tsls_ts_rdp_command(rdp, capsys, tmp_path):
    """`tsls-ts rdp --connections 1 --json`: listens on an ephemeral port, prints the ready line with the
    bound port, ignores a probe of the port (connect, send nothing, close), prints a JSON line for the
    client, and returns."""
    from clients import tssim

    yield install(rdp, capsys, 1)
    args = tssim.parser().parse_args(["--server", rdp.lab.endpoint, "--state-dir", str(tmp_path / "cli"), "--json",
                                      "--name", "TS02", "rdp", "--listen", "tcp:0:interface=127.0.0.1",
                                      "--connections", "1"])
    capsys.readouterr()
    serving = defer.ensureDeferred(tssim.command(reactor, args))
    ready = json.loads(capsys.readouterr().out.splitlines()[0])    # a TCP port is bound synchronously
    assert (ready["event"], ready["command"], ready["terminal_server"]) == ("ready", "tsls-ts rdp", "TS02")
    port = ready["rdp"]["port"]
    assert ready["rdp"]["host"] == "127.0.0.1" and port > 0
    probe = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(protocol.Protocol)).addTimeout(TIMEOUT, reactor)
    closed = defer.Deferred()
    probe.connectionLost = lambda reason: closed.callback(None)
    probe.transport.loseConnection()
    yield closed.addTimeout(TIMEOUT, reactor)
    out, err, code = yield utils.getProcessOutputAndValue(         # a session, not /auth-only
        "xvfb-run", ["-a", "xfreerdp", f"/v:127.0.0.1:{port}", "/sec:tls", "/cert:ignore", "/u:carol", "/p:x",
                     "/client-hostname:cli-host", "/timeout:20000"],
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cli-client")}).addTimeout(TIMEOUT, reactor)
    yield serving.addTimeout(TIMEOUT, reactor)
    # The server ended the session (Set Error Info, Disconnect Provider Ultimatum): xfreerdp says so and
    # exits 1 (XF_EXIT_DISCONNECT), not 147 (a broken transport), and does not reconnect.
    assert code == 1, (code, err.decode(errors="replace")[-2000:])
    assert "ERRINFO_RPC_INITIATED_DISCONNECT" in (out + err).decode(errors="replace")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines           # the probe was no client
    row = json.loads(lines[0])
    assert (row["machine"], row["user"], row["outcome"], row["kind"]) == ("cli-host", "carol", "new_license", "temporary")
    assert (tmp_path / "cli" / "rdp" / "TS02" / "licensing-key.pem").stat().st_mode & 0o077 == 0


@pytest_twisted.inlineCallbacks
def test_a_license_server_that_never_answers_is_passed_over_for_the_next_one(tmp_path, capsys):
    silent = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol))            # accepts, reads, never answers
    rdp = RdpLab(tmp_path, head=[f"tcp:127.0.0.1:{silent.getHost().port}"], answer_timeout=1.0)
    yield rdp.start()
    try:
        summary, out, cal = yield rdp.connect("failover")
        assert LICENSED in out and summary["outcome"] == "new_license" and cal["kind"] == "temporary"
        listed = yield rdp.lab.admin(capsys, "licenses")
        assert [lic["hwid"] for lic in listed] == [hardware_id("failover")]
    finally:
        yield rdp.stop()
        yield silent.stopListening()
