"""Read-only queries for the console and /metrics, on connections of their own.

The writer's connection is never used here: each reader thread opens the database read-only
(SQLite: ``mode=ro``, ``query_only``; PostgreSQL: a REPEATABLE READ READ ONLY transaction) and reads
inside one transaction, so a page sees one snapshot while the writer goes on committing. Nothing
here runs in the reactor's thread: the console calls it from a small thread pool of its own
(tsls.console.app). All of the console's SQL is here, written once for both engines (``"user"``
quoted, subqueries named, sums cast), with ``?`` placeholders turned into psycopg's for PostgreSQL.
"""
from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import threading
import urllib.parse

from tsls.core.activation import Activation, ActivationMethod, ActivationStatus, Problem
from tsls.core.reports import Scope
from tsls.core.events import Event, EventId
from tsls.core.model import DAY, CalType, KeyPack, License, LicenseKind, LicenseStatus, ProductVersion, PurchaseRef
from tsls.server.ledgerbase import (KIND_STATUS_COUNTS_SQL, LICENSE_ROW_SQL, REVOKED_HOLDING_SQL, event_conditions,
                                    license_conditions, problem_of, scope_of)
from tsls.server.storage import EventFilter, LicenseFilter

# Columns the licenses page may sort and filter by (the keys are what the page sends).
LICENSE_SORTS = {"license_id": "id", "kind": "kind", "status": "status", "hwid": "hwid", "machine": "machine",
                 "user": '"user"', "terminal_server": "terminal_server", "product_version": "product_version",
                 "issued_at": "issued_at", "expires_at": "expires_at"}
LICENSE_EXACT = ("kind", "status", "product_version", "terminal_server")
SEARCHED = ("hwid", "machine", '"user"', "terminal_server")
_COLUMNS = LICENSE_ROW_SQL


