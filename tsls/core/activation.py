"""The license server's activation with the Clearinghouse, as a value [REFERENCE §4].

A license server issues permanent CALs only once activated; it is activated automatically (over
the Internet) or by telephone, may be reactivated (a new certificate) and deactivated.
"""
from __future__ import annotations

import enum

import attrs


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
