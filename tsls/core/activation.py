"""The license server's activation with the Clearinghouse, as a value [§4].

A license server issues permanent CALs only once activated; it is activated automatically (over
the Internet) or by telephone, may be reactivated (a new certificate) and deactivated.
"""
from __future__ import annotations

import enum

import attrs

from tsls.core import phonecodes
from tsls.core.model import parse_enum
from tsls.errors import Code, TslsError



class ActivationStatus(enum.Enum):
    NOT_ACTIVATED = "not_activated"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"


class ActivationMethod(enum.Enum):
    AUTOMATIC = "automatic"
    TELEPHONE = "telephone"


@attrs.frozen
class Activation:
    """Where the server stands with the Clearinghouse, and the certificate it was given."""

    status: ActivationStatus = ActivationStatus.NOT_ACTIVATED
    license_server_id: str | None = None
    method: ActivationMethod | None = None
    activated_at: int | None = None
    certificate: str | None = attrs.field(default=None, repr=False)

    @property
    def activated(self) -> bool:
        return self.status is ActivationStatus.ACTIVATED


def parse_method(text: object) -> ActivationMethod:
    return parse_enum(ActivationMethod, text, "activation method")


def check_telephone_codes(license_server_id: object, certificate: object, product_id: str) -> tuple[str, str]:
    """What the administrator typed in from the Clearinghouse's answer on the phone, checked against
    this server's product ID (tsls/core/phonecodes.py): a typo is refused naming its group, a code
    read out for another server is refused as such; nothing is changed either way."""
    license_server_id = phonecodes.check(phonecodes.Kind.LICENSE_SERVER_ID, product_id, license_server_id)
    certificate = phonecodes.check(phonecodes.Kind.CERTIFICATE, license_server_id, certificate)
    return license_server_id, certificate


@attrs.frozen
class Problem:
    """The last thing that went wrong between this server and the Clearinghouse, kept until an
    activation succeeds, so ``status`` can show the way out (docs/activation.md)."""

    code: str
    message: str
    at: int


# Refusals of a call made with this server's activation: the Clearinghouse does not know it (any more).
NOT_KNOWN = {Code.BAD_CREDENTIALS.value, Code.UNKNOWN_LICENSE_SERVER.value, Code.NOT_ACTIVATED.value}
# What is worth keeping as a problem (a refused install for a purchase's own reasons is not one).
KEPT = NOT_KNOWN | {Code.MISTYPED_CODE.value, Code.CODE_FOR_ANOTHER_SERVER.value, Code.ALREADY_ACTIVATED.value,
                    Code.CLEARINGHOUSE_UNREACHABLE.value}


def way_out(current: Activation, problem: Problem | None, product_id: str) -> tuple[str, ...]:
    """The documented way out of where the server stands: every state, failed or wrong, has one."""
    again = f"tsls-admin clearinghouse activate --product-id {product_id} --again   (the operator: new codes; " \
            "the earlier activation of this product ID is retired and its purchases move to the new ID)"
    telephone = "tsls-admin activate --telephone LICENSE_SERVER_ID CERTIFICATE_CODE   (the codes read out)"
    if problem is None or (current.activated and problem.code not in NOT_KNOWN):
        if current.activated:
            return ()
        return ("tsls-admin activate   (automatic), or by telephone: "
                f"tsls-admin clearinghouse activate --product-id {product_id}, then {telephone}",)
    if problem.code in NOT_KNOWN and current.activated:
        return ("tsls-admin deactivate --local --yes   (forget this activation: the Clearinghouse does not know it)",
                again, telephone)
    if problem.code in (Code.MISTYPED_CODE.value, Code.CODE_FOR_ANOTHER_SERVER.value):
        return ("read the codes again and type them in: " + telephone,
                "if they are lost: " + again + ", then " + telephone)
    if problem.code == Code.CLEARINGHOUSE_UNREACHABLE.value:
        return ("start the Clearinghouse or correct --clearinghouse-url, then: tsls-admin activate",
                f"or by telephone: tsls-admin clearinghouse activate --product-id {product_id}, then {telephone}")
    return (again, telephone)       # ALREADY_ACTIVATED at the Clearinghouse, or not known there any more


def require(current: Activation, activated: bool) -> None:
    """Activation needs a server that is not activated; reactivation, deactivation and installing
    key packs need one that is."""
    if activated and not current.activated:
        raise TslsError(Code.NOT_ACTIVATED, "the license server is not activated")
    if not activated and current.activated:
        raise TslsError(Code.ALREADY_ACTIVATED, "the license server is already activated as "
                        f"{current.license_server_id}; deactivate or reactivate it instead")


def activated(method: ActivationMethod, license_server_id: str, certificate: str, now: int) -> Activation:
    return Activation(ActivationStatus.ACTIVATED, license_server_id, method, now, certificate)


def deactivated() -> Activation:
    return Activation(ActivationStatus.DEACTIVATED)
