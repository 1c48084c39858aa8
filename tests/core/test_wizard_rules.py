"""The Manage RDS CALs wizard's rules (tsls/core): installing by a key pack ID read out."""
import pytest

from tsls.core import clearinghouse as rules
from tsls.core import phonecodes, wizard
from tsls.core.activation import ActivationMethod
from tsls.core.clearinghouse import IssuedPack, KeyPackRecord, Sale, Server, ServerStatus
from tsls.core.model import CalType, ProductVersion, Purchase, PurchaseRef
from tsls.errors import Code, TslsError

A = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, "12345-123-1234567-12345")
B = phonecodes.make(phonecodes.Kind.LICENSE_SERVER_ID, "12345-123-1234567-99999")


def server(ls_id, status=ServerStatus.ACTIVATED):
    return Server(ls_id, "12345-123-1234567-12345", status, ActivationMethod.AUTOMATIC, {}, 0)


def sale(version=ProductVersion.W2019):
    purchase = Purchase(PurchaseRef.from_json({"program": "retail", "retail_code": "A" * 25}), version, CalType.PER_DEVICE, 10)
    return Sale(purchase, installed=4, bound_to=A)


def record(to=A, retired_at=None):
    kp = phonecodes.make(phonecodes.Kind.KEY_PACK, to)
    return KeyPackRecord(IssuedPack(kp, to, 4), "sale", retired_at)


def test_a_key_pack_issued_to_the_server_is_handed_over():
    r = record()
    assert rules.claim_key_pack(r, server(A), sale()) == r.pack


@pytest.mark.parametrize("which", ["unknown", "other server", "retired"])
def test_anything_else_is_unknown_key_pack(which):
    r = {"unknown": None, "other server": record(B), "retired": record(retired_at=5)}[which]
    with pytest.raises(TslsError) as e:
        rules.claim_key_pack(r, server(A), sale())
    assert e.value.code is Code.UNKNOWN_KEY_PACK


def test_a_key_pack_newer_than_the_server_is_refused():
    with pytest.raises(TslsError) as e:
        rules.claim_key_pack(record(), server(A), sale(ProductVersion.W2025), ProductVersion.W2019)
    assert e.value.code is Code.CAL_NEWER_THAN_SERVER


def test_the_telephone_agent_names_an_activated_server_only():
    assert rules.named_server(server(A), A) == server(A)
    for s, code in ((None, Code.UNKNOWN_LICENSE_SERVER), (server(A, ServerStatus.DEACTIVATED), Code.NOT_ACTIVATED)):
        with pytest.raises(TslsError) as e:
            rules.named_server(s, A)
        assert e.value.code is code


def test_every_single_mistyped_character_of_a_key_pack_id_is_refused_never_taken_for_another():
    code = phonecodes.make(phonecodes.Kind.KEY_PACK, A)
    for i in range(len(code)):
        for ch in phonecodes.ALPHABET:
            if ch == code[i]:
                continue
            typo = code[:i] + ch + code[i + 1:]
            with pytest.raises(TslsError) as e:
                phonecodes.check(phonecodes.Kind.KEY_PACK, A, typo)
            assert e.value.code is Code.MISTYPED_CODE
    with pytest.raises(TslsError) as e:
        phonecodes.check(phonecodes.Kind.KEY_PACK, B, code)
    assert e.value.code is Code.CODE_FOR_ANOTHER_SERVER


def pack(cal_type=CalType.PER_DEVICE, total=10, issued=3, retired_at=None):
    from tsls.core.model import KeyPack
    return KeyPack(1, "K" * 35, PurchaseRef.from_json({"program": "retail", "retail_code": "A" * 25}),
                   ProductVersion.W2019, cal_type, total, issued, 0, retired_at)


def test_convert_takes_unissued_cals_into_the_other_type():
    assert wizard.convert(ProductVersion.W2019, pack(), 7) == wizard.Conversion("K" * 35, 7, CalType.PER_USER)
    assert wizard.convert(ProductVersion.W2012, pack(CalType.PER_USER), 1).to is CalType.PER_DEVICE


