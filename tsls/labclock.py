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
