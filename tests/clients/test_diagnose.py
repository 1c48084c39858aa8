"""tsls-ts diagnose, grace and the Not Configured mode, end to end: real daemons on loopback, the
real command-line clients (docs/diagnoser.md)."""
import json

import pytest_twisted
from twisted.internet import defer, reactor

from clients import tssim
from clients.cli import Failed
from tests.test_lab import lab  # noqa: F401  (the fixture)


@defer.inlineCallbacks
def ts(lab, capsys, *argv, servers=None, version="2019", mode="per-device"):  # noqa: F811
    capsys.readouterr()
    server_args = [a for s in (servers or [lab.endpoint]) for a in ("--server", s)]
    args = tssim.parser().parse_args([*server_args, "--state-dir", str(lab.data), "--json", "--name", "TS19",
                                      "--version", version, "--mode", mode, "--connect-timeout", "2", *argv])
    status = 0
    try:
        yield defer.ensureDeferred(tssim.command(reactor, args)).addTimeout(20, reactor)
    except Failed as e:
        status = e.status
    return status, json.loads(capsys.readouterr().out)


@pytest_twisted.inlineCallbacks
def test_the_diagnoser_names_each_problem_and_then_says_valid_ls(lab, capsys, tmp_path):  # noqa: F811
    down = "tcp:127.0.0.1:1"            # nothing listens there
    status, d = yield ts(lab, capsys, "diagnose", servers=[down, lab.endpoint])
    assert status == tssim.REFUSED and not d["ok"]
    assert [(s["status"], s["status_code"]) for s in d["servers"]] == [("NOT_CONNECTABLE", 6), ("VALID_LS", 11)]
    assert any("License server tcp:127.0.0.1:1 is not available" in m for m in d["messages"])
    assert any("not activated" in m for m in d["messages"])
    yield lab.admin(capsys, "activate")
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2019", "--cal-type", "per-user",
                           "--quantity", "5")
    yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
    status, d = yield ts(lab, capsys, "diagnose", servers=[down, lab.endpoint])
    assert not d["ok"] and any("does not match" in m for m in d["messages"])          # Per Device host, Per User CALs
    status, d = yield ts(lab, capsys, "diagnose", servers=[down, lab.endpoint], mode="per-user")
    assert status == 0 and d["ok"] and d["status"] == "VALID_LS" and d["grace_days_left"] == 120


@pytest_twisted.inlineCallbacks
def test_not_configured_gets_in_during_grace_and_grace_days_are_queryable(lab, capsys):  # noqa: F811
    status, g = yield ts(lab, capsys, "grace", mode="not-configured")
    assert g["grace_days_left"] == 120 and g["grace_ends_at"] is None
    status, rows = yield ts(lab, capsys, "logon", "pc1", mode="not-configured")
    assert status == 0 and rows[0]["outcome"] == "admitted_grace" and rows[0]["grace_days_left"] == 120
    status, d = yield ts(lab, capsys, "diagnose", mode="not-configured")
    assert not d["ok"] and d["mode"] == "not_configured" and "not configured" in d["messages"][0]
    status, g = yield ts(lab, capsys, "grace", mode="not-configured")
    assert g["grace_active"] is True and g["grace_ends_at"] is not None
