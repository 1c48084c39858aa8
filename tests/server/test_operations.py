"""The license server's operations in memory: LicenseServer over a real ledger on SQLite, with a
writer that runs each batch at once (no reactor) and the Clearinghouse fake."""
import json
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from tsls.clearinghouse.testing import CONTACT, FakeClearinghouse
from tsls.core.perseat import ADMINISTRATOR
from tsls.errors import Code, TslsError
from tsls.server.app import LicenseServer, load_identity
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter


class CommitFails:
    """A connection whose COMMIT fails while ``failing`` is set, as a full disk makes it."""

    def __init__(self, db):
        self._db = db
        self.failing = False
        self.fail_on = None         # a statement that starts so fails too (a write failing midway)

    def execute(self, sql, *args):
        if (self.failing and sql == "COMMIT") or (self.fail_on and sql.startswith(self.fail_on)):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


class Session:
    """Stands for the protocol connection that owns Per Server connections."""


@pytest.fixture
def server(tmp_path):
    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    store.db = CommitFails(store.db)
    clock = Clock()
    clock.advance(1_800_000_000)
    server = LicenseServer(BatchWriter(None, clock, store, threaded=False), FakeClearinghouse(),
                           load_identity(store, "1"))
    server.store = store
    yield server
    store.close()


async def refused(d) -> TslsError:
    with pytest.raises(TslsError) as caught:
        await d
    return caught.value


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_is_storage_error_and_changes_nothing(server):
    server.store.db.failing = True
    error = await refused(server.register_terminal_server("TS01"))
    assert error.code is Code.STORAGE_ERROR
    server.store.db.failing = False
    assert (await server.terminal_servers())["terminal_servers"] == []


@pytest_twisted.ensureDeferred
async def test_a_per_server_connection_whose_commit_failed_is_not_counted(server):
    owner = Session()
    await server.products.add_product("SQL", "SQLSRV01", 1)
    server.store.db.failing = True
    assert (await refused(server.products.connect(owner, "SQL", "pc1", False))).code is Code.STORAGE_ERROR
    server.store.db.failing = False
    assert (await server.products.products())["products"][0]["connections"] == 0
    connected = await server.products.connect(owner, "SQL", "pc2", False)       # the one license is still free
    assert connected["licensed_by"] == "per_server"
    assert (await refused(server.products.connect(owner, "SQL", "pc3", False))).code is Code.NO_PER_SERVER_LICENSE


@pytest_twisted.ensureDeferred
async def test_a_closed_connection_frees_its_license_and_only_its_session_may_close_it(server):
    session, other = Session(), Session()
    await server.products.add_product("SQL", "SQLSRV01", 1)
    connected = await server.products.connect(session, "SQL", "pc1", False)
    closing = server.products.disconnect(other, connected["connection_id"])
    assert (await refused(closing)).code is Code.NOT_CONNECTED
    await server.products.disconnect(session, connected["connection_id"])
    assert (await server.products.connect(other, "SQL", "pc2", False))["licensed_by"] == "per_server"
    server.products.release(other)
    assert (await server.products.products())["products"][0]["connections"] == 0


@pytest_twisted.ensureDeferred
async def test_reactivation_takes_the_new_id_and_certificate_the_clearinghouse_gives(server):
    first = await server.activate("automatic", CONTACT, None, None)
    again = await server.reactivate("certificate_corrupt", CONTACT)
    assert again["status"] == "activated" and again["method"] == "automatic"
    assert again["license_server_id"] != first["license_server_id"] and again["license_server_id"].startswith("LS")
    assert server.store.activation().certificate == "D" * 35
    assert ("reactivate", first["license_server_id"], "certificate_corrupt") in server.activation.clearinghouse.calls
    names = [e["name"] for e in json.loads(await server.list_events({}, None, 100))]   # encoded by the database
    assert names == ["ACTIVATED", "REACTIVATED"]


@pytest_twisted.ensureDeferred
async def test_deactivation_forgets_the_id_and_refuses_to_run_twice(server):
    first = await server.activate("automatic", CONTACT, None, None)
    gone = await server.deactivate()
    assert gone == {**gone, "status": "deactivated", "license_server_id": None, "method": None, "activated_at": None,
                    "problem": None}
    assert gone["way_out"][0].startswith("tsls-admin activate")
    assert ("deactivate", first["license_server_id"]) in server.activation.clearinghouse.calls
    assert (await refused(server.deactivate())).code is Code.NOT_ACTIVATED
    assert (await refused(server.reactivate("redeployed", CONTACT))).code is Code.NOT_ACTIVATED
    assert (await server.activate("automatic", CONTACT, None, None))["status"] == "activated"


@pytest_twisted.ensureDeferred
async def test_the_purchase_history_says_how_many_suite_cals_were_added_and_how_many_there_are(server):
    await server.products.add_licenses("BackOffice", 0, 5)
    await server.products.add_licenses("BackOffice", 0, 3)
    messages = [e["message"] for e in await server.products.history()]
    assert messages[-2:] == ["5 BackOffice CALs added (5 in all)", "3 BackOffice CALs added (8 in all)"]


