"""``tsls``: run the daemons.

    tsls lab            the license server and the mock Clearinghouse together, on loopback
    tsls lab run FILE   play a lab file against real daemons (tsls lab check FILE: validate it only)
    tsls server         the license server alone
    tsls clearinghouse  the mock Clearinghouse alone
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver, textFileLogObserver

DEFAULT_DATA = "tsls-data"
DEFAULT_LISTEN = "tcp:4870:interface=127.0.0.1"
DEFAULT_CH_LISTEN = "tcp:4880:interface=127.0.0.1"
DEFAULT_CH_URL = "http://127.0.0.1:4880"
DEFAULT_CONSOLE_LISTEN = "tcp:4871:interface=127.0.0.1"

log = Logger()


def _parser() -> argparse.ArgumentParser:
    from tsls.files import default_data_dir

    DEFAULT_DATA = default_data_dir()           # noqa: N806 ($TSLS_DATA, else tsls-data)
    parser = argparse.ArgumentParser(prog="tsls", description="Terminal Server license server simulator daemons.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--data-dir", default=DEFAULT_DATA, help="where the SQLite databases live (default: $TSLS_DATA, else tsls-data; now %(default)s)")
        p.add_argument("--log-json", action="store_true", help="log JSON events, one per line, instead of text")
        p.add_argument("--initialise", action="store_true",
                       help="make a new database in an existing empty (zero-length) file instead of refusing it")

    def server_options(p):
        p.add_argument("--log-every-event", action="store_true",
                       help="log a line for every event of the license server; by default the routine ones (licenses "
                            "and CALs issued, renewed, expired; Per User logons) are summed up in a line a minute")
        p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ENDPOINT",
                       help="the license server's Twisted endpoint; tcp:0:... takes a free port, which the ready "
                            "line shows (default: %(default)s)")
        p.add_argument("--seed", help="seed for CAL lifetimes, so a run can be replayed exactly")
        p.add_argument("--server-version", metavar="VERSION",
                       help="the license server's own Windows version, 2003 to 2025 (kept in its database; default: "
                            "the one kept, else 2025). It hosts CALs of its version and older (docs/versions.md)")
        p.add_argument("--clearinghouse-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="how long the license server waits for an answer from the Clearinghouse; a call that "
                            "gets none stays pending and completes when asked again (default: %(default)s)")
        p.add_argument("--refer-to", action="append", default=[], metavar="ENDPOINT",
                       help="another license server this one refers a request to when it has no CAL of the kind "
                            "asked for (repeat for several; the answer carries them as referral; docs/diagnoser.md)")
        p.add_argument("--publish-to", metavar="FILE",
                       help="publish this license server in a simulated directory (a JSON file) that session hosts "
                            "discover with tsls-ts --directory FILE; a workgroup-scope server is not published")
        p.add_argument("--lab-clock", action="store_true",
                       help="run on a lab clock that tsls-admin clock can move forward (+90d, an ISO date)")
        p.add_argument("--lab-start", metavar="DATE",
                       help="a lab clock that stands still at DATE (an ISO date) except when tsls-admin clock moves "
                            "it, so a replayed lab sees the same dates (implies --lab-clock; tsls lab run uses it)")

    def database_options(p):
        p.add_argument("--database", metavar="DSN",
                       help="a PostgreSQL database that several daemons share, as postgresql://USER@HOST/DBNAME "
                            "(default: SQLite in DATA_DIR). No password in it: see --database-password-file")
        p.add_argument("--database-password-file", metavar="FILE",
                       help="read the database password from FILE (or set PGPASSWORD, or use a pgpass file)")

    lab = sub.add_parser("lab", help="run the license server and the mock Clearinghouse; "
                         "tsls lab run FILE / tsls lab check FILE play or validate a lab file (docs/labfile.md)")
    common(lab)
    server_options(lab)
    lab.add_argument("--clearinghouse-listen", default=DEFAULT_CH_LISTEN, metavar="ENDPOINT",
                     help="the mock Clearinghouse's Twisted endpoint; tcp:0:... takes a free port, which the lab's "
                          "license server is given and the ready line shows (default: %(default)s)")
    lab.add_argument("--console-listen", default=DEFAULT_CONSOLE_LISTEN, metavar="ENDPOINT",
                     help="the web console and /metrics (docs/console.md); 'none' for no console "
                          "(default: %(default)s)")

    server = sub.add_parser("server", help="run the license server")
    common(server)
    server_options(server)
    server.add_argument("--clearinghouse-url", default=DEFAULT_CH_URL, metavar="URL",
                        help="where the license server reaches the Clearinghouse (default: %(default)s)")
    server.add_argument("--console-listen", metavar="ENDPOINT",
                        help=f"serve the web console and /metrics on this endpoint, e.g. {DEFAULT_CONSOLE_LISTEN} "
                             "or an ssl: endpoint (docs/console.md; default: no console)")
    database_options(server)
    server.add_argument("--sweep-every", type=float, default=60.0, metavar="SECONDS",
                        help="expire what is due this often even when nobody logs on (default: %(default)s); "
                             "on a shared database only one daemon at a time does")

    check = sub.add_parser("check", help="check the license server database's invariants (safe while it runs); "
                                         "with --clearinghouse, the whole lab's")
    check.add_argument("--data-dir", default=DEFAULT_DATA,
                       help="the data directory whose license-server.sqlite is checked (default: %(default)s)")
    check.add_argument("--db", help="the database file (default: DATA_DIR/license-server.sqlite)")
    database_options(check)
    check.add_argument("--clearinghouse", metavar="DB",
                       help="a Clearinghouse database: also check its books and, across it and every --server "
                            "database, that no purchase circulates more CALs than were bought unless on record")
    check.add_argument("--server", action="append", metavar="DB",
                       help="a license server database of the lab (repeat for each; default: --db)")

    certs = sub.add_parser("make-certs", help="make a lab CA and a TLS certificate for 127.0.0.1 (docs/tls.md)")
    certs.add_argument("--dir", default=os.path.join(DEFAULT_DATA, "tls"),
                       help="where to write server.pem and ca/ca.pem (default: %(default)s)")

    ch = sub.add_parser("clearinghouse", help="run the mock Clearinghouse")
    common(ch)
    ch.add_argument("--listen", default=DEFAULT_CH_LISTEN, metavar="ENDPOINT",
                    help="the Clearinghouse's Twisted endpoint; tcp:0:... takes a free port, which the ready line "
                         "shows (default: %(default)s)")
    ch.add_argument("--lab-clock-file", metavar="PATH",
                    help="read the lab time from PATH, an ISO date another process writes (tsls lab run does)")
    return parser


def ready_address(port, endpoint: str) -> dict:
    """What a client needs to reach a bound listening port: host and port (or a unix socket's path),
    whether it speaks TLS, and the client endpoint string (tsls-admin/tsls-ts --server)."""
    address = port.getHost()
    tls = endpoint.split(":", 1)[0] == "ssl"
    if not hasattr(address, "port"):                    # a unix socket
        path = os.fsdecode(address.name)
        return {"path": path, "tls": tls, "endpoint": f"unix:{path}"}
    host = address.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return {"host": host, "port": address.port, "tls": tls,
            "endpoint": f"{'tls' if tls else 'tcp'}:{host}:{address.port}"}


def http_address(port, endpoint: str) -> dict:
    """ready_address for an HTTP listener: its URL instead of a client endpoint string."""
    address = ready_address(port, endpoint)
    address.pop("endpoint")
    if "host" in address:
        host = f"[{address['host']}]" if ":" in address["host"] else address["host"]
        address["url"] = f"{'https' if address['tls'] else 'http'}://{host}:{address['port']}"
    return address


def _console_endpoint(value: str | None) -> str | None:
    return None if value in (None, "", "none") else value


class Daemons:
    """The services one ``tsls`` daemon command runs, not yet started. The Clearinghouse, when there
    is one, starts first: in the lab, the license server's client is pointed at the port it bound
    (so ``--clearinghouse-listen tcp:0:...`` works) before the license server starts."""

    def __init__(self) -> None:
        self.clearinghouse = self.clearinghouse_listen = None
        self.license_server = self.license_listen = self.console_listen = None
        self.clearinghouse_client = None


def build(reactor, args) -> Daemons:
    from tsls.clearinghouse.client import ClearinghouseClient
    from tsls.clearinghouse.service import make_service as make_clearinghouse
    from tsls.server.service import LicenseServerService

    from tsls.files import private_directory

    private_directory(args.data_dir)
    daemons = Daemons()
    # In the lab, the Clearinghouse reads the license server's lab clock, so certificates age with it.
    lab_clock = _lab_clock(reactor, args)
    if args.command in ("lab", "clearinghouse"):
        listen = args.clearinghouse_listen if args.command == "lab" else args.listen
        daemons.clearinghouse = make_clearinghouse(reactor, listen, os.path.join(args.data_dir, "clearinghouse.sqlite"),
                                                   clock=lab_clock, initialise=args.initialise)
        daemons.clearinghouse_listen = listen
    if args.command in ("lab", "server"):
        # The lab's URL is set once the Clearinghouse has bound its port (start, below).
        client = ClearinghouseClient(args.clearinghouse_url if args.command == "server" else "http://127.0.0.1:0",
                                     timeout=args.clearinghouse_timeout)
        database = getattr(args, "database", None)
        daemons.console_listen = _console_endpoint(args.console_listen)
        daemons.license_server = LicenseServerService(
            reactor, args.listen, database or os.path.join(args.data_dir, "license-server.sqlite"),
            client, seed=args.seed, lab_clock=lab_clock, initialise=args.initialise,
            credential_path=os.path.join(args.data_dir, "admin.secret") if database else None,
            database_password=_database_password(args), console_listen=daemons.console_listen,
            sweep_every=getattr(args, "sweep_every", 60.0), version=_server_version(args.server_version), referrals=tuple(args.refer_to),
            publish_to=getattr(args, "publish_to", None),
            log_every_event=getattr(args, "log_every_event", False))
        daemons.license_listen = args.listen
        daemons.clearinghouse_client = client
    return daemons


async def start(top, daemons: Daemons, args) -> dict:
    """Start the services under ``top`` (a running MultiService) in order; return the ready line's
    content once every listener is bound. Fails if one cannot listen."""
    from twisted.internet import defer

    ready = {"event": "ready", "command": f"tsls {args.command}", "pid": os.getpid(),
             "data_dir": os.path.abspath(args.data_dir)}
    if daemons.clearinghouse is not None:
        daemons.clearinghouse.setServiceParent(top)
        port = await next(_listeners(daemons.clearinghouse)).listening
        log.info("clearinghouse listening on {address}", address=port.getHost())
        ready["clearinghouse"] = http_address(port, daemons.clearinghouse_listen)
        if args.command == "lab":
            daemons.clearinghouse_client.base_url = ready["clearinghouse"]["url"]
    if daemons.license_server is not None:
        service = daemons.license_server
        service.setServiceParent(top)
        listeners = [service.listener] + ([service.console_listener] if service.console is not None else [])
        try:    # wait for all, so a second failure is not left unhandled
            ports = await defer.gatherResults([listener.listening for listener in listeners], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        log.info("license server listening on {address}", address=ports[0].getHost())
        ready["license_server"] = {**ready_address(ports[0], daemons.license_listen),
                                   "clearinghouse_url": daemons.clearinghouse_client.base_url}
        if len(ports) > 1:
            log.info("console listening on {address}", address=ports[1].getHost())
            ready["console"] = http_address(ports[1], daemons.console_listen)
    return ready


def _lab_clock(reactor, args):
    from tsls.core.labtime import parse_date
    from tsls.labclock import FileClock, LabClock, StillClock

    if getattr(args, "lab_clock_file", None):
        return LabClock(FileClock(args.lab_clock_file, reactor))
    if getattr(args, "lab_start", None):
        return LabClock(StillClock(parse_date(args.lab_start), reactor))
    return LabClock(reactor) if getattr(args, "lab_clock", False) else None


def _database_password(args) -> str | None:
    """The password of the PostgreSQL database, from the file named (never from the command line)."""
    path = getattr(args, "database_password_file", None)
    if path is None:
        return None
    from tsls.sqlite import StoreError
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise StoreError(f"cannot read the database password file {path}: {e.strerror}") from None


def _server_version(text):
    from tsls.core.model import ProductVersion

    return None if text is None else ProductVersion.parse(text)


def check(args) -> int:
    from tsls.server.check import check_lab, check_ledger

    if args.database:
        return check_database(args)
    paths = args.server or [args.db or os.path.join(args.data_dir, "license-server.sqlite")]
    for path in paths + ([args.clearinghouse] if args.clearinghouse else []):
        if not os.path.exists(path):
            print(f"tsls: no database at {path}", file=sys.stderr)
            return 2
    failed = False
    for path in paths:
        problems = check_ledger(path)
        for p in problems:
            print(p)
        print(f"{path}: {'ledger invariants hold' if not problems else f'{len(problems)} problems'}")
        failed = failed or bool(problems)
    if args.clearinghouse:
        problems = check_lab(args.clearinghouse, paths)
        for p in problems:
            print(p)
        print(f"lab ({args.clearinghouse} and {len(paths)} license servers): "
              + ("no purchase circulates more CALs than were bought" if not problems else f"{len(problems)} problems"))
        failed = failed or bool(problems)
    return 1 if failed else 0


def check_database(args) -> int:
    from tsls.sqlite import StoreError
    try:
        from tsls.server.pgstore import check_ledger_pg, safe_dsn
        problems = check_ledger_pg(args.database, _database_password(args))
    except StoreError as e:
        print(f"tsls: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print(f"{safe_dsn(args.database)}: {'ledger invariants hold' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def _stdout_gone() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv=None) -> int:
    from tsls.files import private_umask

    private_umask()             # every file and directory tsls makes is its owner's alone
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lab"] and argv[1:2] and argv[1] in ("run", "check"):
        # The lab-file runner is a client of the daemons (it starts them and drives simulated session
        # hosts against them), so it lives in clients/ (docs/architecture.md); only its command is here.
        from clients.labfile.cli import main as lab_file
        try:
            return lab_file(argv[1:])
        except BrokenPipeError:         # `tsls lab check FILE | head`: the reader had enough, not an error
            _stdout_gone()
            return 0
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args)
    if args.command == "make-certs":
        from tsls.certs import make_certs
        paths = make_certs(args.dir)
        print(f"server key and certificate: {paths['server']} (mode 0600)\nlab CA: {paths['ca']}")
        return 0
    from twisted.application.service import MultiService
    from twisted.internet import defer, reactor

    from tsls.errors import TslsError
    from tsls.files import ExposedError
    from tsls.sqlite import StoreError

    observer = jsonFileLogObserver(sys.stdout) if args.log_json else textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        daemons = build(reactor, args)
    except (StoreError, ExposedError) as e:
        print(f"tsls: error {e.code.value}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"tsls: error DISK_FULL: the disk holding {e.filename or args.data_dir} is full: free some space and "
              "start again", file=sys.stderr)
        return 1
    except TslsError as e:
        print(f"tsls: {e.message}", file=sys.stderr)
        return 2
    top = MultiService()
    failed = []

    def announce(ready):
        # The ready line: one line of JSON that starts with {"event": "ready"} (README, "Two commands").
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()

    def cannot_listen(failure):
        failed.append(failure.getErrorMessage())
        if reactor.running:
            reactor.stop()

    def run():
        from tsls.server.service import tune_gc

        top.startService()
        tune_gc()
        defer.ensureDeferred(start(top, daemons, args)).addCallbacks(announce, cannot_listen)

    reactor.callWhenRunning(run)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    if failed:
        print(f"tsls: cannot listen: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _listeners(service):
    from tsls.listener import Listener
    for child in getattr(service, "services", []):
        if isinstance(child, Listener):
            yield child
        yield from _listeners(child)


if __name__ == "__main__":
    sys.exit(main())
