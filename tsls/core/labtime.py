"""The lab clock's one rule: it moves only forward, by a duration or to a date."""
from __future__ import annotations

import calendar
import datetime
import re

from tsls.core.model import iso
from tsls.errors import Code, TslsError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\+([0-9]{1,6})([smhdw])")
LATEST = 250246627200        # 9900-01-01T00:00:00Z: the lab clock stops short of the last ISO year, so every
                             # expiry it computes (a century at most) can still be written as a date


def parse_date(text: str) -> int:
    """An ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise TslsError(Code.BAD_REQUEST, f"not an ISO date: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return calendar.timegm(when.utctimetuple())
    except OverflowError:       # a zone offset that takes it past year 1 or 9999
        raise TslsError(Code.BAD_REQUEST, f"not a date from year 1 to 9999 in UTC: {text!r}") from None


def clock_target(text: object, now: int) -> int:
    """Where ``+90d``, ``+6h``, ``+30m``, ``+1w`` or an ISO date takes the clock from ``now``."""
    if not isinstance(text, str) or not text:
        raise TslsError(Code.BAD_REQUEST, "the clock takes a duration such as +90d, +6h, +30m, or an ISO date")
    if text.startswith("-"):
        raise TslsError(Code.CLOCK_BACKWARDS, f"the lab clock never goes backwards ({text}); it is {iso(now)}",
                        now=iso(now))
    match = _DURATION.fullmatch(text)
    target = now + int(match[1]) * _UNITS[match[2]] if match else parse_date(text) if not text.startswith("+") else None
    if target is None:
        raise TslsError(Code.BAD_REQUEST, f"malformed duration {text!r}; use +N followed by s, m, h, d or w")
    if target > LATEST:
        raise TslsError(Code.BAD_REQUEST, f"{text} would take the clock past {iso(LATEST)}")
    if target < now:
        raise TslsError(Code.CLOCK_BACKWARDS, f"the lab clock never goes backwards: it is {iso(now)}, "
                        f"{text} is {iso(target)}", now=iso(now))
    return target
