"""A terminal server's own licensing rules: its grace period, and what it does when no license
server answers. The terminal-server simulator keeps the state; these functions decide."""
from __future__ import annotations

import enum

import attrs

from tsls.core.licensing import RENEWAL_WINDOW
from tsls.core.model import DAY, ProductVersion, iso
from tsls.errors import Code, TslsError


def grace_days(version: ProductVersion) -> int:
    """120 days for 2003 and later, 90 for Windows 2000 [§2, hh553157]."""
    return 90 if version is ProductVersion.W2000 else 120


@attrs.frozen
class Grace:
    """Begins at the first client connection; ends at the first permanent CAL or when the days run
    out, whichever comes first [§2, hh553157; cc738708]."""

    version: ProductVersion
    started_at: int | None = None
    ended_at: int | None = None          # set when a permanent CAL was issued

    def connection(self, now: int) -> "Grace":
        return self if self.started_at is not None else attrs.evolve(self, started_at=now)

    def permanent_cal_issued(self, now: int) -> "Grace":
        return self if self.ended_at is not None else attrs.evolve(self, ended_at=now)

    def expires_at(self) -> int | None:
        if self.started_at is None:
            return None
        ran_out = self.started_at + grace_days(self.version) * DAY
        return ran_out if self.ended_at is None else min(ran_out, self.ended_at)

    def active(self, now: int) -> bool:
        end = self.expires_at()
        return end is None or now < end


class AdmittedBy(enum.Enum):
    LICENSE = "license"     # its CAL, still valid
    GRACE = "grace"         # the grace period


@attrs.frozen
class Admission:
    how: AdmittedBy
    message: str
    grace_days_left: int | None = None      # admitted in the grace period: whole days left, counting today


def refused_by_policy(grace: Grace, refusal: TslsError, now: int) -> Admission:
    """A license server refused a CAL under the Prevent License Upgrade policy: "the client is refused,
    unless the terminal server is within its grace period" [§3, policy text]."""
    if grace.active(now):
        ends = grace.expires_at()
        left = -(-(ends - now) // DAY) if ends is not None else grace_days(grace.version)
        return Admission(AdmittedBy.GRACE, f"{refusal.message}; admitted in the grace period: {left} "
                                           f"day{'s' if left != 1 else ''} left (it ends {iso(ends or now)})", left)
    raise refusal


def without_license_server(grace: Grace, held_expires_at: int | None, now: int) -> Admission:
    """No license server answered. A device whose license is still valid and not due for renewal
    keeps it [MS-RDPELE 3.2.5.5]; one due for renewal is refused, as Windows logs event 1028
    [§1, MSQA]; others get in only inside the grace period [§2]."""
    if held_expires_at is not None and now < held_expires_at:
        if held_expires_at - now > RENEWAL_WINDOW:
            return Admission(AdmittedBy.LICENSE, "no license server answered; the device's license is still valid "
                                                 f"(until {iso(held_expires_at)})")
        raise TslsError(Code.RENEWAL_FAILED, "the device's license expires on "
                        f"{iso(held_expires_at)} and could not be renewed: no license server answered")
    if grace.active(now):
        ends = grace.expires_at()
        left = -(-(ends - now) // DAY) if ends is not None else grace_days(grace.version)
        return Admission(AdmittedBy.GRACE, f"no license server answered; admitted in the grace period: {left} "
                                           f"day{'s' if left != 1 else ''} left (it ends {iso(ends or now)})", left)
    raise TslsError(Code.NO_LICENSE_SERVER, "no license server answered and the grace period "
                    f"ended {iso(grace.expires_at())}: the connection is refused")
