"""``tsls-admin``: Terminal Server Licensing Manager for the lab.

Talks to the license server over its socket protocol, and to the mock Clearinghouse over HTTP for
what a lab operator does there (selling CALs, the telephone activation call).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from clients.cli import enum_option, flags_after_subcommands, run
from clients import connection
from clients.connection import DEFAULT_SERVER, add_timeout_options, connect
from clients.output import RowStream, emit, rows_out, table
from tsls.core.clearinghouse import MigrationReason, Reason
from tsls.core.model import CalType, LicenseKind, LicenseStatus, ProductVersion
from tsls.errors import Code, TslsError
from tsls.files import default_data_dir, write_private
from tsls.public import read_secret, write_secret

SHOWN = 1000                # rows a table shows unless --limit or --all says otherwise
DEFAULT_CLEARINGHOUSE = "http://127.0.0.1:4880"

KEY_PACK_COLUMNS = [("key_pack_id", "KEY PACK"), ("product_version", "VERSION"), ("cal_type", "TYPE"),
                    ("program", "PROGRAM"), ("total", "TOTAL"), ("issued", "ISSUED"), ("available", "AVAILABLE")]
EVENT_COLUMNS = [("id", "#"), ("at", "AT"), ("event_id", "EVENT"), ("name", "NAME"), ("terminal_server", "TS"),
                 ("hwid", "HWID"), ("license_id", "LICENSE"), ("message", "MESSAGE")]
LICENSE_COLUMNS = [("license_id", "ID"), ("kind", "KIND"), ("status", "STATUS"), ("hwid", "HWID"), ("machine", "MACHINE"),
                   ("user", "USER"), ("terminal_server", "TS"), ("product_version", "VERSION"),
                   ("key_pack_id", "KEY PACK"), ("issued_at", "ISSUED"), ("expires_at", "EXPIRES"),
                   ("renewals", "RENEWALS")]


def _purchase_options(p, sale: bool = False, key_pack_id: bool = False) -> None:
    which = p.add_mutually_exclusive_group(required=not sale)
    if key_pack_id:
        which.add_argument("--key-pack-id", metavar="ID",
                           help="the 35-character license key pack ID the Clearinghouse read out on the telephone or "
                                "web route (7 groups of 5, hyphens optional; tsls-admin clearinghouse issue)")
    which.add_argument("--retail", metavar="CODE", help="a retail license code (25 letters and digits)")
    which.add_argument("--open", nargs=2, metavar=("LICENSE_NUMBER", "AUTHORIZATION_NUMBER"),
                       help="an Open License: 8-digit license number and 15-character authorization number")
    which.add_argument("--agreement", nargs=2, metavar=("TYPE", "NUMBER"),
                       help="an agreement: select, enterprise, campus, school, service_provider or other, "
                            "and its 7-digit number")
    p.add_argument("--version", dest="product_version", **enum_option(ProductVersion),
                   help="the Windows Server version the CALs are for")
    p.add_argument("--cal-type", **enum_option(CalType), help="the CAL type")
    p.add_argument("--quantity", type=int, help="number of CALs")


def _purchase(args, sale: bool = False) -> dict:
    if args.retail is not None:
        body = {"program": "retail", "retail_code": args.retail}
    elif args.open is not None:
        body = {"program": "open", "license_number": args.open[0], "authorization_number": args.open[1]}
    elif args.agreement is not None:
        body = {"program": "agreement", "agreement_type": args.agreement[0], "agreement_number": args.agreement[1]}
    else:
        body = {"program": "retail"}     # a sale with no code: the Clearinghouse makes one up
    if args.product_version:
        body["product_version"] = args.product_version
    if args.cal_type:
        body["cal_type"] = args.cal_type
    if args.quantity is not None:
        body["quantity"] = args.quantity
    return body


def _contact_options(p) -> None:
    p.add_argument("--first-name", default="Lab", help="the contact's first name (default: %(default)s)")
    p.add_argument("--last-name", default="Operator", help="the contact's last name (default: %(default)s)")
    p.add_argument("--company", default="Test Lab", help="the contact's company (default: %(default)s)")
    p.add_argument("--country", default="United States", help="country or region (default: %(default)s)")
    p.add_argument("--email", help="the contact's e-mail address (optional)")


def _contact(args) -> dict:
    contact = {"first_name": args.first_name, "last_name": args.last_name, "company": args.company,
               "country_region": args.country}
    if args.email:
        contact["email"] = args.email
    return contact


def _date(text: str) -> int:
    from tsls.core.labtime import parse_date
    return parse_date(text)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsls-admin", description="Administer a tsls license server.")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="license server endpoint (default: %(default)s)")
    add_timeout_options(parser)
    parser.add_argument("--clearinghouse", default=DEFAULT_CLEARINGHOUSE,
                        help="the mock Clearinghouse's URL, for the clearinghouse commands (default: %(default)s)")
    data = default_data_dir()
    parser.add_argument("--credential", default=os.path.join(data, "admin.secret"),
                        help="the administrator's credential file, made by the license server at first start "
                             "in its data directory (default: $TSLS_DATA/admin.secret, else tsls-data/admin.secret; "
                             "now %(default)s)")
    parser.add_argument("--operator-credential", default=os.path.join(data, "operator.secret"),
                        help="the lab operator's credential for the Clearinghouse (clearinghouse sell, purchases), "
                             "made by the Clearinghouse at first start (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--csv", action="store_true", help="print lists (licenses, events, usage) as CSV")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("status", help="activation, key packs and license counts")
    tss = sub.add_parser("terminal-servers", help="registered terminal servers and the security group policy")
    tss.add_argument("action", nargs="?", choices=["register", "group-add", "group-remove"],
                     help="register NAME (prints its secret once), or add it to / remove it from the "
                          "Terminal Server Computers group")
    tss.add_argument("name", nargs="?")
    tss.add_argument("--secret-file", help="register: write the secret to this file (mode 0600) instead of printing it")
    pol = sub.add_parser("policy", help="the license server security group policy; the Prevent License Upgrade policy")
    pol.add_argument("security_group", choices=["on", "off"], nargs="?",
                     help="on: only terminal servers in the Terminal Server Computers group get licenses")
    pol.add_argument("--prevent-upgrade", choices=["on", "off"],
                     help="on: a session host is never given a CAL newer than itself; a device gets a temporary "
                          "license once, then is refused UPGRADE_PREVENTED (docs/versions.md)")
    act = sub.add_parser("activate", help="activate the license server through the Clearinghouse")
    act.add_argument("--telephone", nargs=2, metavar=("LICENSE_SERVER_ID", "CERTIFICATE_CODE"),
                     help="type in the license server ID and certificate code the Clearinghouse gave on the telephone")
    _contact_options(act)
    react = sub.add_parser("reactivate", help="get a new license server ID")
    react.add_argument("--reason", required=True, **enum_option(Reason), help="why a new license server ID is needed")
    _contact_options(react)
    deact = sub.add_parser("deactivate", help="deactivate the license server")
    deact.add_argument("--local", action="store_true",
                       help="forget the activation here without the Clearinghouse: the way out when the Clearinghouse "
                            "does not know it (tsls-admin status shows when; docs/activation.md)")
    deact.add_argument("--yes", action="store_true", help="confirm --local")
    inst = sub.add_parser("install", help="install CALs bought at the Clearinghouse")
    _purchase_options(inst, key_pack_id=True)
    rec = sub.add_parser("recover", help="get back the CALs of a purchase onto this (rebuilt) server")
    _purchase_options(rec)
    conv = sub.add_parser("convert", help="the Manage RDS CALs wizard's Convert CALs (2012 and later license servers): "
                                          "unissued CALs of a key pack become a new key pack of the other type")
    conv.add_argument("key_pack_id", metavar="KEY_PACK_ID", help="the key pack to take the CALs from (tsls-admin keypacks)")
    conv.add_argument("--count", type=int, required=True, help="how many unissued CALs to convert")
    rebuild = sub.add_parser("rebuild", help="the Manage RDS CALs wizard's Rebuild the database: delete every key pack "
                                             "and issued license, then reinstall the CALs by recovery")
    rebuild.add_argument("--yes", action="store_true", help="confirm that every CAL is deleted")
    mig = sub.add_parser("migrate", help="the Manage RDS CALs wizard's Migrate CALs: move a purchase's CALs from "
                                         "another license server onto this one through the Clearinghouse")
    mig.add_argument("--reason", required=True, **enum_option(MigrationReason),
                     help="replaced: the source license server is being replaced (name it); not_working: it no "
                          "longer works")
    mig.add_argument("--route", default="automatic", choices=["automatic", "web", "telephone"],
                     help="automatic: this server asks the Clearinghouse (name the purchase); web or telephone: type in "
                          "the key pack ID the Clearinghouse read out with --key-pack-id (default: %(default)s)")
    mig.add_argument("--source-server", metavar="ENDPOINT",
                     help="the source license server (replaced, running): its license server ID is read from it and "
                          "the migrated key packs are removed there")
    mig.add_argument("--source-credential", metavar="FILE",
                     help="the source's administrator credential (default: its data directory's admin.secret, as "
                          "--credential)")
    mig.add_argument("--source-license-server-id", metavar="ID",
                     help="the source's license server ID (replaced, offline: with --source-os)")
    mig.add_argument("--source-os", **enum_option(ProductVersion),
                     help="the source's Windows Server version (replaced, offline)")
    _purchase_options(mig, key_pack_id=True)
    sub.add_parser("keypacks", help="list key packs: Total / Issued / Available")
    lic = sub.add_parser("licenses", help="issued licenses, per device, with filters")
    lic.add_argument("--hwid", help="only the licenses of this hardware ID (40 hex digits)")
    lic.add_argument("--machine", help="only the licenses of this client machine name")
    lic.add_argument("--user", help="only the licenses issued at this user's logons")
    lic.add_argument("--terminal-server", help="only the licenses issued through this terminal server")
    lic.add_argument("--key-pack", dest="key_pack_id", help="only the CALs from this key pack")
    lic.add_argument("--version", dest="product_version", **enum_option(ProductVersion),
                     help="only the licenses for this Windows Server version")
    lic.add_argument("--kind", **enum_option(LicenseKind), help="only temporary licenses or permanent CALs")
    lic.add_argument("--status", **enum_option(LicenseStatus), help="only the licenses in this state")
    lic.add_argument("--limit", type=int,
                     help=f"the first this many by license ID (default: {SHOWN:,} in a table, every one with --csv "
                          "or --json)")
    lic.add_argument("--all", action="store_true", help="every license in the table, however many (page by page)")
    rev = sub.add_parser("revoke", help="revoke a Per Device CAL (at most 20%% of a version's CALs at once)")
    rev.add_argument("license_id", nargs="?", type=int)
    rev.add_argument("--user", help="(Per User CALs cannot be revoked: this shows the refusal)")
    clock = sub.add_parser("clock", help="move the lab clock forward: +90d, +6h, +30m, +1w or an ISO date")
    clock.add_argument("to", nargs="?", help="omit to print the lab time (a date in the past is refused: CLOCK_BACKWARDS)")
    ev = sub.add_parser("events", help="the event log, newest last")
    ev.add_argument("--event-id", type=int, help="only events with this ID (1101 a temporary license issued, ...)")
    ev.add_argument("--terminal-server", help="only the events of this terminal server")
    ev.add_argument("--hwid", help="only the events of this hardware ID")
    ev.add_argument("--user", help="only the events of this user")
    ev.add_argument("--license-id", type=int, help="only the events of this license")
    ev.add_argument("--since", help="ISO date")
    ev.add_argument("--limit", type=int,
                    help=f"the newest this many, listed oldest first (default: {SHOWN:,} in a table, every one with "
                         "--csv or --json)")
    ev.add_argument("--all", action="store_true", help="every event in the table, however many (page by page)")
    ev.add_argument("--follow", action="store_true", help="then keep printing events as they happen")
    con = sub.add_parser("console", help="print a one-time link that logs a browser in to the web console "
                                         "(docs/console.md)")
    con.add_argument("--viewer", action="store_true", help="a read-only session: it can look, not change")
    sub.add_parser("cal-usage", help="the CAL Usage report: Per User CALs as a 2008 or later license server tracks "
                                     "them (Create Report; --csv for the entries)")
    role = sub.add_parser("role", help="the license server's scope (ChangeRole); a workgroup one tracks no Per User CALs")
    role.add_argument("scope", choices=["workgroup", "domain", "forest"])
    use = sub.add_parser("usage", help="Per User usage report")
    use.add_argument("--start", help="ISO date")
    use.add_argument("--end", help="ISO date")

    prod = sub.add_parser("products", help="Per Server / Per Seat server products (License Manager; docs/legacy.md)")
    prod.add_argument("action", choices=["list", "add", "licenses", "switch", "switch-back", "clients", "history"],
                      help="list (Products view), add NAME --on SERVER [--per-server N], licenses NAME [--per-server N] "
                           "[--seats N] (NAME BackOffice: suite CALs), switch NAME --yes (to Per Seat, once), "
                           "switch-back NAME (always refused), clients (Per Seat clients), history (Purchase History)")
    prod.add_argument("name", nargs="?")
    prod.add_argument("--on", dest="product_server", metavar="SERVER", help="add: the server the product runs on")
    prod.add_argument("--per-server", type=int, default=0, help="Per Server (concurrent connection) licenses")
    prod.add_argument("--seats", type=int, default=0, help="Per Seat CALs")
    prod.add_argument("--yes", action="store_true", help="confirm the one-way switch (Per Server licenses are lost)")
    sbs = sub.add_parser("sbs", help="Small Business Server edition and Client Add Packs (docs/legacy.md)")
    sbs.add_argument("action", choices=["setup", "status", "make-add-pack", "apply"])
    sbs.add_argument("--disk", help="the add pack's 'disk': a file that holds its identity and the record of its use")
    sbs.add_argument("--size", type=int, help="make-add-pack: how many client licenses it adds")

    ch = sub.add_parser("clearinghouse", help="the lab operator's side of the mock Clearinghouse")
    chsub = ch.add_subparsers(dest="ch_command", required=True)
    sell = chsub.add_parser("sell", help="sell CALs (stands in for buying them)")
    _purchase_options(sell, sale=True)
    chsub.add_parser("purchases", help="list purchases and where they are installed")
    phone = chsub.add_parser("activate", help="the telephone call: get a license server ID for a product ID")
    phone.add_argument("--product-id", required=True, help="the product ID the license server's status shows")
    phone.add_argument("--again", action="store_true",
                       help="the product ID is already activated (codes lost or mistyped): retire that activation, "
                            "move its purchases to the new license server ID, read out new codes (needs the "
                            "operator's credential)")
    _contact_options(phone)
    issue = chsub.add_parser("issue", help="the telephone or web route: bind a purchase to a license server and read "
                                           "out the 35-character key pack ID it installs with tsls-admin install "
                                           "--key-pack-id")
    issue.add_argument("--license-server-id", required=True,
                       help="the license server ID its administrator reads out (tsls-admin status)")
    _purchase_options(issue)
    chmig = chsub.add_parser("migrate", help="the web or telephone route of Migrate CALs: move a purchase onto the "
                                             "target license server and read out the key pack ID it types in "
                                             "(tsls-admin migrate --route telephone --key-pack-id)")
    chmig.add_argument("--license-server-id", required=True, help="the target license server's ID")
    chmig.add_argument("--reason", required=True, **enum_option(MigrationReason),
                       help="replaced (name the source) or not_working")
    chmig.add_argument("--source-license-server-id", help="the source license server's ID (reason replaced)")
    _purchase_options(chmig)
    flags_after_subcommands(parser, "--json", "--csv")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """As parser().parse_args, except that ``clock -1d`` reaches the server (which refuses it:
    CLOCK_BACKWARDS) instead of reading as an unknown option."""
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    takes_value = {flag for a in p._actions if a.option_strings and a.nargs is None and a.const is None
                   for flag in a.option_strings}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):       # the top-level options, up to the subcommand
        i += 2 if argv[i] in takes_value else 1
    if argv[i:i + 1] == ["clock"] and i + 1 < len(argv) and re.fullmatch(r"-\d.*", argv[i + 1]):
        argv.insert(i + 1, "--")
    return p.parse_args(argv)


async def _license_server(reactor, args):
    secret = read_secret(args.credential)
    conn = await connect(reactor, args.server, args.connect_timeout, args.timeout)
    await conn.hello_admin(secret)
    return conn


async def command(reactor, args) -> None:
    if args.command == "clearinghouse":
        await clearinghouse_command(args)
        return
    if args.command == "sbs" and args.action == "make-add-pack":
        emit(make_add_pack(args), args.json, lambda d: print(f"add pack {d['id']} (+{args.size}) written to {args.disk}"))
        return
    conn = await _license_server(reactor, args)
    try:
        await _admin_command(conn, args)
    finally:
        await conn.close()


async def _admin_command(conn, args) -> None:
    c = args.command
    if c == "status":
        emit(await conn.request("status"), args.json, _print_status)
    elif c == "terminal-servers":
        if args.action is None:
            result = await conn.request("list_terminal_servers")
        elif args.name is None:
            raise TslsError(Code.BAD_REQUEST, f"terminal-servers {args.action} needs a NAME")
        else:
            op = {"register": "register_terminal_server", "group-add": "group_add", "group-remove": "group_remove"}
            result = await conn.request(op[args.action], name=args.name)
            if args.action == "register" and args.secret_file:
                write_secret(args.secret_file, result.pop("secret"))
                result["secret_file"] = args.secret_file
        emit(result, args.json, _print_terminal_servers)
    elif c == "products":
        await _products_command(conn, args)
    elif c == "sbs":
        await _sbs_command(conn, args)
    elif c == "policy":
        policies = {}
        if args.security_group is not None:
            policies["security_group"] = args.security_group == "on"
        if args.prevent_upgrade is not None:
            policies["prevent_upgrade"] = args.prevent_upgrade == "on"
        emit(await conn.request("set_policy", **policies), args.json, _print_terminal_servers)
    elif c == "activate":
        if args.telephone:
            result = await conn.request("activate", method="telephone", license_server_id=args.telephone[0],
                                        certificate=args.telephone[1])
        else:
            result = await conn.request("activate", method="automatic", contact=_contact(args))
        emit(result, args.json, _print_activation)
    elif c == "reactivate":
        emit(await conn.request("reactivate", reason=args.reason, contact=_contact(args)), args.json, _print_activation)
    elif c == "deactivate":
        request = {"local": True, "confirm": args.yes} if args.local else {}
        emit(await conn.request("deactivate", **request), args.json, _print_activation)
    elif c == "install":
        request = {"key_pack_id": args.key_pack_id} if args.key_pack_id else {"purchase": _purchase(args)}
        emit(await conn.request("install_key_pack", **request), args.json,
             lambda p: _print_key_packs([p]))
    elif c == "recover":
        emit(await conn.request("recover", purchase=_purchase(args)), args.json,
             lambda r: _print_key_packs(r["key_packs"]))
    elif c == "convert":
        emit(await conn.request("convert_cals", key_pack_id=args.key_pack_id, count=args.count), args.json,
             lambda r: _print_key_packs([p for p in (r["from"], r["key_pack"]) if p]))
    elif c == "rebuild":
        emit(await conn.request("rebuild_database", confirm=args.yes), args.json, _print_rebuild)
    elif c == "migrate":
        emit(await _migrate(conn, args), args.json, _print_migration)
    elif c == "keypacks":
        emit(await conn.request("list_key_packs"), args.json, _print_key_packs)
    elif c == "licenses":
        fields = {k: getattr(args, k) for k in ("hwid", "machine", "user", "terminal_server", "key_pack_id",
                                                 "product_version", "kind", "status") if getattr(args, k)}
        await _list_rows(conn, "list_licenses", fields, LICENSE_COLUMNS, args)
    elif c == "revoke":
        if args.user:
            result = await conn.request("revoke", user=args.user)
        elif args.license_id is None:
            raise TslsError(Code.BAD_REQUEST, "name the license to revoke (its ID, from tsls-admin licenses)")
        else:
            result = await conn.request("revoke", license_id=args.license_id)
        emit(result, args.json, lambda r: print(r["message"]))
    elif c == "clock":
        result = await conn.request("set_clock", to=args.to) if args.to else {"now": (await conn.request("status"))["now"]}
        emit(result, args.json, lambda r: print(f"lab time: {r['now']}"))
    elif c == "events":
        fields = {k: getattr(args, k) for k in ("event_id", "terminal_server", "hwid", "user", "license_id", "since")
                  if getattr(args, k) is not None}
        if args.follow:
            await _follow(conn, args, fields)
        else:
            await _list_rows(conn, "list_events", fields, EVENT_COLUMNS, args, newest_first=True)
    elif c == "console":
        link = await conn.request("console_link", role="viewer" if args.viewer else "admin")
        emit(link, args.json, lambda r: print(f"open this link in a browser (once, within {r['expires_in'] // 60} "
                                              f"minutes; {r['role']} session):\n{r['url']}"))
    elif c == "cal-usage":
        report = await conn.request("cal_usage_report")
        if args.csv:
            rows_out(report["entries"], CAL_USAGE_COLUMNS, "csv")
        else:
            emit(report, args.json, _print_cal_usage)
    elif c == "role":
        emit(await conn.request("set_role", role=args.scope), args.json, lambda r: print(f"scope: {r['scope']}"))
    elif c == "usage":
        fields = {k: _date(getattr(args, k)) for k in ("start", "end") if getattr(args, k)}
        report = await conn.request("usage_report", **fields)
        if args.csv:
            rows_out(report["per_day"], [("day", "DAY"), ("users", "USERS")], "csv")
        else:
            emit(report, args.json, _print_usage)


PRODUCT_COLUMNS = [("name", "PRODUCT"), ("server", "SERVER"), ("mode", "MODE"), ("per_server_licenses", "PER SERVER"),
                   ("connections", "CONNECTIONS"), ("seat_licenses", "PER SEAT CALS"), ("seats_assigned", "ASSIGNED"),
                   ("switched_at", "SWITCHED")]


async def _products_command(conn, args) -> None:
    a, name = args.action, args.name
    if a not in ("list", "clients", "history") and not name:
        raise TslsError(Code.BAD_REQUEST, f"products {a} needs a product NAME")
    if a == "add":
        if not args.product_server:
            raise TslsError(Code.BAD_REQUEST, "products add needs --on SERVER, the server the product runs on")
        result = await conn.request("add_product", name=name, server=args.product_server,
                                    per_server_licenses=args.per_server)
    elif a == "licenses":
        result = await conn.request("add_product_licenses", product=name, per_server=args.per_server, seats=args.seats)
    elif a == "switch":
        result = await conn.request("switch_to_per_seat", product=name, confirm=args.yes)
    elif a == "switch-back":
        result = await conn.request("switch_to_per_server", product=name)
    elif a == "clients":
        rows_out(await conn.request("list_seat_clients"), [("product", "PRODUCT"), ("hwid", "CLIENT (HWID)"),
                                                            ("licensed_by", "BY"), ("assigned_at", "SINCE")], _fmt(args))
        return
    elif a == "history":
        rows_out(await conn.request("product_history"), [("at", "AT"), ("message", "PURCHASE HISTORY")], _fmt(args))
        return
    else:
        result = await conn.request("list_products")

    def show(r):
        table(r["products"], PRODUCT_COLUMNS)
        print(f"\n{r['suite']['name']} suite CALs: {r['suite']['licenses']} ({r['suite']['assigned']} assigned)")
    emit(result, args.json, show)


def make_add_pack(args) -> dict:
    """Make a Client Add Pack 'disk': a file holding its identity. Applying it writes back the record
    of its use, as the real disk did [seed 001]."""
    import secrets

    from tsls.core.perseat import add_pack_id
    if not args.disk or not args.size:
        raise TslsError(Code.BAD_REQUEST, "make-add-pack needs --size N and --disk FILE")
    disk = {"id": add_pack_id(args.size, secrets.token_hex(4).upper()), "used": None}
    fd = os.open(args.disk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(disk, f, indent=1)
    return disk


async def _sbs_command(conn, args) -> None:
    if args.action == "apply":
        if not args.disk:
            raise TslsError(Code.BAD_REQUEST, "sbs apply needs --disk FILE (made by sbs make-add-pack)")
        try:
            with open(args.disk) as f:
                disk = json.load(f)
        except (OSError, ValueError) as e:
            raise TslsError(Code.BAD_ADD_PACK, f"cannot read the add pack disk {args.disk}: {e}") from None
        if not isinstance(disk, dict):
            raise TslsError(Code.BAD_ADD_PACK, f"{args.disk} is not an add pack disk")
        result = await conn.request("sbs_apply_add_pack", pack=disk.get("id"), used=disk.get("used"))
        disk["used"] = result["add_pack"]["used"]
        write_private(args.disk, json.dumps(disk, indent=1))
    else:
        result = await conn.request("sbs_setup" if args.action == "setup" else "sbs_status")
    emit(result, args.json, lambda r: print(f"edition: {r['edition']}; client licenses: {r['client_licenses']} "
                                            f"(at most {r['maximum']})"))


async def _list_rows(conn, op, fields, columns, args, newest_first=False) -> None:
    """A list, page by page (its cursor): every row for --csv/--json (streamed as the pages come) or
    --all; else the first (or, for events, the newest) --limit rows, SHOWN in a table by default,
    and a line on stderr saying how many there are in all and how to see them."""
    fmt = _fmt(args)
    limit = args.limit
    if limit is not None and limit < 1:
        raise TslsError(Code.BAD_REQUEST, "--limit must be at least 1")
    if limit is None and fmt == "table" and not args.all:
        limit = SHOWN
    out = RowStream(columns, fmt)
    total = 0
    if limit is None:
        background()
        async for page in conn.pages(op, **fields):
            total = page["total"]
            out.write(page["items"])
    else:
        held: list = []
        order = {"newest_first": True} if newest_first else {}
        async for page in conn.pages(op, page_size=min(limit, connection.PAGE_SIZE), **order, **fields):
            total = page["total"]
            held.extend(page["items"])
            if len(held) >= limit:
                break
        held = held[:limit]
        if newest_first:
            held.reverse()
        out.write(held)
    out.close()
    if fmt == "table" and out.count < total:
        which = "newest " if newest_first else ""
        print(f"showing the {which}{out.count:,} of {total:,}: --limit N for more, --all for every one, "
              "--csv or --json to export them all", file=sys.stderr)


EXPORT_NICENESS = 19       # an export's CPU priority: the lowest


def background() -> None:
    """Before an export of a whole list (every row, for --csv, --json or --all): lower this process's
    CPU priority to the lowest, where the system allows it. Where the license server shares the
    machine, the export then takes only the CPU that the daemon and its terminal servers leave, and
    grants keep their pace (bench.readstall, docs/performance.md); on an idle machine it runs as fast."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, EXPORT_NICENESS)
    except (AttributeError, OSError):
        pass


