"""The older licensing models of the seeds: Per Server / Per Seat server products (BackOffice 4.5,
seed 000) and Small Business Server client add packs (SBS 4.0, seed 001) [§8]."""
from __future__ import annotations

import enum
import hashlib
import re

import attrs

from tsls.errors import Code, TslsError

SUITE = "BackOffice"                  # the suite CAL of seed 000
SBS_START, SBS_MAX = 5, 25            # SBS 4.0: 5 user licenses to start, 25 at most [§8, KBA Q177962]
SWITCH_WARNING = ("Changing the license mode to Per Seat will result in current Per Server license loss. "
                  "This change is allowed only one time and cannot be undone. Are you sure?")


class ProductMode(enum.Enum):
    PER_SERVER = "per_server"
    PER_SEAT = "per_seat"


class LicensedBy(enum.Enum):
    """How a client connection to a product is licensed."""

    PER_SERVER = "per_server"           # one of the product's concurrent Per Server licenses
    ADMINISTRATOR = "administrator"     # past the Per Server count: administrators still get in
    SEAT = "seat"                       # the device's own Per Seat CAL for the product
    SUITE = "suite"                     # a BackOffice suite CAL


@attrs.frozen
class Requester:
    """Who asks for a licensing-mode switch: an administrator, or a terminal server by the name it
    proved (None when it did not prove one)."""

    administrator: bool = False
    proven_server: str | None = None


ADMINISTRATOR = Requester(administrator=True)


@attrs.frozen
class Product:
    """A server product licensed Per Server or Per Seat; installed Per Server by default [seed 000]."""

    name: str
    server: str                       # the server it runs on
    mode: ProductMode = ProductMode.PER_SERVER
    per_server_licenses: int = 0      # concurrent connections, in Per Server mode
    seat_licenses: int = 0            # Per Seat CALs for this product
    switched_at: int | None = None


def connect(product: Product | None, open_connections: int, administrator: bool, seat: LicensedBy | None,
            seats_taken: dict[LicensedBy, int], suite_licenses: int) -> LicensedBy:
    """May a client connect? Returns how it is licensed: Per Server, as an administrator, by its own
    Per Seat CAL (new or held) or by a BackOffice suite CAL. ``seat`` is what the device already holds
    for this product (SEAT or SUITE), ``seats_taken`` how many of each pool are assigned."""
    if product is None:
        raise TslsError(Code.UNKNOWN_PRODUCT, "no such product")
    if product.mode is ProductMode.PER_SERVER:
        if seat is LicensedBy.SUITE:
            raise TslsError(Code.NOT_PER_SEAT, f"a {SUITE} CAL can be used only against products in Per Seat "
                            f"mode; {product.name} on {product.server} is licensed Per Server")
        if open_connections < product.per_server_licenses:
            return LicensedBy.PER_SERVER
        if administrator:     # an administrator still gets in past the count [§8, KBA Q130933]
            return LicensedBy.ADMINISTRATOR
        raise TslsError(Code.NO_PER_SERVER_LICENSE, f"all {product.per_server_licenses} Per Server licenses of "
                        f"{product.name} on {product.server} are in use", licenses=product.per_server_licenses)
    if seat is not None:
        return seat
    if seats_taken.get(LicensedBy.SEAT, 0) < product.seat_licenses:
        return LicensedBy.SEAT
    if seats_taken.get(LicensedBy.SUITE, 0) < suite_licenses:
        return LicensedBy.SUITE
    raise TslsError(Code.NO_LICENSE_AVAILABLE, f"{product.name} is licensed Per Seat and this device has no CAL "
                    f"for it; none is free ({product.seat_licenses} {product.name} CALs, {suite_licenses} {SUITE} CALs)")


