"""WMI numbers beside tsls's names [§9, WMI:win32-tsissuedlicense; WMI:win32-tslicensekeypack]."""
import attrs

from tests.core.test_licensing import NOW, pack
from tsls.core import wmi
from tsls.core.model import (
    AgreementType, CalType, License, LicenseKind, LicenseStatus, Program, ProductVersion as V, PurchaseRef,
)


def lic(kind, status):
    return License(1, kind, status, "h", "m", "u", "TS", V.W2019, None, True, NOW, NOW + 1)


def test_license_status_numbers():
    assert wmi.license_status(lic(LicenseKind.TEMPORARY, LicenseStatus.ACTIVE)) == 1
    assert wmi.license_status(lic(LicenseKind.PERMANENT, LicenseStatus.ACTIVE)) == 2
    assert wmi.license_status(lic(LicenseKind.TEMPORARY, LicenseStatus.UPGRADED)) == 3
    assert wmi.license_status(lic(LicenseKind.PERMANENT, LicenseStatus.REVOKED)) == 4
    assert wmi.license_status(lic(LicenseKind.PERMANENT, LicenseStatus.EXPIRED)) == 0


def test_key_pack_numbers():
    p = pack(version=V.W2008R2, cal_type=CalType.PER_USER, total=5, issued=2)
    assert wmi.key_pack(p) == {"KeyPackType": 1, "ProductType": 1, "ProductVersionID": 3, "TotalLicenses": 5,
                               "IssuedLicenses": 2, "AvailableLicenses": 3}
    agreement = PurchaseRef(Program.AGREEMENT, agreement_type=AgreementType.SELECT, agreement_number="1234567")
    open_ = PurchaseRef(Program.OPEN, license_number="12345678", authorization_number="ABCDE12345ABCDE")
    assert wmi.key_pack(attrs.evolve(p, purchase=agreement))["KeyPackType"] == 2
    assert wmi.key_pack(attrs.evolve(p, purchase=open_, product_version=V.W2019))["KeyPackType"] == 5
    assert wmi.key_pack(attrs.evolve(p, product_version=V.W2019))["ProductVersionID"] is None
    assert wmi.product_type(CalType.PER_DEVICE) == 0