def _fmt(args) -> str:
    return "json" if args.json else "csv" if args.csv else "table"


async def _follow(conn, args, fields) -> None:
    """Print the log so far, then each new event as the server pushes it, until interrupted."""
    seen = set()

    def show(event):
        if event["id"] in seen or any(event.get(k) != v for k, v in fields.items() if k != "since"):
            return
        seen.add(event["id"])
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            print(f"{event['at']}  {event['event_id']:>5}  {event['name']:<20} {event['message']}", flush=True)

    conn.on_event = show
    await conn.request("follow_events")
    for event in await conn.request("list_events", limit=args.limit or SHOWN, **fields):
        show(event)
    await conn.closed
    if conn.server_error is not None:       # e.g. TOO_SLOW: this follower fell too far behind and was dropped
        raise conn.server_error


async def clearinghouse_command(args) -> None:
    from tsls.clearinghouse.client import ClearinghouseClient
    from tsls.core.model import Purchase

    c = args.ch_command
    operator = (read_secret(args.operator_credential)
                if c in ("sell", "purchases", "issue", "migrate") or (c == "activate" and args.again) else None)
    ch = ClearinghouseClient(args.clearinghouse, operator_secret=operator)
    if c == "sell":
        body = _purchase(args, sale=True)
        purchase = None
        if body.get("retail_code") is not None or body["program"] != "retail":
            purchase = Purchase.from_json(body)
        result = await ch.sell(purchase if purchase is not None else body)
        emit(result, args.json, _print_sale)
    elif c == "purchases":
        emit(await ch.list_purchases(), args.json, _print_purchases)
    elif c == "migrate":
        result = await ch.migrate_for(args.license_server_id, _purchase(args), args.reason,
                                      args.source_license_server_id)
        emit(result, args.json, lambda r: print(f"license key pack ID: {grouped(r['key_pack']['key_pack_id'])}\n"
                                                f"retired on the source: {', '.join(r['source_key_packs']) or '-'}\n"
                                                f"type it in with: tsls-admin migrate --route telephone --key-pack-id "
                                                f"{grouped(r['key_pack']['key_pack_id'])} ..."))
    elif c == "issue":
        result = await ch.issue_key_pack(args.license_server_id, _purchase(args))
        emit(result, args.json, lambda r: print(f"license key pack ID: {grouped(r['key_pack']['key_pack_id'])}\n"
                                                f"{r['key_pack']['quantity']} {r['key_pack']['cal_type']} CALs for "
                                                f"Windows Server {r['key_pack']['product_version']}\n"
                                                f"type it in with: tsls-admin install --key-pack-id "
                                                f"{grouped(r['key_pack']['key_pack_id'])}"))
    elif c == "activate":
        result = await ch.activate(args.product_id, _contact(args), "telephone", again=args.again)
        emit(result, args.json, lambda r: print(f"license server ID: {grouped(r['license_server_id'])}\n"
                                                f"certificate code:  {grouped(r['certificate'])}\n"
                                                f"type them in with: tsls-admin activate --telephone "
                                                f"{r['license_server_id']} {r['certificate']}"))


