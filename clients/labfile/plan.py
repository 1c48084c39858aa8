"""A lab to the ordered list of steps the runner plays. Pure.

Besides the file's steps, the plan holds what the deployment section implies (license servers
activated and their policy set, Per Server products added, at 0d before any step), the end of every
fault given a span (``for``), and the closing checks every lab gets (ledger invariants on every
license server, no CAL circulating twice). It also refuses timelines that cannot be played, such as
resuming a license server that was never stopped.
"""
from __future__ import annotations

import attrs

from tsls.core.model import CalType
from clients.labfile.schema import Lab, LabFileError, Problem

SETUP, FILE, CLOSING = 0, 1, 2


@attrs.frozen
class Planned:
    at: int                      # seconds after the lab's start
    kind: str                    # a step kind (schema.KINDS), or "add_product"
    args: dict
    step: int | None = None      # the file's step number; None for what the plan adds
    why: str = ""                # for added steps: where they come from
    repeat: int = 0              # for a wave with every/until: 1, 2, ...
    lasts: int = 0               # seconds of lab time the step takes (a wave with a rate); 0: an instant

    @property
    def label(self) -> str:
        if self.step is None:
            return self.why
        return f"step {self.step}" + (f" #{self.repeat}" if self.repeat else "")


def wave_shares(lab: Lab, fleet_name: str, through: tuple[str, ...]) -> list[list[str]]:
    """Each host of ``through``'s devices, in order. Device i of the fleet goes through host i mod n;
    with a Per User share (``per_user``), the share's devices go through the Per User hosts and the
    others through the other hosts, each group in turn."""
    fleet = lab.fleet(fleet_name)
    machines = fleet.machines()
    out: list[list[str]] = [[] for _ in through]
    if fleet.per_user is None:
        for i, m in enumerate(machines):
            out[i % len(through)].append(m)
        return out
    chosen = fleet.per_user_machines()
    groups = {True: [i for i, h in enumerate(through) if lab.session_host(h).mode is CalType.PER_USER],
              False: [i for i, h in enumerate(through) if lab.session_host(h).mode is not CalType.PER_USER]}
    turns = {True: 0, False: 0}
    for m in machines:
        group = groups[m in chosen]
        out[group[turns[m in chosen] % len(group)]].append(m)
        turns[m in chosen] += 1
    return out


RATE_HOUR = 3600      # a wave's rate is in logons per lab hour: one batch of `rate` logons each lab hour


def wave_batches(lab: Lab, args: dict) -> list[list[tuple[int, str]]]:
    """A wave's logons as (round, device), in batches one lab hour apart: round by round, each in fleet
    order, ``rate`` to a batch; without a rate, one batch."""
    machines = lab.fleet(args["fleet"]).machines()
    logons = [(round_, m) for round_ in range(1, args.get("times", 1) + 1) for m in machines]
    rate = args.get("rate") or len(logons)
    return [logons[i:i + rate] for i in range(0, len(logons), rate)]


