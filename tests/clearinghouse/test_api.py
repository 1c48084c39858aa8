"""The Clearinghouse's API through its client library, in memory (treq's StubTreq), on real SQLite."""
import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock

from tsls.clearinghouse.client import ClearinghouseClient
from tsls.clearinghouse.http import ApiResource, Clearinghouse
from tsls.clearinghouse.store import ClearinghouseStore
from tsls.core.model import CalType, Program, ProductVersion, Purchase, PurchaseRef
from tsls.errors import Code, TslsError
from tsls.sqlite import StoreError

PRODUCT = "12345-678-1234567-12345"
CONTACT = {"first_name": "Ada", "last_name": "Lovelace", "company": "Lab", "country_region": "UK"}
RETAIL = PurchaseRef(Program.RETAIL, retail_code="A" * 25)
OPEN = PurchaseRef(Program.OPEN, license_number="12345678", authorization_number="ABCDE12345ABCDE")
OPERATOR = "0f" * 32


def client(store, clock=None):
    """The API in memory, and a client holding the operator's credential."""
    stub = StubTreq(ApiResource(Clearinghouse(store, clock or Clock(), OPERATOR)))
    return ClearinghouseClient("http://clearinghouse", stub, operator_secret=OPERATOR), stub


@pytest.fixture
def api(tmp_path):
    store = ClearinghouseStore(str(tmp_path / "ch.sqlite"))
    ch, stub = client(store)
    yield ch, stub, str(tmp_path / "ch.sqlite")
    store.close()


def me(server):
    """How an activated server names itself to the Clearinghouse."""
    return {"license_server_id": server["license_server_id"], "product_id": server["product_id"],
            "certificate": server["certificate"]}


def sale(ref=RETAIL, quantity=5, version=ProductVersion.W2003, cal_type=CalType.PER_DEVICE):
    return Purchase(ref, version, cal_type, quantity)


async def expect(code, d):
    with pytest.raises(TslsError) as e:
        await d
    assert e.value.code is code
    return e.value


@pytest_twisted.ensureDeferred
async def test_activation_needs_the_four_contact_fields_and_happens_once(api):
    ch, _, _ = api
    await expect(Code.BAD_REQUEST, ch.activate(PRODUCT, {"first_name": "Ada"}))
    await expect(Code.BAD_REQUEST, ch.activate("not-a-product-id", CONTACT))
    server = await ch.activate(PRODUCT, CONTACT)
    assert len(server["license_server_id"]) == 35 and server["license_server_id"].isalnum()
    await expect(Code.ALREADY_ACTIVATED, ch.activate(PRODUCT, CONTACT, "telephone"))


@pytest_twisted.ensureDeferred
async def test_a_purchase_binds_to_the_first_server_and_cannot_be_exceeded(api):
    ch, _, _ = api
    await ch.sell(sale(quantity=5))
    await expect(Code.PURCHASE_EXISTS, ch.sell(sale(quantity=5)))
    one = await ch.activate(PRODUCT, CONTACT)
    two = await ch.activate("99999-999-9999999-99999", CONTACT)
    pack = (await ch.install(me(one), RETAIL, quantity=3))["key_pack"]
    assert pack["quantity"] == 3 and len(pack["key_pack_id"]) == 35
    await expect(Code.PURCHASE_BOUND, ch.install(me(two), RETAIL))
    error = await expect(Code.QUANTITY_EXCEEDED, ch.install(me(one), RETAIL, quantity=3))
    assert error.details == {"quantity": 5, "installed": 3, "remaining": 2}
    rest = (await ch.install(me(one), RETAIL))["key_pack"]
    assert rest["quantity"] == 2


@pytest_twisted.ensureDeferred
async def test_open_license_installs_need_the_product_and_must_match_a_sale(api):
    ch, _, _ = api
    await ch.sell(sale(OPEN, 20, ProductVersion.W2008, CalType.PER_USER))
    server = me(await ch.activate(PRODUCT, CONTACT))
    await expect(Code.BAD_REQUEST, ch.install(server, OPEN))
    await expect(Code.UNKNOWN_PURCHASE, ch.install(server, OPEN, ProductVersion.W2003, CalType.PER_USER, 5))
    pack = (await ch.install(server, OPEN, ProductVersion.W2008, CalType.PER_USER, 20))["key_pack"]
    assert (pack["product_version"], pack["cal_type"], pack["quantity"]) == ("2008", "per_user", 20)


