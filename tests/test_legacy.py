"""Issue 'older licensing models', as a new user does it: the documented commands, both daemons real."""
import json
import os

import pytest_twisted

from tests.harness import Lab
from tests.test_lab import lab  # noqa: F401 (fixture)
from tsls.core.perseat import add_pack_id

SQL = "SQL Server 7.0"


@pytest_twisted.inlineCallbacks
def test_per_server_to_per_seat_as_in_the_seed(lab, capsys):
    yield lab.admin(capsys, "products", "add", SQL, "--on", "SQLSRV01", "--per-server", "3")
    rows = yield lab.ts(capsys, "product", SQL, "pc1", "pc2", "pc3", "pc4", "--then-close", "1")
    assert [r["outcome"] for r in rows] == ["connected"] * 3 + ["refused", "closed", "connected"]
    assert rows[3]["reason"] == "NO_PER_SERVER_LICENSE"
    admin_in = yield lab.ts(capsys, "product", SQL, "a1", "a2", "a3", "a4", "--administrator",
                            "--credential", lab.credential)
    assert [r["licensed_by"] for r in admin_in] == ["per_server"] * 3 + ["administrator"]

    yield lab.admin(capsys, "products", "licenses", "BackOffice", "--seats", "5")
    suite = yield lab.ts(capsys, "product", SQL, "pc9")
    assert suite[0]["licensed_by"] == "per_server"

    remote = yield lab.ts(capsys, "product", SQL, "--switch", "--yes", name="OTHERSRV")
    assert remote[0]["error"]["code"] == "NOT_PERMITTED"
    unconfirmed = yield lab.admin(capsys, "products", "switch", SQL)
    assert unconfirmed["error"]["code"] == "CONFIRMATION_REQUIRED"
    switched = yield lab.admin(capsys, "products", "switch", SQL, "--yes")
    assert switched["products"][0]["mode"] == "per_seat"
    for argv in (["products", "switch-back", SQL], ["products", "switch", SQL, "--yes"]):
        refused = yield lab.admin(capsys, *argv)
        assert refused["error"]["code"] in ("PER_SEAT_IS_FINAL", "ALREADY_PER_SEAT")

    seat = yield lab.ts(capsys, "product", SQL, "pc1")
    again = yield lab.ts(capsys, "product", SQL, "pc1")
    assert seat[0]["licensed_by"] == again[0]["licensed_by"] == "suite"
    clients = yield lab.admin(capsys, "products", "clients")
    assert [(c["product"], c["licensed_by"]) for c in clients] == [("BackOffice", "suite")]
    history = yield lab.admin(capsys, "products", "history")
    assert len(history) == 3


@pytest_twisted.inlineCallbacks
def test_sbs_add_packs_as_in_the_seed(lab, capsys, tmp_path):
    disk, big = str(tmp_path / "addpack.json"), str(tmp_path / "big.json")
    not_sbs = yield lab.admin(capsys, "sbs", "make-add-pack", "--size", "5", "--disk", disk)
    refused = yield lab.admin(capsys, "sbs", "apply", "--disk", disk)
    assert refused["error"]["code"] == "NOT_SBS" and not_sbs["used"] is None
    setup = yield lab.admin(capsys, "sbs", "setup")
    assert setup["client_licenses"] == 5
    applied = yield lab.admin(capsys, "sbs", "apply", "--disk", disk)
    assert applied["client_licenses"] == 10
    again = yield lab.admin(capsys, "sbs", "apply", "--disk", disk)
    assert again["error"]["message"] == (
        "This Microsoft Small Business Server Client Add Pack disk was already used to increase client licenses "
        "from 5 to 10. This disk can only be reused to restore licenses from 5 to 10 users.")

    yield lab.stop()                                  # reinstall: a fresh license server database
    os.remove(str(tmp_path / "license-server.sqlite"))
    fresh = Lab(tmp_path)
    yield fresh.start()
    lab.__dict__.update(fresh.__dict__)
    yield lab.admin(capsys, "sbs", "setup")
    restored = yield lab.admin(capsys, "sbs", "apply", "--disk", disk)
    assert restored["client_licenses"] == 10

    with open(big, "w") as f:
        json.dump({"id": add_pack_id(20, "0000FFFF"), "used": None}, f)
    too_many = yield lab.admin(capsys, "sbs", "apply", "--disk", big)
    assert too_many["error"]["code"] == "LICENSE_LIMIT_EXCEEDED"
    assert (yield lab.admin(capsys, "sbs", "status"))["client_licenses"] == 10
    with open(big, "w") as f:
        json.dump({"id": "SBSAP-5-NOTAPACK", "used": None}, f)
    assert (yield lab.admin(capsys, "sbs", "apply", "--disk", big))["error"]["code"] == "BAD_ADD_PACK"
