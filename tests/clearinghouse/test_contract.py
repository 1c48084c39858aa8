"""One suite, two Clearinghouses: the fake of tsls.clearinghouse.testing and the real API (in memory
through its client library, on real SQLite). What the fake claims, the real one does."""
import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock

from tsls.clearinghouse.client import ClearinghouseClient
from tsls.clearinghouse.http import ApiResource, Clearinghouse
from tsls.clearinghouse.store import ClearinghouseStore
from tsls.clearinghouse.testing import CONTACT, FakeClearinghouse
from tsls.core.clearinghouse import IssuedKeyPack
from tsls.core.model import CalType, Program, ProductVersion, Purchase, PurchaseRef
from tsls.errors import Code, TslsError

PRODUCT = "12345-678-1234567-12345"
OPERATOR = "0f" * 32


class Real:
    def __init__(self, path):
        self.store = ClearinghouseStore(path)
        stub = StubTreq(ApiResource(Clearinghouse(self.store, Clock(), OPERATOR)))
        self.client = ClearinghouseClient("http://clearinghouse", stub, operator_secret=OPERATOR)

    def sell(self, ref, quantity):
        return self.client.sell(Purchase(ref, ProductVersion.W2003, CalType.PER_DEVICE, quantity))


class Fake:
    def __init__(self):
        self.client = FakeClearinghouse()

    async def sell(self, ref, quantity):
        """The fake keeps no sales: whatever is installed was sold."""


@pytest.fixture(params=["fake", "real"])
def ch(request, tmp_path):
    if request.param == "fake":
        yield Fake()
        return
    real = Real(str(tmp_path / "ch.sqlite"))
    yield real
    real.store.close()


async def refused(d):
    with pytest.raises(TslsError) as e:
        await d
    return e.value.code


def me(answer):
    return {k: answer[k] for k in ("license_server_id", "product_id", "certificate")}


@pytest.mark.parametrize("contact", [{}, {"first_name": "Ada"}, {**CONTACT, "shoe_size": "9"}, {**CONTACT, "company": ""}])
@pytest_twisted.ensureDeferred
async def test_activation_needs_a_whole_contact(ch, contact):
    assert await refused(ch.client.activate(PRODUCT, contact)) is Code.BAD_REQUEST


@pytest_twisted.ensureDeferred
async def test_activation_needs_a_product_id(ch):
    assert await refused(ch.client.activate("not-a-product-id", CONTACT)) is Code.BAD_REQUEST


@pytest_twisted.ensureDeferred
async def test_activation_gives_a_license_server_id_and_a_certificate(ch):
    answer = await ch.client.activate(PRODUCT, CONTACT)
    assert len(answer["license_server_id"]) == 35 and answer["license_server_id"].isalnum()
    assert answer["product_id"] == PRODUCT and isinstance(answer["certificate"], str)


@pytest_twisted.ensureDeferred
async def test_reactivation_needs_a_known_reason_and_gives_a_new_id(ch):
    server = me(await ch.client.activate(PRODUCT, CONTACT))
    assert await refused(ch.client.reactivate(server, "bored", CONTACT)) is Code.BAD_REQUEST
    assert await refused(ch.client.reactivate(server, "redeployed", {"company": "Lab"})) is Code.BAD_REQUEST
    again = await ch.client.reactivate(server, "redeployed", {"first_name": "Ada", "last_name": "Lovelace"})
    assert again["license_server_id"] != server["license_server_id"] and again["retired_key_packs"] == []


@pytest_twisted.ensureDeferred
async def test_an_installation_issues_one_key_pack_of_the_quantity_asked(ch):
    server = me(await ch.client.activate(PRODUCT, CONTACT))
    ref = PurchaseRef(Program.RETAIL, retail_code="A" * 25)
    await ch.sell(ref, 5)
    answer = await ch.client.install(server, ref, quantity=3)
    pack = IssuedKeyPack.from_json(answer["key_pack"])
    assert (pack.purchase, pack.product_version, pack.cal_type, pack.quantity) == (
        ref, ProductVersion.W2003, CalType.PER_DEVICE, 3)


@pytest_twisted.ensureDeferred
async def test_a_conversion_gives_a_key_pack_of_the_other_type_and_leaves_the_rest(ch):
    server = me(await ch.client.activate(PRODUCT, CONTACT))
    ref = PurchaseRef(Program.RETAIL, retail_code="C" * 25)
    await ch.sell(ref, 5)
    old = IssuedKeyPack.from_json((await ch.client.install(server, ref, quantity=5))["key_pack"])
    assert await refused(ch.client.convert(server, old.key_pack_id, 6)) is Code.NOT_ENOUGH_CALS
    assert await refused(ch.client.convert(server, "Z" * 35, 1)) is Code.UNKNOWN_KEY_PACK
    answer = await ch.client.convert(server, old.key_pack_id, 2)
    new = IssuedKeyPack.from_json(answer["key_pack"])
    assert (new.cal_type, new.quantity, new.purchase) == (CalType.PER_USER, 2, ref)
    assert answer["converted"] == {"key_pack_id": old.key_pack_id, "quantity": 3}


@pytest_twisted.ensureDeferred
async def test_a_migration_needs_a_known_reason_and_gives_every_installed_cal(ch):
    source = me(await ch.client.activate(PRODUCT, CONTACT))
    target = me(await ch.client.activate("12345-678-1234567-99999", CONTACT))
    ref = PurchaseRef(Program.RETAIL, retail_code="M" * 25)
    await ch.sell(ref, 5)
    await ch.client.install(source, ref, quantity=5)
    assert await refused(ch.client.migrate(target, ref.to_json(), "bored")) is Code.BAD_REQUEST
    answer = await ch.client.migrate(target, ref.to_json(), "not_working")
    assert IssuedKeyPack.from_json(answer["key_pack"]).quantity == 5
    assert await refused(ch.client.install_key_pack(target, "Z" * 35)) is Code.UNKNOWN_KEY_PACK
