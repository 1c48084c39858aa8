"""``tsls-load``: a load generator for the license server, for labs that need to know its limit.

It simulates N terminal servers, each on its own connection with its own version and mode,
logging M client devices and users on with a mix the lab chooses, for a duration or a count:

- ``first``: a device never seen before logs on with no license (a temporary license is issued);
- ``repeat``: a device already seen logs on again, presenting the license it holds (it keeps it,
  gets a permanent CAL once its temporary license was reported, or keeps its CAL);
- ``renewal``: a device holding a permanent CAL presents it (``existing``, or ``renewed`` when the
  CAL is within 7 days of expiry: move a lab clock to see those);
- ``upgrade``: a device whose temporary license was reported presents it and gets a permanent CAL
  from a key pack (``upgraded``); with ``--prepare N``, N devices get and report their temporary
  licenses before the clock starts, so a run can be all upgrades (``--mix upgrade=1``);
- ``per_user``: a user logs on through a Per User terminal server (recorded, nothing counted).

As a real terminal server does, it reports each successful logon with a temporary license
(``logon_succeeded``), so repeat logons upgrade; ``--no-report`` turns that off. ``--pipeline P``
keeps up to P requests in flight on each connection. At the end it prints requests, grants by
kind, refusals by code, throughput and latency percentiles; ``--json`` prints them for scripts.

    tsls-load --terminal-servers 100 --devices 100000 --duration 30 --pipeline 8
    tsls-load --count 1000 --mix first=1 --no-report --json
    tsls-load --terminal-servers 20 --versions 2003,2008R2 --mix first=2,repeat=6,renewal=1,per_user=1
    tsls-load --prepare 50000 --mix upgrade=1 --duration 5
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import sys
import time
from array import array

import attrs
from twisted.internet import defer, task

from clients.cli import Interrupted, run
from clients import connection
from clients.connection import ANSWER_TIMEOUT, CONNECT_TIMEOUT, DEFAULT_SERVER, LicenseConnection, add_timeout_options
from tsls.core.model import ProductVersion
from tsls.errors import Code, TslsError
from tsls.public import hardware_id

KINDS = ("first", "repeat", "renewal", "upgrade", "per_user")
DEVICE_KINDS = KINDS[:-1]         # the kinds whose requests name a device
PREPARED = "tsls-load: prepared"  # the line on stderr that says --prepare is done and the run starts
REPORT = "report"                 # the logon_succeeded that follows a logon with a temporary license
DEFAULT_MIX = "first=3,repeat=6,renewal=1"
DRAIN_TIMEOUT = 60.0              # after the end, how long answers still in flight are waited for

# What a device holds, as far as the load generator knows.
NONE, TEMPORARY, VALIDATED, PERMANENT = 0, 1, 2, 3


@attrs.frozen
class LoadConfig:
    server: str = DEFAULT_SERVER
    terminal_servers: int = 10
    versions: tuple[str, ...] = ("2003",)
    per_user_servers: int | None = None      # None: in proportion to the mix's per_user share
    devices: int = 100_000
    users: int | None = None                 # Per User logons draw from this many users (default: devices)
    duration: float | None = None
    count: int | None = None                 # logons to send (reports that follow them are extra)
    prepare: int = 0                         # devices logged on and reported before the run is timed
    mix: tuple[tuple[str, float], ...] = tuple((k, float(v)) for k, v in (("first", 3), ("repeat", 6), ("renewal", 1)))
    pipeline: int = 1
    report: bool = True
    seed: int | None = None
    prefix: str = ""                         # names of terminal servers, machines and users start with it
    connect_timeout: float | None = CONNECT_TIMEOUT
    answer_timeout: float | None = ANSWER_TIMEOUT     # for the hellos; the run's answers end with DRAIN_TIMEOUT

    def weights(self) -> dict[str, float]:
        return dict(self.mix)

    def per_user_count(self) -> int:
        if self.per_user_servers is not None:
            return self.per_user_servers
        w = self.weights()
        total = sum(w.values())
        share = w.get("per_user", 0) / total if total else 0
        if share == 0:
            return 0
        device_share = total - w.get("per_user", 0)
        k = max(1, round(self.terminal_servers * share))
        return min(k, self.terminal_servers - 1) if device_share else self.terminal_servers


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    mix = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if name not in KINDS or not sep:
            raise TslsError(Code.BAD_REQUEST, f"a mix is kind=weight,... with kinds {', '.join(KINDS)}; not {part!r}")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not (value >= 0 and math.isfinite(value)):
            raise TslsError(Code.BAD_REQUEST, f"the weight of {name} must be a number >= 0, not {weight!r}")
        mix[name] = value
    if not any(mix.values()):
        raise TslsError(Code.BAD_REQUEST, "the mix needs at least one kind with a weight above 0")
    return tuple(mix.items())


class Devices:
    """The simulated client devices: each one's names, and the license it keeps (as a Windows
    client keeps its MSLicensing key). Device i is first seen at the i-th first logon."""

    def __init__(self, prefix: str, count: int, rng: random.Random) -> None:
        self.prefix = prefix
        self.count = count
        self.rng = rng
        self.seen = 0                       # devices 0..seen-1 have logged on at least once
        self.held = bytearray(count)        # NONE / TEMPORARY / VALIDATED / PERMANENT
        self.busy = bytearray(count)        # a request for this device is in flight
        self.tokens: dict[int, bytes] = {}  # the JSON of the token each device presents
        self.cal_holders: list[int] = []
        self.validated: list[int] = []      # devices holding a reported temporary license (upgrade draws these)
        self._validated_at: dict[int, int] = {}
        self._fields: dict[int, bytes] = {}

    def fields(self, i: int) -> bytes:
        """The request fields naming device i (its HWID as clients.tssim computes it)."""
        f = self._fields.get(i)
        if f is None:
            machine = f"{self.prefix}PC{i:07d}"
            f = json.dumps({"hwid": hardware_id(machine), "machine": machine}, separators=(",", ":"))[1:-1].encode()
            self._fields[i] = f
        return f

    def new(self) -> int | None:
        if self.seen >= self.count:
            return None
        i = self.seen
        self.seen += 1
        return i

    def _idle(self, draw) -> int | None:
        for _ in range(8):
            i = draw()
            if not self.busy[i]:
                return i
        return None

    def seen_idle(self) -> int | None:
        if not self.seen:
            return None
        return self._idle(lambda: self.rng.randrange(self.seen))

    def cal_holder_idle(self) -> int | None:
        if not self.cal_holders:
            return None
        return self._idle(lambda: self.cal_holders[self.rng.randrange(len(self.cal_holders))])

    def validated_idle(self) -> int | None:
        if not self.validated:
            return None
        return self._idle(lambda: self.validated[self.rng.randrange(len(self.validated))])

    def any_idle(self) -> int | None:
        return self._idle(lambda: self.rng.randrange(self.count))

    def keep(self, i: int, lic: dict) -> None:
        before = self.held[i]
        if lic["kind"] == "permanent":
            self.held[i] = PERMANENT
            if before != PERMANENT:
                self.cal_holders.append(i)
        elif before != PERMANENT:
            self.held[i] = VALIDATED if lic["validated"] else TEMPORARY
        if self.held[i] == VALIDATED and i not in self._validated_at:
            self._validated_at[i] = len(self.validated)
            self.validated.append(i)
        elif self.held[i] != VALIDATED and i in self._validated_at:     # upgraded: out of the pool
            at, last = self._validated_at.pop(i), self.validated.pop()
            if last != i:
                self.validated[at] = last
                self._validated_at[last] = at
        self.tokens[i] = json.dumps(lic["token"]).encode()


class Stats:
    def __init__(self) -> None:
        self.sent = collections.Counter()           # requests by what was asked
        self.outcomes = collections.Counter()       # answers by outcome
        self.refusals = collections.Counter()       # error answers by code
        self.latencies = array("d")
        self.answers = 0
        self.started = 0.0
        self.last_answer = 0.0
        self.unanswered = 0
        self.interrupted = 0                        # requests in flight when Ctrl-C ended the run


class LoadConnection(LicenseConnection):
    """One simulated terminal server: hello through the client library, then a lean hot path that
    keeps up to ``window`` requests in flight and matches answers by id."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.load: Load | None = None
        self.per_user = False
        self.window = 1
        self.inflight: dict = {}
        self.followups: collections.deque = collections.deque()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.load is not None:
            self.fill()

    def lineReceived(self, line: bytes) -> None:
        reply = json.loads(line)
        entry = self.inflight.pop(reply.get("id"), None)
        if entry is None:
            return super().lineReceived(line)
        self.load.answered(self, entry, reply)

    def fill(self) -> None:
        load = self.load
        devices = load.devices
        out = []
        ids = self._ids
        while len(self.inflight) < self.window:
            if self.followups:
                device = self.followups.popleft()
                what = REPORT
                rid = next(ids)
                line = b'{"id":%d,"op":"logon_succeeded",%s,"license":%s}\n' % (
                    rid, devices.fields(device), devices.tokens[device])
            else:
                what, device = load.pick(self.per_user)
                if what is None:
                    if not self.inflight and not load.stopping:
                        load.stalled.append(self)     # filled again when a device is free
                    break
                rid = next(ids)
                line = b'{"id":%d,"op":"logon",%s,"user":%s,"license":%s}\n' % (
                    rid, devices.fields(device), load.user(what, device), devices.tokens.get(device, b"null"))
            self.inflight[rid] = (time.perf_counter(), what, device)
            load.stats.sent[what] += 1
            out.append(line)
        if out:
            self.transport.write(b"".join(out))

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        if self.load is not None:
            self.load.lost(self)


