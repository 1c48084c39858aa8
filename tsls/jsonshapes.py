"""How the core's values look on the wire (socket protocol and admin output). Written once."""
from __future__ import annotations

from tsls.core import wmi
from tsls.core.model import KeyPack, License, iso

__all__ = ["iso", "key_pack_json", "license_json"]


def key_pack_json(p: KeyPack) -> dict:
    return {
        "id": p.id,
        "key_pack_id": p.key_pack_id,
        "product_version": p.product_version.value,
        "cal_type": p.cal_type.value,
        "purchase": p.purchase.to_json(),
        "total": p.total,
        "issued": p.issued,
        "available": p.available,
        "installed_at": iso(p.installed_at),
        "retired_at": None if p.retired_at is None else iso(p.retired_at),
        "wmi": wmi.key_pack(p),          # Win32_TSLicenseKeyPack's numbers (docs/wmi.md)
    }


def license_json(lic: License, key_pack_id: str | None = None, token: str | None = None, with_wmi: bool = False) -> dict:
    """``with_wmi``: add Win32_TSIssuedLicense's numbers (the administrator's lists; docs/wmi.md)."""
    out = {     # ``_value_`` is ``.value`` without the enum property's lookup (every grant's answer)
        "license_id": lic.id,
        "kind": lic.kind._value_,
        "status": lic.status._value_,
        "hwid": lic.hwid,
        "machine": lic.machine,
        "user": lic.user,
        "terminal_server": lic.terminal_server,
        "product_version": lic.product_version._value_,
        "key_pack_id": key_pack_id,
        "validated": lic.validated,
        "issued_at": iso(lic.issued_at),
        "expires_at": iso(lic.expires_at),
        "renewals": lic.renewals,
    }
    if token is not None:
        out["token"] = token
    if with_wmi:
        out["wmi"] = wmi.issued_license(lic)
    return out
