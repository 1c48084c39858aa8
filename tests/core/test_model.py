import pytest

from tsls.core.model import AgreementType, CalType, Program, ProductVersion, Purchase, PurchaseRef
from tsls.errors import Code, TslsError


@pytest.mark.parametrize("body", [
    {"program": "retail", "retail_code": "A" * 24},
    {"program": "retail", "retail_code": "a" * 25},
    {"program": "retail", "retail_code": "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA"},
    {"program": "open", "license_number": "1234567", "authorization_number": "A" * 15},
    {"program": "open", "license_number": "12345678", "authorization_number": "A" * 14},
    {"program": "agreement", "agreement_type": "select", "agreement_number": "123456"},
    {"program": "retail", "retail_code": "A" * 25, "agreement_number": "1234567"},
    {"program": "open", "license_number": 12345678, "authorization_number": "A" * 15},
])
def test_malformed_purchase_data_is_refused(body):
    with pytest.raises(TslsError) as e:
        PurchaseRef.from_json(body)
    assert e.value.code is Code.INVALID_PURCHASE


def test_each_program_has_its_own_reference():
    assert PurchaseRef.from_json({"program": "retail", "retail_code": "B" * 25}).reference == "retail:" + "B" * 25
    ref = PurchaseRef.from_json({"program": "agreement", "agreement_type": "campus", "agreement_number": "7654321"})
    assert ref.agreement_type is AgreementType.CAMPUS and ref.reference == "agreement:campus:7654321"


def test_purchase_round_trips_through_json():
    p = Purchase(PurchaseRef(Program.OPEN, license_number="12345678", authorization_number="ABCDE12345ABCDE"),
                 ProductVersion.W2008R2, CalType.PER_USER, 20)
    assert Purchase.from_json(p.to_json()) == p


@pytest.mark.parametrize("quantity", [0, -1, True, 1.5, "3", None])
def test_quantity_must_be_a_positive_whole_number(quantity):
    with pytest.raises(TslsError) as e:
        Purchase.from_json({"program": "retail", "retail_code": "A" * 25, "product_version": "2003",
                            "cal_type": "per_device", "quantity": quantity})
    assert e.value.code is Code.BAD_REQUEST


def test_unknown_enum_values_name_the_choices():
    with pytest.raises(TslsError, match="2003"):
        ProductVersion.parse("1995")
    assert CalType.parse("per-device") is CalType.PER_DEVICE


def test_a_license_with_another_status_is_the_license_evolved_every_other_field_kept():
    import attrs

    from tsls.core.model import License, LicenseKind, LicenseStatus
    fields = attrs.fields(License)
    lic = License(*[f"value of {f.name}" for f in fields])       # each field told apart from the others
    for status in LicenseStatus:
        assert lic.with_status(status) == attrs.evolve(lic, status=status)