@pytest_twisted.ensureDeferred
async def test_recovery_moves_the_purchase_to_the_rebuilt_server(api):
    ch, _, _ = api
    await ch.sell(sale(quantity=7))
    old = await ch.activate(PRODUCT, CONTACT)
    await ch.install(me(old), RETAIL)
    await ch.deactivate(me(old))
    new = await ch.activate(PRODUCT, CONTACT)
    recovered = await ch.recover(me(new), RETAIL)
    assert [p["quantity"] for p in recovered["key_packs"]] == [7]
    assert (await ch.license_server(new["license_server_id"]))["bindings"] == [RETAIL.reference]
    assert (await ch.license_server(old["license_server_id"]))["bindings"] == []
    again = await ch.recover(me(new), RETAIL)      # already held here: the same key pack, no new CALs
    assert again["key_packs"] == recovered["key_packs"]
    [moved] = (await ch.list_purchases())[0]["moves"]
    assert (moved["from"], moved["to"], moved["quantity"]) == (old["license_server_id"], new["license_server_id"], 7)


@pytest_twisted.ensureDeferred
async def test_recoveries_back_and_forth_never_multiply_cals(api, tmp_path):
    """Issue 11 item 2: alternate recoveries gave one server 20 CALs from a 5-CAL purchase."""
    from tsls.clearinghouse.store import read_ledger
    ch, _, path = api
    await ch.sell(sale(quantity=5))
    one = me(await ch.activate(PRODUCT, CONTACT))
    two = me(await ch.activate("99999-999-9999999-99999", CONTACT))
    held = {one["license_server_id"]: {(await ch.install(one, RETAIL, quantity=3))["key_pack"]["key_pack_id"]: 3}}
    held[one["license_server_id"]].update({(await ch.install(one, RETAIL))["key_pack"]["key_pack_id"]: 2})
    held[two["license_server_id"]] = {}
    for caller, other in [(two, one), (one, two), (two, one), (one, two), (one, two)]:
        answer = await ch.recover(caller, RETAIL)
        mine = held[caller["license_server_id"]]
        for pack_id in answer["retired_key_packs"]:
            mine.pop(pack_id, None)         # what the license server does with the answer
        mine.update({p["key_pack_id"]: p["quantity"] for p in answer["key_packs"]})
        assert sum(mine.values()) == 5
        check_in = await ch.check_in(other)     # the other server's next contact retires what it held
        for pack_id in check_in["retired_key_packs"]:
            held[other["license_server_id"]].pop(pack_id, None)
        assert sum(sum(h.values()) for h in held.values()) == 5
    ledger = read_ledger(path)
    live = [p for p in ledger["key_packs"].values() if p["retired_at"] is None]
    assert sum(p["quantity"] for p in live) == 5 and {p["license_server_id"] for p in live} == {one["license_server_id"]}
    assert len(ledger["moves"]) == 4        # the last recovery onto the holder moved nothing
    [purchase] = await ch.list_purchases()
    assert (purchase["installed"], purchase["bound_to"]) == (5, one["license_server_id"])


@pytest_twisted.ensureDeferred
async def test_reactivation_gives_a_new_id_and_keeps_the_bindings(api):
    ch, _, _ = api
    await ch.sell(sale())
    old = await ch.activate(PRODUCT, CONTACT)
    await ch.install(me(old), RETAIL, quantity=1)
    await expect(Code.BAD_REQUEST, ch.reactivate(me(old), "bored", CONTACT))
    new = await ch.reactivate(me(old), "certificate_corrupt", {"first_name": "Ada", "last_name": "L"})
    assert new["license_server_id"] != old["license_server_id"] and new["bindings"] == [RETAIL.reference]
    assert new["certificate"] != old["certificate"]
    await expect(Code.NOT_ACTIVATED, ch.install(me(old), RETAIL))
    await ch.install(me(new), RETAIL, quantity=1)


@pytest_twisted.ensureDeferred
async def test_an_unknown_server_is_refused(api):
    ch, _, _ = api
    await ch.sell(sale())
    await expect(Code.UNKNOWN_LICENSE_SERVER, ch.install(
        {"license_server_id": "X" * 35, "product_id": PRODUCT, "certificate": "C" * 35}, RETAIL))


