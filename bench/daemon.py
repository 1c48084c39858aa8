"""The license server as the benchmarks run it: its own process, a prepared database, real time.

    python -m bench.daemon --db PATH [--listen tcp:0:interface=127.0.0.1] [--log PATH] [--cprofile PATH]
                           [--what-if NAME,...] [--console]

It is the daemon ``tsls server`` builds (``LicenseServerService``: SQLite ledger, group-commit
writer, JSON-lines protocol), logging every event as text to ``--log`` as ``tsls server`` logs it to
standard output. No Clearinghouse is reachable: the benchmarks never ask one. It prints
``listening PORT`` once it accepts connections (``listening PORT CONSOLE_PORT`` with ``--console``:
the web console and /metrics on loopback, docs/console.md), and stops cleanly on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time


class NoClearinghouse:
    """Benchmarks install their key packs directly in the database (bench.dbgen)."""

    def __getattr__(self, name):
        from twisted.internet import defer

        from tsls.errors import Code, TslsError
        return lambda *a, **kw: defer.fail(TslsError(Code.CLEARINGHOUSE_UNREACHABLE, "no Clearinghouse in benchmarks"))


def _time_batches(writer) -> list:
    """Wrap the writer's batch step (bench only): for each batch, its size, the time its jobs took in
    the reactor's thread, and the time from handing its COMMIT to the writer's thread until the
    reactor had the result."""
    batches = []
    run = writer._run_then_commit

    def timed(jobs, now):
        started = time.perf_counter()
        d = run(jobs, now)
        ran = time.perf_counter()

        def done(result):
            batches.append((len(jobs), ran - started, time.perf_counter() - ran))
            return result
        return d.addBoth(done)
    writer._run_then_commit = timed
    return batches


def _summary(batches: list) -> dict:
    def ms(values, q):
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2) if values else 0.0
    jobs = [b[1] for b in batches]
    commits = [b[2] for b in batches]
    return {"batches": len(batches), "mean_size": sum(b[0] for b in batches) / max(len(batches), 1),
            "jobs_ms_p50": ms(jobs, 0.5), "commit_ms_p50": ms(commits, 0.5), "commit_ms_p90": ms(commits, 0.9),
            "commit_ms_max": ms(commits, 1.0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.daemon")
    p.add_argument("--db", required=True)
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    p.add_argument("--log", default=os.devnull, help="where the text log goes (default: %(default)s)")
    p.add_argument("--what-if", default="", metavar="NAME,...",
                   help="run with changes proposed for files outside the benchmark's reach (bench.whatif)")
    p.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE",
                   help="an SQLite PRAGMA run on the ledger's connection after it opens (experiments)")
    p.add_argument("--timings", metavar="PATH", help="at exit, write to PATH (JSON) how long each batch's jobs and "
                   "its COMMIT took")
    p.add_argument("--store-stats", metavar="PATH", help="at exit, write to PATH (JSON) the PostgreSQL store's "
                   "round trips and COMMITs (bench.postgres)")
    p.add_argument("--console", action="store_true", help="serve the web console and /metrics on an ephemeral "
                   "loopback port too")
    p.add_argument("--cprofile", metavar="PATH", help="profile the reactor's thread with cProfile; the stats are "
                   "written to PATH at exit")
    args = p.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tsls.server.service import LicenseServerService, tune_gc

    from bench import whatif

    log = open(args.log, "a")
    observer = whatif.apply([n for n in args.what_if.split(",") if n], textFileLogObserver(log))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    credential = None
    if args.db.startswith("postgresql://"):      # no directory beside the database for the credential
        import tempfile
        credential = os.path.join(tempfile.mkdtemp(prefix="tsls-bench-"), "admin.secret")     # removed at exit
    service = LicenseServerService(reactor, args.listen, args.db, NoClearinghouse(),
                                   console_listen="tcp:0:interface=127.0.0.1" if args.console else None,
                                   credential_path=credential)
    for pragma in args.pragma:
        service.writer._store.db.execute(f"PRAGMA {pragma}")
    batches = _time_batches(service.writer) if args.timings else None
    # The reactor's thread runs everything but the COMMITs (tsls/server/writer.py), so it is the
    # thread to profile; the writer's thread only waits in SQLite's COMMIT.
    profile = cProfile.Profile() if args.cprofile else None

    def start():
        service.startService()
        tune_gc()               # as tsls server does
        if profile is not None:
            profile.enable()

        def listening(port):
            if args.console:
                return service.console_listener.listening.addCallback(
                    lambda console: print(f"listening {port.getHost().port} {console.getHost().port}", flush=True))
            print(f"listening {port.getHost().port}", flush=True)
        service.listener.listening.addCallbacks(listening, lambda f: (print(f"cannot listen: {f.getErrorMessage()}",
                                                                            flush=True), reactor.stop()))

    def stop():
        if args.store_stats:
            store = service.writer._store
            with open(args.store_stats, "w") as f:
                json.dump({"round_trips": store.round_trips, "commits": store.commits}, f)
        if batches is not None:
            with open(args.timings, "w") as f:
                json.dump(_summary(batches), f)
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.cprofile)
        return service.stopService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    log.close()
    if credential is not None:
        import shutil
        shutil.rmtree(os.path.dirname(credential), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