def grouped(code: str) -> str:
    """A 35-character code as it is read out: 7 groups of 5 (typed back with or without the hyphens)."""
    from tsls.core.phonecodes import grouped as groups
    return groups(code) if isinstance(code, str) and len(code) == 35 else code


def _print_status(s: dict) -> None:
    a = s["activation"]
    print(f"product ID:        {s['product_id']}")
    if "server_version" in s:
        print(f"server version:    Windows Server {s['server_version']}")
    if "scope" in s:
        print(f"scope:             {s['scope']}")
    print(f"activation:        {a['status']}" + (f" ({a['method']}, {a['activated_at']})" if a["activated_at"] else ""))
    print(f"license server ID: {a['license_server_id'] or '-'}")
    print(f"lab time:          {s['now']}")
    problem = a.get("problem")
    if problem:
        print(f"problem:           {problem['code']} at {problem['at']}: {problem['message']}")
    for i, step in enumerate(a.get("way_out") or [], 1):
        print(("way out:           " if i == 1 else "                   ") + f"{i}. {step}")
    print()
    _print_key_packs(s["key_packs"])
    if s["licenses"]:
        print()
        table([{"what": k.replace(":", " "), "count": v} for k, v in sorted(s["licenses"].items())],
              [("what", "LICENSES"), ("count", "COUNT")])


