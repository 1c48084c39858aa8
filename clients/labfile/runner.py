"""The shell that plays a planned lab: real daemons as child processes (one per license server, one
Clearinghouse), session hosts driven through the terminal-server simulator's classes over relayed
sockets (links.py), every step and logon in the journal, every expectation judged.

The lab clock stands still at the lab's date and moves only between steps, for every process at once:
the license servers through their administrators' clock operation, the Clearinghouse through the
clock file it reads. So the same file and seed give the same journal, license IDs and dates included.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import attrs
from twisted.internet import defer, utils
from twisted.python.failure import Failure

from clients.connection import LicenseConnection, connect
from clients.labfile import expect
from clients.labfile.journal import Journal
from clients.labfile.links import Link
from clients.labfile.plan import RATE_HOUR, Planned, wave_batches, wave_shares
from clients.labfile.processes import Daemon
from clients.labfile.schema import LINK_KINDS, Lab
from clients.tssim import NOT_CONFIGURED, TRY_NEXT, UNAVAILABLE, DeviceStore, TerminalServer, TerminalServerState
from tsls.clearinghouse.client import ClearinghouseClient
from tsls import directory
from tsls.core.directory import Published, discovery_order
from tsls.core.events import EventId
from tsls.core.reports import Scope
from tsls.core.model import ProductVersion, Program, iso
from tsls.errors import Code, TslsError
from tsls.public import hardware_id, read_secret

REQUEST_TIMEOUT = 30.0       # an administrator's request; a logon's is LOGON_TIMEOUT
LOGON_TIMEOUT = 3.0          # a license server that has not answered a session host in this long is down for the wave
PIPELINE = 64                # a session host's logons in flight on one connection
LIST_LIMIT = 100_000
RDP_TIMEOUT = 60.0           # one real RDP client's connection, xvfb-run's start included
CONTACT = {"first_name": "Lab", "last_name": "Operator", "company": "Test Lab", "country_region": "United States"}


@attrs.frozen
class Result:
    """One judged thing: an expectation, a step that did (or did not) fail as the file said."""
    label: str
    what: str
    ok: bool
    why: tuple[str, ...] = ()


class LabDevices(DeviceStore):
    """The devices' licenses, in memory (a lab's devices live as long as its run)."""

    def __init__(self) -> None:
        self.path, self.data = None, {}

    def save(self) -> None:
        pass


class LabHostState(TerminalServerState):
    """The session hosts' grace periods, on the lab clock rather than the wall clock."""

    def __init__(self, now) -> None:
        self.path, self.data, self._now = None, {}, now

    def now(self, name: str) -> int:
        return self._now()

    def heard_time(self, name: str, server_now: str) -> None:
        pass

    def save(self) -> None:
        pass


class SessionHost(TerminalServer):
    """A session host of the lab: the simulator's terminal server, with the habits of a real one. It
    checks a permanent CAL with more than 7 days left itself, without asking a license server
    [§1, MSQA]; a license server that did not answer in time is skipped for the rest of the
    wave, as a host that found it unreachable moves down its list; and it logs its share of a wave's
    devices on together, pipelined on its one connection to each license server. One connection
    answers in order, so the license server decides in the same order on every run."""

    def __init__(self, reactor, spec, links: list[Link], devices, state) -> None:
        super().__init__(reactor, spec.name, spec.version.value, NOT_CONFIGURED if spec.mode is None else spec.mode.value,
                         [link.endpoint for link in links],
                         devices, state, connect_timeout=LOGON_TIMEOUT, answer_timeout=LOGON_TIMEOUT)
        self.names = {link.endpoint: link.license_server for link in links}
        self.unreachable: set[str] = set()
        self.secrets: dict[str, str] = {}        # license server -> the secret its registration gave
        self.users: dict[str, str] = {}          # device -> the user who logs on at it (the lab's fleets)

    async def _connection(self, server):
        if server in self.unreachable:
            raise TslsError(Code.SERVER_UNREACHABLE, "it did not answer earlier in this wave")
        self.secret = self.secrets.get(self.names[server])     # each license server registered it on its own
        try:
            return await super()._connection(server)
        except TslsError as e:
            if e.code in UNAVAILABLE:
                self.unreachable.add(server)
            raise

    def begin(self, machines: list[str]) -> "_Share":
        """A wave's share of devices for this host: those whose CAL the host checks itself are done."""
        share = _Share(self, machines, {m: self.devices.get(m, self.version) for m in machines})
        if self.mode == NOT_CONFIGURED:      # no license server is asked: the grace period decides
            share.rows.update({m: self._not_configured(m, self.users[m], share.held[m]).row() for m in machines})
            return share
        now = self.state.now(self.name)
        grace_over = self.state.grace(self.name, ProductVersion.parse(self.version)).ended_at is not None
        for m in machines:
            if expect.due_for_renewal(share.held[m], now):
                share.pending.append(m)
            else:
                if not grace_over:          # a permanent CAL ends the grace period; once ended, nothing to note
                    self._note_connection(share.held[m])
                    grace_over = True
                share.rows[m] = share.row(m, outcome="existing", message="the session host checked the CAL itself",
                                          license=share.held[m])
        return share

    async def attempt(self, share: "_Share", server: str, report: bool) -> None:
        """Ask ``server`` for the devices still pending; those it could not serve move on to the next."""
        try:
            conn = await self._connection(server)
        except TslsError as e:
            share.refusals.update({m: e for m in share.pending})
            if e.code not in TRY_NEXT:
                share.stopped = True
            return
        answers = await _pipelined(conn, [("logon", dict(hwid=hardware_id(m), machine=m, user=self.users[m],
                                                           license=share.held[m] and share.held[m]["token"]))
                                          for m in share.pending])
        if any(isinstance(a, TslsError) and a.code in UNAVAILABLE for a in answers):
            self.unreachable.add(server)
        reports, retry = [], []
        for m, answer in zip(share.pending, answers):
            if isinstance(answer, TslsError):
                share.refusals[m] = answer
                if answer.code in TRY_NEXT:
                    retry.append(m)
                else:
                    share.rows[m] = self._without_server(share.row(m), answer, share.held[m])
                continue
            lic = answer["license"]
            share.rows[m] = share.row(m, served_by=server, outcome=answer["outcome"], reason=answer["reason"],
                                      message=answer["message"], license=lic)
            self._note_connection(lic)
            if lic is not None:
                self.devices.put(m, self.version, lic)
                if lic["kind"] != "permanent":
                    reports.append(("logon_succeeded", dict(hwid=hardware_id(m), license=lic["token"])))
        if report and reports:
            await _pipelined(conn, reports)
        share.pending = retry

    def finish(self, share: "_Share") -> list[dict]:
        for m in share.pending:
            share.rows[m] = self._without_server(share.row(m), share.refusals.get(m), share.held[m])
        share.pending = []
        return [share.rows[m] for m in share.machines]


