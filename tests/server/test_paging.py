"""Lists that end: every list pages with a cursor and says how many there are (tsls.server.paging),
against the real daemon with more rows than a page, and tsls-admin's exports follow the cursor."""
import csv
import io
import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from clients import admin, connection
from tests.harness import Daemon, activate_and_install, logon, running, with_timeout
from tsls.core.events import Event, EventId
from tsls.errors import Code, TslsError
from tsls.server import paging
from tsls.server.records import event_json
from tsls.jsonshapes import license_json
from tsls.server.storage import EventFilter, LicenseFilter

DEVICES = 2_500
PAGE = 1_000
MANY = 120          # seconds for thousands of logons on a loaded machine (PostgreSQL's are slower)


@pytest.fixture
def daemon(tmp_path):
    yield from running(Daemon(tmp_path))


def logons(ts, first, count):
    """``count`` first logons, pipelined on one connection."""
    return defer.gatherResults([ts.request("logon", hwid=f"hw-{i}", machine=f"m{i}", user=f"u{i}", license=None)
                                for i in range(first, first + count)])


@defer.inlineCallbacks
def ledger(daemon, devices=DEVICES):
    ad = yield daemon.admin()
    yield activate_and_install(ad)
    ts = yield daemon.terminal_server()
    yield logons(ts, 0, devices).addTimeout(MANY, reactor)
    return ad, ts


@defer.inlineCallbacks
def every_page(ad, op, **fields):
    pages = []
    async def follow():
        async for page in ad.pages(op, page_size=PAGE, **fields):
            pages.append(page)
    yield defer.ensureDeferred(follow()).addTimeout(MANY, reactor)
    return pages


@pytest_twisted.inlineCallbacks
def test_licenses_page_by_license_id_with_the_total_until_the_list_ends(daemon):
    ad, ts = yield ledger(daemon)
    pages = yield every_page(ad, "list_licenses")
    assert [len(p["items"]) for p in pages] == [1000, 1000, 500]
    assert {p["total"] for p in pages} == {DEVICES}
    ids = [lic["license_id"] for p in pages for lic in p["items"]]
    assert ids == sorted(ids) and len(set(ids)) == DEVICES
    assert pages[-1]["next_cursor"] is None
    # filters hold across pages, and the total is of what matches
    one = yield ad.request("list_licenses", cursor="", limit=10, machine="m7")
    assert one["total"] == 1 and one["items"][0]["machine"] == "m7" and one["next_cursor"] is None
    none = yield ad.request("list_licenses", cursor="", kind="nonsense")
    assert none == {"items": [], "total": 0, "next_cursor": None}


@pytest_twisted.inlineCallbacks
def test_pages_show_each_license_as_the_whole_list_does(daemon):
    """A page's licenses are encoded by the database (readstore.licenses_json_joined); they must read
    exactly as the list without a cursor shows them: a CAL from a key pack, a revoked one, odd names."""
    ad, ts = yield ledger(daemon, 30)
    server = daemon.service.server
    for device in ("cal-1", "cal-2"):
        first = yield logon(ts, device)
        yield ts.request("logon", hwid=f"hw-{device}", machine=device, user=f"user-{device}",
                         license=first["license"]["token"])
    yield ts.request("logon", hwid="hw-odd", machine='PC "Zoë" \\ ⌘', user="Ünïcødé\n\tuser", license=None)
    cals = yield ad.request("list_licenses", kind="permanent")
    yield ad.request("revoke", license_id=cals[0]["license_id"])
    whole = yield ad.request("list_licenses", limit=100_000)

    def by_row(snap, now):          # what the list answered when it was made in Python, license by license
        names = {p.id: p.key_pack_id for p in snap.key_packs()}
        return [license_json(lic, names.get(lic.key_pack), with_wmi=True)
                for lic in snap.licenses_after(LicenseFilter(), None, 100_000)]
    assert whole == (yield server.reads.read(by_row))
    assert (yield ad.request("list_licenses", limit=3)) == whole[:3]
    pages = yield every_page(ad, "list_licenses")
    assert [lic for p in pages for lic in p["items"]] == whole
    assert {lic["status"] for lic in whole if lic["kind"] == "permanent"} == {"active", "revoked"}
    assert all(lic["key_pack_id"] for lic in whole if lic["kind"] == "permanent")
    # ASCII, as every answer is: what is not ASCII escaped as json.dumps escapes it
    listed = bytes((yield server.ledger.licenses({}, 100_000)))
    page = bytes((yield server.ledger.licenses_page({}, "", 100_000)))
    odd = json.dumps('PC "Zoë" \\ ⌘').encode()
    assert listed.isascii() and page.isascii() and odd in listed and odd in page