def _print_terminal_servers(r: dict) -> None:
    if "secret_file" in r:
        print(f"terminal server {r['name']} registered; its secret is in {r['secret_file']} (mode 0600)")
        print(f"start it with: tsls-ts --name {r['name']} --secret-file {r['secret_file']} ...")
        return
    if "secret" in r:
        print(f"terminal server {r['name']} registered; its secret (shown once): {r['secret']}")
        print(f"start it with: tsls-ts --name {r['name']} --secret-file FILE ...  (FILE holding that secret)")
        return
    print(f"security group policy: {'on' if r['security_group_policy'] else 'off'}")
    if "prevent_upgrade_policy" in r:
        print(f"prevent license upgrade: {'on' if r['prevent_upgrade_policy'] else 'off'}")
    table(r["terminal_servers"], [("name", "TERMINAL SERVER"), ("group", "IN GROUP"), ("registered_at", "REGISTERED")])


def _print_activation(a: dict) -> None:
    print(f"activation: {a['status']}; license server ID: {a['license_server_id'] or '-'}")


def _print_key_packs(packs: list) -> None:
    rows = [{**p, "program": p["purchase"]["program"]} for p in packs]
    table(rows, KEY_PACK_COLUMNS)


def _print_rebuild(r: dict) -> None:
    print(f"deleted {r['deleted_key_packs']} key pack(s) and {r['deleted_licenses']} issued license(s); "
          f"reinstalled by recovery:")
    _print_key_packs(r["key_packs"])
    for f in r["not_recovered"]:
        print(f"not recovered: {f['purchase']}: {f['error']['code']}: {f['error']['message']}")


