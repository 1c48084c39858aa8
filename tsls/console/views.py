"""What each console page shows, shaped from one read-only snapshot of the ledger.

Each function takes a ``tsls.server.readstore.Snapshot`` and the lab time and returns plain JSON
values; they run in the console's reader threads, never in the reactor's. The rules they show
(revocation room, Per User usage) are the core's; the alerts are what a person must act on.
"""
from __future__ import annotations

import csv
import io

from tsls.core.licensing import revocation_room
from tsls.core.model import DAY, CalType, iso
from tsls.core.reports import per_user_usage
from tsls.jsonshapes import key_pack_json, license_json

LOW_STOCK_PERCENT = 10       # a version "running out": fewer than this share of its CALs left
EXPIRING_SOON = 7 * DAY


def revocations(snap, now: int) -> list[dict]:
    packs = snap.key_packs()
    revoked = snap.revoked_holding(now)
    versions = sorted({p.product_version for p in packs if p.cal_type is CalType.PER_DEVICE}, key=lambda v: v.rank)
    out = []
    for version in versions:
        room = revocation_room(packs, revoked, version, now)
        out.append({"product_version": version.value, "installed": room.installed, "limit": room.limit,
                    "revoked": room.holding, "left": room.left,
                    "next_allowed_at": iso(room.next_at) if room.left == 0 else None})
    return out


def dashboard(snap, now: int, product_id: str, lab_clock: bool) -> dict:
    current = snap.activation()
    packs = snap.key_packs()
    bars: dict = {}
    for p in packs:
        bar = bars.setdefault((p.product_version, p.cal_type), {"product_version": p.product_version.value,
                                                                "cal_type": p.cal_type.value, "total": 0,
                                                                "issued": 0, "available": 0})
        bar["total"] += p.total
        bar["issued"] += p.issued
        bar["available"] += p.available
    counts: dict = {}
    for (kind, status, _version), n in snap.license_counts().items():
        counts[f"{kind}:{status}"] = counts.get(f"{kind}:{status}", 0) + n
    expiring = sum(snap.expiring(now, now + EXPIRING_SOON).values())
    rooms = revocations(snap, now)
    activation = {"status": current.status.value, "license_server_id": current.license_server_id,
                  "method": current.method and current.method.value, "activated_at": iso(current.activated_at),
                  "certificate": current.certificate is not None}
    ordered = [bars[k] for k in sorted(bars, key=lambda k: (k[0].rank, k[1].value))]
    return {
        "product_id": product_id,
        "now": iso(now),
        "lab_clock": lab_clock,
        "activation": activation,
        "cals": ordered,
        "key_packs": [key_pack_json(p) for p in packs],
        "licenses": dict(sorted(counts.items())),
        "expiring_soon": expiring,
        "revocations": rooms,
        "alerts": alerts(activation, ordered, rooms, expiring),
    }


def alerts(activation: dict, cals: list[dict], rooms: list[dict], expiring: int) -> list[dict]:
    """What a person must act on, most urgent first."""
    out = []
    if activation["status"] != "activated":
        out.append({"level": "error", "message": "The license server is not activated: devices get temporary "
                    "licenses only, and CALs cannot be installed. Activate it (tsls-admin activate)."})
    elif not activation["certificate"]:
        out.append({"level": "error", "message": "The license server holds no certificate from the Clearinghouse, "
                    "so it cannot install or recover CALs: reactivate it (tsls-admin reactivate)."})
    if activation["status"] == "activated" and not cals:
        out.append({"level": "warning", "message": "No CALs are installed: every device gets a temporary license "
                    "(tsls-admin install)."})
    for bar in cals:
        what = f"Windows Server {bar['product_version']} {bar['cal_type'].replace('_', ' ')} CALs"
        if bar["cal_type"] == CalType.PER_USER.value:
            continue        # Per User CALs are not counted by the server [§1]
        if bar["available"] == 0:
            out.append({"level": "error", "message": f"{what}: none left ({bar['issued']} of {bar['total']} issued); "
                        "new devices get temporary licenses."})
        elif bar["available"] * 100 < bar["total"] * LOW_STOCK_PERCENT:
            out.append({"level": "warning", "message": f"{what} are running out: {bar['available']} of "
                        f"{bar['total']} left."})
    for room in rooms:
        if room["left"] == 0:
            out.append({"level": "warning", "message": f"No Windows Server {room['product_version']} Per Device CAL "
                        f"may be revoked until {room['next_allowed_at']} ({room['revoked']} of at most "
                        f"{room['limit']} revoked)."})
    if expiring:
        days = EXPIRING_SOON // DAY
        message = (f"1 license expires within {days} days unless its device logs on again." if expiring == 1 else
                   f"{expiring} licenses expire within {days} days unless their devices log on again.")
        out.append({"level": "info", "message": message})
    return out