class _PerThread:
    """A connection of its own for each reader thread; close() closes every one opened."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()

    def _keep(self, db):
        self._local.db = db
        with self._lock:
            self._opened.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()


class EventCounts:
    """How many events match a filter up to a row ID, remembered for the next page of an export, which
    then counts only the events written since (a page's ``total`` was a count of every event each
    time: 19 ms a page, a third of an export's CPU, with 1,000,000 events). Right only where a
    committed event's row ID is never reused and no event is deleted or inserted below one already
    seen, as on SQLite (one writer gives row IDs in order; events are never deleted): not on
    PostgreSQL, where several daemons take IDs from one sequence and commit in any order."""

    SIZE = 32           # filters remembered (the least recently used are forgotten)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: collections.OrderedDict = collections.OrderedDict()

    def get(self, which: EventFilter) -> tuple[int, int] | None:
        with self._lock:
            known = self._known.get(which)
            if known is not None:
                self._known.move_to_end(which)
            return known

    def put(self, which: EventFilter, upto: int, n: int) -> None:
        with self._lock:
            self._known[which] = (upto, n)
            self._known.move_to_end(which)
            while len(self._known) > self.SIZE:
                self._known.popitem(last=False)


class ReadStore(_PerThread):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.event_counts = EventCounts()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA query_only=ON")
            self._keep(db)
        return db

    @contextlib.contextmanager
    def snapshot(self):
        """One read transaction: every query made through the yielded Snapshot sees the same commit."""
        db = self._db()
        db.execute("BEGIN")
        try:
            yield Snapshot(db, self.event_counts)
        finally:
            db.execute("COMMIT")


class Snapshot:
    CODE_OF_MESSAGE = "substr(message, 1, instr(message, ':') - 1)"     # a refusal's message starts "CODE: "

    def __init__(self, db, event_counts: EventCounts | None = None) -> None:
        self.db = db
        self.event_counts = event_counts

    def run(self, sql: str, params=()):
        return self.db.execute(sql, params)

    def activation(self) -> Activation:
        """The activation, its certificate replaced by "held" when there is one (pages never show it)."""
        row = self.run("SELECT status, license_server_id, method, activated_at, certificate IS NOT NULL "
                              "FROM activation").fetchone()
        if row is None:
            return Activation()
        return Activation(ActivationStatus(row[0]), row[1], None if row[2] is None else ActivationMethod(row[2]), row[3],
                          "held" if row[4] else None)

    def security_group_policy(self) -> bool:
        row = self.run("SELECT value FROM meta WHERE key = 'policy:security_group'").fetchone()
        return row is not None and row[0] == "on"

    def key_packs(self) -> list[KeyPack]:
        rows = self.run("SELECT id, key_pack_id, purchase, product_version, cal_type, total, issued, "
                               "installed_at, retired_at FROM key_packs ORDER BY id")
        return [KeyPack(r[0], r[1], PurchaseRef.from_json(json.loads(r[2])), ProductVersion(r[3]), CalType(r[4]),
                        r[5], r[6], r[7], r[8]) for r in rows]

    def _meta(self, key: str) -> str | None:
        row = self.run("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def server_role(self) -> Scope:
        return scope_of(self._meta("server_role"))

    def activation_problem(self) -> Problem | None:
        return problem_of(self._meta("activation_problem"))

    def kind_status_counts(self) -> dict[str, int]:
        """How many licenses of each kind and status, keyed "kind:status" (status's figure): read from
        license_counts (SQLite migrations 7 and 9), not by counting every license."""
        return dict(self.run(KIND_STATUS_COUNTS_SQL).fetchall())

    def license_counts(self) -> dict[tuple[str, str, str], int]:
        """(kind, status, product version) -> licenses: license_counts (migration 9),
        not a grouping of every license (1.3 s with a million)."""
        rows = self.run("SELECT kind, status, product_version, n FROM license_counts WHERE n > 0")
        return {(k, s, v): n for k, s, v, n in rows}

    def licenses_page(self, exact: dict[str, str], search: str | None, sort: str, descending: bool,
                      offset: int, limit: int) -> tuple[int, list[License]]:
        """How many licenses match, and one page of them. ``exact`` keys are LICENSE_EXACT names;
        ``search`` is a substring of any SEARCHED column; ``sort`` a LICENSE_SORTS key."""
        where, params = ["true"], []
        for name, value in exact.items():
            if name not in LICENSE_EXACT:
                raise ValueError(name)
            where.append(f"{name} = ?")
            params.append(value)
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in SEARCHED) + ")")
            params.extend([pattern] * len(SEARCHED))
        clause = " AND ".join(where)
        total = self.run(f"SELECT count(*) FROM licenses WHERE {clause}", params).fetchone()[0]
        order = f"{LICENSE_SORTS[sort]} {'DESC' if descending else 'ASC'}, id {'DESC' if descending else 'ASC'}"
        rows = self.run(f"SELECT {_COLUMNS} FROM licenses WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                               (*params, limit, offset))
        return total, [_license(r) for r in rows]

    def revoked_holding(self, now: int) -> list[License]:
        """Revoked licenses that still count against the revocation limit (until they would have expired)."""
        rows = self.run(REVOKED_HOLDING_SQL.format(place="?"), (now,))
        return [_license(r) for r in rows]

    def expiring(self, now: int, until: int) -> dict[tuple[str, str], int]:
        """(kind, product version) -> active licenses that expire from now until ``until``."""
        rows = self.run("SELECT kind, product_version, count(*) FROM licenses WHERE status = 'active' "
                               "AND expires_at > ? AND expires_at <= ? GROUP BY kind, product_version", (now, until))
        return {(k, v): n for k, v, n in rows}

    def events(self, after: int = 0, limit: int = 200) -> list[tuple[int, Event]]:
        """Events with a row id above ``after``: the newest ``limit`` of them, oldest first."""
        rows = self.run(
            'SELECT id, at, event_id, message, terminal_server, hwid, "user", license_id FROM '
            "(SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?) AS recent ORDER BY id", (after, limit))
        return [(r[0], Event(r[1], _event_id(r[2]), r[3], r[4], r[5], r[6], r[7])) for r in rows]

    # --- the protocol's lists, a page at a time (tsls.server.paging) ----------------------------------

    def count_licenses(self, which: LicenseFilter) -> int:
        """How many match: by kind and status alone, from license_counts; else counted."""
        if which == LicenseFilter(kind=which.kind, status=which.status):
            where, params = license_conditions(which, "?")
            return self.run(f"SELECT CAST(coalesce(sum(n), 0) AS BIGINT) FROM license_counts WHERE {' AND '.join(['1 = 1', *where])}",
                            params).fetchone()[0]
        where, params = license_conditions(which, "?", quote=_quote)
        return self.run(f"SELECT count(*) FROM licenses WHERE {' AND '.join(['1 = 1', *where])}", params).fetchone()[0]

    def licenses_after(self, which: LicenseFilter, after: int | None, limit: int) -> list[License]:
        """Up to ``limit`` licenses that match, by license ID, from the first above ``after``."""
        where, params = license_conditions(which, "?", quote=_quote)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        rows = self.run(f"SELECT {_COLUMNS} FROM licenses WHERE {' AND '.join(['1 = 1', *where])} ORDER BY id LIMIT ?",
                        (*params, limit))
        return [_license(r) for r in rows]

    # A license as the protocol shows it (tsls.jsonshapes.license_json, without the token), made by the
    # database: an export of a million rows then costs the reader thread's Python (which holds the GIL
    # the reactor needs) a string join per row instead of building two objects and encoding them.
    JSON_OBJECT = "json_object"
    ISO = "strftime('%Y-%m-%dT%H:%M:%SZ', {}, 'unixepoch')"
    BOOLEAN = "json(CASE WHEN {} THEN 'true' ELSE 'false' END)"
    AS_TEXT = "{}"
    # The object without its closing brace. Not substr(x, 1, length(x) - 1): SQLite would build the
    # object twice (an export's reader took 45 ms a page of 10,000 against 25). The last field is a
    # number (renewals), so the only brace at the end is the object's.
    ALL_BUT_LAST = "rtrim({0}, '}}')"
    QUOTED = "json_quote({})"          # a JSON string, or null for NULL
    # SQLite's group_concat joins the rows in the order the subquery gives them (its ORDER BY);
    # PostgreSQL's string_agg is told the order ({1}: ASC or DESC).
    JOINED = "group_concat({0}, ',')"

    def licenses_json_joined(self, which: LicenseFilter, after: int | None, limit: int,
                             endings: dict[tuple[str, str], str]) -> tuple[str, int | None, int, bool]:
        """(the licenses of one page as JSON texts joined by commas, the last one's ID, how many, whether
        more match after it): the page in one row, so the reader thread runs
        Python once per page, not once per row (each row fetched takes the GIL back from the reactor's
        thread, thousands of times a page). Each license has the fields and values of ``license_json``;
        ``endings`` maps (kind, status) to the text that ends a
        license's object in place of its closing brace (its WMI numbers, which are the core's)."""
        where, params = license_conditions(which, "?", quote=lambda c: f'l."{c}"')
        if after is not None:
            where.append("l.id > ?")
            params.append(after)
        ending = "CASE " + " ".join("WHEN l.kind = ? AND l.status = ? THEN ?" for _ in endings) + " END"
        ending_params = [x for (kind, status), text in endings.items() for x in (kind, status, text)]
        fields = ", ".join([
            "'license_id', l.id", "'kind', l.kind", "'status', l.status", "'hwid', l.hwid", "'machine', l.machine",
            "'user', l.\"user\"", "'terminal_server', l.terminal_server", "'product_version', l.product_version",
            "'key_pack_id', k.key_pack_id", "'validated', " + self.BOOLEAN.format("l.validated"),
            "'issued_at', " + self.ISO.format("l.issued_at"), "'expires_at', " + self.ISO.format("l.expires_at"),
            "'renewals', l.renewals"])
        text = self.ALL_BUT_LAST.format(self.AS_TEXT.format(f"{self.JSON_OBJECT}({fields})")) + " || " + ending
        return self._joined_page("licenses l LEFT JOIN key_packs k ON k.id = l.key_pack", "l.id", text,
                                 ending_params, where, params, limit)

    def _event_where(self, which: EventFilter) -> tuple[list[str], list]:
        where, params = event_conditions(which, "?", quote=_quote)
        if which.event_ids is not None:
            where.append(f"event_id IN ({','.join('?' * len(which.event_ids))})")
            params.extend(which.event_ids)
        return where, params

    def count_events(self, which: EventFilter) -> int:
        """How many events match; with ``event_counts`` (SQLite's read store), the count up to the
        last row ID it saw for this filter plus those written since."""
        where, params = self._event_where(which)
        if self.event_counts is None:
            return self.run(f"SELECT count(*) FROM events WHERE {' AND '.join(['1 = 1', *where])}",
                            params).fetchone()[0]
        top = self.run("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        known = self.event_counts.get(which)
        upto, n = known if known is not None and known[0] <= top else (0, 0)
        n += self.run(f"SELECT count(*) FROM events WHERE {' AND '.join(['id > ? AND id <= ?', *where])}",
                      (upto, top, *params)).fetchone()[0]
        self.event_counts.put(which, top, n)
        return n

    def events_json_joined(self, which: EventFilter, after: int | None, limit: int,
                           newest_first: bool = False) -> tuple[str, int | None, int, bool]:
        """(the events of one page as JSON texts joined by commas, the last one's row ID, how many,
        whether more match after it), as ``licenses_json_joined``: one row a page, so the reader
        thread takes the GIL once per page. The text is what ``json.dumps(event_json(...),
        separators=(",", ":"))`` gives for each row, byte for byte (``paging.ascii_json`` escapes what
        is not ASCII afterwards, as json.dumps does)."""
        where, params = self._event_where(which)
        if after is not None:
            where.append("id < ?" if newest_first else "id > ?")
            params.append(after)
        text, names = self._event_json()
        return self._joined_page("events", "id", text, names, where, params, limit, newest_first)

    def _joined_page(self, source: str, key: str, text: str, text_params: list, where: list[str], params: list,
                     limit: int, newest_first: bool = False) -> tuple[str, int | None, int, bool]:
        """One page of ``source`` (a FROM clause) in one row: the ``text`` of each of its first ``limit``
        rows that match ``where``, in the order of ``key`` (its row ID), joined by commas; the last
        one's ``key``; how many; whether more match after it."""
        direction, last_of, beyond = ("DESC", "min", "<") if newest_first else ("ASC", "max", ">")
        conditions = " AND ".join(["1 = 1", *where])
        joined, last, n = self.run(
            f"SELECT {self.JOINED.format('j', direction)}, {last_of}(id), count(*) FROM (SELECT {key} AS id, "
            f"{text} AS j FROM {source} WHERE {conditions} ORDER BY {key} {direction} LIMIT ?) page",
            (*text_params, *params, limit)).fetchone()
        more = n == limit and self.run(
            f"SELECT 1 FROM {source} WHERE {conditions} AND {key} {beyond} ? LIMIT 1",
            (*params, last)).fetchone() is not None
        return joined or "", last, n, more

    def newest_events_json(self, which: EventFilter, limit: int) -> str:
        """The newest ``limit`` events that match, oldest first (the list without a cursor), as
        ``events_json_joined`` writes them: their JSON texts joined by commas."""
        where, params = self._event_where(which)
        text, names = self._event_json()
        conditions = " AND ".join(["1 = 1", *where])
        return self.run(
            f"SELECT {self.JOINED.format('j', 'ASC')} FROM (SELECT id, j FROM (SELECT id, {text} AS j FROM events "
            f"WHERE {conditions} ORDER BY id DESC LIMIT ?) newest ORDER BY id) page",
            (*names, *params, limit)).fetchone()[0] or ""

    def _event_json(self) -> tuple[str, list]:
        """An event row's JSON (``event_json``'s fields and values, compact) as an SQL expression, and
        its parameters (each EventId's name)."""
        names = [x for e in EventId for x in (int(e), json.dumps(e.name))]
        name = "CASE event_id " + " ".join("WHEN ? THEN ?" for _ in EventId) + " ELSE 'null' END"
        q = self.QUOTED
        text = (f"""'{{"id":' || id || ',"at":"' || {self.ISO.format('at')} || '","event_id":' || event_id """
                f"""|| ',"name":' || {name} || ',"message":' || {q.format('message')} """
                f"""|| ',"terminal_server":' || {q.format('terminal_server')} || ',"hwid":' || {q.format('hwid')} """
                f"""|| ',"user":' || {q.format('"user"')} """
                f"""|| ',"license_id":' || coalesce({self.AS_TEXT.format('license_id')}, 'null') || '}}'""")
        return text, names

    def events_after(self, which: EventFilter, after: int | None, limit: int,
                     newest_first: bool = False) -> list[tuple[int, Event]]:
        """Up to ``limit`` events that match, by row ID from the first past ``after`` (ascending, or
        descending when ``newest_first``), row by row (what events_json_joined's pages are tested against)."""
        where, params = self._event_where(which)
        if after is not None:
            where.append("id < ?" if newest_first else "id > ?")
            params.append(after)
        rows = self.run('SELECT id, at, event_id, message, terminal_server, hwid, "user", license_id FROM events '
                        f"WHERE {' AND '.join(['1 = 1', *where])} ORDER BY id {'DESC' if newest_first else 'ASC'} "
                        "LIMIT ?", (*params, limit))
        return [(r[0], Event(r[1], _event_id(r[2]), r[3], r[4], r[5], r[6], r[7])) for r in rows]

    def registrations(self) -> list[tuple[str, int, bool]]:
        """(name, registered at, in the Terminal Server Computers group); never the secret."""
        return self.run("SELECT name, registered_at, in_group FROM terminal_servers ORDER BY name").fetchall()

    def last_seen(self) -> dict[str, int]:
        """Terminal server name -> the time of its latest event (a logon, a refusal, a change)."""
        rows = self.run("SELECT terminal_server, max(at) FROM events WHERE terminal_server IS NOT NULL "
                               "GROUP BY terminal_server")
        return dict(rows.fetchall())

    def per_user_logons(self, start: int, end: int) -> list[tuple]:
        return self.run('SELECT at, "user", hwid, machine, terminal_server FROM per_user_logons '
                        "WHERE at >= ? AND at < ? ORDER BY id", (start, end)).fetchall()

    def permanent_licenses(self, limit: int) -> list[License]:
        """Issued CALs (permanent licenses), newest first: the issued CALs report."""
        rows = self.run(f"SELECT {_COLUMNS} FROM licenses WHERE kind = 'permanent' ORDER BY id DESC LIMIT ?",
                               (limit,))
        return [_license(r) for r in rows]

    def _per_day(self, key: str, at: str, value: str, rows: str, params=()) -> list[tuple]:
        """(key, day start, value) of the rows grouped by key and by the day of their time ``at``, oldest first."""
        return self.run(f"SELECT {key}, {at} - {at} % {DAY}, {value} FROM {rows} GROUP BY 1, 2 ORDER BY 2",
                        params).fetchall()

    def issued_per_day(self) -> list[tuple[str, int, int]]:
        """(product version, day start, permanent CALs issued that day)."""
        return self._per_day("product_version", "issued_at", "count(*)", "licenses WHERE kind = 'permanent'")

    def released_per_day(self) -> list[tuple[str, int, int]]:
        """(product version, day start, permanent CALs that left the pool that day: expired or revoked)."""
        return self._per_day("product_version", "at", "count(*)",
                             "(SELECT l.product_version, e.at FROM events e JOIN licenses l ON l.id = e.license_id "
                             "WHERE e.event_id IN (?, ?) AND l.kind = 'permanent') AS released",
                             (int(EventId.LICENSE_EXPIRED), int(EventId.CAL_REVOKED)))

    def installed_per_day(self) -> list[tuple[str, int, int]]:
        """(product version, day start, Per Device CALs installed that day)."""
        return self._per_day("product_version", "installed_at", "CAST(sum(total) AS BIGINT)",
                             "key_packs WHERE cal_type = 'per_device'")

    def refusals_per_day(self) -> list[tuple[str, int, int]]:
        """(refusal code, day start, refused logons that day). A refusal's message starts with its code."""
        return self._per_day(self.CODE_OF_MESSAGE, "at", "count(*)", "events WHERE event_id = ?",
                             (int(EventId.LOGON_REFUSED),))


class PgReadStore(_PerThread):
    """The same reads on the PostgreSQL engine (tsls.server.pgstore): a connection per reader thread,
    made by the engine's Connector (its password kept apart), each read one REPEATABLE READ READ ONLY
    transaction. A connection that failed is dropped, and the next read makes a new one."""

    def __init__(self, connector) -> None:
        super().__init__()
        self.connector = connector

    @contextlib.contextmanager
    def snapshot(self):
        db = getattr(self._local, "db", None)
        if db is None or db.closed:
            db = self._keep(self.connector.connect(autocommit=True))
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield PgSnapshot(db)
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except Exception:
                db.close()
            raise
        db.execute("COMMIT")


class PgSnapshot(Snapshot):
    CODE_OF_MESSAGE = "split_part(message, ':', 1)"
    JSON_OBJECT = "json_build_object"
    ISO = """to_char(to_timestamp({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
    BOOLEAN = "{}"
    AS_TEXT = "CAST({} AS TEXT)"
    ALL_BUT_LAST = "left({0}, -1)"
    QUOTED = "coalesce(CAST(to_json({}) AS TEXT), 'null')"
    JOINED = "string_agg({0}, ',' ORDER BY id {1})"

    def run(self, sql: str, params=()):
        if not params:
            return self.db.execute(sql)
        return self.db.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))


def _quote(column: str) -> str:
    return '"user"' if column == "user" else column


_KINDS = {k.value: k for k in LicenseKind}
_STATUSES = {s.value: s for s in LicenseStatus}
_VERSIONS = {v.value: v for v in ProductVersion}


def _license(r) -> License:
    return License(r[0], _KINDS[r[1]], _STATUSES[r[2]], r[3], r[4], r[5], r[6], _VERSIONS[r[7]], r[8], bool(r[9]),
                   r[10], r[11], r[12])


def _event_id(value: int):
    try:
        return EventId(value)
    except ValueError:
        return value
