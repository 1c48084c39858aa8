"""``tsls-ts``: a simulated terminal server that logs clients on and gets their licenses.

Each simulated client device keeps the license it was given (like a Windows client's
MSLicensing registry key) and presents it at its next logon. The terminal server keeps its own
state: its grace period, and the lab time it last heard from a license server.

    tsls-ts --name TS01 --version 2003 --mode per_device logon pc1 pc2 pc3
    tsls-ts --name TSU --version 2003 --mode per_user logon --count 10
    tsls-ts --server tcp:127.0.0.1:4870 --server tcp:127.0.0.1:4871 logon pc1   # discovery order
"""
from __future__ import annotations

import argparse
import enum
import json
import os
import time

import attrs
from twisted.internet import defer

from clients.cli import Failed, Interrupted, enum_option, flags_after_subcommands, run
from clients.connection import CONNECT_TIMEOUT, DEFAULT_SERVER, add_timeout_options, connect
from clients.output import emit, table
from tsls.core.labtime import parse_date
from tsls.core.model import CalType, ProductVersion
from tsls.core.diagnoser import Probe, diagnose, not_configured_admission
from tsls.core.licensing import Outcome
from tsls.core.model import iso
from tsls.core.terminal import Admission, AdmittedBy, Grace, grace_days, refused_by_policy, without_license_server
from tsls.errors import Code, TslsError
from tsls.files import default_data_dir, write_private
from tsls.public import hardware_id, read_secret

NOT_CONFIGURED = "not_configured"   # the licensing mode, neither Per Device nor Per User [§9]
REFUSED = 3            # exit status when a logon was refused (the rows are printed all the same)

# A license server that answers with one of these could not license the device; the next one is
# asked, as a terminal server goes down its discovered list [§5, KB301932]. One that cannot be reached,
# or does not answer in time (frozen, stalled), is passed over the same way.
TRY_NEXT = {Code.NO_LICENSE_AVAILABLE, Code.NOT_ACTIVATED, Code.MODE_MISMATCH, Code.SERVER_UNREACHABLE,
            Code.SERVER_TIMEOUT, Code.SHUTTING_DOWN, Code.CONNECTION_LOST, Code.STORAGE_ERROR}
UNAVAILABLE = {Code.SERVER_UNREACHABLE, Code.SERVER_TIMEOUT, Code.SHUTTING_DOWN, Code.CONNECTION_LOST}   # no answer: grace rules apply
TRY_NEXT |= {Code.UPGRADE_PREVENTED, Code.LS_VERSION_TOO_LOW}   # another license server may have the right CALs
GRACE_ADMITS = {Code.UPGRADE_PREVENTED}       # refused under the Prevent License Upgrade policy: grace admits [§3]
ANSWER_TIMEOUT = 10.0    # a terminal server waits this long for a license server before trying the next