@attrs.define
class _Share:
    host: SessionHost
    machines: list
    held: dict
    pending: list = attrs.Factory(list)
    rows: dict = attrs.Factory(dict)
    refusals: dict = attrs.Factory(dict)
    stopped: bool = False

    def row(self, machine: str, **fields) -> dict:
        return {"machine": machine, "user": self.host.users[machine], "served_by": None, "license": None, "reason": None,
                **fields}


async def _all(coroutines) -> list:
    """Run them together; the first failure is raised as itself."""
    try:
        return await defer.gatherResults([defer.ensureDeferred(c) for c in coroutines], consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()


async def _pipelined(conn, requests: list[tuple[str, dict]], window: int = PIPELINE) -> list:
    """Send the requests on one connection, at most ``window`` in flight, in order; each answer or
    TslsError comes back in the same order."""
    results: list = [None] * len(requests)
    semaphore = defer.DeferredSemaphore(window)

    def keep(value, i):
        results[i] = value.value if isinstance(value, Failure) and value.check(TslsError) else value
        return None if not isinstance(value, Failure) or value.check(TslsError) else value

    waits = [semaphore.run(conn.request, op, **fields).addBoth(keep, i) for i, (op, fields) in enumerate(requests)]
    await defer.gatherResults(waits, consumeErrors=True)
    return results


class LabRun:
    def __init__(self, reactor, lab: Lab, steps: list[Planned], workdir: str, journal: Journal,
                 progress=None, log_logons: bool = True, console=None) -> None:
        self.reactor, self.lab, self.steps, self.workdir, self.journal = reactor, lab, steps, workdir, journal
        self.progress = progress or (lambda *a: None)
        self.log_logons = log_logons
        # console(name, endpoint, link): the license servers serve the web console; called with a one-time
        # login link each time one starts (and by console_links). Links stay out of the journal.
        self.console = console
        self.at = 0
        self.results: list[Result] = []
        self.counts: dict[str, int] = {}
        self.clock_path = os.path.join(workdir, "lab-clock")
        self.daemons: dict[str, Daemon] = {}
        self.admins: dict[str, LicenseConnection] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.hosts: dict[str, SessionHost] = {}
        self.devices = LabDevices()
        self.state = LabHostState(lambda: self.now)
        self.codes: dict[str, str] = {}          # purchase -> retail code (never journaled)
        self.pack_names: dict[str, str] = {}     # key pack ID -> purchase
        self.moved: dict[str, str] = {}          # purchase -> the license server it was migrated to
        self.server_ids: dict[str, str] = {}     # license server -> its license server ID, once activated
        self.clock_behind: set[str] = set()
        self.ch_url = ""
        self._closed = False

    @property
    def now(self) -> int:
        return self.lab.start + self.at

    def note(self, kind: str, **fields) -> dict:
        return self.journal.write(iso(self.now), kind, **fields)

    # --- the whole run ----------------------------------------------------------------------------

    async def play(self, keep: bool = False) -> list[Result]:
        """Start the lab and play every step; then stop everything, unless ``keep`` (the caller closes)."""
        played = False
        try:
            await self.start()
            for number, step in enumerate(self.steps, 1):
                await self.advance(step.at)
                self.progress(number, len(self.steps), iso(self.now), step)
                await self.run_step(step)
            played = True
        finally:
            if not (keep and played):
                await self.close()
        return self.results

    async def console_links(self) -> None:
        """A fresh one-time console login link for each running license server, given to ``console``."""
        for ls in self.lab.license_servers:
            if self.daemons[ls.name].state == "running" and ls.name in self.admins:
                await self._console_link(ls.name)

    async def _console_link(self, name: str) -> None:
        link = await self.admin(name, "console_link", role="admin")
        self.console(name, f"tcp:127.0.0.1:{self.daemons[name].port}", link["url"])

    async def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self._write_clock()
        ch_dir = os.path.join(self.workdir, "clearinghouse")
        os.makedirs(ch_dir, exist_ok=True)
        ch = Daemon(self.reactor, "clearinghouse", ["clearinghouse", "--data-dir", ch_dir, "--listen",
                    "tcp:0:interface=127.0.0.1", "--lab-clock-file", self.clock_path],
                    os.path.join(self.workdir, "clearinghouse.log"), part="clearinghouse")
        self.daemons["clearinghouse"] = ch
        port = await ch.start()
        self.ch_url = f"http://127.0.0.1:{port}"
        await _all([self._start_license_server(ls.name, 0) for ls in self.lab.license_servers])
        users = {m: u for fleet in self.lab.fleets for m, u in fleet.user_names().items()}
        faulted = {(p.args["session_host"], p.args["license_server"]) for p in self.steps if p.kind in LINK_KINDS}
        discovered = self._publish_and_discover()
        for host in self.lab.session_hosts:
            links = []
            for name in host.license_servers:
                link = Link(self.reactor, host.name, name, relay=(host.name, name) in faulted)
                link.upstream_port = self.daemons[name].port
                await link.start()
                self.links[(host.name, name)] = link
                links.append(link)
            self.hosts[host.name] = SessionHost(self.reactor, host, links, self.devices, self.state)
            self.hosts[host.name].users = users
        await self._start_rdp_fronts()
        self.note("started", license_servers=[ls.name for ls in self.lab.license_servers],
                  session_hosts=[h.name for h in self.lab.session_hosts], seed=self.lab.seed,
                  **({"discovered": discovered} if discovered else {}))
        for purchase in self.lab.purchases:
            await self._sell(purchase)

    def _publish_and_discover(self) -> dict[str, list[str]]:
        """Publish the license servers in the lab's directory (WORK/directory.json, tsls/directory.py), in
        file order with the file's scopes, and let each discovering host read it: its own list, then
        forest-wide servers, then the domain's. The plan worked the same lists out from the file; they
        must agree."""
        path = os.path.join(self.workdir, "directory.json")
        endpoints = {ls.name: f"tcp:127.0.0.1:{self.daemons[ls.name].port}" for ls in self.lab.license_servers}
        for ls in self.lab.license_servers:
            directory.publish(path, Published(endpoints[ls.name], ls.scope or Scope.DOMAIN))
        names = {e: n for n, e in endpoints.items()}
        found = {}
        for host in self.lab.session_hosts:
            if host.discover:
                order = discovery_order(tuple(endpoints[n] for n in host.specified), directory.read(path))
                found[host.name] = [names[e] for e in order]
                if tuple(found[host.name]) != host.license_servers:
                    raise TslsError(Code.INTERNAL_ERROR, f"session host {host.name} discovered {found[host.name]}, "
                                                         f"the plan said {list(host.license_servers)}")
        return found

    async def _start_license_server(self, name: str, port: int) -> None:
        data = os.path.join(self.workdir, name)
        os.makedirs(data, exist_ok=True)
        daemon = self.daemons.get(name) or Daemon(self.reactor, name, [], os.path.join(self.workdir, f"{name}.log"))
        self.daemons[name] = daemon
        console = ["--console-listen", "tcp:0:interface=127.0.0.1"] if self.console else []
        await daemon.start(["server", "--data-dir", data, "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--seed", f"{self.lab.seed}:{name}", "--lab-start", iso(self.lab.start),
                            "--server-version", self.lab.license_server(name).version.value,
                            "--clearinghouse-url", self.ch_url, *console])
        for (host, server), link in self.links.items():
            if server == name:
                link.upstream_port = daemon.port
        conn = await self._timed(connect(self.reactor, f"tcp:127.0.0.1:{daemon.port}", answer_timeout=REQUEST_TIMEOUT))
        await self._timed(conn.hello_admin(read_secret(os.path.join(data, "admin.secret"))))
        self.admins[name] = conn
        self.clock_behind.add(name)
        await self._catch_up(name)
        if self.console:
            await self._console_link(name)

    def _timed(self, d):
        return defer.ensureDeferred(d).addTimeout(REQUEST_TIMEOUT, self.reactor)

    async def admin(self, name: str, op: str, /, **fields):
        daemon = self.daemons[name]
        if daemon.state != "running" or name not in self.admins:
            raise TslsError(Code.SERVER_UNREACHABLE, f"license server {name} is {daemon.state if daemon.state != 'ended' else 'down'}")
        return await self.admins[name].request(op, **fields)

    async def close(self) -> None:
        """Stop everything this run started: links, connections, processes. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            for conn in host.connections.values():
                conn.transport.abortConnection()
        for conn in self.admins.values():
            conn.transport.abortConnection()
        await defer.DeferredList([defer.maybeDeferred(link.stop) for link in self.links.values()], consumeErrors=True)
        await defer.DeferredList([d.stop() for d in self.daemons.values()], consumeErrors=True)
        self.journal.close()

    def stop_now(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop_now()

    # --- the clock ----------------------------------------------------------------------------------

    def _write_clock(self) -> None:
        tmp = self.clock_path + ".new"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(iso(self.now))
        os.replace(tmp, self.clock_path)

    async def advance(self, at: int) -> None:
        if at <= self.at:
            return
        self.at = at
        self._write_clock()
        self.clock_behind.update(self.admins)
        for name in list(self.admins):
            await self._catch_up(name)

    async def _catch_up(self, name: str) -> None:
        """Move a license server's clock to the lab's, when it can answer (a stopped or killed one
        catches up when it resumes or restarts)."""
        if name not in self.clock_behind or self.daemons[name].state != "running":
            return
        status = await self.admin(name, "status")
        if status["now"] < iso(self.now):
            await self.admin(name, "set_clock", to=iso(self.now))
        self.clock_behind.discard(name)

    # --- steps --------------------------------------------------------------------------------------

    async def run_step(self, step: Planned) -> None:
        handler = getattr(self, f"do_{step.kind}")
        try:
            await handler(step)
        except TslsError as e:
            wanted = step.args.get("expect_error")
            if wanted == e.code.value:
                self.note("step", step=step.step, do=step.kind, outcome="refused as expected", code=e.code.value)
                self.judge(step, f"{step.kind} refused with {wanted}", [])
            else:
                self.note("step", step=step.step, do=step.kind, outcome="failed", code=e.code.value, message=e.message)
                self.judge(step, step.kind, [f"{step.kind} failed: {e.code.value}: {e.message}"])
            return
        if step.args.get("expect_error"):
            self.judge(step, f"{step.kind} refused with {step.args['expect_error']}",
                       [f"{step.kind} succeeded; the file expected {step.args['expect_error']}"])

    def judge(self, step: Planned, what: str, failures: list[str]) -> None:
        result = Result(step.label, what, not failures, tuple(failures))
        self.results.append(result)
        self.note("expectation", step=step.step, label=step.label, what=what, ok=result.ok, why=list(failures))

    async def _sell(self, purchase) -> None:
        body = {"program": purchase.program.value, "product_version": purchase.version.value,
                "cal_type": purchase.cal_type.value, "quantity": purchase.quantity}
        digest = hashlib.sha256(f"{self.lab.seed}|{purchase.name}".encode()).hexdigest().upper()
        if purchase.program is Program.RETAIL:
            body["retail_code"] = digest[:25]
        elif purchase.program is Program.OPEN:
            body.update(license_number=str(int(digest[:12], 16))[:8].rjust(8, "1"), authorization_number=digest[12:27])
        else:
            body.update(agreement_type="select", agreement_number=str(int(digest[:12], 16))[:7].rjust(7, "1"))
        operator = read_secret(os.path.join(self.workdir, "clearinghouse", "operator.secret"))
        sale = await ClearinghouseClient(self.ch_url, operator_secret=operator).sell(body)
        self.codes[purchase.name] = {k: v for k, v in body.items() if k not in ("quantity",)}
        self.note("purchase", purchase=purchase.name, license_server=purchase.license_server, program=purchase.program.value,
                  version=purchase.version.value, cal_type=purchase.cal_type.value, quantity=sale.get("quantity", purchase.quantity))

    async def do_install(self, step: Planned) -> None:
        purchase = self.lab.purchase(step.args["purchase"])
        result = await self.admin(purchase.license_server, "install_key_pack", purchase=self._purchase_body(purchase))
        packs = result if isinstance(result, list) else result.get("key_packs") or [result.get("key_pack", result)]
        for pack in packs:
            if isinstance(pack, dict) and pack.get("key_pack_id"):
                self.pack_names[pack["key_pack_id"]] = purchase.name
        self.note("step", step=step.step, do="install", purchase=purchase.name, license_server=purchase.license_server,
                  outcome="installed")

    def _purchase_body(self, purchase) -> dict:
        ref = self.codes[purchase.name]
        if purchase.program is Program.RETAIL:
            return {"program": "retail", "retail_code": ref["retail_code"]}
        return {**ref, "quantity": purchase.quantity}

    async def do_recover(self, step: Planned) -> None:
        purchase = self.lab.purchase(step.args["purchase"])
        result = await self.admin(self._pack_server(purchase.name), "recover", purchase=self._purchase_body(purchase))
        for pack in result.get("key_packs", []):
            self.pack_names[pack["key_pack_id"]] = purchase.name
        self.note("step", step=step.step, do="recover", purchase=purchase.name, license_server=purchase.license_server,
                  outcome="recovered", key_packs=len(result.get("key_packs", [])))

    def _pack_server(self, name: str) -> str:
        """The license server a key pack (a purchase, or the CALs a convert step named) is on."""
        if name in self.moved:
            return self.moved[name]
        for step in self.lab.steps:
            if step.do == "convert" and step.args.get("into") == name:
                return self._pack_server(step.args["key_pack"])
        return self.lab.purchase(name).license_server

    async def do_convert(self, step: Planned) -> None:
        """The wizard's Convert CALs (docs/wizard.md): ``count`` unissued CALs of the key pack become a new
        key pack of the other type, named ``into`` in the journal and in later steps."""
        name = step.args["key_pack"]
        server = self._pack_server(name)
        ids = [i for i, n in self.pack_names.items() if n == name]
        if not ids:
            raise TslsError(Code.NOT_FOUND, f"key pack {name} is not installed on {server}")
        answer = await self.admin(server, "convert_cals", key_pack_id=ids[-1], count=step.args["count"])
        new = answer["key_pack"]
        self.pack_names[new["key_pack_id"]] = step.args.get("into") or f"{name} converted"
        self.note("step", step=step.step, do="convert", key_pack=name, license_server=server, count=step.args["count"],
                  into=self.pack_names[new["key_pack_id"]], cal_type=new["cal_type"], outcome="converted")

    async def do_migrate(self, step: Planned) -> None:
        """The wizard's Migrate CALs (docs/wizard.md), automatic route, run on the target ``to``: the
        purchase moves there through the Clearinghouse. A running source (``replaced``) is named and
        its key packs of the purchase are uninstalled; a source that is down is named by its OS and
        license server ID, and keeps its CALs until its next Clearinghouse contact (event 93 on the target);
        ``not_working`` names nothing."""
        purchase = self.lab.purchase(step.args["purchase"])
        source, target = self._pack_server(purchase.name), step.args["to"]
        reason = step.args.get("reason", "replaced")
        running = self.daemons[source].state == "running" and source in self.admins
        named = {}
        if reason == "replaced":
            if running:
                status = await self.admin(source, "status")
                named = {"license_server_id": status["activation"]["license_server_id"], "running": True}
            else:
                named = {"license_server_id": self.server_ids.get(source), "running": False,
                         "os": self.lab.license_server(source).version.value}
        result = await self.admin(target, "migrate_cals", reason=reason, route="automatic",
                                  source={k: v for k, v in named.items() if v is not None},
                                  purchase=self._purchase_body(purchase))
        self.pack_names[result["key_pack"]["key_pack_id"]] = purchase.name
        self.moved[purchase.name] = target
        removed = None
        if reason == "replaced" and running:
            reference = result["key_pack"]["purchase"]
            ids = [p["key_pack_id"] for p in await self.admin(source, "list_key_packs")
                   if p["purchase"] == reference and p.get("retired_at") is None]
            removed = len(await self.admin(source, "uninstall_key_packs", key_pack_ids=ids))
        self.note("step", step=step.step, do="migrate", purchase=purchase.name, license_server=target, source=source,
                  reason=reason, source_running=running, source_key_packs_removed=removed, outcome="migrated")

    async def do_activate(self, step: Planned) -> None:
        name = step.args["license_server"]
        answer = await self.admin(name, "activate", method="automatic", contact=CONTACT)
        if isinstance(answer, dict) and answer.get("license_server_id"):
            self.server_ids[name] = answer["license_server_id"]
        self.note("step", step=step.step, do="activate", license_server=name, outcome="activated", why=step.why or None)

    async def do_deactivate(self, step: Planned) -> None:
        name = step.args["license_server"]
        await self.admin(name, "deactivate")
        self.note("step", step=step.step, do="deactivate", license_server=name, outcome="deactivated")

    async def do_policy(self, step: Planned) -> None:
        name = step.args["license_server"]
        await self.admin(name, "set_policy", security_group=step.args["security_group"])
        self.note("step", step=step.step, do="policy", license_server=name, security_group=step.args["security_group"])

    async def do_role(self, step: Planned) -> None:
        """The license server's scope (ChangeRole): workgroup, domain or forest (docs/peruser.md)."""
        name, scope = step.args["license_server"], step.args["scope"]
        answer = await self.admin(name, "set_role", role=scope)
        self.note("step", step=step.step, do="role", license_server=name, scope=answer["scope"], outcome="scope set",
                  why=step.why or None)

    async def do_revoke(self, step: Planned) -> None:
        name, machine = step.args["license_server"], step.args["device"]
        held = await self.admin(name, "list_licenses", machine=machine, kind="permanent", status="active")
        if not held:
            raise TslsError(Code.UNKNOWN_LICENSE, f"device {machine} holds no active permanent CAL on {name}")
        await self.admin(name, "revoke", license_id=held[0]["license_id"])
        self.note("step", step=step.step, do="revoke", license_server=name, device=machine,
                  license_id=held[0]["license_id"], outcome="revoked")

    async def do_register(self, step: Planned) -> None:
        """Register a session host on a license server (it will prove its name with the secret) and put
        it in that server's Terminal Server Computers group."""
        host, name = step.args["session_host"], step.args["license_server"]
        registered = await self.admin(name, "register_terminal_server", name=host)
        self.hosts[host].secrets[name] = registered["secret"]
        for conn in self.hosts[host].connections.values():
            conn.transport.abortConnection()         # the next hello proves the name
        await self.admin(name, "group_add", name=host)
        self.note("step", step=None, do="register", session_host=host, license_server=name, outcome="in group")

    async def do_add_product(self, step: Planned) -> None:
        product = self.lab.product(step.args["product"])
        await self.admin(product.license_server, "add_product", name=product.name, server=product.on,
                         per_server_licenses=product.per_server)
        self.note("step", step=None, do="add_product", product=product.name, license_server=product.license_server,
                  per_server=product.per_server)

    async def do_wave(self, step: Planned) -> None:
        hosts = [self.hosts[name] for name in step.args["through"]]
        for host in hosts:
            host.unreachable.clear()
        machines = self.lab.fleet(step.args["fleet"]).machines()
        assigned = wave_shares(self.lab, step.args["fleet"], step.args["through"])
        times = step.args.get("times", 1)
        last = []
        for number, batch in enumerate(wave_batches(self.lab, step.args)):
            if number:                      # a rate: the next batch an hour later on the lab clock
                await self.advance(self.at + RATE_HOUR)
                for host in hosts:          # a license server down an hour ago is tried again
                    host.unreachable.clear()
            for round_ in sorted({r for r, _ in batch}):
                chosen = {m for r, m in batch if r == round_}
                await self._wave_round(step, hosts, [[m for m in ms if m in chosen] for ms in assigned], round_, last)
        tally = expect.tally(last)
        self.note("wave", step=step.step, fleet=step.args["fleet"], through=list(step.args["through"]), times=times,
                  devices=len(machines), **tally)
        if step.args.get("expect"):
            self.judge(step, f"wave of {step.args['fleet']}: {_shown(step.args['expect'])}",
                       expect.compare(step.args["expect"], tally))

    async def _wave_round(self, step: Planned, hosts: list, assigned: list[list[str]], round_: int, last: list) -> None:
        """One round of a wave (or of a batch of it) for these devices of each host; the last round's rows
        go to ``last``. The fleet's RDP clients connect after the simulated devices, one at a time, host by
        host, in fleet order."""
        times, report = step.args.get("times", 1), step.args.get("report", True)
        rdp = self.lab.fleet(step.args["fleet"]).rdp_machines()
        shares = [host.begin([m for m in assigned[i] if m not in rdp]) for i, host in enumerate(hosts)]
        await self._ask_license_servers(shares, report)
        results = [(share.host, host_rows) for share in shares for host_rows in [share.host.finish(share)]]
        for i, host in enumerate(hosts):
            clients = [m for m in assigned[i] if m in rdp]
            if clients:
                results.append((host, [await self._rdp_logon(host, m) for m in clients]))
        for host, rows in results:
            for row in rows:
                row["served_by"] = host.names.get(row.get("served_by"))
                if round_ == times:
                    last.append(row)
                outcome = expect.outcome_of(row)
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
                if self.log_logons:
                    lic = row.get("license") or {}
                    self.note("logon", step=step.step, round=round_, host=host.name, device=row["machine"],
                              **({"rdp": row["rdp"]} if "rdp" in row else {}),
                              outcome=outcome, answer=row.get("outcome"), served_by=row["served_by"],
                              reason=row.get("reason"), license_id=lic.get("license_id"), license=lic.get("kind"),
                              expires=lic.get("expires_at"),
                              key_pack=self.pack_names.get(lic.get("key_pack_id"), lic.get("key_pack_id")))

    async def _rdp_logon(self, host: "SessionHost", machine: str) -> dict:
        """A real RDP client (xfreerdp, headless under xvfb-run) connects to the host's ``tsls-ts rdp``
        with the device's name as its client host name; it keeps its CAL in its own configuration
        directory, as a Windows client keeps it in the registry. The row is what `tsls-ts rdp` said."""
        daemon = self.daemons[f"rdp:{host.name}"]
        config = os.path.join(self.workdir, "rdp-clients", machine)
        os.makedirs(config, exist_ok=True)
        said = defer.Deferred()

        def listen(text):
            try:
                record = json.loads(text)
            except ValueError:
                return
            if isinstance(record, dict) and record.get("machine") == machine and not said.called:
                said.callback(record)
        daemon.lines.append(listen)
        try:
            _, err, status = await utils.getProcessOutputAndValue(
                "xvfb-run", ["-a", "xfreerdp", f"/v:127.0.0.1:{daemon.port}", "/sec:tls", "/cert:ignore",
                             f"/u:{host.users[machine]}", "/p:lab", f"/client-hostname:{machine}", "/auth-only",
                             "/timeout:20000"],
                env={**os.environ, "XDG_CONFIG_HOME": config}, reactor=self.reactor).addTimeout(RDP_TIMEOUT, self.reactor)
            record = await said.addTimeout(RDP_TIMEOUT, self.reactor)
        except defer.TimeoutError:
            raise TslsError(Code.SERVER_TIMEOUT, f"the RDP client {machine} did not finish within {RDP_TIMEOUT:.0f} s")
        finally:
            daemon.lines.remove(listen)
        cal_path = os.path.join(config, "freerdp", "licenses", hashlib.sha1(machine.encode()).hexdigest() + ".cal")
        lic = None
        if record.get("outcome") in ("new_license", "upgrade_license", "valid_client") and os.path.exists(cal_path):
            with open(cal_path, "rb") as f:
                lic = json.loads(f.read())
            self.devices.put(machine, host.version, lic)
            return {"machine": machine, "user": host.users[machine], "served_by": None, "outcome": record["outcome"],
                    "license": lic, "reason": None, "rdp": record["outcome"]}
        return {"machine": machine, "user": host.users[machine], "served_by": None, "outcome": "refused",
                "license": None, "reason": record.get("code") or record.get("outcome"), "rdp": record.get("outcome")}

    async def _start_rdp_fronts(self) -> None:
        """A `tsls-ts rdp` process for every session host a fleet's RDP clients go through, listening on an
        ephemeral port its ready line gives, with the host's name, version, mode and links."""
        wanted = [name for name in dict.fromkeys(h for p in self.steps if p.kind == "wave"
                                                 and self.lab.fleet(p.args["fleet"]).rdp for h in p.args["through"])]
        for name in wanted:
            host = self.hosts[name]
            state = os.path.join(self.workdir, f"rdp-{name}")
            os.makedirs(state, exist_ok=True)
            daemon = Daemon(self.reactor, f"rdp:{name}", [], os.path.join(self.workdir, f"rdp-{name}.log"), part="rdp",
                            module="clients.tssim")
            self.daemons[daemon.name] = daemon
            servers = [arg for endpoint in host.servers for arg in ("--server", endpoint)]
            await daemon.start(["--name", name, "--version", host.version, "--mode", host.mode, *servers,
                                "--state-dir", state, "--connect-timeout", str(LOGON_TIMEOUT), "--timeout",
                                str(LOGON_TIMEOUT), "--json", "rdp", "--listen", "tcp:0:interface=127.0.0.1"])

    async def _ask_license_servers(self, shares: list[_Share], report: bool) -> None:
        """Every host asks the first license server on its list for its pending devices, then the second
        for those left, and so on. At each rank the license servers work in parallel, each on its hosts
        one after another in file order: a license server sees the same requests in the same order on
        every run, which is what keeps license IDs replayable."""
        for rank in range(max((len(s.host.servers) for s in shares), default=0)):
            lanes: dict[str, list[_Share]] = {}
            for share in shares:
                if share.pending and not share.stopped and rank < len(share.host.servers):
                    lanes.setdefault(share.host.names[share.host.servers[rank]], []).append(share)

            async def lane(queue, rank=rank):
                for share in queue:
                    await share.host.attempt(share, share.host.servers[rank], report)
            await _all([lane(queue) for queue in lanes.values()])

    async def do_connect(self, step: Planned) -> None:
        product = self.lab.product(step.args["product"])
        daemon = self.daemons[product.license_server]
        conn = await self._timed(connect(self.reactor, f"tcp:127.0.0.1:{daemon.port}", answer_timeout=REQUEST_TIMEOUT))
        try:
            # The product's server introduces itself as a host of the license server's own version.
            await self._timed(conn.hello_terminal_server(product.on, self.lab.license_server(product.license_server).version.value,
                                                         "per_device"))
            rows = []
            for machine in self.lab.fleet(step.args["fleet"]).machines():
                try:
                    answer = await self._timed(conn.request("product_connect", product=product.name,
                                                            hwid=hardware_id(machine), administrator=False))
                    rows.append({"outcome": "connected"})
                    self.note("connection", step=step.step, device=machine, product=product.name, outcome="connected",
                              licensed_by=answer.get("licensed_by"))
                except TslsError as e:
                    rows.append({"outcome": "refused", "reason": e.code.value})
                    self.note("connection", step=step.step, device=machine, product=product.name, outcome="refused",
                              reason=e.code.value)
        finally:
            await conn.close()
        counts = {"connected": sum(r["outcome"] == "connected" for r in rows),
                  "refused": sum(r["outcome"] == "refused" for r in rows),
                  "refused_by": dict(sorted(_count(r.get("reason") for r in rows if r["outcome"] == "refused").items()))}
        self.note("connections", step=step.step, product=product.name, **counts)
        if step.args.get("expect"):
            self.judge(step, f"connections to {product.name}: {_shown(step.args['expect'])}",
                       expect.compare(step.args["expect"], counts))

    # --- faults -------------------------------------------------------------------------------------

    def _fault(self, step: Planned, **fields) -> None:
        self.note("fault", step=step.step, do=step.kind, why=step.why or None, **fields)

    async def do_kill(self, step: Planned) -> None:
        name = step.args["license_server"]
        self.admins.pop(name, None)
        await self.daemons[name].kill()
        self._fault(step, license_server=name, signal="SIGKILL")

    async def do_stop(self, step: Planned) -> None:
        name = step.args["license_server"]
        self.daemons[name].signal("STOP")
        self._fault(step, license_server=name, signal="SIGSTOP")

    async def do_resume(self, step: Planned) -> None:
        name = step.args["license_server"]
        self.daemons[name].signal("CONT")
        self._fault(step, license_server=name, signal="SIGCONT")
        await self._catch_up(name)

    async def do_restart(self, step: Planned) -> None:
        name = step.args["license_server"]
        daemon = self.daemons[name]
        port = daemon.port or 0
        if daemon.alive:
            self.admins.pop(name, None)
            await daemon.stop()
        await self._start_license_server(name, port)
        self._fault(step, license_server=name, outcome="restarted")

    async def do_rebuild(self, step: Planned) -> None:
        """The license server's machine is rebuilt: its database is gone; it starts anew (a new product
        ID) on the same port, and is activated again if the file says it is activated."""
        name = step.args["license_server"]
        daemon = self.daemons[name]
        port = daemon.port or 0
        self.admins.pop(name, None)
        if daemon.alive:
            await daemon.kill()
        shutil.rmtree(os.path.join(self.workdir, name))
        await self._start_license_server(name, port)
        self._fault(step, license_server=name, outcome="rebuilt with an empty database")
        spec = self.lab.license_server(name)
        if spec.activated:       # what the file says of the server is set up again; purchases wait for recover
            answer = await self.admin(name, "activate", method="automatic", contact=CONTACT)
            self.server_ids[name] = answer.get("license_server_id")
        if spec.security_group:
            await self.admin(name, "set_policy", security_group=True)
        if spec.scope is not None:
            await self.do_role(Planned(step.at, "role", {"license_server": name, "scope": spec.scope.value},
                                       why=f"license_server {name}: scope"))
        for host in self.lab.session_hosts:
            if host.group and name in host.license_servers:
                await self.do_register(Planned(step.at, "register", {"session_host": host.name, "license_server": name}))

    async def do_clearinghouse_down(self, step: Planned) -> None:
        await self.daemons["clearinghouse"].kill()
        self._fault(step, signal="SIGKILL")

    async def do_clearinghouse_up(self, step: Planned) -> None:
        ch = self.daemons["clearinghouse"]
        await ch.start([*ch.argv[:3], "--listen", f"tcp:{ch.port}:interface=127.0.0.1", *ch.argv[5:]])
        self._fault(step, outcome="restarted")

    def _link(self, step: Planned) -> Link:
        return self.links[(step.args["session_host"], step.args["license_server"])]

    async def do_cut(self, step: Planned) -> None:
        link = self._link(step)
        link.cut()
        self._fault(step, link=link.name)

    async def do_slow(self, step: Planned) -> None:
        link = self._link(step)
        link.slow(step.args["delay"])
        self._fault(step, link=link.name, delay_ms=int(step.args["delay"] * 1000))

    async def do_reset(self, step: Planned) -> None:
        link = self._link(step)
        link.reset()
        self._fault(step, link=link.name)

    async def do_heal(self, step: Planned) -> None:
        link = self._link(step)
        link.heal()
        self._fault(step, link=link.name)

    # --- expectations -------------------------------------------------------------------------------

    async def do_expect(self, step: Planned) -> None:
        a = step.args
        if any(k in a for k in ("issued", "available", "total")):
            await self._expect_counts(step)
        if a.get("present") or a.get("absent"):
            await self._expect_events(step)
        if a.get("licensed"):
            machines = {name: self.lab.fleet(name).machines() for name in a["licensed"]}
            held = {m: self._best_held(m) for ms in machines.values() for m in ms}
            self.judge(step, f"every device of {', '.join(a['licensed'])} licensed by {iso(self.now)[:10]}",
                       expect.licensed(machines, held, self.now))
        if a.get("ledger"):
            from tsls.server.check import check_ledger
            failures = []
            for ls in self.lab.license_servers:
                failures += [f"{ls.name}: {p}" for p in check_ledger(os.path.join(self.workdir, ls.name, "license-server.sqlite"))]
            self.judge(step, "ledger invariants hold on every license server", failures)
        if a.get("unique"):
            licenses, failures = {}, []
            for ls in self.lab.license_servers:
                try:
                    licenses[ls.name] = await self.admin(ls.name, "list_licenses", kind="permanent", status="active",
                                                         limit=LIST_LIMIT)
                except TslsError as e:
                    failures.append(f"{ls.name}: cannot list its licenses: {e.message}")
            self.judge(step, "no CAL circulates twice", failures + expect.unique(licenses))

    def _best_held(self, machine: str) -> dict | None:
        """The license a device holds for any version: a permanent one if it has one."""
        held = list(self.devices.data.get(machine, {}).values())
        return next((lic for lic in held if lic.get("kind") == "permanent"), held[0] if held else None)

    async def _expect_counts(self, step: Planned) -> None:
        a = step.args
        purchase = a.get("key_pack")
        server = a.get("license_server") or self._pack_server(purchase)
        wanted = {k: a[k] for k in ("issued", "available", "total") if k in a}
        what = f"{server}{' key pack ' + purchase if purchase else ''}: {_shown(wanted)}"
        try:
            packs = await self.admin(server, "list_key_packs")
        except TslsError as e:
            self.judge(step, what, [f"cannot read {server}'s key packs: {e.message}"])
            return
        if purchase:
            packs = [p for p in packs if self.pack_names.get(p["key_pack_id"]) == purchase]
            if not packs:
                self.judge(step, what, [f"purchase {purchase} is not installed on {server}"])
                return
        observed = {k: sum(p[k] for p in packs) for k in wanted}
        self.judge(step, what, expect.compare(wanted, observed))

    async def _expect_events(self, step: Planned) -> None:
        a = step.args
        servers = [a["license_server"]] if a.get("license_server") else [ls.name for ls in self.lab.license_servers]
        counts: dict[int, int] = {}
        failures = []
        for event in (*a.get("present", ()), *a.get("absent", ())):
            for server in servers:
                try:
                    found = await self.admin(server, "list_events", event_id=event, limit=LIST_LIMIT)
                except TslsError as e:
                    failures.append(f"cannot read {server}'s events: {e.message}")
                    continue
                counts[event] = counts.get(event, 0) + len(found)
        def named(ids):
            return ", ".join(f"{e} {EventId(e).name}" for e in ids)
        what = "; ".join(filter(None, [f"present {named(a['present'])}" if a.get("present") else "",
                                       f"absent {named(a['absent'])}" if a.get("absent") else ""]))
        self.judge(step, f"events on {', '.join(servers)}: {what}",
                   sorted(set(failures)) + expect.events(a.get("present", ()), a.get("absent", ()), counts))


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _shown(expected: dict) -> str:
    return ", ".join(f"{k}.{sub}={n}" if isinstance(v, dict) else f"{k}={v}"
                     for k, v in expected.items() for sub, n in (v.items() if isinstance(v, dict) else [(None, v)]))


def summary(lab: Lab, results: list[Result], counts: dict, source: str) -> str:
    failed = [r for r in results if not r.ok]
    lines = [f"lab {lab.name!r} ({source}): {len(results) - len(failed)} of {len(results)} expectations hold", ""]
    width = max((len(r.label) for r in results), default=5)
    lines.append(f"{'STEP':<{width}}  RESULT  EXPECTATION")
    for r in results:
        lines.append(f"{r.label:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.what}")
        for why in r.why:
            lines.append(f"{'':<{width}}          - {why}")
    if counts:
        lines += ["", "logons: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    lines.append("")
    lines.append("FAILED: " + "; ".join(f"{r.label}: {r.what}" for r in failed) if failed else "PASSED")
    return "\n".join(lines)


def progress_bar(stream=sys.stderr, lines: bool = False):
    """The progress display: a bar redrawn in place (lab date, step) when ``stream`` is a terminal; with
    ``lines``, one line per step otherwise; else none."""
    if not stream.isatty():
        if not lines:
            return None

        def line(number, total, lab_date, step):
            stream.write(f"{lab_date} {number}/{total} {step.label} {step.kind}\n")
            stream.flush()
        return line

    def show(number, total, lab_date, step):
        filled = int(30 * number / total)
        stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {lab_date[:10]} {number}/{total} {step.label} "
                     f"{step.kind}".ljust(100)[:100])
        if number == total:
            stream.write("\n")
        stream.flush()
    return show
