"""``tsls lab run FILE`` and ``tsls lab check FILE`` (docs/labfile.md).

Exit status: 0 every expectation held (run) or the file is valid (check); 1 an expectation failed;
2 the file is not a valid lab; 3 the lab could not be played (a daemon did not start, ...).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from clients.labfile.schema import LabFileError

OK, FAILED, INVALID, BROKEN = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsls lab", description="Validate or run a lab file (docs/labfile.md).")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate a lab file and print its plan; start nothing")
    check.add_argument("file", help="the lab file (TOML)")
    run = sub.add_parser("run", help="run a lab file against real daemons; exit 0 when every expectation holds")
    run.add_argument("file", help="the lab file (TOML)")
    run.add_argument("--journal", metavar="PATH", help="write the journal (JSON lines) there "
                     "(default: journal.jsonl in the work directory)")
    run.add_argument("--work-dir", metavar="DIR",
                     help="keep the daemons' data and logs there (default: a new temporary directory, kept)")
    run.add_argument("--seed", help="override the file's seed")
    run.add_argument("--no-logons", action="store_true", help="journal steps and waves but not each logon")
    run.add_argument("--progress", action="store_true",
                     help="print a line per step on stderr even when it is not a terminal (a bar when it is)")
    run.add_argument("--console", action="store_true",
                     help="each license server also serves the web console; print a one-time login link for each")
    run.add_argument("--keep", action="store_true",
                     help="at the end leave the daemons running (Ctrl-C or SIGTERM stops them)")
    return p


def load(path: str, seed: str | None = None):
    import attrs

    from clients.labfile import plan, schema
    lab = schema.load(path)
    if seed is not None:
        lab = attrs.evolve(lab, seed=seed)
    return lab, plan.plan(lab, path)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        lab, steps = load(args.file, getattr(args, "seed", None))
    except LabFileError as e:
        print(e, file=sys.stderr)
        print(f"{args.file}: {len(e.problems)} problem{'s' if len(e.problems) != 1 else ''}; nothing was started",
              file=sys.stderr)
        return INVALID
    if args.action == "check":
        from tsls.core.model import iso
        print(f"{args.file}: a valid lab, {lab.name!r}: {_count(len(lab.license_servers), 'license server')}, "
              f"{_count(len(lab.session_hosts), 'session host')}, "
              f"{_count(sum(f.devices for f in lab.fleets), 'device')}, "
              f"{_count(len(steps), 'step')} from {iso(lab.start)[:10]} to {iso(lab.start + steps[-1].at)[:10]}")
        for step in steps:
            shown = ", ".join(f"{k}={v}" for k, v in step.args.items())
            print(f"  {iso(lab.start + step.at)}  {step.label:<12} {step.kind:<18} {shown}")
        return OK
    return run(lab, steps, args)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def run(lab, steps, args) -> int:
    from twisted.internet import defer, reactor

    from tsls.errors import TslsError
    from clients.labfile.journal import Journal
    from clients.labfile.runner import LabRun, progress_bar, summary

    workdir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="tsls-lab-"))
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    if os.listdir(workdir):
        print(f"tsls lab: {workdir} is not empty; a lab starts from nothing (give a new --work-dir)", file=sys.stderr)
        return INVALID
    journal_path = args.journal or os.path.join(workdir, "journal.jsonl")
    journal = Journal(journal_path)
    def console(name, endpoint, url):
        print(f"console {name} ({endpoint}): {url}", flush=True)

    lab_run = LabRun(reactor, lab, steps, workdir, journal, progress_bar(lines=args.progress),
                     log_logons=not args.no_logons, console=console if args.console else None)
    outcome = {"code": BROKEN, "interrupted": False, "kept": False}
    if args.console:
        print("console links are for one login each, within 10 minutes (tsls-admin console gives more)", flush=True)

    async def play():
        try:
            results = await lab_run.play(keep=args.keep)
        except TslsError as e:
            if not outcome["interrupted"]:
                print(f"tsls lab: the lab could not be played: {e.code.value}: {e.message}", file=sys.stderr)
            outcome["code"] = BROKEN
        except Exception:
            if outcome["interrupted"]:
                return
            import traceback
            print("tsls lab: the lab could not be played, the runner failed:", file=sys.stderr)
            traceback.print_exc()
            outcome["code"] = BROKEN
        else:
            print(summary(lab, results, lab_run.counts, args.file))
            outcome["code"] = OK if all(r.ok for r in results) else FAILED
        print(f"journal: {journal_path}\ndaemons' data and logs: {workdir}", flush=True)
        if args.keep and not lab_run._closed:
            outcome["kept"] = True
            if args.console:
                await lab_run.console_links()
            print("lab kept running; Ctrl-C to stop", flush=True)
            await defer.Deferred()          # until Ctrl-C or SIGTERM stops the reactor

    def finish(_):
        if reactor.running and not outcome["interrupted"]:
            reactor.stop()

    def interrupted():
        # Ctrl-C: the reactor is shutting down; stop every daemon before it does.
        if not lab_run._closed and not outcome["kept"]:
            print("\ntsls lab: interrupted; stopping the lab's daemons", file=sys.stderr)
            outcome["code"], outcome["interrupted"] = BROKEN, True
        elif outcome["kept"] and not lab_run._closed:
            print("\ntsls lab: stopping the lab's daemons", file=sys.stderr)
        return defer.ensureDeferred(lab_run.close())

    reactor.callWhenRunning(lambda: defer.ensureDeferred(play()).addBoth(finish))
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        reactor.run()
    finally:
        lab_run.stop_now()
    return outcome["code"]
