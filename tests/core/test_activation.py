import pytest

from tsls.core import activation
from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.errors import Code, TslsError

ID = "A" * 35


def code_of(f, *args):
    with pytest.raises(TslsError) as e:
        f(*args)
    return e.value.code


def test_activation_needs_a_server_that_is_not_activated_and_the_rest_one_that_is():
    on = activation.activated(ActivationMethod.TELEPHONE, ID, "C" * 35, 100)
    assert on == Activation(ActivationStatus.ACTIVATED, ID, ActivationMethod.TELEPHONE, 100, "C" * 35)
    assert code_of(activation.require, on, False) is Code.ALREADY_ACTIVATED
    activation.require(on, True)
    for off in (Activation(), activation.deactivated()):
        assert code_of(activation.require, off, True) is Code.NOT_ACTIVATED
        activation.require(off, False)


def test_telephone_codes_are_35_upper_case_letters_and_digits():
    assert activation.check_telephone_codes(ID, "B1" * 17 + "C") == (ID, "B1" * 17 + "C")
    for bad in (None, "a" * 35, "A" * 34, "A-" * 17 + "A", 35):
        assert code_of(activation.check_telephone_codes, bad, ID) is Code.BAD_REQUEST
        assert code_of(activation.check_telephone_codes, ID, bad) is Code.BAD_REQUEST


def test_the_method_is_automatic_or_telephone():
    assert activation.parse_method("telephone") is ActivationMethod.TELEPHONE
    assert code_of(activation.parse_method, "fax") is Code.BAD_REQUEST


def test_the_certificate_never_reaches_a_repr():
    assert "SECRETCERT" not in repr(Activation(certificate="SECRETCERT"))