def switch_to_per_seat(product: Product | None, confirmed: bool, requester: Requester, now: int) -> Product:
    """Per Server to Per Seat: once, for ever, confirmed, by an administrator of that server [seed 000]:
    an administrator, or the terminal server the product runs on once it has proved its name
    ("from the server itself")."""
    if product is None:
        raise TslsError(Code.UNKNOWN_PRODUCT, "no such product")
    if not (requester.administrator or requester.proven_server == product.server):
        raise TslsError(Code.NOT_PERMITTED, f"only an administrator of {product.server} may change the licensing "
                        f"mode of {product.name}, from the server itself or remotely")
    if product.mode is ProductMode.PER_SEAT:
        raise TslsError(Code.ALREADY_PER_SEAT, f"{product.name} is already licensed Per Seat; the change from "
                        "Per Server is allowed only one time")
    if not confirmed:
        raise TslsError(Code.CONFIRMATION_REQUIRED, SWITCH_WARNING, per_server_licenses=product.per_server_licenses)
    return attrs.evolve(product, mode=ProductMode.PER_SEAT, per_server_licenses=0, switched_at=now)


def switch_to_per_server(product: Product | None) -> None:
    if product is None:
        raise TslsError(Code.UNKNOWN_PRODUCT, "no such product")
    raise TslsError(Code.PER_SEAT_IS_FINAL, f"{product.name} cannot be switched back to Per Server: changing from "
                    "Per Server to Per Seat is allowed only one time and cannot be reverted"
                    if product.mode is ProductMode.PER_SEAT else
                    f"{product.name} is already licensed Per Server")


# --- Small Business Server client add packs ----------------------------------------------------

_ADD_PACK = re.compile(r"SBSAP-(\d{1,2})-([0-9A-F]{8})-([0-9A-F]{4})")


def add_pack_id(size: int, serial: str) -> str:
    """An add pack's identity (printed on the 'disk'): its size, a serial, and a check."""
    body = f"SBSAP-{size}-{serial}"
    return f"{body}-{hashlib.sha256(body.encode()).hexdigest()[:4].upper()}"


def parse_add_pack(pack_id: object) -> int:
    """The size of a well-formed add pack, or BAD_ADD_PACK."""
    m = _ADD_PACK.fullmatch(pack_id) if isinstance(pack_id, str) else None
    if m is None or add_pack_id(int(m[1]), m[2]) != pack_id or not 0 < int(m[1]) <= SBS_MAX - SBS_START:
        raise TslsError(Code.BAD_ADD_PACK, f"not a Small Business Server Client Add Pack identity: {pack_id!r}")
    return int(m[1])


@attrs.frozen
class AddPackUse:
    """What the disk remembers of its one use: the licenses it took the server from and to."""

    before: int
    after: int


def apply_add_pack(sbs_licenses: int | None, pack_id: str, used: AddPackUse | None) -> tuple[int, AddPackUse]:
    """Apply an add pack to a server with ``sbs_licenses`` (None: not the SBS edition). A used pack can
    only restore the count it once made, from where it started (after a reinstall) [seed 001]."""
    size = parse_add_pack(pack_id)
    if sbs_licenses is None:
        raise TslsError(Code.NOT_SBS, "Client Add Packs can be applied only to a Small Business Server")
    if used is not None:
        if sbs_licenses == used.before:
            return used.after, used
        raise TslsError(Code.ADD_PACK_USED, "This Microsoft Small Business Server Client Add Pack disk was already "
                        f"used to increase client licenses from {used.before} to {used.after}. This disk can only be "
                        f"reused to restore licenses from {used.before} to {used.after} users.")
    after = sbs_licenses + size
    if after > SBS_MAX:
        raise TslsError(Code.LICENSE_LIMIT_EXCEEDED, f"the maximum number of licenses has been exceeded: Small "
                        f"Business Server allows {SBS_MAX} and this add pack would take it from {sbs_licenses} to "
                        f"{after}", maximum=SBS_MAX)
    return after, AddPackUse(sbs_licenses, after)