class JsonState:
    """A small JSON document on disk, replaced atomically on save."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}

    SAVE_EVERY = 1.0        # seconds between saves as it goes (save_soon)
    _saved_at = None

    def save(self) -> None:
        """Mode 0600 in a directory made 0700: a device store holds license tokens. Written to a
        temporary file, flushed to disk, renamed over the old one: a crash leaves the old or the new."""
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        write_private(self.path, json.dumps(self.data, indent=1, sort_keys=True))
        self._saved_at = time.monotonic()

    def save_soon(self) -> None:
        """Save as it goes: at most once every SAVE_EVERY seconds (a long run is not rewritten at each
        logon); ``save`` at the end or on Ctrl-C writes the rest."""
        if self._saved_at is None or time.monotonic() - self._saved_at >= self.SAVE_EVERY:
            self.save()


class DeviceStore(JsonState):
    """Licenses held by simulated devices: {machine: {product_version: license}}."""

    def get(self, machine: str, version: str) -> dict | None:
        return self.data.get(machine, {}).get(version)

    def put(self, machine: str, version: str, license: dict) -> None:
        self.data.setdefault(machine, {})[version] = license


class ClientKeepsLicense:
    """The device store of a real RDP client: the client keeps its own license and presents it."""

    def get(self, machine: str, version: str) -> None:
        return None

    def put(self, machine: str, version: str, license: dict) -> None:
        pass


class WallClock:
    """The wall clock, as an IReactorTime's ``seconds()``: what the simulator reads unless a test
    gives it another (twisted.internet.task.Clock)."""

    @staticmethod
    def seconds() -> float:
        return time.time()


class TerminalServerState(JsonState):
    """{name: {"grace_started_at", "grace_ended_at", "clock_offset"}} for each simulated server.
    ``clock`` gives the local time its lab time is kept against (default: the wall clock)."""

    def __init__(self, path: str, clock=None) -> None:
        super().__init__(path)
        self.clock = clock or WallClock()

    def grace(self, name: str, version: ProductVersion) -> Grace:
        mine = self.data.get(name, {})
        return Grace(version, mine.get("grace_started_at"), mine.get("grace_ended_at"))

    def keep_grace(self, name: str, grace: Grace) -> None:
        self.data.setdefault(name, {}).update(grace_started_at=grace.started_at, grace_ended_at=grace.ended_at)

    def now(self, name: str) -> int:
        """Lab time as the license server last told it (it may run a lab clock)."""
        return int(self.clock.seconds() + self.data.get(name, {}).get("clock_offset", 0))

    def heard_time(self, name: str, server_now: str) -> None:
        self.data.setdefault(name, {})["clock_offset"] = parse_date(server_now) - self.clock.seconds()


class Verdict(enum.Enum):
    SERVED = "served"        # a license server answered: its outcome says what the device got
    ADMITTED = "admitted"    # no license server licensed it: the terminal server's own rules let it in
    REFUSED = "refused"


@attrs.frozen
class LogonResult:
    """What became of one logon through a simulated terminal server."""

    machine: str
    user: str
    verdict: Verdict
    message: str = ""
    served_by: str | None = None
    outcome: Outcome | None = None          # SERVED: the license server's outcome
    admitted_by: AdmittedBy | None = None   # ADMITTED: its own license, or the grace period
    reason: Code | None = None              # why it got less than a permanent CAL, or was refused
    license: dict | None = None             # the license the device holds afterwards
    grace_days_left: int | None = None

    @classmethod
    def served(cls, machine: str, user: str, server: str, answer: dict) -> "LogonResult":
        return cls(machine, user, Verdict.SERVED, answer["message"], server, Outcome(answer["outcome"]),
                   reason=None if answer["reason"] is None else Code(answer["reason"]), license=answer["license"])

    @classmethod
    def admitted(cls, machine: str, user: str, admission: Admission, held: dict | None, reason: Code) -> "LogonResult":
        return cls(machine, user, Verdict.ADMITTED, admission.message, admitted_by=admission.how, reason=reason,
                   license=held, grace_days_left=admission.grace_days_left)

    @classmethod
    def refused(cls, machine: str, user: str, error: TslsError) -> "LogonResult":
        return cls(machine, user, Verdict.REFUSED, error.message, reason=error.code)

    @property
    def outcome_name(self) -> str:
        """The one word the command prints: the license server's outcome, admitted_license,
        admitted_grace or refused."""
        if self.verdict is Verdict.SERVED:
            return self.outcome.value
        if self.verdict is Verdict.ADMITTED:
            return f"admitted_{self.admitted_by.value}"
        return "refused"

    def row(self) -> dict:
        out = {"machine": self.machine, "user": self.user, "served_by": self.served_by, "license": self.license,
               "reason": None if self.reason is None else self.reason.value, "outcome": self.outcome_name,
               "message": self.message}
        if self.verdict is Verdict.ADMITTED:
            out["grace_days_left"] = self.grace_days_left
        return out


class TerminalServer:
    """One simulated terminal server, with its discovered list of license servers."""

    def __init__(self, reactor, name, version, mode, servers, devices: DeviceStore, state: TerminalServerState,
                 secret: str | None = None, connect_timeout: float | None = CONNECT_TIMEOUT,
                 answer_timeout: float | None = ANSWER_TIMEOUT):
        self.reactor = reactor
        self.connect_timeout, self.answer_timeout = connect_timeout, answer_timeout
        self.secret = secret
        self.name, self.version, self.mode = name, version, mode
        self.servers = servers
        self.devices = devices
        self.state = state
        self.connections: dict = {}

    async def _connection(self, server):
        conn = self.connections.get(server)
        if conn is not None and conn.transport.connected:
            return conn
        conn = await connect(self.reactor, server, self.connect_timeout, self.answer_timeout)
        mode = CalType.PER_DEVICE.value if self.mode == NOT_CONFIGURED else self.mode
        try:
            hello = await conn.hello_terminal_server(self.name, self.version, mode, self.secret)
        except TslsError:
            await conn.close()
            raise
        self.state.heard_time(self.name, hello["now"])
        self.connections[server] = conn
        return conn

    async def logon(self, machine: str, user: str, report: bool = True, held: dict | None = None,
                    hwid: str | None = None) -> dict:
        """``logon_result`` as the row the command prints."""
        result = await self.logon_result(machine, user, report, held, hwid)
        return result.row()

    async def logon_result(self, machine: str, user: str, report: bool = True, held: dict | None = None,
                           hwid: str | None = None) -> "LogonResult":
        """Log a client on. ``held`` is the license the device presents and ``hwid`` its hardware ID
        (an RDP client sends both); by default they come from the simulated device."""
        hwid = hwid or hardware_id(machine)
        held = held or self.devices.get(machine, self.version)
        if self.mode == NOT_CONFIGURED:
            return self._not_configured(machine, user, held)
        refusal = None
        for server in self.servers:
            try:
                conn = await self._connection(server)
                try:
                    answer = await conn.request("logon", hwid=hwid, machine=machine, user=user,
                                                license=held and held["token"])
                except TslsError as e:
                    # The device holds a license this license server cannot read: another one issued it (its
                    # first went down), or this one was rebuilt (a new database). A terminal server treats a
                    # license it cannot validate as none, and the device is licensed afresh [§9, FAQ08].
                    if e.code is not Code.INVALID_LICENSE or not held:
                        raise
                    answer = await conn.request("logon", hwid=hwid, machine=machine, user=user)
            except TslsError as e:
                refusal = e
                if e.code in TRY_NEXT:
                    continue
                break
            if answer.get("referral") and (answer["license"] or {}).get("kind") != "permanent":
                referred = await self._follow(answer["referral"], server, hwid, machine, user, held, report)
                if referred is not None:
                    server, conn, answer = referred
            lic = answer["license"]
            self._note_connection(lic)
            if lic is not None:
                self.devices.put(machine, self.version, {**lic, "license_server": server})
                if report:
                    await conn.request("logon_succeeded", hwid=hwid, license=lic["token"])
            return LogonResult.served(machine, user, server, answer)
        return self._offline(machine, user, refusal, held)

    async def _follow(self, referral: list, referring: str, hwid, machine, user, held, report):
        """The license server had no CAL of the kind asked for and referred the request [§9, FAQ08]: ask
        the ones it named. The first to give a permanent CAL serves the device; one that gives only a
        temporary license has the logon reported to it (so it upgrades the device next time), and the
        referring server's answer stands."""
        for server in referral:
            if not isinstance(server, str) or server == referring:
                continue
            try:
                conn = await self._connection(server)
                mine = held if held and held.get("license_server") == server else None
                answer = await conn.request("logon", hwid=hwid, machine=machine, user=user,
                                            license=mine and mine["token"])
            except TslsError:
                continue
            lic = answer["license"]
            if lic is not None and lic["kind"] == "permanent":
                return server, conn, answer
            if lic is not None and report:
                await conn.request("logon_succeeded", hwid=hwid, license=lic["token"])
        return None

    def _note_connection(self, lic) -> None:
        now = self.state.now(self.name)
        grace = self.state.grace(self.name, ProductVersion.parse(self.version)).connection(now)
        if lic is not None and lic["kind"] == "permanent":
            grace = grace.permanent_cal_issued(now)
        self.state.keep_grace(self.name, grace)

    def _not_configured(self, machine: str, user: str, held) -> "LogonResult":
        """Licensing mode Not Configured: no license server is asked; in during the grace period,
        after it event 1069 and refusal (tsls/core/diagnoser.py)."""
        now = self.state.now(self.name)
        grace = self.state.grace(self.name, ProductVersion.parse(self.version)).connection(now)
        self.state.keep_grace(self.name, grace)
        try:
            left = not_configured_admission(grace, now)
        except TslsError as e:
            return LogonResult.refused(machine, user, e)
        admission = Admission(AdmittedBy.GRACE, "the licensing mode is not configured; admitted in the grace period: "
                                                f"{left} days left", left)
        return LogonResult.admitted(machine, user, admission, held, Code.MODE_NOT_CONFIGURED)

    def grace_days(self) -> dict:
        """GetGracePeriodDays: the whole days of grace left (the full period before any connection)."""
        now = self.state.now(self.name)
        grace = self.state.grace(self.name, ProductVersion.parse(self.version))
        ends = grace.expires_at()
        left = grace_days(grace.version) if ends is None else max(0, -(-(ends - now) // 86400))
        return {"terminal_server": self.name, "grace_days_left": left, "grace_active": grace.active(now),
                "grace_started_at": iso(grace.started_at), "grace_ends_at": iso(ends)}

    async def probe(self, server) -> Probe:
        """What the Diagnoser learns from one license server (a Not Configured host asks as Per Device)."""
        try:
            conn = await self._connection(server)
            info = await conn.request("licensing_info")
        except TslsError as e:
            if e.code in UNAVAILABLE:
                return Probe(server, reachable=False)
            return Probe(server, reachable=True, refusal=e.code.value)
        return Probe(server, True, None, ProductVersion.parse(info["server_version"]), info["activated"],
                     info["security_group_policy"], info["in_group"], info["cals_installed"], info["cals_available"],
                     info["other_type_installed"])

    async def diagnose(self) -> dict:
        """The RD Licensing Diagnoser for this session host (tsls/core/diagnoser.py)."""
        probes = [await self.probe(server) for server in self.servers]
        now = self.state.now(self.name)
        version = ProductVersion.parse(self.version)
        mode = None if self.mode == NOT_CONFIGURED else CalType.parse(self.mode)
        d = diagnose(version, mode, tuple(probes), self.state.grace(self.name, version), now)
        return {"terminal_server": self.name, "version": version.value,
                "mode": NOT_CONFIGURED if mode is None else mode.value,
                "ok": d.ok, "status": d.status.name, "status_code": int(d.status),
                "grace_active": d.grace_active, "grace_days_left": d.grace_days_left,
                "servers": [{"server": f.server, "status": f.status.name, "status_code": int(f.status),
                             "usable": f.usable, "messages": list(f.messages)} for f in d.findings],
                "messages": list(d.messages)}

    def _without_server(self, row, refusal, held) -> dict:
        """``_offline`` as a row, over the fields ``row`` already has."""
        return {**row, **self._offline(row["machine"], row["user"], refusal, held).row()}

    def _offline(self, machine: str, user: str, refusal: TslsError | None, held) -> "LogonResult":
        """No license server licensed the device: the terminal server's own rules decide."""
        if refusal is not None and refusal.code not in GRACE_ADMITS | UNAVAILABLE:
            return LogonResult.refused(machine, user, refusal)
        now = self.state.now(self.name)
        grace = self.state.grace(self.name, ProductVersion.parse(self.version)).connection(now)
        self.state.keep_grace(self.name, grace)
        if refusal is not None and refusal.code in GRACE_ADMITS:
            try:
                admitted = refused_by_policy(grace, refusal, now)
            except TslsError as e:
                return LogonResult.refused(machine, user, e)
            return LogonResult.admitted(machine, user, admitted, held, refusal.code)
        expires = parse_date(held["expires_at"]) if held else None
        try:
            admitted = without_license_server(grace, expires, now)
        except TslsError as e:
            return LogonResult.refused(machine, user, e)
        # No license server answered (reason: how the last one failed); how many grace days are left.
        return LogonResult.admitted(machine, user, admitted, held,
                                    refusal.code if refusal is not None else Code.NO_LICENSE_SERVER)

    async def close(self) -> None:
        for conn in self.connections.values():
            if conn.transport.connected:
                await conn.close()


def _license_servers(args) -> list[str]:
    """The specified list (--server, in order), then those discovered in the directory (--directory)."""
    if args.directory is None:
        return args.server or [DEFAULT_SERVER]
    from tsls import directory
    from tsls.core.directory import discovery_order
    return list(discovery_order(tuple(args.server or ()), directory.read(args.directory)))


def _mode(text: str) -> str:
    key = text.strip().replace("-", "_").lower()
    return next((m for m in (*(c.value for c in CalType), NOT_CONFIGURED) if m == key), text)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsls-ts", description="Simulate a terminal server.",
        epilog=f"Exit status: 0 every logon admitted (with a license, or without one in the grace period); "
               f"{REFUSED} some logon refused (the rows are printed all the same); 1 an error before any logon "
               f"(error CODE: message); 130 interrupted by Ctrl-C (the logons so far are printed and saved).")
    parser.add_argument("--server", action="append", metavar="ENDPOINT",
                        help=f"a license server endpoint; repeat it for a discovery list tried in order "
                             f"(default: {DEFAULT_SERVER})")
    parser.add_argument("--directory", metavar="FILE",
                        help="discover license servers published in this simulated directory (tsls server "
                             "--publish-to FILE), after the --server ones: forest-wide first, then the domain's")
    add_timeout_options(parser, ANSWER_TIMEOUT)
    parser.add_argument("--name", default="TS01", help="the terminal server's name (default: %(default)s)")
    parser.add_argument("--secret-file", help="the secret tsls-admin terminal-servers register gave this name")
    parser.add_argument("--version", default="2003", **enum_option(ProductVersion),
                        help="Windows Server version it emulates (default: %(default)s)")
    parser.add_argument("--mode", default="per_device", type=_mode, choices=[*(c.value for c in CalType), NOT_CONFIGURED],
                        help="its licensing mode: the CAL type it asks for, or not_configured (in only during the "
                             "grace period, then event 1069 and refusal) (default: %(default)s)")
    parser.add_argument("--state-dir", default=default_data_dir(),
                        help="where devices keep their licenses and terminal servers their state "
                             "(default: $TSLS_DATA, else tsls-data; now %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("diagnose", help="the RD Licensing Diagnoser: mode, license servers in order, each one's "
                                    "GetTStoLSConnectivityStatus, activation, CALs, grace (docs/diagnoser.md)")
    sub.add_parser("grace", help="the grace days left (GetGracePeriodDays)")
    logon = sub.add_parser("logon", help="log clients on, report success, print their licenses")
    logon.add_argument("clients", nargs="*", metavar="MACHINE[:USER]",
                       help="client machines, each with an optional user name (default user: user-MACHINE)")
    logon.add_argument("--count", type=int, help="also log on N generated clients pc001..pcN")
    logon.add_argument("--prefix", default="pc", help="name prefix for --count (default: %(default)s)")
    logon.add_argument("--times", type=int, default=1, help="log each client on this many times (default: 1)")
    logon.add_argument("--fail", action="store_true",
                       help="do not report the logons as successful (temporary licenses stay unvalidated)")
    rdp = sub.add_parser("rdp", help="listen for real RDP clients and license them over MS-RDPELE (docs/rdp.md)")
    rdp.add_argument("--listen", default=None, metavar="ENDPOINT",
                     help="a Twisted server endpoint (default: tcp:3389:interface=127.0.0.1)")
    rdp.add_argument("--connections", type=int, metavar="N",
                     help="stop after N client connections (default: run until interrupted)")
    prod = sub.add_parser("product", help="open connections to a Per Server / Per Seat product (docs/legacy.md)")
    prod.add_argument("product")
    prod.add_argument("clients", nargs="*", metavar="MACHINE", help="one connection for each")
    prod.add_argument("--administrator", action="store_true",
                      help="connect as an administrator, proven by the administrator's credential (--credential)")
    prod.add_argument("--credential", metavar="FILE",
                      help="with --administrator: the license server's admin.secret (default: STATE_DIR/admin.secret)")
    prod.add_argument("--then-close", type=int, metavar="N",
                      help="then close the Nth connection and retry the refused ones")
    prod.add_argument("--switch", action="store_true",
                      help="instead, ask to switch the product to Per Seat (--yes to confirm), as this server")
    prod.add_argument("--yes", action="store_true", help="confirm --switch: it cannot be undone")
    flags_after_subcommands(parser, "--json")
    return parser


async def product_command(conn, args) -> list[dict]:
    """Each client opens a connection, on one session; all close when the command ends."""
    if args.switch:
        return [await conn.request("switch_to_per_seat", product=args.product, confirm=args.yes)]
    rows, opened, refused = [], [], []

    async def attempt(machine):
        try:
            answer = await conn.request("product_connect", product=args.product, hwid=hardware_id(machine),
                                        administrator=args.administrator)
            opened.append(answer["connection_id"])
            rows.append({"machine": machine, "outcome": "connected", "licensed_by": answer["licensed_by"],
                         "connection_id": answer["connection_id"]})
            return True
        except TslsError as e:
            rows.append({"machine": machine, "outcome": "refused", "reason": e.code.value, "message": e.message})
            return False

    for machine in args.clients:
        if not await attempt(machine):
            refused.append(machine)
    if args.then_close and opened:
        closed = opened[args.then_close - 1]
        await conn.request("product_disconnect", connection_id=closed)
        rows.append({"machine": "-", "outcome": "closed", "connection_id": closed})
        for machine in refused:
            await attempt(machine)
    return rows


def _clients(args) -> list[tuple[str, str]]:
    out = []
    for spec in args.clients:
        machine, _, user = spec.partition(":")
        out.append((machine, user or f"user-{machine}"))
    for i in range(1, (args.count or 0) + 1):
        machine = f"{args.prefix}{i:03d}"
        out.append((machine, f"user-{machine}"))
    return out


async def command(reactor, args) -> None:
    ProductVersion.parse(args.version)
    devices = DeviceStore(os.path.join(args.state_dir, "devices.json"))
    state = TerminalServerState(os.path.join(args.state_dir, "terminal-servers.json"), clock=reactor)
    secret = read_secret(args.secret_file) if args.secret_file else None
    ts = TerminalServer(reactor, args.name, args.version, args.mode.replace("-", "_"), _license_servers(args),
                        devices, state, secret, args.connect_timeout, args.timeout)
    rows = []
    if args.command == "grace":
        emit(ts.grace_days(), args.json, lambda g: print(f"{g['terminal_server']}: {g['grace_days_left']} grace days "
                                                         f"left" + (f" (ends {g['grace_ends_at']})" if g["grace_ends_at"]
                                                                    else " (not started)")))
        return
    if args.command == "diagnose":
        try:
            report = await ts.diagnose()
        finally:
            await ts.close()
        emit(report, args.json, _print_diagnosis)
        if not report["ok"]:
            raise Failed(REFUSED, f"licensing problems found: {report['status']}")
        return
    if args.command == "rdp":
        from clients.rdp.listen import serve
        ts.devices = ClientKeepsLicense()
        try:
            await serve(reactor, ts, state, args.state_dir, args.listen, args.connections, args.json)
        finally:
            await ts.close()
        return
    if args.command == "product":
        server = (args.server or [DEFAULT_SERVER])[0]
        if args.administrator:      # an administrator's connection is proven, never taken on a terminal server's word
            admin_secret = read_secret(args.credential or os.path.join(args.state_dir, "admin.secret"))
            conn = ts.connections[server] = await connect(reactor, server, args.connect_timeout, args.timeout)
            await conn.hello_admin(admin_secret)
        else:
            conn = await ts._connection(server)
        try:
            rows = await product_command(conn, args)
        finally:
            await ts.close()
        emit(rows, args.json, lambda r: table(r, [("machine", "CLIENT"), ("outcome", "OUTCOME"),
                                                   ("licensed_by", "LICENSED BY"), ("connection_id", "CONNECTION"),
                                                   ("reason", "REASON"), ("message", "MESSAGE")]))
        return
    interrupted = False
    try:
        for round_ in range(1, args.times + 1):
            for machine, user in _clients(args):
                rows.append({"round": round_, **await ts.logon(machine, user, not args.fail)})
                devices.save_soon()
                state.save_soon()
    except defer.CancelledError:        # Ctrl-C: keep what was done, print it, exit 130
        interrupted = True
    finally:
        devices.save()
        state.save()
        await ts.close()
    emit(rows, args.json, _print_rows)
    if interrupted:
        raise Interrupted(f"after {len(rows)} logons; the devices' licenses are saved in {devices.path}")
    refused = sum(1 for r in rows if r["outcome"] == "refused")
    if refused:
        raise Failed(REFUSED, f"{refused} of {len(rows)} logons refused")


def _print_diagnosis(d: dict) -> None:
    print(f"RD Session Host {d['terminal_server']} (Windows Server {d['version']}), licensing mode {d['mode']}")
    table(d["servers"], [("server", "LICENSE SERVER"), ("status", "STATUS"), ("status_code", "CODE"),
                         ("usable", "USABLE")])
    print()
    for message in d["messages"]:
        print(f"- {message}")
    print(f"\nresult: {'OK' if d['ok'] else 'licensing problems'} ({d['status']})")


def _print_rows(rows: list[dict]) -> None:
    flat = []
    for r in rows:
        lic = r.get("license") or {}
        flat.append({**r, "kind": lic.get("kind"), "license_id": lic.get("license_id"),
                     "expires_at": lic.get("expires_at"), "key_pack_id": lic.get("key_pack_id")})
    table(flat, [("round", "ROUND"), ("machine", "MACHINE"), ("user", "USER"), ("outcome", "OUTCOME"),
                 ("kind", "LICENSE"), ("license_id", "ID"), ("expires_at", "EXPIRES"), ("served_by", "SERVED BY"),
                 ("reason", "REASON")])
    # What the table cannot say: why no license server served a logon, and what followed (grace days left).
    notes: dict[str, list[str]] = {}
    for r in rows:
        if r.get("served_by") is None and r.get("message"):
            notes.setdefault(r["message"], []).append(r["machine"])
    for message, machines in notes.items():
        more = f" (and {len(machines) - 1} more)" if len(machines) > 1 else ""
        print(f"{machines[0]}{more}: {message}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(lambda reactor: command(reactor, args), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