@pytest_twisted.ensureDeferred
async def test_licenses_added_to_a_named_product_follow_its_mode(server):
    await server.products.add_product("SQL", "SQLSRV01", 2)
    added = await server.products.add_licenses("SQL", 3, 4)
    [sql] = added["products"]
    assert (sql["per_server_licenses"], sql["seat_licenses"]) == (5, 4)
    await server.products.switch_to_per_seat("SQL", True, ADMINISTRATOR)
    assert (await refused(server.products.add_licenses("SQL", 1, 0))).code is Code.ALREADY_PER_SEAT
    [sql] = (await server.products.add_licenses("SQL", 0, 2))["products"]
    assert (sql["mode"], sql["per_server_licenses"], sql["seat_licenses"]) == ("per_seat", 0, 6)
    assert (await refused(server.products.add_licenses("Exchange", 0, 1))).code is Code.UNKNOWN_PRODUCT


@pytest.mark.parametrize("answer", [{}, {"key_pack": "KP"}, {"key_pack": {"key_pack_id": "short"}},
                                    {"key_pack": {"key_pack_id": "K" * 35, "purchase": {"program": "retail"}}}])
@pytest_twisted.ensureDeferred
async def test_a_malformed_key_pack_from_the_clearinghouse_is_clearinghouse_error(server, answer):
    await server.activate("automatic", CONTACT, None, None)
    server.activation.clearinghouse.install = lambda *args, **kwargs: defer.succeed(answer)
    purchase = {"program": "retail", "retail_code": "R" * 25}
    assert (await refused(server.install_key_pack(purchase))).code is Code.CLEARINGHOUSE_ERROR
    assert await server.key_packs() == []


@pytest_twisted.ensureDeferred
async def test_a_pending_activation_is_asked_again_with_its_key_and_never_replaces_a_later_one(server):
    """Issue 11 item 3, in memory: the call and its idempotency key are recorded before the call."""
    ch = server.activation.clearinghouse
    ch.reachable = False
    error = await refused(server.activate("automatic", CONTACT, None, None))
    assert error.code is Code.CLEARINGHOUSE_UNREACHABLE and "pending" in error.message
    [pending] = server.store.pending_clearinghouse_calls()
    assert (pending.operation, pending.state) == ("activate", "pending") and len(pending.key) >= 16
    assert pending.key not in repr(pending)
    error = await refused(server.activate("automatic", CONTACT, None, None))   # asked again: the same call
    assert [c.id for c in server.store.pending_clearinghouse_calls()] == [pending.id]
    from tsls.core import phonecodes
    phoned = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, server.identity.product_id)
    telephone = await server.activate("telephone", None, phoned,
                                      phonecodes.make(phonecodes.Kind.CERTIFICATE, phoned))
    assert telephone["method"] == "telephone"
    ch.reachable = True
    assert await server.activation.finish_pending() == 1
    assert server.store.pending_clearinghouse_calls() == ()
    assert server.store.clearinghouse_call(pending.key).state == "done"
    status = await server.status()
    assert (status["activation"]["method"], status["activation"]["license_server_id"]) == ("telephone", phoned)


@pytest_twisted.ensureDeferred
async def test_a_logon_whose_write_fails_leaves_nothing_and_one_that_wrote_takes_its_batch_back(server):
    """A logon runs without a savepoint (it decides before it writes): a write that fails first leaves
    nothing; one that fails after another write rolls its whole batch back (STORAGE_ERROR)."""
    from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
    from tsls.core.licensing import TerminalServer
    from tsls.core.model import CalType, ProductVersion, Program, PurchaseRef

    store, now = server.store, 1_800_000_000
    with store.transaction():
        store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35, ActivationMethod.AUTOMATIC, now))
        store.add_key_pack("K1".ljust(35, "0"), PurchaseRef(Program.RETAIL, retail_code="A" * 25), ProductVersion.W2003,
                           CalType.PER_DEVICE, 5, now)
    ts = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)
    logon = server.ledger.logon

    def written():
        return ([(lic.kind.value, lic.status.value) for lic in store.licenses()],
                [e.event_id.name for _, e in store.events()], store.key_packs()[0].issued)

    store.db.fail_on = "INSERT INTO licenses"
    assert (await refused(logon(ts, "h1", "PC1", "alice", None))).code is Code.INTERNAL_ERROR
    assert written() == ([], [], 0)
    store.db.fail_on = None
    temporary = (await logon(ts, "h1", "PC1", "alice", None))["license"]
    await server.ledger.report_logon(ts, "h1", temporary["token"])

    store.db.fail_on = "UPDATE licenses"        # after the permanent CAL's INSERT
    assert (await refused(logon(ts, "h1", "PC1", "alice", temporary["token"]))).code is Code.STORAGE_ERROR
    assert written() == ([("temporary", "active")], ["TEMPORARY_ISSUED"], 0)
    store.db.fail_on = None
    assert (await logon(ts, "h1", "PC1", "alice", temporary["token"]))["outcome"] == "upgraded"
    assert written() == ([("temporary", "upgraded"), ("permanent", "active")], ["TEMPORARY_ISSUED", "CAL_ISSUED"], 1)
