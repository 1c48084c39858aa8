"""The lab clock: real time plus an offset an administrator can only move forward.

It provides ``seconds()`` like an ``IReactorTime``, so it is injected wherever the daemons read
the time. The offset is kept in the license server's database, so a restart keeps lab time.
"""
from __future__ import annotations


class LabClock:
    def __init__(self, clock, offset: float = 0.0) -> None:
        self._clock = clock
        self.offset = offset

    def seconds(self) -> float:
        return self._clock.seconds() + self.offset

    def move_to(self, target: float) -> None:
        self.offset = max(self.offset, target - self._clock.seconds())

    def callLater(self, delay, f, *args, **kw):
        return self._clock.callLater(delay, f, *args, **kw)

    @property
    def start(self) -> float | None:
        """The instant the offset counts from when this clock stands still (``--lab-start``), else None."""
        return self._clock.at if isinstance(self._clock, StillClock) else None

    @property
    def on_real_time(self) -> bool:
        return not isinstance(self._clock, (StillClock, FileClock))

    def stand_at(self, at: float, reactor) -> None:
        """Count the offset from ``at`` instead of real time (a database's kept lab start)."""
        self._clock = StillClock(at, reactor)


class StillClock:
    """A clock that stands at one instant until a LabClock over it is moved: the clock of a lab file
    (``--lab-start DATE``), so a replayed lab sees exactly the dates its file names."""

    def __init__(self, at: float, reactor) -> None:
        self.at = at
        self._reactor = reactor

    def seconds(self) -> float:
        return self.at

    def callLater(self, delay, f, *args, **kw):
        return self._reactor.callLater(delay, f, *args, **kw)


class FileClock:
    """Lab time read from a file (an ISO date) that another process writes: the lab runner moves a
    Clearinghouse daemon's clock in step with its license servers this way (``--lab-clock-file``).
    Read at each use; the Clearinghouse reads the time only to stamp what it records."""

    def __init__(self, path: str, reactor) -> None:
        self.path = path
        self._reactor = reactor

    def seconds(self) -> float:
        from tsls.core.labtime import parse_date
        with open(self.path, encoding="utf-8") as f:
            return float(parse_date(f.read().strip()))

    def callLater(self, delay, f, *args, **kw):
        return self._reactor.callLater(delay, f, *args, **kw)
