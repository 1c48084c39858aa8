"""The license server's activation with the Clearinghouse, as a value [§4].

A license server issues permanent CALs only once activated; it is activated automatically (over
the Internet) or by telephone, may be reactivated (a new certificate) and deactivated.
"""
from __future__ import annotations

import enum
import re

import attrs

from tsls.core.model import parse_enum
from tsls.errors import Code, TslsError

LICENSE_SERVER_ID = re.compile(r"[A-Z0-9]{35}")     # also the form of a certificate code read out by phone


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


def check_telephone_codes(license_server_id: object, certificate: object) -> tuple[str, str]:
    """What the administrator typed in from the Clearinghouse's answer on the phone."""
    for what, value in (("license server ID", license_server_id), ("certificate code", certificate)):
        if not isinstance(value, str) or not LICENSE_SERVER_ID.fullmatch(value):
            raise TslsError(Code.BAD_REQUEST, f"a {what} is 35 upper-case letters and digits, no hyphens")
    return license_server_id, certificate


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