@pytest_twisted.inlineCallbacks
def test_rows_written_between_pages_do_not_shift_the_next_page(daemon):
    ad, ts = yield ledger(daemon, 1_500)
    first = yield ad.request("list_licenses", cursor="", limit=PAGE)
    yield logons(ts, 10_000, 700).addTimeout(MANY, reactor)           # while an export is between pages
    second = yield ad.request("list_licenses", cursor=first["next_cursor"], limit=PAGE)
    ids = [lic["license_id"] for lic in first["items"] + second["items"]]
    assert len(set(ids)) == len(ids) == 2_000 and ids == sorted(ids)
    assert second["total"] == 2_200
    third = yield ad.request("list_licenses", cursor=second["next_cursor"], limit=PAGE)
    assert len(third["items"]) == 200 and third["next_cursor"] is None


@pytest_twisted.inlineCallbacks
def test_events_page_oldest_first_or_newest_first(daemon):
    ad, ts = yield ledger(daemon)
    pages = yield every_page(ad, "list_events")
    ids = [e["id"] for p in pages for e in p["items"]]
    total = pages[0]["total"]
    assert total >= DEVICES and len(ids) == len(set(ids)) == total and ids == sorted(ids)
    newest = yield every_page(ad, "list_events", newest_first=True)
    assert [e["id"] for p in newest for e in p["items"]] == ids[::-1]
    issued = yield every_page(ad, "list_events", event_id=1101)
    assert sum(len(p["items"]) for p in issued) == issued[0]["total"] == DEVICES


ODD = "".join(chr(i) for i in range(1, 128)) + "é Zoë ⌘ \u2028 😀"


@pytest_twisted.inlineCallbacks
def test_event_pages_are_byte_for_byte_the_row_by_row_encoding(daemon):
    """A page's events are encoded and joined by the database (readstore.events_json_joined); the
    answer's bytes must be those of the rows fetched one by one and encoded by json.dumps: every
    ASCII character, accents, beyond the BMP, NULL columns, filters, both directions, the cursor."""
    ad, ts = yield ledger(daemon, 20)
    server = daemon.service.server
    yield server.writer.submit(lambda store, now: store.add_events([
        Event(now, EventId.LOGON_REFUSED, "NO_LICENSE: " + ODD, ODD, "hw-" + ODD, ODD, 7),
        Event(now, EventId.POLICY_CHANGED, ODD),
        Event(now + 1, EventId.CAL_REVOKED, "revoked", "TS01", license_id=12)]))

    def by_row(snap, now, which, after, limit, newest_first):
        rows = [event_json(row_id, e) for row_id, e in snap.events_after(which, after, limit + 1, newest_first)]
        return paging.answer("events", rows, snap.count_events(which), limit, lambda r: r["id"], newest_first)

    for filters, since, limit, newest_first in (({}, None, 7, False), ({}, None, 7, True), ({}, None, 100_000, False),
                                                ({"terminal_server": ODD}, None, 1, False),
                                                ({"event_id": 1101}, None, 6, True), ({"hwid": "nobody"}, None, 5, False),
                                                ({}, 2**40, 3, True)):
        which = EventFilter(event_ids=None if "event_id" not in filters else (filters["event_id"],), since=since,
                            **{k: v for k, v in filters.items() if k != "event_id"})
        cursor, pages = "", []
        while cursor is not None:
            joined = yield server.records.events_page(filters, since, cursor, limit, newest_first)
            after = paging.decode("events", cursor, newest_first=newest_first)
            expected = yield server.reads.read(by_row, which, after, limit, newest_first)
            assert bytes(joined) == bytes(expected)
            pages.append(json.loads(joined))
            cursor = pages[-1]["next_cursor"]
        if limit < 10 and not filters and since is None:     # every event, several pages (20 logons make 40 and more)
            assert len(pages) > 3 and sum(len(p["items"]) for p in pages) == pages[0]["total"]
        # without a cursor: the newest ``limit``, oldest first, as json.dumps made the list
        listed = yield server.records.list_events(filters, since, limit)
        newest = yield server.reads.read(lambda snap, now: [event_json(row_id, e) for row_id, e in
                                                            snap.events_after(which, None, limit, True)][::-1])
        assert bytes(listed) == json.dumps(newest, separators=(",", ":")).encode()


@pytest_twisted.inlineCallbacks
def test_a_read_sees_the_change_asked_for_before_it_on_the_same_connection(daemon):
    ad, ts = yield ledger(daemon, 10)
    pipelined = [ts.request("logon", hwid=f"hw-x{i}", machine="x", user="x", license=None) for i in range(50)]
    listed = ad.request("list_licenses", cursor="", machine="x")
    yield with_timeout(defer.gatherResults(pipelined))
    answer = yield with_timeout(listed)
    # asked after the logons were sent on another connection: it may or may not see them, but on
    # the same connection a read follows the writes before it
    assert answer["total"] in range(0, 51)
    revoked = ad.request("revoke", license_id=1)
    after = ad.request("list_licenses", cursor="", limit=1)
    yield revoked.addErrback(lambda f: None)
    page = yield after
    lic = yield ad.request("list_licenses", cursor="", limit=1)
    assert page["items"][0]["status"] == lic["items"][0]["status"]