@pytest.mark.parametrize("version, p, count, code", [
    (ProductVersion.W2008R2, pack(), 1, Code.CONVERT_NOT_SUPPORTED),
    (ProductVersion.W2019, pack(), 8, Code.NOT_ENOUGH_CALS),            # 3 of 10 are issued
    (ProductVersion.W2019, None, 1, Code.NOT_FOUND),
    (ProductVersion.W2019, pack(retired_at=5), 1, Code.NOT_FOUND),
    (ProductVersion.W2019, pack(), 0, Code.BAD_REQUEST),
    (ProductVersion.W2019, pack(), True, Code.BAD_REQUEST),
])
def test_convert_refusals(version, p, count, code):
    with pytest.raises(TslsError) as e:
        wizard.convert(version, p, count)
    assert e.value.code is code


def test_the_clearinghouse_converts_only_a_live_pack_of_the_caller_within_its_quantity():
    r = record()
    assert rules.convert_key_pack(r, server(A), 3) == (r.pack, 1)
    for rec, s, count, code in ((record(B), server(A), 1, Code.UNKNOWN_KEY_PACK),
                                (record(retired_at=1), server(A), 1, Code.UNKNOWN_KEY_PACK),
                                (r, server(A), 5, Code.NOT_ENOUGH_CALS)):
        with pytest.raises(TslsError) as e:
            rules.convert_key_pack(rec, s, count)
        assert e.value.code is code


def test_rebuild_needs_confirmation():
    wizard.rebuild(True)
    with pytest.raises(TslsError) as e:
        wizard.rebuild(False)
    assert e.value.code is Code.CONFIRMATION_REQUIRED


def test_migrate_moves_the_purchase_from_the_named_source_and_never_adds_cals():
    live = (IssuedPack("K" * 35, A, 4),)
    move = rules.migrate(sale(), server(B), live, rules.MigrationReason.REPLACED, A)
    assert (move.sale.bound_to, move.issue, move.retired) == (B, 4, live)
    assert rules.migrate(sale(), server(B), live, rules.MigrationReason.NOT_WORKING, None).issue == 4


@pytest.mark.parametrize("s, target, reason, source, code", [
    (None, B, "replaced", A, Code.UNKNOWN_PURCHASE),
    (sale(), A, "not_working", None, Code.ALREADY_MIGRATED),
    (sale(), B, "replaced", None, Code.BAD_REQUEST),
    (sale(), B, "replaced", B, Code.PURCHASE_BOUND),
])
def test_migrate_refusals(s, target, reason, source, code):
    with pytest.raises(TslsError) as e:
        rules.migrate(s, server(target), (), rules.MigrationReason(reason), source)
    assert e.value.code is code


def test_the_wizard_s_choices():
    running = wizard.migration(rules.MigrationReason.REPLACED, wizard.Route.AUTOMATIC,
                               {"license_server_id": phonecodes.grouped(A), "running": True}, True, False)
    assert (running.source_id, running.source_running, running.by_id) == (A, True, False)
    offline = wizard.migration(rules.MigrationReason.REPLACED, wizard.Route.TELEPHONE,
                               {"license_server_id": A, "os": "2016"}, False, True)
    assert (offline.source_running, offline.by_id) == (False, True)
    gone = wizard.migration(rules.MigrationReason.NOT_WORKING, wizard.Route.AUTOMATIC, {"running": True}, True, False)
    assert gone.source_running is False          # a source that no longer works is never asked
    for reason, route, source, purchase, kp in (
            ("replaced", "automatic", {}, True, False),                               # not named
            ("replaced", "automatic", {"license_server_id": A}, True, False),         # offline without its OS
            ("replaced", "automatic", {"license_server_id": A, "os": "95"}, True, False),
            ("not_working", "automatic", {}, False, True),                            # automatic names the purchase
            ("not_working", "web", {}, True, False)):                                 # web types the key pack ID
        with pytest.raises(TslsError) as e:
            wizard.migration(rules.MigrationReason(reason), wizard.Route(route), source, purchase, kp)
        assert e.value.code is Code.BAD_REQUEST
