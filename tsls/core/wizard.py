"""The Manage RDS CALs wizard's rules on the license server [§9, MIGR in docs/behaviour.md]: convert
CALs between Per Device and Per User, rebuild the database, migrate CALs from another license server.
Pure: the license server's shell reads the world, asks here, writes what is decided (docs/wizard.md)."""
from __future__ import annotations

import attrs

from tsls.core.model import CalType, KeyPack, ProductVersion
from tsls.errors import Code, TslsError

# Win32_TSLicenseKeyPack.ConvertLicenses exists on 2012 and later license servers [§9].
CONVERT_SINCE = ProductVersion.W2012


@attrs.frozen
class Conversion:
    """Take ``count`` unissued CALs from key pack ``source`` and give a new key pack of ``to``."""

    source: str
    count: int
    to: CalType


def other_type(cal_type: CalType) -> CalType:
    return CalType.PER_USER if cal_type is CalType.PER_DEVICE else CalType.PER_DEVICE


def convert(server_version: ProductVersion, pack: KeyPack | None, count: int) -> Conversion:
    """ConvertLicenses(Count): refused on a license server older than 2012 (CONVERT_NOT_SUPPORTED), for a
    key pack this server does not hold or that is retired (NOT_FOUND), and beyond the key pack's unissued
    CALs (NOT_ENOUGH_CALS: issued CALs are never taken from their devices)."""
    if server_version.rank < CONVERT_SINCE.rank:
        raise TslsError(Code.CONVERT_NOT_SUPPORTED, f"a {server_version.label} license server cannot convert CALs: "
                        f"converting needs a {CONVERT_SINCE.label} or later license server",
                        server_version=server_version.value)
    if pack is None or pack.retired_at is not None:
        raise TslsError(Code.NOT_FOUND, "this license server holds no live key pack with that ID")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise TslsError(Code.BAD_REQUEST, "the count of CALs to convert is a whole number of at least 1")
    if count > pack.available:
        raise TslsError(Code.NOT_ENOUGH_CALS, f"key pack {pack.key_pack_id} has {pack.available} unissued CALs "
                        f"({pack.total} total, {pack.issued} issued); {count} cannot be converted",
                        available=pack.available, asked=count)
    return Conversion(pack.key_pack_id, count, other_type(pack.cal_type))


def rebuild(confirmed: bool) -> None:
    """Rebuilding the database deletes every CAL: only once the administrator confirmed it."""
    if not confirmed:
        raise TslsError(Code.CONFIRMATION_REQUIRED, "rebuilding the license server database deletes every key pack "
                        "and every issued license; afterwards reinstall the CALs by recovery (tsls-admin recover). "
                        "Confirm with --yes (confirm: true)")