@pytest_twisted.inlineCallbacks
def test_key_packs_terminal_servers_and_usage_page_too(daemon):
    ad, ts = yield ledger(daemon, 3)
    for _ in range(4):
        yield ad.request("install_key_pack", purchase={"program": "retail", "retail_code": "R" * 25,
                                                       "cal_type": "per_device", "quantity": 1})
    packs = yield _pages(ad, "list_key_packs", 2)
    assert [len(p["items"]) for p in packs] == [2, 2, 1] and {p["total"] for p in packs} == {5}
    assert [k["id"] for p in packs for k in p["items"]] == [k["id"] for k in (yield ad.request("list_key_packs"))]
    for i in (3, 1, 4, 0, 2):
        yield ad.request("register_terminal_server", name=f"TS{i:02}")
    servers = yield _pages(ad, "list_terminal_servers", 2)
    assert [t["name"] for p in servers for t in p["items"]] == [f"TS{i:02}" for i in range(5)]
    assert servers[0]["total"] == 5 and servers[0]["security_group_policy"] is False
    usage = yield ad.request("usage_report", cursor="", limit=2)
    assert usage["total"] == usage["users_seen"] and "users" not in usage and "per_day" in usage


@defer.inlineCallbacks
def _pages(ad, op, size):
    pages, cursor = [], ""
    while cursor is not None:
        page = yield ad.request(op, cursor=cursor, limit=size)
        pages.append(page)
        cursor = page["next_cursor"]
    return pages


@pytest_twisted.inlineCallbacks
def test_a_cursor_not_given_for_that_list_is_refused(daemon):
    ad, ts = yield ledger(daemon, 20)
    page = yield ad.request("list_licenses", cursor="", limit=5)
    for op, cursor in (("list_events", page["next_cursor"]), ("list_licenses", "not-a-cursor"),
                       ("list_licenses", "W1s="), ("list_key_packs", page["next_cursor"])):
        with pytest.raises(TslsError) as e:
            yield ad.request(op, cursor=cursor)
        assert e.value.code is Code.BAD_CURSOR
    with pytest.raises(TslsError) as e:
        yield ad.request("list_events", cursor=page["next_cursor"], newest_first=True)
    assert e.value.code is Code.BAD_CURSOR
    with pytest.raises(TslsError) as e:
        yield ad.request("list_licenses", cursor=5)
    assert e.value.code is Code.BAD_REQUEST


@pytest_twisted.inlineCallbacks
def test_tsls_admin_exports_every_row_and_a_table_says_how_many_it_shows(daemon, capsys, monkeypatch,
                                                                       exports_backgrounded):
    yield ledger(daemon)
    monkeypatch.setattr(connection, "PAGE_SIZE", PAGE)      # so the export takes several pages

    @defer.inlineCallbacks
    def run(*argv):
        capsys.readouterr()
        args = admin.parser().parse_args(["--server", daemon.endpoint, "--credential",
                                          daemon.service.credential_path, *argv])
        yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(MANY, reactor)
        return capsys.readouterr()

    out = yield run("licenses", "--csv")
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert len(rows) == DEVICES and len({r["license_id"] for r in rows}) == DEVICES
    assert len(exports_backgrounded) == 1           # an export yields the CPU (clients.admin.background)
    out = yield run("licenses", "--json")
    assert len(json.loads(out.out)) == DEVICES
    out = yield run("licenses")
    assert len(out.out.splitlines()) == 1 + 1000
    assert len(exports_backgrounded) == 2           # a table of the first 1,000 does not
    assert "showing the 1,000 of 2,500" in out.err and "--all" in out.err
    out = yield run("licenses", "--all")
    assert len(out.out.splitlines()) == 1 + DEVICES and out.err == ""
    out = yield run("events", "--limit", "1500")
    lines = out.out.splitlines()[1:]
    ids = [int(line.split()[0]) for line in lines]
    assert len(ids) == 1500 and ids == sorted(ids)
    assert "showing the newest 1,500 of" in out.err
    out = yield run("events", "--json")
    events = json.loads(out.out)
    assert ids == [e["id"] for e in events][-1500:]


def test_an_export_runs_at_the_lowest_cpu_priority():
    """clients.admin.background, in a process of its own (the tests' own calls are counted instead)."""
    import subprocess
    import sys
    code = "import os, clients.admin as a; a.background(); print(os.getpriority(os.PRIO_PROCESS, 0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "19"