class Load:
    """The run: picks what each terminal server asks next, counts what comes back."""

    def __init__(self, reactor, config: LoadConfig) -> None:
        self.reactor = reactor
        self.config = config
        self.rng = random.Random(config.seed)
        self.devices = Devices(config.prefix, config.devices, self.rng)
        self.users = config.users or config.devices
        self.stats = Stats()
        self.connections: list[LoadConnection] = []
        self.stalled: list[LoadConnection] = []
        self.stopping = False
        self.interrupted = False
        self.logons = 0
        self.outstanding = 0                # devices with a request in flight or a report to send
        self.done = defer.Deferred()
        self._drain = None
        self.notice = None                      # called with a line to show a person (the CLI: stderr)
        self.preparing = config.prepare > 0    # logging devices on (and reporting them) before the timed run
        self._prepare_left = config.prepare
        self._prepared: defer.Deferred | None = None
        w = config.weights()
        kinds = [k for k in DEVICE_KINDS if w.get(k, 0) > 0]
        self._device_kinds = kinds or ["first"]
        total = sum(w[k] for k in kinds)
        acc, self._device_cumulative = 0.0, []
        for k in kinds:
            acc += w[k] / total
            self._device_cumulative.append(acc)
        self._user_names: dict[int, bytes] = {}

    # --- what to ask next -----------------------------------------------------------------------

    def pick(self, per_user: bool) -> tuple:
        """(what, device), or (None, None) when the run is ending or no device is idle."""
        if self.stopping:
            return None, None
        if self.preparing:
            device = self.devices.new() if self._prepare_left and not per_user else None
            if device is None:
                return None, None
            self._prepare_left -= 1
            self.outstanding += 1
            self.devices.busy[device] = 1
            return "first", device
        count = self.config.count
        if count is not None and self.logons >= count:
            self.stop()
            return None, None
        devices = self.devices
        if per_user:
            what, device = "per_user", devices.any_idle()
        else:
            what = self._device_kinds[0]
            if len(self._device_kinds) > 1:
                r = self.rng.random()
                for kind, edge in zip(self._device_kinds, self._device_cumulative):
                    if r < edge:
                        what = kind
                        break
            device = None
            if what == "upgrade":
                device = devices.validated_idle()
                if device is None:          # none left (or none idle): the device's next logon is a repeat
                    what = "repeat"
            if what == "renewal":
                device = devices.cal_holder_idle()
                if device is None:
                    what = "repeat"
            if what == "repeat" and device is None:
                device = devices.seen_idle()
                if device is None:
                    what = "first"
            if what == "first":
                device = devices.new()
                if device is None:          # every device has logged on once: they come back
                    what, device = "repeat", devices.seen_idle()
        if device is None:
            return None, None
        self.logons += 1
        self.outstanding += 1
        devices.busy[device] = 1
        return what, device

    def user(self, what: str, device: int) -> bytes:
        """A device's logons are its own user's; Per User logons draw users from the pool."""
        n = self.rng.randrange(self.users) if what == "per_user" else device
        name = self._user_names.get(n)
        if name is None:
            name = self._user_names[n] = json.dumps(f"{self.config.prefix}user{n}").encode()
        return name

    # --- answers ----------------------------------------------------------------------------------

    def answered(self, conn: LoadConnection, entry: tuple, reply: dict) -> None:
        sent_at, what, device = entry
        now = time.perf_counter()
        stats = self.stats
        stats.latencies.append(now - sent_at)
        stats.answers += 1
        stats.last_answer = now
        if reply.get("ok"):
            result = reply.get("result") or {}
            stats.outcomes[result.get("outcome")] += 1
            lic = result.get("license")
            if lic:
                self.devices.keep(device, lic)
                if (what is not REPORT and (self.config.report or self.preparing) and lic["kind"] == "temporary"
                        and not lic["validated"]):
                    conn.followups.append(device)      # the device stays busy until it is reported
                    return
        else:
            stats.refusals[(reply.get("error") or {}).get("code", "?")] += 1
        self._release(device)

    def _release(self, device: int) -> None:
        self.devices.busy[device] = 0
        self.outstanding -= 1
        if self.preparing:
            if (not self.outstanding and (not self._prepare_left or self.stopping) and self._prepared is not None
                    and not self._prepared.called):
                self._prepared.callback(None)
            return
        if self.stalled and not self.stopping:
            stalled = self.stalled.pop()
            if stalled.load is not None:
                self.reactor.callLater(0, stalled.fill)
        if self.stopping and not self.outstanding and not self.done.called:
            self._finish()

    def lost(self, conn: LoadConnection) -> None:
        self.stats.refusals["CONNECTION_LOST"] += len(conn.inflight)
        gone = [device for _, _, device in conn.inflight.values()]
        gone += [device for device in conn.followups if device not in gone]
        conn.inflight.clear()
        conn.followups.clear()
        conn.load = None
        if all(c.load is None for c in self.connections):
            self.stop()
        for device in gone:
            self._release(device)

    # --- the run ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Send nothing new; the run ends when every answer is in (or after DRAIN_TIMEOUT)."""
        if self.stopping:
            return
        self.stopping = True
        if not self.outstanding:
            self._finish()
        else:
            self._drain = self.reactor.callLater(DRAIN_TIMEOUT, self._give_up)

    def interrupt(self) -> None:
        """Stop at once: requests in flight are counted as interrupted, and the run ends."""
        self.interrupted = True
        self.stopping = True
        for conn in self.connections:
            self.stats.interrupted += len(conn.inflight)
            conn.inflight.clear()
            conn.followups.clear()
            conn.load = None
        self._finish()

    def _give_up(self) -> None:
        """Answers that never came: counted, and the run ends."""
        self._drain = None
        self.stats.unanswered = self.outstanding
        for conn in self.connections:
            conn.inflight.clear()
            conn.followups.clear()
        self._finish()

    def _finish(self) -> None:
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        if not self.done.called:
            self.done.callback(None)

    async def _prepare(self, conns) -> None:
        """Log ``prepare`` new devices on and report each, pipelined, before the clock starts; what
        they were asked and answered is not counted in the run's figures."""
        self._prepared = defer.Deferred()
        started = time.perf_counter()
        for conn in conns:
            conn.window = self.config.pipeline
            conn.load = self
        for conn in conns:
            if conn.load is not None:
                conn.fill()
        if self.outstanding or self._prepare_left:
            await self._prepared
        self.preparing = False
        self.stalled.clear()
        for conn in conns:
            conn.load = None
        self.stats = Stats()
        if self.stopping:       # every connection was lost while preparing
            self._finish()
        elif self.notice is not None:
            self.notice(f"{PREPARED} {self.config.prepare:,} devices (logged on and reported) in "
                        f"{time.perf_counter() - started:.1f} s; the run starts now")

    async def run(self, progress=None) -> dict:
        config = self.config
        per_user = config.per_user_count()
        try:
            conns = await defer.gatherResults([connect(self.reactor, config.server, config.connect_timeout,
                                                       config.answer_timeout)
                                               for _ in range(config.terminal_servers)], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        self.connections = conns
        timer = ticker = None
        try:
            hellos = []
            for n, conn in enumerate(conns):
                version = config.versions[n % len(config.versions)]
                conn.per_user = n >= config.terminal_servers - per_user
                mode = "per_user" if conn.per_user else "per_device"
                hellos.append(conn.hello_terminal_server(f"{config.prefix}TS{n:04d}", version, mode))
            try:
                await defer.gatherResults(hellos, consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
            if self.preparing:
                try:
                    await self._prepare(conns)
                except defer.CancelledError:    # Ctrl-C while preparing
                    self.interrupt()
            self.stats.started = time.perf_counter()
            if config.duration is not None:
                timer = self.reactor.callLater(config.duration, self.stop)
            if progress is not None:
                ticker = task.LoopingCall(progress, self)
                ticker.clock = self.reactor
                ticker.start(0.25, now=False)
            for conn in conns:
                conn.window = config.pipeline
                conn.load = self
            for conn in conns:
                if conn.load is not None:
                    conn.fill()
            try:
                await self.done
            except defer.CancelledError:    # Ctrl-C: what was in flight is interrupted, not lost
                self.interrupt()
            if ticker is not None:
                ticker.stop()
                ticker = None
                progress(self, final=True)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            if ticker is not None:
                ticker.stop()
            for conn in conns:
                conn.load = None
                if conn.transport.connected:
                    conn.transport.loseConnection()
        return summary(self)


def connect(reactor, endpoint: str, connect_timeout: float | None = CONNECT_TIMEOUT,
            answer_timeout: float | None = ANSWER_TIMEOUT) -> defer.Deferred:
    """As clients.connection.connect, with the load generator's protocol (the timeout covers the hello;
    the hot path's answers are waited for until the run's end and DRAIN_TIMEOUT)."""
    return connection.connect(reactor, endpoint, connect_timeout, answer_timeout, protocol=LoadConnection)


GRANTS = ("temporary_issued", "upgraded", "renewed")


def percentile(ordered, p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(load: Load) -> dict:
    stats = load.stats
    config = load.config
    elapsed = max(stats.last_answer - stats.started, 1e-9) if stats.answers else 0.0
    ordered = sorted(stats.latencies)
    ms = {f"p{p}": round(percentile(ordered, p) * 1000, 3) for p in (50, 90, 99)}
    ms["max"] = round((ordered[-1] if ordered else 0.0) * 1000, 3)
    ms["mean"] = round((sum(ordered) / len(ordered) if ordered else 0.0) * 1000, 3)
    return {
        "server": config.server,
        "terminal_servers": config.terminal_servers,
        "per_user_servers": config.per_user_count(),
        "pipeline": config.pipeline,
        "mix": dict(config.mix),
        "requests": sum(stats.sent.values()),
        "requests_by_kind": dict(stats.sent),
        "answers": stats.answers,
        "outcomes": dict(stats.outcomes),
        "grants": sum(stats.outcomes.get(k, 0) for k in GRANTS),
        "refusals": dict(stats.refusals),
        "unanswered": stats.unanswered,
        "interrupted": load.interrupted,
        "interrupted_requests": stats.interrupted,
        "devices_seen": load.devices.seen,
        "elapsed_s": round(elapsed, 3),
        "throughput": round(stats.answers / elapsed, 1) if elapsed else 0.0,
        "latency_ms": ms,
    }


class ProgressBar:
    """A one-line progress bar on a terminal, rewritten in place a few times a second."""

    WIDTH = 30

    def __init__(self, out=None) -> None:
        self.out = out or sys.stderr
        self._last = (None, 0)

    def __call__(self, load: Load, final: bool = False) -> None:
        stats, config = load.stats, load.config
        now = time.perf_counter()
        elapsed = now - stats.started
        if config.count is not None:
            done = load.logons / config.count if config.count else 1.0
        else:
            done = elapsed / config.duration if config.duration else 1.0
        done = 1.0 if final else min(done, 1.0)
        last_t, last_n = self._last
        rate = (stats.answers - last_n) / (now - last_t) if last_t and now > last_t else 0.0
        if final:
            rate = stats.answers / elapsed if elapsed > 0 else 0.0
        self._last = (now, stats.answers)
        filled = int(done * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        refused = sum(stats.refusals.values())
        self.out.write(f"\r[{bar}] {done:4.0%}  {stats.answers:>10,} answers  {rate:>9,.0f}/s  "
                       f"{refused:,} refused  {elapsed:6.1f}s ")
        if final:
            self.out.write("\n")
        self.out.flush()


def print_summary(s: dict, out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"server        {s['server']}: {s['terminal_servers']} terminal servers "
      f"({s['per_user_servers']} Per User), pipeline {s['pipeline']}")
    p(f"requests      {s['requests']:,}  ({_counts(s['requests_by_kind'])})")
    p(f"answers       {s['answers']:,} in {s['elapsed_s']:.2f} s: {s['throughput']:,.0f}/s")
    p(f"outcomes      {_counts(s['outcomes'])}")
    grants = {k: v for k, v in s["outcomes"].items() if k in GRANTS}
    p(f"grants        {s['grants']:,}" + (f"  ({_counts(grants)})" if grants else ""))
    refused = sum(s["refusals"].values())
    p(f"refusals      {refused:,}" + (f"  ({_counts(s['refusals'])})" if refused else ""))
    if s["unanswered"]:
        p(f"unanswered    {s['unanswered']:,}")
    if s["interrupted"]:
        p(f"interrupted   by Ctrl-C, {s['interrupted_requests']:,} requests in flight (not counted as answers)")
    ms = s["latency_ms"]
    p(f"latency (ms)  p50 {ms['p50']:.2f}  p90 {ms['p90']:.2f}  p99 {ms['p99']:.2f}  max {ms['max']:.2f}")


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "-"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsls-load", description="Load the license server with simulated terminal "
                                "servers logging devices and users on.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="ENDPOINT",
                   help="the license server's Twisted client endpoint (default: %(default)s)")
    add_timeout_options(p)
    p.add_argument("-n", "--terminal-servers", type=_positive, default=10, metavar="N",
                   help="simulated terminal servers, one connection each (default: %(default)s)")
    p.add_argument("--versions", default="2003", help="Windows versions they emulate, comma-separated, "
                   "assigned in turn (default: %(default)s)")
    p.add_argument("--per-user-servers", type=int, metavar="K",
                   help="how many of them run in Per User mode (default: in proportion to the mix's per_user)")
    p.add_argument("-m", "--devices", type=_positive, default=100_000, metavar="M",
                   help="client devices (default: %(default)s)")
    p.add_argument("--users", type=_positive, help="users Per User logons draw from (default: --devices)")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--duration", type=float, metavar="SECONDS", help="send for this long (default: 10)")
    end.add_argument("--count", type=int, metavar="LOGONS", help="send this many logons, then stop")
    p.add_argument("--mix", default=DEFAULT_MIX, help="weights of first, repeat, renewal, upgrade and per_user logons "
                   "(default: %(default)s)")
    p.add_argument("--prepare", type=int, default=0, metavar="N",
                   help="before the run is timed, log N new devices on and report each (for --mix upgrade=1); "
                   "not counted in the figures (default: %(default)s)")
    p.add_argument("--pipeline", type=_positive, default=1, metavar="P",
                   help="requests in flight on each connection; 1 waits for each answer (default: %(default)s)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not report logons with a temporary license as successful (no upgrades)")
    p.add_argument("--seed", type=int, help="seed for the choices, so a run can be replayed")
    p.add_argument("--prefix", help="prefix of the names (default: random, so each run's devices are new)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when standard error is a terminal)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def config_from(args) -> LoadConfig:
    versions = tuple(v.strip() for v in args.versions.split(","))
    for v in versions:
        ProductVersion.parse(v)
    mix = parse_mix(args.mix)
    prefix = args.prefix if args.prefix is not None else os.urandom(3).hex() + "-"
    duration = args.duration if args.duration is not None or args.count is not None else 10.0
    config = LoadConfig(server=args.server, terminal_servers=args.terminal_servers, versions=versions,
                        per_user_servers=args.per_user_servers, devices=args.devices, users=args.users,
                        duration=duration, count=args.count, mix=mix, pipeline=args.pipeline, report=args.report,
                        prepare=args.prepare,
                        seed=args.seed, prefix=prefix, connect_timeout=args.connect_timeout,
                        answer_timeout=args.timeout)
    k = config.per_user_count()
    weights = config.weights()
    if not 0 <= k <= config.terminal_servers:
        raise TslsError(Code.BAD_REQUEST, f"--per-user-servers must be from 0 to {config.terminal_servers}")
    if weights.get("per_user", 0) > 0 and k == 0:
        raise TslsError(Code.BAD_REQUEST, "the mix has per_user logons but no terminal server runs in Per User mode")
    if k < config.terminal_servers and not any(weights.get(kind, 0) > 0
                                               for kind in DEVICE_KINDS):
        raise TslsError(Code.BAD_REQUEST, "Per Device terminal servers need first, repeat, renewal or upgrade in the mix")
    if not 0 <= config.prepare <= config.devices:
        raise TslsError(Code.BAD_REQUEST, f"--prepare must be from 0 to --devices ({config.devices})")
    return config


async def run_load(reactor, config: LoadConfig, progress=None, notice=None) -> dict:
    """Run one load against a license server and return its summary; ``notice(line)`` is told when
    the preparation (``prepare``) is over and the timed run starts."""
    load = Load(reactor, config)
    load.notice = notice
    return await load.run(progress)


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    async def body(reactor):
        config = config_from(args)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        result = await run_load(reactor, config, ProgressBar() if show else None,
                                notice=lambda line: print(line, file=sys.stderr, flush=True))
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print_summary(result)
        if result["interrupted"]:
            raise Interrupted(f"{result['interrupted_requests']} requests were in flight")

    return run(body, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