def licenses_page(snap, exact: dict, search: str | None, sort: str, descending: bool, offset: int,
                  limit: int) -> dict:
    names = {p.id: p.key_pack_id for p in snap.key_packs()}
    total, rows = snap.licenses_page(exact, search, sort, descending, offset, limit)
    return {"total": total, "offset": offset, "limit": limit,
            "rows": [license_json(lic, names.get(lic.key_pack)) for lic in rows]}


def terminal_servers(snap) -> dict:
    seen = snap.last_seen()
    registered = snap.registrations()
    names = {name for name, _, _ in registered}
    hosts = [{"name": name, "registered": True, "group": bool(in_group), "registered_at": iso(at),
              "last_seen": iso(seen.get(name))} for name, at, in_group in registered]
    hosts += [{"name": name, "registered": False, "group": False, "registered_at": None, "last_seen": iso(at)}
              for name, at in sorted(seen.items()) if name not in names]
    return {"security_group_policy": snap.security_group_policy(), "terminal_servers": hosts}


def usage(snap, start: int, end: int) -> dict:
    report = per_user_usage(snap.per_user_logons(start, end), tuple(snap.key_packs()), start, end)
    return {"start": iso(report.start), "end": iso(report.end), "per_user_cals_installed": report.installed,
            "users_seen": len(report.users), "peak_users_per_day": report.peak,
            "users_over_installed": report.over,
            "users": [{"user": u, "logons": c, "last_seen": iso(last)} for u, c, last in report.users],
            "per_day": [{"day": iso(day)[:10], "users": n} for day, n in report.per_day]}


def issued_cals(snap, limit: int = 100_000) -> list[dict]:
    names = {p.id: p.key_pack_id for p in snap.key_packs()}
    return [license_json(lic, names.get(lic.key_pack)) for lic in snap.permanent_licenses(limit)]


def history(snap, now: int) -> dict:
    """Per version and day: Per Device CALs installed, and CALs issued and still held (cumulative);
    refused logons per day by code. (Per User CALs are not counted by the server, so not drawn.)"""
    days: set[int] = {now - now % DAY}
    series: dict = {}

    def add(rows, field, sign=1):
        for version, day, n in rows:
            days.add(day)
            counts = series.setdefault(version, {"installed": {}, "held": {}})[field]
            counts[day] = counts.get(day, 0) + sign * n

    add(snap.installed_per_day(), "installed")
    add(snap.issued_per_day(), "held")
    add(snap.released_per_day(), "held", -1)
    ordered = sorted(days)
    versions = []
    for version in sorted(series):
        installed = held = 0
        points = []
        for day in ordered:
            installed += series[version]["installed"].get(day, 0)
            held += series[version]["held"].get(day, 0)
            points.append({"day": iso(day)[:10], "installed": installed, "issued": max(held, 0)})
        versions.append({"product_version": version, "points": points})
    refusals: dict = {}
    for code, day, n in snap.refusals_per_day():
        refusals.setdefault(code or "UNKNOWN", {})[iso(day)[:10]] = n
    return {"days": [iso(d)[:10] for d in ordered], "versions": versions,
            "refusals": [{"reason": code, "per_day": per_day, "total": sum(per_day.values())}
                         for code, per_day in sorted(refusals.items())]}


def to_csv(rows: list[dict], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue().encode()


def _cell(value):
    """No spreadsheet formulas from ledger text (a user name like '=cmd|...')."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
