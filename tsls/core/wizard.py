"""The Manage RDS CALs wizard's rules on the license server [§9, MIGR in docs/behaviour.md]: convert
CALs between Per Device and Per User, rebuild the database, migrate CALs from another license server.
Pure: the license server's shell reads the world, asks here, writes what is decided (docs/wizard.md)."""
from __future__ import annotations

import enum

import attrs

from tsls.core.clearinghouse import MigrationReason
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


class Route(enum.Enum):
    """The wizard's connection methods [§9, MIGR]."""

    AUTOMATIC = "automatic"      # the license server asks the Clearinghouse itself
    WEB = "web"                  # the Clearinghouse's web page reads out a key pack ID
    TELEPHONE = "telephone"      # the Clearinghouse's agent reads out a key pack ID


@attrs.frozen
class Migration:
    """What a migration does: from which source (its license server ID, when known), whether the
    source is running (its CALs can be removed there), and whether the key pack comes by its ID."""

    reason: MigrationReason
    route: Route
    source_id: str | None
    source_running: bool
    by_id: bool


def migration(reason: MigrationReason, route: Route, source: object, has_purchase: bool,
              has_key_pack_id: bool) -> Migration:
    """The wizard's choices, checked [§9, MIGR]: the source being replaced is named, by its license
    server ID read from it when it runs, or typed in with its OS when it is offline; a source that no
    longer works needs nothing. The automatic route names the purchase; web and telephone the key pack
    ID the Clearinghouse read out."""
    if not isinstance(source, dict):
        raise TslsError(Code.BAD_REQUEST, "source must be an object")
    source_id, os_version, running = source.get("license_server_id"), source.get("os"), source.get("running")
    if source_id is not None and (not isinstance(source_id, str) or not 0 < len(source_id) <= 64):
        raise TslsError(Code.BAD_REQUEST, "source license_server_id must be a string")
    source_id = None if source_id is None else source_id.replace("-", "").replace(" ", "").upper()
    running = running is True and reason is MigrationReason.REPLACED
    if reason is MigrationReason.REPLACED:
        if source_id is None:
            raise TslsError(Code.BAD_REQUEST, "a source license server being replaced is named: by its name when it "
                            "runs (its license server ID is read from it), else by its OS and license server ID")
        if not running:
            if os_version is None:
                raise TslsError(Code.BAD_REQUEST, "an offline source license server is named by its OS and license "
                                "server ID: give its OS too")
            ProductVersion.parse(os_version)
    if route is Route.AUTOMATIC:
        if not has_purchase or has_key_pack_id:
            raise TslsError(Code.BAD_REQUEST, "the automatic route names the purchase (its license program and "
                            "numbers), not a key pack ID")
    elif not has_key_pack_id or has_purchase:
        raise TslsError(Code.BAD_REQUEST, f"the {route.value} route takes the key pack ID the Clearinghouse read out "
                        "(tsls-admin clearinghouse migrate)")
    return Migration(reason, route, source_id, running, route is not Route.AUTOMATIC)