@pytest_twisted.ensureDeferred
async def test_only_the_holder_of_the_certificate_acts_on_a_servers_bindings(api):
    ch, _, _ = api
    await ch.sell(sale())
    server = me(await ch.activate(PRODUCT, CONTACT))
    for forged in ({**server, "certificate": "F" * 35}, {k: v for k, v in server.items() if k != "certificate"}):
        await expect(Code.BAD_CREDENTIALS, ch.install(forged, RETAIL))
        await expect(Code.BAD_CREDENTIALS, ch.deactivate(forged))
        await expect(Code.BAD_CREDENTIALS, ch.recover(forged, RETAIL))
    assert [p["installed"] for p in await ch.list_purchases()] == [0]


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/purchases", b"{not json", 400, "BAD_JSON"),
    ("POST", "/v1/purchases", b"[1]", 400, "BAD_REQUEST"),
    ("POST", "/v1/purchases", b'{"program":"retail","retail_code":"short","product_version":"2003",'
                              b'"cal_type":"per_device","quantity":5}', 400, "INVALID_PURCHASE"),
    ("POST", "/v1/purchases", b'{"program":"retail","product_version":"2003","cal_type":"per_device",'
                              b'"quantity":-5}', 400, "BAD_REQUEST"),
    ("POST", "/v1/installations", b'{"purchase":"x"}', 400, "BAD_REQUEST"),
    ("GET", "/v1/nothing", b"", 404, "NOT_FOUND"),
    ("GET", "/elsewhere", b"", 404, "NOT_FOUND"),
    ("DELETE", "/v1/purchases", b"", 405, "METHOD_NOT_ALLOWED"),
    ("GET", "/v1/license-servers/NOPE", b"", 403, "UNKNOWN_LICENSE_SERVER"),
    ("POST", "/v1/activations", b"x" * (65 * 1024), 413, "TOO_LARGE"),
])
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_a_4xx_with_a_json_error(api, method, path, body, status, code):
    _, stub, _ = api
    headers = await operator_headers(stub, method, path) if path.startswith(("/v1/purchases", "/v1/license")) else {}
    assert await answer(stub, method, path, body, headers) == (status, code)


async def answer(stub, method, path, body=b"", headers=None):
    import json
    import treq
    response = await stub.request(method, "http://clearinghouse" + path, data=body, headers=headers or {})
    body = json.loads(await treq.content(response))
    return response.code, body["error"]["code"] if "error" in body else body


async def operator_headers(stub, method, path, secret=OPERATOR):
    from tsls.public import proof as make_proof
    _, challenge = await answer(stub, "GET", "/v1/challenge")
    nonce = challenge["nonce"]
    proof = make_proof(secret, nonce, "operator", f"{method} {path}")
    return {"Authorization": f"TSLS-Operator nonce={nonce}, proof={proof}"}


SALE = b'{"program":"retail","product_version":"2003","cal_type":"per_device","quantity":5}'


@pytest_twisted.ensureDeferred
async def test_only_the_operator_sells_and_sees_the_purchases(api):
    """Issue 11 item 2: GET /v1/purchases answered anyone with every retail code."""
    ch, stub, _ = api
    await ch.sell(sale())
    assert await answer(stub, "GET", "/v1/purchases") == (401, "OPERATOR_REQUIRED")
    assert await answer(stub, "POST", "/v1/purchases", SALE) == (401, "OPERATOR_REQUIRED")
    assert await answer(stub, "GET", "/v1/license-servers/X") == (401, "OPERATOR_REQUIRED")
    wrong = await operator_headers(stub, "GET", "/v1/purchases", secret="aa" * 32)
    assert await answer(stub, "GET", "/v1/purchases", headers=wrong) == (403, "BAD_CREDENTIALS")
    other_path = await operator_headers(stub, "GET", "/v1/license-servers/X")
    assert await answer(stub, "GET", "/v1/purchases", headers=other_path) == (403, "BAD_CREDENTIALS")
    for garbage in ("Bearer x", "TSLS-Operator nonce=\u00b2, proof=1", "TSLS-Operator " + "9" * 5000):
        assert await answer(stub, "GET", "/v1/purchases", headers={"Authorization": garbage}) == \
            (403, "BAD_CREDENTIALS")
    good = await operator_headers(stub, "GET", "/v1/purchases")
    status, purchases = await answer(stub, "GET", "/v1/purchases", headers=good)
    assert status == 200 and [p["retail_code"] for p in purchases] == ["A" * 25]
    assert await answer(stub, "GET", "/v1/purchases", headers=good) == (403, "BAD_CREDENTIALS")   # one use
    nobody = ClearinghouseClient("http://clearinghouse", stub)
    await expect(Code.OPERATOR_REQUIRED, nobody.list_purchases())


