"""What an expectation asks, judged against what the lab observed. Pure: each function takes the
observations and returns the failures (an empty list when the expectation holds)."""
from __future__ import annotations

from collections import Counter

from tsls.core.events import EventId
from tsls.core.licensing import RENEWAL_WINDOW
from tsls.core.model import iso
from clients.labfile.schema import OUTCOMES


def outcome_of(row: dict) -> str:
    """A logon's outcome in a lab's words: permanent, temporary, per_user, grace, offline (admitted on
    its still valid license with no license server answering) or refused."""
    outcome = row.get("outcome")
    if outcome == "refused":
        return "refused"
    if outcome == "admitted_grace":
        return "grace"
    if outcome == "admitted_license":
        return "offline"
    if outcome == "per_user":
        return "per_user"
    lic = row.get("license") or {}
    return "permanent" if lic.get("kind") == "permanent" else "temporary"


def tally(rows: list[dict]) -> dict:
    """Counts of a wave's outcomes, refusals by code, and logons by the license server that served them."""
    outcomes = Counter(outcome_of(r) for r in rows)
    return {
        **{name: outcomes.get(name, 0) for name in OUTCOMES},
        "refused_by": dict(sorted(Counter(r.get("reason") for r in rows if outcome_of(r) == "refused").items())),
        "served_by": dict(sorted(Counter(r["served_by"] for r in rows if r.get("served_by")).items())),
    }


def compare(expected: dict, observed: dict) -> list[str]:
    """Each expected count against the observed one; a table (refused_by, served_by) lists only what it names."""
    failures = []
    for name, want in expected.items():
        if isinstance(want, dict):
            for sub, count in want.items():
                got = observed.get(name, {}).get(sub, 0)
                if got != count:
                    failures.append(f"{name}.{sub}: expected {count}, got {got}")
        elif observed.get(name, 0) != want:
            failures.append(f"{name}: expected {want}, got {observed.get(name, 0)}")
    return failures


def events(present: tuple, absent: tuple, counts: dict[int, int]) -> list[str]:
    """``counts``: how many of each event ID the license server(s) recorded so far."""
    failures = [f"event {e} {EventId(e).name} never appeared" for e in present if not counts.get(e)]
    failures += [f"event {e} {EventId(e).name} appeared {counts[e]} times" for e in absent if counts.get(e)]
    return failures


def licensed(fleet_machines: dict[str, list[str]], held: dict[str, dict | None], now: int) -> list[str]:
    """Every device of the fleets holds a permanent CAL still valid at ``now``; ``held`` maps a
    machine to the license it keeps (or None)."""
    failures = []
    for fleet, machines in fleet_machines.items():
        missing = []
        for machine in machines:
            lic = held.get(machine)
            if not lic or lic.get("kind") != "permanent" or lic.get("expires_at", "") <= iso(now):
                missing.append(machine)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            failures.append(f"fleet {fleet}: {len(missing)} of {len(machines)} devices hold no valid permanent CAL "
                            f"on {iso(now)[:10]} ({shown})")
    return failures


def unique(licenses_by_server: dict[str, list[dict]]) -> list[str]:
    """No CAL circulates twice: one active permanent CAL per device and version across every license
    server, and no license ID twice on one server."""
    failures = []
    holders: dict[tuple, list[str]] = {}
    for server, licenses in sorted(licenses_by_server.items()):
        ids = Counter(lic["license_id"] for lic in licenses)
        failures += [f"{server}: license {i} listed {n} times" for i, n in ids.items() if n > 1]
        for lic in licenses:
            if lic.get("kind") == "permanent" and lic.get("status") == "active":
                holders.setdefault((lic["hwid"], lic["product_version"]), []).append(f"{server}#{lic['license_id']}")
    for (hwid, version), where in sorted(holders.items()):
        if len(where) > 1:
            failures.append(f"device {hwid[:12]}... holds {len(where)} active {version} CALs: {', '.join(where)}")
    return failures


def due_for_renewal(lic: dict | None, now: int) -> bool:
    """Whether a session host must ask a license server about the license a device presents: unless it
    is a permanent CAL with more than 7 days left, which the host checks itself [§1, MSQA]."""
    if not lic or lic.get("kind") != "permanent":
        return True
    return lic.get("expires_at", "") <= iso(now + RENEWAL_WINDOW)
