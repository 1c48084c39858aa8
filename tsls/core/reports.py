"""Reports computed from ledger rows: the Per User usage report."""
from __future__ import annotations

import attrs

from tsls.core.model import DAY, CalType, KeyPack


@attrs.frozen
class UsageReport:
    start: int
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
    the report starts on the day of its first logon, or at ``end`` when there is none: never at 1970."""
    seen: dict[str, list[int]] = {}
    days: dict[int, set[str]] = {}
    for at, user, *_ in logons:
        count_last = seen.setdefault(user, [0, at])
        count_last[0] += 1
        count_last[1] = max(count_last[1], at)
        days.setdefault(at - at % DAY, set()).add(user)
    installed = sum(p.total for p in packs if p.cal_type is CalType.PER_USER)
    if start is None:
        start = min(days, default=end)
    return UsageReport(
        start=start, end=end, installed=installed,
        users=tuple((u, c, last) for u, (c, last) in sorted(seen.items())),
        per_day=tuple((day, len(users)) for day, users in sorted(days.items())),
    )
