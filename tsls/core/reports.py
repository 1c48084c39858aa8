"""Reports computed from ledger rows: the Per User usage report, and Per User CALs as a 2008 or later
license server tracks them (the CAL Usage report)."""
from __future__ import annotations

import enum

import attrs

from tsls.core.model import DAY, CalType, KeyPack, ProductVersion


@attrs.frozen
class UsageReport:
    start: int | None                     # None: no start asked for, and no Per User logon yet
    end: int
    installed: int                        # Per User CALs installed (never decremented)
    users: tuple[tuple[str, int, int], ...]   # (user, logons, last seen)
    per_day: tuple[tuple[int, int], ...]      # (day start, distinct users that day)

    @property
    def peak(self) -> int:
        return max((n for _, n in self.per_day), default=0)

    @property
    def over(self) -> int:
        """Users seen beyond the CALs installed: what a lab would have to buy [§1, cc771021]."""
        return max(0, len(self.users) - self.installed)


def per_user_usage(logons, packs: tuple[KeyPack, ...], start: int | None, end: int) -> UsageReport:
    """``logons`` are (at, user, ...) rows with start <= at < end. With no ``start`` (the whole log),
    the report starts on the day of its first logon, never at 1970; with no logon either, it has no
    start (None): there is no period to show yet."""
    seen: dict[str, list[int]] = {}
    days: dict[int, set[str]] = {}
    for at, user, *_ in logons:
        count_last = seen.setdefault(user, [0, at])
        count_last[0] += 1
        count_last[1] = max(count_last[1], at)
        days.setdefault(at - at % DAY, set()).add(user)
    installed = sum(p.total for p in packs if p.cal_type is CalType.PER_USER)
    if start is None:
        start = min(days, default=None)
    return UsageReport(
        start=start, end=end, installed=installed,
        users=tuple((u, c, last) for u, (c, last) in sorted(seen.items())),
        per_day=tuple((day, len(users)) for day, users in sorted(days.items())),
    )


# --- Per User CALs as a 2008 or later license server tracks them ---------------------------------

PER_USER_CAL_DAYS = 60      # the Per User CAL record's expiry, extended at each sign-in [§9, RDSCAL; TRACK]


class Scope(enum.Enum):
    """Win32_TSLicenseServer.ServerRole: the license server's discovery scope [§5, §9]."""

    WORKGROUP = "workgroup"
    DOMAIN = "domain"
    FOREST = "forest"

    @property
    def wmi_server_role(self) -> int:
        return {Scope.WORKGROUP: 0, Scope.DOMAIN: 1, Scope.FOREST: 2}[self]

    @property
    def wmi_report_scope_type(self) -> int | None:
        """Win32_TSLicenseReport.ScopeType: 1 domain, 2 OU, 3 all trusted domains; none for a workgroup."""
        return {Scope.WORKGROUP: None, Scope.DOMAIN: 1, Scope.FOREST: 3}[self]

    @property
    def report_scope(self) -> str:
        """The scope as Licensing Manager's Create Report names it."""
        return {Scope.WORKGROUP: "Workgroup (no Per User tracking)", Scope.DOMAIN: "Domain",
                Scope.FOREST: "All trusted domains"}[self]


@attrs.frozen
class PerUserCal:
    """A user's Per User CAL record: issued at the first sign-in of an unbroken run, expiring 60
    days after the last one."""

    user: str
    issued_at: int
    expires_at: int


def tracks_per_user(version: ProductVersion, scope: Scope) -> bool:
    """A 2008 or later license server tracks Per User CALs, in a domain or forest only: 2003 could not,
    and a workgroup license server tracks none [§1, cc771021; §9, TRACK]."""
    return version.rank >= ProductVersion.W2008.rank and scope is not Scope.WORKGROUP


def per_user_cals(logons, now: int) -> tuple[PerUserCal, ...]:
    """The Per User CAL records live at ``now`` from the Per User sign-ins ``logons`` ((at, user, ...)
    rows, any order): each sign-in extends the user's record to 60 days later; a user who stayed away
    60 days lost it, and the next sign-in starts a new one."""
    life = PER_USER_CAL_DAYS * DAY
    chains: dict[str, list[int]] = {}
    for at, user, *_ in sorted(logons, key=lambda r: (r[0], r[1])):
        if at > now:
            continue
        chain = chains.get(user)
        if chain is None or at >= chain[1] + life:
            chains[user] = [at, at]
        else:
            chain[1] = at
    return tuple(PerUserCal(user, first, last + life) for user, (first, last) in sorted(chains.items())
                 if last + life > now)


@attrs.frozen
class CalUsageReport:
    """Licensing Manager's Create Report > CAL Usage, and Win32_TSLicenseReport: the date, the scope,
    Per User CALs installed and issued, an entry per user, and the users beyond what is installed
    (over-allocation, which Per User licensing allows) [§9, TRACK]."""

    generated_at: int
    scope: Scope
    version: ProductVersion
    tracked: bool
    installed: int
    entries: tuple[PerUserCal, ...]

    @property
    def issued(self) -> int:
        return len(self.entries)

    @property
    def over_allocated(self) -> int:
        return max(0, self.issued - self.installed)

    @property
    def beyond_installed(self) -> tuple[PerUserCal, ...]:
        """The users issued a CAL after the installed ones were all issued (in the order they got it)."""
        ordered = sorted(self.entries, key=lambda c: (c.issued_at, c.user))
        return tuple(ordered[self.installed:])


def cal_usage_report(logons, packs: tuple[KeyPack, ...], version: ProductVersion, scope: Scope,
                     now: int) -> CalUsageReport:
    installed = sum(p.total for p in packs if p.cal_type is CalType.PER_USER)
    tracked = tracks_per_user(version, scope)
    return CalUsageReport(now, scope, version, tracked, installed, per_user_cals(logons, now) if tracked else ())