@pytest_twisted.ensureDeferred
async def test_a_challenge_expires(tmp_path):
    clock = Clock()
    store = ClearinghouseStore(str(tmp_path / "ch.sqlite"))
    try:
        ch, stub = client(store, clock)
        headers = await operator_headers(stub, "GET", "/v1/purchases")
        clock.advance(61)
        assert await answer(stub, "GET", "/v1/purchases", headers=headers) == (403, "BAD_CREDENTIALS")
        assert await ch.list_purchases() == []
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_sales_survive_a_restart(tmp_path):
    path = str(tmp_path / "ch.sqlite")
    store = ClearinghouseStore(path)
    ch, _ = client(store)
    await ch.sell(sale())
    store.close()
    store = ClearinghouseStore(path)
    ch, _ = client(store)
    assert [p["retail_code"] for p in await ch.list_purchases()] == ["A" * 25]
    store.close()


def test_a_license_server_database_is_not_taken_for_a_clearinghouse_one(tmp_path):
    from tsls.server.store import LicenseStore
    path = str(tmp_path / "ls.sqlite")
    LicenseStore.open(path).close()
    with pytest.raises(StoreError):
        ClearinghouseStore(path)


@pytest_twisted.ensureDeferred
async def test_an_unreachable_clearinghouse_is_a_clear_error():
    ch = ClearinghouseClient("http://127.0.0.1:9", operator_secret=OPERATOR)
    error = await expect(Code.CLEARINGHOUSE_UNREACHABLE, ch.list_purchases())
    assert "http://127.0.0.1:9" in error.message


@pytest_twisted.ensureDeferred
async def test_cals_newer_than_the_license_server_are_refused_before_the_purchase_is_bound(api):
    ch, _, _ = api
    await ch.sell(sale(quantity=5, version=ProductVersion.W2022))
    server = me(await ch.activate(PRODUCT, CONTACT))
    error = await expect(Code.CAL_NEWER_THAN_SERVER, ch.install(server, RETAIL, server_version=ProductVersion.W2019))
    assert error.details == {"server_version": "2019", "cal_version": "2022"}
    assert (await ch.list_purchases())[0]["bound_to"] is None
    pack = (await ch.install(server, RETAIL, server_version=ProductVersion.W2025))["key_pack"]
    assert pack["product_version"] == "2022"


@pytest_twisted.ensureDeferred
async def test_no_2012_r2_cal_can_be_sold(api):
    ch, _, _ = api
    body = {**RETAIL.to_json(), "product_version": "2012R2", "cal_type": "per_device", "quantity": 5}
    await expect(Code.NO_SUCH_CAL_VERSION, ch.sell(body))


@pytest_twisted.ensureDeferred
async def test_a_repeated_idempotency_key_gets_the_original_answer_and_changes_nothing(api):
    """Issue 11 item 3: a call the license server never heard the answer to is asked again with its key."""
    ch, _, path = api
    await ch.sell(sale(quantity=6))
    first = await ch.activate(PRODUCT, CONTACT, idempotency_key="activation-key-0001")
    again = await ch.activate(PRODUCT, CONTACT, idempotency_key="activation-key-0001")
    assert again == first and len(again["certificate"]) == 35          # the same certificate, not kept in clear
    await expect(Code.ALREADY_ACTIVATED, ch.activate(PRODUCT, CONTACT, idempotency_key="activation-key-0002"))
    server = me(again)
    await expect(Code.UNKNOWN_PURCHASE, ch.install(server, OPEN, ProductVersion.W2003, CalType.PER_USER, 1,
                                                   idempotency_key="install-key-00001"))
    packs = [await ch.install(server, RETAIL, quantity=3, idempotency_key="install-key-00002") for _ in range(3)]
    assert packs[0] == packs[1] == packs[2]
    [purchase] = await ch.list_purchases()
    assert purchase["installed"] == 3
    await expect(Code.IDEMPOTENCY_KEY_REUSED, ch.install(server, RETAIL, quantity=2, idempotency_key="install-key-00002"))
    await expect(Code.BAD_REQUEST, ch.install(server, RETAIL, quantity=1, idempotency_key="short"))
    await expect(Code.BAD_REQUEST, ch.install(server, RETAIL, quantity=1, idempotency_key="\u00b2" * 20))
    recovered = [await ch.recover(server, RETAIL, idempotency_key="recover-key-00001") for _ in range(2)]
    assert recovered[0] == recovered[1] == {"key_packs": [packs[0]["key_pack"]], "retired_key_packs": []}
    import sqlite3
    db = sqlite3.connect(path)
    try:
        stored = " ".join(r[0] for r in db.execute("SELECT answer FROM idempotency"))
        keys = [r[0] for r in db.execute("SELECT key_digest FROM idempotency")]
    finally:
        db.close()
    assert first["certificate"] not in stored and "activation-key-0001" not in keys
