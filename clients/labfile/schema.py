"""A lab file's text to frozen values, or a LabFileError listing every problem with its line and field.

Pure: no I/O beyond what the caller hands in (the text and a name for messages). The format is
docs/labfile.md; every field is checked here, before any process starts.
"""
from __future__ import annotations

import re
import tomllib

import attrs

from tsls.core.events import EventId
from tsls.core.labtime import parse_date
from tsls.core.model import CalType, ProductVersion, Program
from tsls.core.directory import Published, discovery_order, publishable
from tsls.core.reports import Scope
from tsls.errors import Code, TslsError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SPAN = re.compile(r"(\+?)(\d{1,6})(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DEVICES = 1_000_000
MAX_TIMES = 1000
MAX_RDP = 20           # real RDP clients (each an xfreerdp process) per fleet: a few, not a load

OUTCOMES = ("permanent", "temporary", "per_user", "grace", "offline", "refused")


@attrs.frozen
class Problem:
    line: int | None
    field: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class LabFileError(Exception):
    """The file is not a valid lab; ``problems`` holds each one, in file order."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.field))
        super().__init__("\n".join(p.render(source) for p in self.problems))


@attrs.frozen
class LicenseServerSpec:
    name: str
    version: ProductVersion
    activated: bool = True
    security_group: bool = False
    scope: Scope | None = None   # workgroup, domain or forest, set at 0d; None: the daemon's default (domain)


@attrs.frozen
class SessionHostSpec:
    name: str
    version: ProductVersion
    mode: CalType | None         # None: the licensing mode is Not Configured
    license_servers: tuple[str, ...]
    group: bool = False          # registered on its license servers, in their Terminal Server Computers group
    discover: bool = False       # license_servers: the file's list, then those found in the lab's directory
    specified: tuple[str, ...] = ()   # the file's own list (before discovery)


@attrs.frozen
class FleetSpec:
    name: str
    devices: int
    prefix: str
    users: int | None = None     # how many people share the devices; None: one user per device
    per_user: float | None = None   # the share of its devices whose people log on through Per User hosts
    rdp: int = 0                 # its first `rdp` devices are real RDP clients (xfreerdp) through `tsls-ts rdp`

    def rdp_machines(self) -> set[str]:
        return set(self.machines()[:self.rdp])

    def machines(self) -> list[str]:
        width = max(3, len(str(self.devices)))
        return [f"{self.prefix}{i:0{width}d}" for i in range(1, self.devices + 1)]

    def per_user_count(self) -> int:
        return 0 if self.per_user is None else round(self.per_user * self.devices)

    def per_user_machines(self) -> set[str]:
        """The devices whose people log on through Per User hosts: per_user_count() of them, spread
        evenly over the fleet (device i is one when (i+1)*count // devices passes a whole number)."""
        count, n = self.per_user_count(), self.devices
        return {m for i, m in enumerate(self.machines()) if (i + 1) * count // n > i * count // n}

    def user_names(self) -> dict[str, str]:
        """Each device's user: user-<device>, or with ``users`` the people <prefix>user1.. in turn."""
        machines = self.machines()
        if self.users is None:
            return {m: f"user-{m}" for m in machines}
        width = max(3, len(str(self.users)))
        return {m: f"{self.prefix}user{i % self.users + 1:0{width}d}" for i, m in enumerate(machines)}


@attrs.frozen
class PurchaseSpec:
    name: str
    license_server: str
    program: Program
    version: ProductVersion
    cal_type: CalType
    quantity: int


@attrs.frozen
class ProductSpec:
    name: str
    license_server: str
    on: str
    per_server: int


@attrs.frozen
class Step:
    index: int                  # 1-based, as in the file
    line: int | None
    at: int                     # seconds after the lab's start
    do: str
    args: dict = attrs.field(factory=dict, eq=True)
    note: str | None = None
    lines: dict = attrs.field(factory=dict, eq=False)    # each field's line, for later messages


@attrs.frozen
class Lab:
    name: str
    description: str
    seed: str
    start: int                  # the lab date of 0d, seconds since the epoch
    license_servers: tuple[LicenseServerSpec, ...]
    session_hosts: tuple[SessionHostSpec, ...]
    fleets: tuple[FleetSpec, ...]
    purchases: tuple[PurchaseSpec, ...]
    products: tuple[ProductSpec, ...]
    steps: tuple[Step, ...]

    def license_server(self, name: str) -> LicenseServerSpec:
        return next(s for s in self.license_servers if s.name == name)

    def session_host(self, name: str) -> SessionHostSpec:
        return next(s for s in self.session_hosts if s.name == name)

    def fleet(self, name: str) -> FleetSpec:
        return next(f for f in self.fleets if f.name == name)

    def purchase(self, name: str) -> PurchaseSpec:
        return next(p for p in self.purchases if p.name == name)

    def product(self, name: str) -> ProductSpec:
        return next(p for p in self.products if p.name == name)


# --- where things are in the text -----------------------------------------------------------------

_ARRAY_HEADER = re.compile(r"\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


class Locator:
    """Line numbers of tables and their keys, read from the text (tomllib keeps none). Good for
    the file as people write it; a key it cannot place gets its table's line."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple, int] = {}
        self.keys: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        current: tuple = ()
        for number, line in enumerate(text.splitlines(), 1):
            if m := _ARRAY_HEADER.match(line):
                counts[m[1]] = counts.get(m[1], 0) + 1
                current = (m[1], counts[m[1]])
                self.tables[current] = number
            elif m := _HEADER.match(line):
                current = (m[1], None)
                self.tables[current] = number
            elif m := _KEY.match(line):
                self.keys.setdefault((current, m[1]), number)

    def line(self, table: tuple, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table)


def field_name(table: tuple, key: str | None = None) -> str:
    name = table[0] if table[1] is None else f"{table[0]}[{table[1]}]"
    return f"{name}.{key}" if key else name


# --- parsing ---------------------------------------------------------------------------------------

class _Reader:
    """Reads one table's fields, noting problems instead of stopping at the first."""

    def __init__(self, check: "_Check", table: tuple, data: dict) -> None:
        self.check, self.table, self.data = check, table, data
        self.used: set[str] = set()

    def problem(self, key: str | None, message: str) -> None:
        self.check.problem(self.table, key, message)

    def get(self, key: str, kind, required: bool = False, default=None):
        self.used.add(key)
        if key not in self.data:
            if required:
                self.problem(None, f"{key} is required")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join({str: "a string", int: "a whole number", bool: "true or false", list: "a list",
                                 dict: "a table", float: "a number"}[k] for k in kinds)
            self.problem(key, f"must be {names}, not {value!r}")
            return default
        return value

    def name(self, key: str = "name", required: bool = True) -> str | None:
        value = self.get(key, str, required)
        if value is not None and not NAME.fullmatch(value):
            self.problem(key, f"{value!r} is not a name: letters, digits, '.', '_' and '-', at most 63")
            return None
        return value

    def enum(self, key: str, parse, required: bool = False, default=None):
        value = self.get(key, str, required)
        if value is None:
            return default
        try:
            return parse(value)
        except TslsError as e:
            self.problem(key, e.message)
            return default

    def count(self, key: str, required: bool = False, default=None, lo: int = 0, hi: int = MAX_DEVICES):
        value = self.get(key, int, required)
        if value is None:
            return default
        if not lo <= value <= hi:
            self.problem(key, f"must be from {lo} to {hi}, not {value}")
            return default
        return value

    def reference(self, key: str, known, what: str, required: bool = True) -> str | None:
        value = self.get(key, str, required)
        if value is not None and value not in known:
            self.problem(key, f"no {what} named {value!r} (known: {', '.join(sorted(known)) or 'none'})")
            return None
        return value

    def finish(self, allowed: set[str] | None = None) -> None:
        allowed = self.used if allowed is None else allowed
        for key in self.data:
            if key not in allowed:
                self.problem(key, f"unknown field {key!r} (expected one of: {', '.join(sorted(allowed))})")


class _Check:
    def __init__(self, text: str) -> None:
        self.locator = Locator(text)
        self.problems: list[Problem] = []

    def problem(self, table: tuple, key: str | None, message: str) -> None:
        self.problems.append(Problem(self.locator.line(table, key), field_name(table, key), message))

    def reader(self, table: tuple, data) -> _Reader | None:
        if not isinstance(data, dict):
            self.problem(table, None, "must be a table")
            return None
        return _Reader(self, table, data)

    def readers(self, doc: dict, name: str):
        """(table, reader) for each [[name]] that is a table; the others are problems."""
        for table, data in self.tables(doc, name):
            r = self.reader(table, data)
            if r is not None:
                yield table, r

    def tables(self, doc: dict, name: str) -> list[tuple[tuple, dict]]:
        value = doc.get(name, [])
        if not isinstance(value, list):
            self.problem((name, None), None, f"write each as [[{name}]]")
            return []
        return [((name, i), item) for i, item in enumerate(value, 1)]


def parse_span(text: object, what: str = "a time") -> tuple[bool, float]:
    """'30d' -> (False, 2592000); '+6h' -> (True, 21600): whether it is relative, and seconds."""
    m = _SPAN.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{what} is written like 0d, 30d, +6h, +90m, 2w or +500ms, not {text!r}")
    return bool(m[1]), int(m[2]) * _UNITS[m[3]]


def loads(text: str, source: str = "<lab>") -> Lab:
    """The lab a file's text describes; LabFileError names every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = re.search(r"line (\d+)", str(e))
        raise LabFileError(source, [Problem(int(line[1]) if line else None, "", f"not TOML: {e}")]) from None
    check = _Check(text)
    lab = _parse(doc, check)
    if check.problems:
        raise LabFileError(source, check.problems)
    return lab


def load(path: str) -> Lab:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LabFileError(path, [Problem(None, "", f"cannot read the file: {e}")]) from None
    return loads(text, path)


_TOP = {"lab", "clearinghouse", "license_server", "session_host", "fleet", "purchase", "product", "step"}


def _parse(doc: dict, check: _Check) -> Lab | None:
    for key in doc:
        if key not in _TOP:
            check.problem((key, None), None, f"unknown table [{key}] (expected: {', '.join(sorted(_TOP))})")
    head = check.reader(("lab", None), doc.get("lab"))
    if head is None:
        return None
    lab_name = head.get("name", str, required=True)
    description = head.get("description", str, default="")
    seed = head.get("seed", (int, str), default=1)
    start_text = head.get("start", str, required=True)
    start = 0
    if start_text is not None:
        try:
            start = parse_date(start_text)
        except TslsError:
            head.problem("start", f"not an ISO date: {start_text!r} (write 2025-01-06 or 2025-01-06T08:00:00Z)")
    head.finish()
    if "clearinghouse" in doc:
        ch = check.reader(("clearinghouse", None), doc["clearinghouse"])
        if ch is not None:
            ch.finish(set())

    servers = []
    for table, r in check.readers(doc, "license_server"):
        spec = LicenseServerSpec(r.name(), r.enum("version", ProductVersion.parse, default=ProductVersion.W2019),
                                 r.get("activated", bool, default=True), r.get("security_group", bool, default=False),
                                 r.enum("scope", _scope))
        r.finish()
        servers.append((table, spec))
    ls_names = _unique(check, servers, "license server")
    if not servers:
        check.problem(("lab", None), None, "a lab needs at least one [[license_server]]")

    hosts = []
    directory = published(spec for _, spec in servers)
    for table, r in check.readers(doc, "session_host"):
        listed = specified = r.get("license_servers", list, default=[])
        discover = r.get("discover", bool, default=False)
        for item in listed:
            if item not in ls_names:
                r.problem("license_servers", f"no license server named {item!r} (known: {', '.join(sorted(ls_names))})")
        if len(set(map(str, listed))) != len(listed):
            r.problem("license_servers", "a license server is listed twice")
        if discover:         # its list first, then what it finds in the lab's directory
            listed = list(discovery_order(tuple(map(str, listed)), directory))
        hosts.append((table, SessionHostSpec(r.name(), r.enum("version", ProductVersion.parse, default=ProductVersion.W2019),
                                             r.enum("mode", _mode, default=CalType.PER_DEVICE),
                                             tuple(str(i) for i in listed), r.get("group", bool, default=False),
                                             discover, tuple(map(str, specified)))))
        r.finish()
    host_names = _unique(check, hosts, "session host")

    fleets = []
    for table, r in check.readers(doc, "fleet"):
        name = r.name()
        devices = r.count("devices", required=True, default=1, lo=1)
        prefix = r.get("prefix", str, default=None)
        if prefix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", prefix):
            r.problem("prefix", f"{prefix!r}: letters, digits, '.', '_' and '-', at most 40")
        users = r.count("users", lo=1)
        per_user = r.get("per_user", (float, int))
        if per_user is not None and not 0 <= per_user <= 1:
            r.problem("per_user", f"a share from 0 to 1 (0.25 is a quarter of the devices), not {per_user}")
            per_user = None
        rdp = r.count("rdp", default=0, hi=MAX_RDP)
        if rdp > devices:
            r.problem("rdp", f"{rdp} RDP clients among {devices} devices")
        fleets.append((table, FleetSpec(name, devices, prefix if prefix is not None else f"{name}-", users,
                                        None if per_user is None else float(per_user), rdp)))
        r.finish()
    fleet_names = _unique(check, fleets, "fleet")
    prefixes: dict[str, str] = {}
    for table, fleet in fleets:
        if fleet.name is None:
            continue
        if fleet.prefix in prefixes:
            check.problem(table, "prefix", f"fleet {prefixes[fleet.prefix]!r} already names its devices {fleet.prefix}...")
        prefixes.setdefault(fleet.prefix, fleet.name)

    purchases = []
    for table, r in check.readers(doc, "purchase"):
        purchases.append((table, PurchaseSpec(
            r.name(), r.reference("license_server", ls_names, "license server"),
            r.enum("program", Program.parse, required=False, default=Program.RETAIL),
            r.enum("version", ProductVersion.parse, default=ProductVersion.W2019),
            r.enum("cal_type", CalType.parse, default=CalType.PER_DEVICE),
            r.count("quantity", required=True, default=1, lo=1))))
        r.finish()
    purchase_names = _unique(check, purchases, "purchase")

    products = []
    for table, r in check.readers(doc, "product"):
        name = r.get("name", str, required=True)
        if name is not None and not 0 < len(name) <= 128:
            r.problem("name", "a product name has 1 to 128 characters")
        products.append((table, ProductSpec(name, r.reference("license_server", ls_names, "license server"),
                                            r.name("on"), r.count("per_server", required=True, default=0))))
        r.finish()
    product_names = _unique(check, products, "product")

    names = _Names(ls_names, host_names, fleet_names, purchase_names, product_names,
                   {p.name: p.license_server for _, p in purchases},
                   {f.name: f for _, f in fleets if f.name is not None},
                   {h.name for _, h in hosts if h.mode is CalType.PER_USER},
                   group_hosts={h.name for _, h in hosts if h.group})
    steps = []
    at = 0
    for table, r in check.readers(doc, "step"):
        step = _step(r, table, at, names)
        if step is not None:
            at = step.at
            steps.append(step)

    if check.problems:
        return None
    return Lab(lab_name, description, str(seed), start, tuple(s for _, s in servers), tuple(s for _, s in hosts),
               tuple(f for _, f in fleets), tuple(p for _, p in purchases), tuple(p for _, p in products), tuple(steps))


def _unique(check: _Check, items: list, what: str) -> set[str]:
    seen: set[str] = set()
    for table, spec in items:
        if spec.name is None:
            continue
        if spec.name in seen:
            check.problem(table, "name", f"a second {what} named {spec.name!r}")
        seen.add(spec.name)
    return seen


@attrs.frozen
class _Names:
    license_servers: set
    session_hosts: set
    fleets: set
    purchases: set
    products: set
    purchase_server: dict
    fleet_specs: dict = attrs.field(factory=dict)
    per_user_hosts: set = attrs.field(factory=set)
    converted: set = attrs.field(factory=set)        # key packs named by convert steps (into), so far
    group_hosts: set = attrs.field(factory=set)


# Each kind of step: its required fields and its optional ones (besides at, do, note).
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "install": (("purchase",), ("expect_error",)),
    "recover": (("purchase",), ("expect_error",)),
    "convert": (("key_pack", "count"), ("into", "expect_error")),
    "migrate": (("purchase", "to"), ("reason", "expect_error")),
    "activate": (("license_server",), ("expect_error",)),
    "deactivate": (("license_server",), ("expect_error",)),
    "policy": (("license_server", "security_group"), ()),
    "revoke": (("license_server", "device"), ("expect_error",)),
    "wave": (("fleet", "through"), ("times", "report", "expect", "every", "until", "rate")),
    "connect": (("product", "fleet"), ("expect",)),
    "kill": (("license_server",), ()),
    "stop": (("license_server",), ()),
    "resume": (("license_server",), ()),
    "restart": (("license_server",), ()),
    "rebuild": (("license_server",), ()),
    "clearinghouse_down": ((), ()),
    "clearinghouse_up": ((), ()),
    "cut": (("session_host", "license_server"), ("for",)),
    "slow": (("session_host", "license_server", "delay"), ("for",)),
    "reset": (("session_host", "license_server"), ()),
    "heal": (("session_host", "license_server"), ()),
    "expect": ((), ("license_server", "key_pack", "issued", "available", "total", "present", "absent", "licensed",
                    "ledger", "unique")),
}
LINK_KINDS = ("cut", "slow", "reset", "heal")
FAULT_KINDS = ("kill", "stop", "resume", "restart", "rebuild", "clearinghouse_down", "clearinghouse_up", *LINK_KINDS)
_WAVE_EXPECT = set(OUTCOMES) | {"refused_by", "served_by"}
_CONNECT_EXPECT = {"connected", "refused", "refused_by"}
_CODES = {c.value for c in Code}


def _step(r: _Reader, table: tuple, previous: int, names: _Names) -> Step | None:
    at_text = r.get("at", str, required=True)
    at = previous
    if at_text is not None:
        try:
            relative, seconds = parse_span(at_text, "at")
        except ValueError as e:
            r.problem("at", str(e))
        else:
            at = int(previous + seconds if relative else seconds)
            if at < previous:
                r.problem("at", f"{at_text} is before the step above it: the lab clock never goes backwards "
                                "(write +N for a time after the previous step)")
                at = previous
    do = r.get("do", str, required=True)
    note = r.get("note", str)
    if do is None:
        return None
    if do not in KINDS:
        r.problem("do", f"unknown step {do!r} (expected one of: {', '.join(KINDS)})")
        return None
    required, optional = KINDS[do]
    args: dict = {}
    for key in required:
        if key not in r.data:
            r.problem(None, f"a {do} step needs {key}")
    refs = {"license_server": (names.license_servers, "license server"), "session_host": (names.session_hosts, "session host"),
            "fleet": (names.fleets, "fleet"), "purchase": (names.purchases, "purchase"),
            "key_pack": (names.purchases | names.converted, "key pack"), "product": (names.products, "product")}
    for key in (*required, *optional):
        if key not in r.data:
            continue
        if key in refs:
            args[key] = r.reference(key, *refs[key])
        elif key in ("security_group", "ledger", "unique", "report"):
            args[key] = r.get(key, bool)
        elif key in ("issued", "available", "total"):
            args[key] = r.count(key)
        elif key == "times":
            args[key] = r.count(key, lo=1, hi=MAX_TIMES)
        elif key == "to":
            args[key] = r.reference(key, names.license_servers, "license server")
        elif key == "reason":
            args[key] = r.get(key, str)
            if args[key] is not None and args[key].replace("-", "_") not in ("replaced", "not_working"):
                r.problem(key, f"unknown reason {args[key]!r}; expected replaced or not-working")
            elif args[key] is not None:
                args[key] = args[key].replace("-", "_")
        elif key == "count":
            args[key] = r.count(key, lo=1)
        elif key == "into":
            args[key] = r.name(key)
            if args[key] in names.purchases | names.converted:
                r.problem(key, f"{args[key]!r} already names a key pack: give the converted CALs a new name")
        elif key == "rate":
            args[key] = r.count(key, lo=1, hi=MAX_DEVICES * MAX_TIMES)
        elif key == "device":
            args[key] = r.get(key, str)
        elif key == "expect_error":
            args[key] = _code(r, key, r.get(key, str))
        elif key in ("for", "delay", "every", "until"):
            value = r.get(key, str)
            try:
                relative, seconds = parse_span(value, key)
            except ValueError as e:
                r.problem(key, str(e))
            else:
                if key == "delay" and (relative or seconds > 60):
                    r.problem(key, "a link's delay is written like 200ms or 2s, at most 60s")
                if key == "for" and seconds < 1:
                    r.problem(key, "a fault lasts at least 1s of lab time")
                if key == "every" and (relative or seconds < 60):
                    r.problem(key, "a wave repeats every 1m of lab time or more, written like 7d")
                if key == "until":
                    if relative:
                        r.problem(key, "until is a lab time such as 180d (from the lab's start), not +N")
                    elif seconds < at:
                        r.problem(key, f"until {value} is before the wave's first time")
                args[key] = seconds
        elif key == "through":
            listed = r.get(key, list, default=[])
            for item in listed:
                if item not in names.session_hosts:
                    r.problem(key, f"no session host named {item!r} (known: {', '.join(sorted(names.session_hosts))})")
            if not listed:
                r.problem(key, "a wave goes through at least one session host")
            args[key] = tuple(listed)
        elif key in ("present", "absent"):
            listed = r.get(key, list, default=[])
            args[key] = tuple(_event(r, key, item) for item in listed)
        elif key == "licensed":
            value = r.get(key, (str, list))
            listed = [value] if isinstance(value, str) else value or []
            for item in listed:
                if item not in names.fleets:
                    r.problem(key, f"no fleet named {item!r} (known: {', '.join(sorted(names.fleets))})")
            args[key] = tuple(listed)
        elif key == "expect":
            args[key] = _outcomes(r, key, _WAVE_EXPECT if do == "wave" else _CONNECT_EXPECT, names)
    if do == "wave" and args.get("fleet") and args.get("through"):
        _check_per_user_share(r, names.fleet_specs[args["fleet"]], args["through"], names)
        if names.fleet_specs[args["fleet"]].rdp:
            grouped = [h for h in args["through"] if h in names.group_hosts]
            if grouped:
                r.problem("through", f"fleet {args['fleet']!r} has RDP clients and {grouped[0]} registers in the "
                                     "security group: `tsls-ts rdp` proves one secret, a lab host holds one per server")
    if do == "migrate" and args.get("purchase") and args.get("to"):       # its CALs live on the target from now on
        if names.purchase_server.get(args["purchase"]) == args["to"]:
            r.problem("to", f"purchase {args['purchase']!r} is on {args['to']} already then")
        names.purchase_server[args["purchase"]] = args["to"]
    if do == "convert" and args.get("into") and args.get("key_pack"):      # later steps may name the new key pack
        names.converted.add(args["into"])
        names.purchase_server[args["into"]] = names.purchase_server.get(args["key_pack"])
    if ("every" in args) != ("until" in args):
        r.problem("every" if "every" in args else "until", "a repeated wave needs both every and until")
    r.finish({"at", "do", "note", *required, *optional})
    if do == "expect":
        _check_expect(r, args, names)
    lines = {key: r.check.locator.line(table, key) for key in r.data}
    return Step(table[1], r.check.locator.line(table), at, do, args, note, lines)


def published(servers) -> tuple[Published, ...]:
    """The lab's directory: its license servers (by name) with their scopes, in file order; a workgroup
    one is not published (tsls/core/directory.py)."""
    return tuple(Published(s.name, s.scope or Scope.DOMAIN) for s in servers
                 if s.name is not None and publishable(s.scope or Scope.DOMAIN))


def _scope(text: str) -> Scope:
    try:
        return Scope(text.lower())
    except ValueError:
        raise TslsError(Code.BAD_REQUEST, f"unknown scope {text!r}; expected workgroup, domain or forest") from None


def _check_per_user_share(r: _Reader, fleet: FleetSpec, through: tuple, names: _Names) -> None:
    """A fleet with a Per User share needs Per User hosts for that share and other hosts for the rest."""
    if fleet.per_user is None:
        return
    per_user = [h for h in through if h in names.per_user_hosts]
    if fleet.per_user_count() and not per_user:
        r.problem("through", f"fleet {fleet.name!r} has {fleet.per_user_count()} Per User devices "
                             f"(per_user = {fleet.per_user:g}) and none of these session hosts is in per-user mode")
    if fleet.per_user_count() < fleet.devices and len(per_user) == len(through):
        r.problem("through", f"fleet {fleet.name!r} has {fleet.devices - fleet.per_user_count()} devices outside its "
                             "Per User share and every one of these session hosts is in per-user mode")


def _mode(text: str) -> CalType | None:
    """per-device, per-user, or not-configured (None)."""
    if text.replace("-", "_").lower() == "not_configured":
        return None
    try:
        return CalType.parse(text)
    except TslsError:
        raise TslsError(Code.BAD_REQUEST, f"unknown mode {text!r}; expected per-device, per-user or not-configured") from None


def _code(r: _Reader, key: str, value):
    if value is not None and value not in _CODES:
        r.problem(key, f"no error code {value!r} (docs/protocol.md lists them)")
    return value


def _event(r: _Reader, key: str, item) -> int | None:
    try:
        if isinstance(item, int) and not isinstance(item, bool):
            return int(EventId(item))
        if isinstance(item, str):
            return int(EventId[item])
    except (ValueError, KeyError):
        pass
    r.problem(key, f"no event {item!r}: an event ID such as 1104 or a name such as \"LICENSE_EXPIRED\"")
    return None


def _outcomes(r: _Reader, key: str, allowed: set, names: _Names) -> dict:
    table = r.get(key, dict, default={})
    out = {}
    for name, value in table.items():
        if name not in allowed:
            r.problem(key, f"unknown outcome {name!r} (expected one of: {', '.join(sorted(allowed))})")
        elif name in ("refused_by", "served_by"):
            if not isinstance(value, dict):
                r.problem(key, f"{name} is a table such as {{ NO_LICENSE_AVAILABLE = 1 }}")
                continue
            for sub, count in value.items():
                if name == "refused_by":
                    _code(r, key, sub)
                elif sub not in names.license_servers:
                    r.problem(key, f"served_by: no license server named {sub!r}")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    r.problem(key, f"{name}.{sub} must be a whole number, not {count!r}")
            out[name] = dict(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            r.problem(key, f"{name} must be a whole number, not {value!r}")
        else:
            out[name] = value
    return out


def _check_expect(r: _Reader, args: dict, names: _Names) -> None:
    counts = [k for k in ("issued", "available", "total") if k in args]
    if not set(args) - {"license_server"}:
        r.problem(None, "an expect step needs something to expect: issued/available/total, present/absent, "
                        "licensed, ledger or unique")
    if counts and "license_server" not in args and "key_pack" not in args:
        r.problem(counts[0], "counts need the license_server or the key_pack they are of")
    pack, server = args.get("key_pack"), args.get("license_server")
    if pack and server and names.purchase_server.get(pack) != server:
        r.problem("key_pack", f"purchase {pack!r} is installed on {names.purchase_server.get(pack)}, not {server}")
    if ("key_pack" in args) and not counts:
        r.problem("key_pack", "say what to expect of it: issued, available or total")
