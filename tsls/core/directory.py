"""License servers published in a directory, and the order a session host finds them in [§5, KB301932;
cc731605; §9, FAQ08]: its specified list first, then license servers published for the whole forest
(the 2003 "enterprise" ones), then those of its domain, each in the order they were published. A
workgroup license server is not published (it is found only by broadcast or by name)."""
from __future__ import annotations

import attrs

from tsls.core.reports import Scope


@attrs.frozen
class Published:
    endpoint: str
    scope: Scope


def publishable(scope: Scope) -> bool:
    return scope is not Scope.WORKGROUP


def discovery_order(specified: tuple[str, ...], published: tuple[Published, ...]) -> tuple[str, ...]:
    out: list[str] = list(dict.fromkeys(specified))
    for scope in (Scope.FOREST, Scope.DOMAIN):
        for entry in published:
            if entry.scope is scope and entry.endpoint not in out:
                out.append(entry.endpoint)
    return tuple(out)
