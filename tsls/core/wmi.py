"""The numbers the Windows object model gives where tsls has names, for labs that script against WMI
[§9, WMI:win32-tsissuedlicense; WMI:win32-tslicensekeypack]. docs/wmi.md has the tables."""
from __future__ import annotations

from tsls.core.model import CalType, KeyPack, License, LicenseKind, LicenseStatus, Program


def license_status(lic: License) -> int:
    """Win32_TSIssuedLicense.LicenseStatus: 0 unknown, 1 temporary, 2 active, 3 upgrade, 4 revoked,
    5 pending, 6 concurrent. A temporary license in force is 1, a permanent CAL in force 2, a temporary
    license replaced by a permanent CAL 3 (upgrade), a revoked CAL 4; an expired license has no number
    of its own and is 0 (unknown)."""
    if lic.status is LicenseStatus.ACTIVE:
        return 1 if lic.kind is LicenseKind.TEMPORARY else 2
    return {LicenseStatus.UPGRADED: 3, LicenseStatus.REVOKED: 4}.get(lic.status, 0)


def key_pack_type(program: Program) -> int:
    """Win32_TSLicenseKeyPack.KeyPackType: 0 unknown, 1 retail, 2 volume, 3 concurrent, 4 temporary,
    5 open license, 6 not supported. Agreements (Select, Enterprise, Campus, School, SPLA, other) are
    volume licensing: 2."""
    return {Program.RETAIL: 1, Program.AGREEMENT: 2, Program.OPEN: 5}[program]


def product_type(cal_type: CalType) -> int:
    """Win32_TSLicenseKeyPack.ProductType: 0 Per Device, 1 Per User, 2 invalid."""
    return 0 if cal_type is CalType.PER_DEVICE else 1


def key_pack(p: KeyPack) -> dict:
    return {"KeyPackType": key_pack_type(p.purchase.program), "ProductType": product_type(p.cal_type),
            "ProductVersionID": p.product_version.info.wmi_product_version_id,
            "TotalLicenses": p.total, "IssuedLicenses": p.issued, "AvailableLicenses": p.available}


def issued_license(lic: License) -> dict:
    return {"LicenseStatus": license_status(lic)}
