import pytest

from tsls.core import activation, phonecodes
from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.core.phonecodes import Kind
from tsls.errors import Code, TslsError

ID = "A" * 35


def _error(f, *args):
    with pytest.raises(TslsError) as e:
        f(*args)
    return e.value


def code_of(f, *args):
    return _error(f, *args).code


def test_activation_needs_a_server_that_is_not_activated_and_the_rest_one_that_is():
    on = activation.activated(ActivationMethod.TELEPHONE, ID, "C" * 35, 100)
    assert on == Activation(ActivationStatus.ACTIVATED, ID, ActivationMethod.TELEPHONE, 100, "C" * 35)
    assert code_of(activation.require, on, False) is Code.ALREADY_ACTIVATED
    activation.require(on, True)
    for off in (Activation(), activation.deactivated()):
        assert code_of(activation.require, off, True) is Code.NOT_ACTIVATED
        activation.require(off, False)


PRODUCT = "12345-678-1234567-12345"


def phone_codes(product=PRODUCT):
    lsid = phonecodes.make(Kind.LICENSE_SERVER_ID, product)
    return lsid, phonecodes.make(Kind.CERTIFICATE, lsid)


def test_telephone_codes_are_checked_against_this_servers_product_id():
    lsid, cert = phone_codes()
    assert activation.check_telephone_codes(lsid, cert, PRODUCT) == (lsid, cert)
    # read out in groups, typed with hyphens, spaces or in lower case: the same codes
    assert activation.check_telephone_codes(phonecodes.grouped(lsid).lower(), " ".join(phonecodes.grouped(cert).split("-")),
                                            PRODUCT) == (lsid, cert)
    other_lsid, other_cert = phone_codes("99999-999-9999999-99999")
    error = _error(activation.check_telephone_codes, other_lsid, other_cert, PRODUCT)
    assert error.code is Code.CODE_FOR_ANOTHER_SERVER and "license server ID" in error.message
    error = _error(activation.check_telephone_codes, lsid, other_cert, PRODUCT)     # another activation's certificate
    assert error.code is Code.CODE_FOR_ANOTHER_SERVER and "certificate code" in error.message
    error = _error(activation.check_telephone_codes, cert, lsid, PRODUCT)           # the two swapped
    assert error.code is Code.CODE_FOR_ANOTHER_SERVER
    for bad in (None, 35, "A" * 34, lsid + "A"):
        assert code_of(activation.check_telephone_codes, bad, cert, PRODUCT) is Code.MISTYPED_CODE
        assert code_of(activation.check_telephone_codes, lsid, bad, PRODUCT) is Code.MISTYPED_CODE


def test_every_single_mistyped_character_is_refused_naming_its_group():
    lsid, cert = phone_codes()
    for position in range(35):
        for ch in phonecodes.ALPHABET:
            if ch == lsid[position]:
                continue
            typo = lsid[:position] + ch + lsid[position + 1:]
            error = _error(activation.check_telephone_codes, typo, cert, PRODUCT)
            assert error.code is Code.MISTYPED_CODE and error.details["group"] == position // 5 + 1


def test_characters_never_used_are_refused_naming_the_position():
    lsid, cert = phone_codes()
    for ch in "0O1I":
        typo = lsid[:12] + ch + lsid[13:]
        error = _error(activation.check_telephone_codes, typo, cert, PRODUCT)
        assert error.code is Code.MISTYPED_CODE and error.details == {"position": 13, "group": 3}


def test_swapped_groups_and_most_swapped_neighbours_are_refused():
    lsid, cert = phone_codes()
    groups = phonecodes.grouped(lsid).split("-")
    for a in range(7):
        for b in range(a + 1, 7):
            if groups[a] != groups[b]:
                swapped = groups[:]
                swapped[a], swapped[b] = swapped[b], swapped[a]
                assert code_of(activation.check_telephone_codes, "".join(swapped), cert, PRODUCT) in (
                    Code.MISTYPED_CODE, Code.CODE_FOR_ANOTHER_SERVER)
    caught = total = 0
    for i in range(34):
        if lsid[i] != lsid[i + 1]:
            total += 1
            swapped = lsid[:i] + lsid[i + 1] + lsid[i] + lsid[i + 2:]
            try:
                activation.check_telephone_codes(swapped, cert, PRODUCT)
            except TslsError:
                caught += 1
    assert caught == total      # the binding group catches what a group's check might not


def test_every_state_has_a_way_out():
    lsid, cert = phone_codes()
    on = activation.activated(ActivationMethod.TELEPHONE, lsid, cert, 100)
    assert activation.way_out(on, None, PRODUCT) == ()
    assert "tsls-admin activate" in activation.way_out(Activation(), None, PRODUCT)[0]
    for code in activation.KEPT:
        problem = activation.Problem(code, "x", 5)
        for state in (Activation(), on, activation.deactivated()):
            steps = activation.way_out(state, problem, PRODUCT)
            if state.activated and code not in activation.NOT_KNOWN:
                assert steps == ()          # activated and fine with the Clearinghouse
            else:
                assert steps and any("tsls-admin" in step for step in steps), (code, state)
    stuck = activation.way_out(on, activation.Problem(Code.BAD_CREDENTIALS.value, "x", 5), PRODUCT)
    assert stuck[0].startswith("tsls-admin deactivate --local --yes") and "--again" in stuck[1]
    assert PRODUCT in stuck[1]


def test_the_method_is_automatic_or_telephone():
    assert activation.parse_method("telephone") is ActivationMethod.TELEPHONE
    assert code_of(activation.parse_method, "fax") is Code.BAD_REQUEST


def test_the_certificate_never_reaches_a_repr():
    assert "SECRETCERT" not in repr(Activation(certificate="SECRETCERT"))