def wave_lasts(lab: Lab, args: dict) -> int:
    """Lab seconds from a wave's first batch to its last."""
    if not args.get("rate"):
        return 0
    logons = lab.fleet(args["fleet"]).devices * args.get("times", 1)
    return (-(-logons // args["rate"]) - 1) * RATE_HOUR


def plan(lab: Lab, source: str = "<lab>") -> list[Planned]:
    items: list[tuple[int, int, int, Planned]] = []
    seq = 0

    def add(order: int, p: Planned) -> None:
        nonlocal seq
        seq += 1
        items.append((p.at, order, seq, p))

    for ls in lab.license_servers:
        if ls.activated:
            add(SETUP, Planned(0, "activate", {"license_server": ls.name}, why=f"license_server {ls.name}: activated"))
        if ls.security_group:
            add(SETUP, Planned(0, "policy", {"license_server": ls.name, "security_group": True},
                               why=f"license_server {ls.name}: security_group"))
        if ls.scope is not None:
            add(SETUP, Planned(0, "role", {"license_server": ls.name, "scope": ls.scope.value},
                               why=f"license_server {ls.name}: scope"))
    for host in lab.session_hosts:
        if host.group:
            for name in host.license_servers:
                add(SETUP, Planned(0, "register", {"session_host": host.name, "license_server": name},
                                   why=f"session_host {host.name}: group"))
    for product in lab.products:
        add(SETUP, Planned(0, "add_product", {"product": product.name}, why=f"product {product.name!r}"))
    for step in lab.steps:
        lasts = wave_lasts(lab, step.args) if step.do == "wave" else 0
        if "every" in step.args:
            args = {k: v for k, v in step.args.items() if k not in ("every", "until")}
            for n, at in enumerate(range(step.at, step.args["until"] + 1, step.args["every"]), 1):
                add(FILE, Planned(at, step.do, dict(args), step.index, step.note or "", n, lasts))
            continue
        add(FILE, Planned(step.at, step.do, dict(step.args), step.index, step.note or "", lasts=lasts))
        if "for" in step.args:
            end = {"session_host": step.args.get("session_host"), "license_server": step.args.get("license_server")}
            add(SETUP, Planned(step.at + step.args["for"], "heal", end, why=f"end of step {step.index}'s {step.do}"))
    end = max((p.at + p.lasts for _, _, _, p in items), default=0)
    add(CLOSING, Planned(end, "expect", {"ledger": True, "unique": True}, why="closing checks"))
    ordered = [p for _, _, _, p in sorted(items, key=lambda t: t[:3])]
    problems = _playable(lab, ordered)
    if problems:
        raise LabFileError(source, problems)
    return ordered


def _playable(lab: Lab, steps: list[Planned]) -> list[Problem]:
    """What a timeline does to processes and links must make sense in order."""
    steps_by_number = {s.index: s for s in lab.steps}

    def line(p: Planned, key: str) -> int | None:
        step = steps_by_number.get(p.step)
        return None if step is None else step.lines.get(key, step.line)

    problems: list[Problem] = []
    state = {ls.name: "running" for ls in lab.license_servers}
    clearinghouse = "up"
    links: dict[tuple, str] = {}
    allowed = {"kill": {"running", "stopped"}, "stop": {"running"}, "resume": {"stopped"}, "restart": {"running", "killed"},
               "rebuild": {"running", "stopped", "killed"}}
    after = {"kill": "killed", "stop": "stopped", "resume": "running", "restart": "running", "rebuild": "running"}
    for p in steps:
        def refuse(message: str) -> None:
            problems.append(Problem(line(p, "do"), f"step[{p.step}].do" if p.step else p.why, message))
        if p.kind in allowed:
            name = p.args["license_server"]
            if state[name] not in allowed[p.kind]:
                refuse(f"cannot {p.kind} license server {name}: it is {state[name]} then")
            else:
                state[name] = after[p.kind]
        elif p.kind in ("clearinghouse_down", "clearinghouse_up"):
            want = "down" if p.kind.endswith("down") else "up"
            if clearinghouse == want:
                refuse(f"the Clearinghouse is already {want} then")
            clearinghouse = want
        elif p.kind in ("cut", "slow"):
            links[(p.args["session_host"], p.args["license_server"])] = p.kind
        elif p.kind == "heal":
            link = (p.args["session_host"], p.args["license_server"])
            if link not in links and p.step is not None:
                refuse(f"the link {link[0]} -> {link[1]} was not cut or slowed before")
            links.pop(link, None)
    for i, p in enumerate(steps):      # a wave with a rate takes lab time: nothing else may happen meanwhile
        if p.lasts:
            later = next((q for q in steps[i + 1:] if q.at < p.at + p.lasts), None)
            if later is not None:
                hours = p.lasts // RATE_HOUR
                problems.append(Problem(line(p, "rate"), f"step[{p.step}].rate",
                                        f"at {p.args['rate']} logons per lab hour the wave lasts {hours}h more, until "
                                        f"{_span(p.at + p.lasts)}, and {later.label} ({later.kind}) comes at "
                                        f"{_span(later.at)}, before it ends"))
                break
    for p in steps:
        host, server = p.args.get("session_host"), p.args.get("license_server")
        if p.step is not None and p.kind in ("cut", "slow", "reset", "heal") and \
                server not in lab.session_host(host).license_servers:
            problems.append(Problem(line(p, "license_server"), f"step[{p.step}].license_server",
                                    f"session host {host} has no link to {server}: it lists "
                                    f"{', '.join(lab.session_host(host).license_servers) or 'no license server'}"))
    return problems


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days}d" + (f"+{rest // 3600}h" if rest // 3600 else "") + (f"{rest % 3600 // 60}m" if rest % 3600 // 60 else "")
