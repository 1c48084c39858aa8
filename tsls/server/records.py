"""What the license server tells: its status, the event log (listed, and pushed to followers once
committed), the Per User usage report, and the lab clock an administrator may move."""
from __future__ import annotations

from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger

from tsls.core.events import Event, EventId
from tsls.core.labtime import clock_target
from tsls.core.reports import Scope, cal_usage_report, per_user_usage
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso, key_pack_json
from tsls.server import paging
from tsls.server.activation import activation_json
from tsls.server.storage import EventFilter, Identity


# Events of every grant: one text line each was a fifth of the reactor's time at full load
# (docs/performance.md). They are counted and logged as one summary line per interval (summarise);
# every event is still in the events table and reaches followers (tsls-admin events --follow).
ROUTINE = frozenset({EventId.TEMPORARY_ISSUED, EventId.CAL_ISSUED, EventId.CAL_RENEWED, EventId.LICENSE_EXPIRED,
                     EventId.PER_USER_LOGON})


class Records:
    log = Logger()

    def __init__(self, writer, identity: Identity, lab_clock=None) -> None:
        self.writer = writer
        self.identity = identity
        self.lab_clock = lab_clock
        self.log_every_event = False        # True: routine grant events too get a log line each
        self._routine: Counter = Counter()  # routine events committed since the last summary
        self.followers: set = set()         # callables that get each committed event
        self.reads = None                   # tsls.server.reads.Reads, set by the facade
        writer.on_events = self.publish

    def publish(self, committed) -> None:
        """Events reach the log and live followers only once committed."""
        quiet = not self.log_every_event
        for row_id, event in committed:
            if quiet and event.event_id in ROUTINE:
                self._routine[event.event_id] += 1
            else:
                self.log.info("event {event_id} {event_name}: {message}", event_id=int(event.event_id),
                              event_name=event.event_id.name, message=event.message,
                              terminal_server=event.terminal_server, hwid=event.hwid, license_id=event.license_id)
            if self.followers:
                shaped = event_json(row_id, event)
                for follower in list(self.followers):
                    follower(shaped)

    def summarise(self) -> None:
        """One log line for the routine events committed since the last one (none: no line)."""
        if self._routine:
            counts, self._routine = self._routine, Counter()
            self.log.info("committed since the last summary: {counts} (each is in the event log: tsls-admin events)",
                          counts=", ".join(f"{n:,} {e.name} ({int(e)})" for e, n in sorted(counts.items())),
                          routine={int(e): n for e, n in counts.items()})

    def status(self) -> defer.Deferred:
        """Read off the writer (tsls.server.reads), the counts from license_counts."""
        def view(snap, now):
            return {
                "product_id": self.identity.product_id,
                "server_version": self.identity.version.value,
                "scope": snap.server_role().value,
                "now": iso(now),
                "activation": activation_json(snap.activation(), snap.activation_problem(),
                                              self.identity.product_id),
                "key_packs": [key_pack_json(p) for p in snap.key_packs()],
                "licenses": snap.kind_status_counts(),
            }
        return self.reads.read(view)

    @defer.inlineCallbacks
    def set_clock(self, to: str):
        """Move the lab clock forward; expiries due by then happen before the answer."""
        if self.lab_clock is None:
            raise TslsError(Code.LAB_CLOCK_DISABLED, "this license server runs on real time; start it with "
                            "--lab-clock to set or move its clock")
        clock = self.lab_clock

        def job(store, now):
            target = clock_target(to, now)
            offset = clock.offset + (target - now)
            store.set_lab_clock_offset(offset)
            store.add_events([Event(now, EventId.CLOCK_CHANGED, f"lab clock moved from {iso(now)} to {iso(target)}")])
            return offset

        offset = yield self.writer.submit(job)
        clock.offset = offset
        result = yield self.writer.submit(lambda store, now: {"now": iso(now)})   # this batch sweeps at the new time
        return result

    def list_events(self, filters: dict, since: int | None, limit: int) -> defer.Deferred:
        """The newest ``limit`` events that match, oldest first, read off the writer as a page is;
        ``filters`` maps EVENT_FILTERS names to exact values."""
        which = EventFilter(event_ids=None if "event_id" not in filters else (filters["event_id"],),
                            since=since, **{k: v for k, v in filters.items() if k != "event_id"})
        return self.reads.read(lambda snap, now: paging.joined_list(snap.newest_events_json(which, limit)))

    def events_page(self, filters: dict, since: int | None, cursor: str, limit: int,
                    newest_first: bool = False) -> defer.Deferred:
        """One page of the events that match, by row ID, oldest first (or newest first), read off the
        writer (tsls.server.reads, tsls.server.paging)."""
        which = EventFilter(event_ids=None if "event_id" not in filters else (filters["event_id"],),
                            since=since, **{k: v for k, v in filters.items() if k != "event_id"})
        after = paging.decode("events", cursor, newest_first=newest_first)

        def view(snap, now):
            items, last, _, more = snap.events_json_joined(which, after, limit, newest_first)
            return paging.answer_joined("events", items, last, more, snap.count_events(which), newest_first)
        return self.reads.read(view)

    def set_role(self, role: str) -> defer.Deferred:
        """ChangeRole: the license server's scope, workgroup, domain or forest [§5, §9]. A workgroup
        license server tracks no Per User CALs."""
        scope = _scope(role)

        def job(store, now):
            store.set_server_role(scope)
            store.add_events([Event(now, EventId.POLICY_CHANGED, f"license server scope set to {scope.value}")])
            return {"scope": scope.value, "wmi": {"ServerRole": scope.wmi_server_role}}
        return self.writer.submit(job)

    def cal_usage_report(self) -> defer.Deferred:
        """Create Report > CAL Usage (Win32_TSLicenseReport): Per User CALs as a 2008 or later license
        server tracks them, each user's record expiring 60 days after the last sign-in (docs/peruser.md).
        Read off the writer (tsls.server.reads): it reads every Per User logon."""
        def view(snap, now):
            report = cal_usage_report(snap.per_user_logons(0, now + 1), tuple(snap.key_packs()), self.identity.version,
                                      snap.server_role(), now)
            beyond = {c.user for c in report.beyond_installed}
            return {
                "generated_at": iso(report.generated_at),
                "scope": report.scope.report_scope,
                "server_version": report.version.value,
                "tracked": report.tracked,
                "per_user_cals_installed": report.installed,
                "per_user_cals_issued": report.issued,
                "over_allocated": report.over_allocated,
                "entries": [{"user": c.user, "issued_at": iso(c.issued_at), "expires_at": iso(c.expires_at),
                             "beyond_installed": c.user in beyond} for c in report.entries],
                "wmi": {"InstalledLicenses": report.installed, "LicenseUsageCount": report.issued,
                        "ScopeType": report.scope.wmi_report_scope_type},
            }
        return self.reads.read(view)

    def usage_report(self, start: int | None, end: int | None) -> defer.Deferred:
        """The Per User usage report, read off the writer (tsls.server.reads): it reads every Per User
        logon of its period."""
        def view(snap, now):
            lo = 0 if start is None else start
            hi = now + 1 if end is None else end
            if hi < lo:
                raise TslsError(Code.BAD_REQUEST, "the report's end is before its start")
            report = per_user_usage(snap.per_user_logons(lo, hi), tuple(snap.key_packs()), start, hi)
            return {
                "start": iso(report.start), "end": iso(report.end),
                "per_user_cals_installed": report.installed,
                "users_seen": len(report.users),
                "peak_users_per_day": report.peak,
                "users_over_installed": report.over,
                "users": [{"user": u, "logons": c, "last_seen": iso(last)} for u, c, last in report.users],
                "per_day": [{"day": iso(day)[:10], "users": n} for day, n in report.per_day],
            }
        return self.reads.read(view)


def _scope(role: object) -> Scope:
    try:
        return Scope(role)
    except ValueError:
        raise TslsError(Code.BAD_REQUEST, f"unknown role {role!r}; expected workgroup, domain or forest") from None


def event_json(row_id: int, e: Event) -> dict:
    return {"id": row_id, "at": iso(e.at), "event_id": int(e.event_id), "name": e.event_id.name,
            "message": e.message, "terminal_server": e.terminal_server, "hwid": e.hwid, "user": e.user,
            "license_id": e.license_id}