async def _migrate(conn, args) -> dict:
    """The wizard's Migrate CALs, driven from here: read the running source's license server ID, ask this
    (target) server to migrate, then remove the migrated key packs from the source (event 89 there), or,
    when that fails, put it on record here (event 90). A source not running: event 93 here."""
    from twisted.internet import reactor

    source = {"license_server_id": args.source_license_server_id, "os": args.source_os, "running": False}
    src = None
    if args.source_server:
        try:
            src = await connect(reactor, args.source_server, args.connect_timeout, args.timeout)
            await src.hello_admin(read_secret(args.source_credential or args.credential))
            status = await src.request("status")
            source.update(license_server_id=status["activation"]["license_server_id"], running=True)
        except TslsError as e:
            if e.code not in (Code.SERVER_UNREACHABLE, Code.SERVER_TIMEOUT):
                raise
            src = None
            if not (args.source_license_server_id and args.source_os):
                raise TslsError(Code.SOURCE_UNREACHABLE, f"the source license server does not answer ({e.message}): "
                                "name it offline with --source-license-server-id and --source-os") from None
    try:
        request = {"key_pack_id": args.key_pack_id} if args.key_pack_id else {"purchase": _purchase(args)}
        result = await conn.request("migrate_cals", reason=args.reason, route=args.route,
                                    source={k: v for k, v in source.items() if v is not None}, **request)
        if src is not None:
            reference = result["key_pack"]["purchase"]
            ids = [p["key_pack_id"] for p in await src.request("list_key_packs")
                   if p["purchase"] == reference and p.get("retired_at") is None]
            try:
                result["source_removed"] = await src.request("uninstall_key_packs", key_pack_ids=ids)
            except TslsError as e:
                await conn.request("source_uninstall_failed", source=source["license_server_id"], key_pack_ids=ids,
                                   message=e.message)
                result["source_removed"] = None
                result["source_error"] = e.to_json()
        return result
    finally:
        if src is not None:
            await src.close()


