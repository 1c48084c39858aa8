"""Telephone activation end to end (real Clearinghouse, real license server, tsls-admin): a mistyped
code is refused and changes nothing; and every stuck state has a way out that status shows
(issue 15 item 8, issue 12 item 9; docs/activation.md)."""
import pytest_twisted

from tests.test_lab import lab  # noqa: F401  (the fixture)


def _typo(code: str, position: int) -> str:
    replacement = "B" if code[position] != "B" else "C"
    return code[:position] + replacement + code[position + 1:]


@pytest_twisted.inlineCallbacks
def test_a_mistyped_telephone_code_is_refused_and_the_right_one_then_works(lab, capsys):  # noqa: F811
    status = yield lab.admin(capsys, "status")
    call = yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", status["product_id"])
    error = yield lab.admin(capsys, "activate", "--telephone", _typo(call["license_server_id"], 17), call["certificate"])
    assert error["error"]["code"] == "MISTYPED_CODE" and error["error"]["details"] == {"group": 4}
    error = yield lab.admin(capsys, "activate", "--telephone", call["license_server_id"], _typo(call["certificate"], 0))
    assert error["error"]["code"] == "MISTYPED_CODE" and error["error"]["details"] == {"group": 1}
    status = yield lab.admin(capsys, "status")
    assert status["activation"]["status"] == "not_activated"
    assert status["activation"]["problem"]["code"] == "MISTYPED_CODE"
    assert status["activation"]["way_out"][0].startswith("read the codes again")
    result = yield lab.admin(capsys, "activate", "--telephone", call["license_server_id"], call["certificate"])
    assert result["status"] == "activated" and result["way_out"] == []
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                           "--quantity", "5")
    pack = yield lab.admin(capsys, "install", "--retail", sold["retail_code"])
    assert pack["total"] == 5                  # not the BAD_CREDENTIALS: the server is not stuck


@pytest_twisted.inlineCallbacks
def test_lost_codes_and_an_activation_the_clearinghouse_no_longer_knows_have_a_way_out(lab, capsys):  # noqa: F811
    yield lab.admin(capsys, "activate")
    sold = yield lab.admin(capsys, "clearinghouse", "sell", "--version", "2003", "--cal-type", "per-device",
                           "--quantity", "5")
    yield lab.admin(capsys, "install", "--retail", sold["retail_code"], "--quantity", "2")
    status = yield lab.admin(capsys, "status")
    product_id = status["product_id"]
    # the operator activates the product ID again by telephone (say the server's codes were lost):
    # automatic activation is refused, the earlier activation is retired at the Clearinghouse
    error = yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", product_id)
    assert error["error"]["code"] == "ALREADY_ACTIVATED" and "--again" in error["error"]["message"]
    call = yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", product_id, "--again")
    # the server's next call is refused: the Clearinghouse no longer knows its activation
    error = yield lab.admin(capsys, "install", "--retail", sold["retail_code"], "--quantity", "1")
    assert error["error"]["code"] == "NOT_ACTIVATED"
    status = yield lab.admin(capsys, "status")
    way_out = status["activation"]["way_out"]
    assert status["activation"]["problem"]["code"] == "NOT_ACTIVATED"
    assert way_out[0].startswith("tsls-admin deactivate --local --yes") and f"--product-id {product_id} --again" in way_out[1]
    # follow it
    error = yield lab.admin(capsys, "deactivate", "--local")
    assert error["error"]["code"] == "CONFIRMATION_REQUIRED"
    yield lab.admin(capsys, "deactivate", "--local", "--yes")
    result = yield lab.admin(capsys, "activate", "--telephone", call["license_server_id"], call["certificate"])
    assert result["status"] == "activated"
    pack = yield lab.admin(capsys, "install", "--retail", sold["retail_code"], "--quantity", "3")
    assert pack["total"] == 3                  # the purchase moved to the new license server ID
    status = yield lab.admin(capsys, "status")
    assert status["activation"]["problem"] is None and status["activation"]["way_out"] == []
    assert sorted(p["total"] for p in status["key_packs"]) == [2, 3]


@pytest_twisted.inlineCallbacks
def test_activating_again_at_the_clearinghouse_needs_the_operator(lab, capsys):  # noqa: F811
    status = yield lab.admin(capsys, "status")
    yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", status["product_id"])
    lab.operator_credential = lab.credential          # not the operator's
    error = yield lab.admin(capsys, "clearinghouse", "activate", "--product-id", status["product_id"], "--again")
    assert error["error"]["code"] == "BAD_CREDENTIALS"


@pytest_twisted.inlineCallbacks
def test_the_cal_usage_report_as_csv(lab, capsys):  # noqa: F811
    from twisted.internet import defer, reactor

    from clients import admin
    yield lab.ts(capsys, "logon", "pc1:alice", "pc2:bob", mode="per-user", version="2019")
    capsys.readouterr()
    args = admin.parser().parse_args(["--server", lab.endpoint, "--credential", lab.credential, "cal-usage", "--csv"])
    yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(10, reactor)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user,issued_at,expires_at,beyond_installed"
    assert [line.split(",")[0] for line in lines[1:]] == ["alice", "bob"]
    assert all(line.endswith(",True") for line in lines[1:])          # no Per User CAL installed: over-allocated