def _print_migration(r: dict) -> None:
    _print_key_packs([r["key_pack"]])
    if r.get("source_removed"):
        print(f"removed from the source: {', '.join(p['key_pack_id'] for p in r['source_removed'])} (event 89 there)")
    elif r.get("source_error"):
        print(f"NOT removed from the source: {r['source_error']['message']} (event 90 here); remove them there")
    elif not r.get("source_running"):
        print("the source is not running: its CALs could not be removed; the move is on record (event 93 here)")


def _print_purchases(purchases: list) -> None:
    table(purchases, [("reference", "PURCHASE"), ("product_version", "VERSION"), ("cal_type", "TYPE"),
                      ("quantity", "QUANTITY"), ("installed", "INSTALLED"), ("bound_to", "BOUND TO")])


def _print_sale(p: dict) -> None:
    _print_purchases([p])
    if p["program"] == "retail":
        print(f"\nretail license code: {p['retail_code']}\ninstall it with: tsls-admin install --retail {p['retail_code']}")


CAL_USAGE_COLUMNS = [("user", "USER"), ("issued_at", "ISSUED"), ("expires_at", "EXPIRES"),
                     ("beyond_installed", "BEYOND INSTALLED")]


def _print_cal_usage(r: dict) -> None:
    print(f"CAL Usage report, {r['generated_at']}; scope: {r['scope']}; license server: Windows Server "
          f"{r['server_version']}")
    if not r["tracked"]:
        print("this license server tracks no Per User CALs (a workgroup, or a version before 2008)")
    print(f"Per User CALs installed: {r['per_user_cals_installed']}   issued: {r['per_user_cals_issued']}   "
          f"over-allocated: {r['over_allocated']}")
    print()
    table(r["entries"], CAL_USAGE_COLUMNS)


def _print_usage(r: dict) -> None:
    if r["start"] is None:
        print("Per User usage: no Per User logon yet")
    elif not r["users_seen"]:
        print(f"Per User usage {r['start']} .. {r['end']}: no Per User logon in this period")
    else:
        print(f"Per User usage {r['start']} .. {r['end']}")
    print(f"Per User CALs installed: {r['per_user_cals_installed']}   users seen: {r['users_seen']}   "
          f"peak per day: {r['peak_users_per_day']}   over installed: {r['users_over_installed']}")
    print()
    table(r["users"], [("user", "USER"), ("logons", "LOGONS"), ("last_seen", "LAST SEEN")])


def main(argv=None) -> int:
    args = parse_args(argv)
    return run(lambda reactor: command(reactor, args), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
