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


class NoClearinghouse:
    """Benchmarks install their key packs directly in the database (bench.dbgen)."""

    def __getattr__(self, name):
        from twisted.internet import defer

        from tsls.errors import Code, TslsError
        return lambda *a, **kw: defer.fail(TslsError(Code.CLEARINGHOUSE_UNREACHABLE, "no Clearinghouse in benchmarks"))


class Timings:
    """The writer's figures (bench only; BatchWriter.timings): for each batch its size, how long its
    jobs took in the reactor's thread and its COMMIT in the commit thread; for each fsync of the WAL (writer's thread)
    how many batches it made durable and how long it took; for each checkpoint (its own thread) the
    frames in the WAL, the frames it copied and how long it took, the long one beside the batches
    and the short one no batch runs beside (the pause)."""

    def __init__(self) -> None:
        self.batches: list = []
        self.syncs: list = []
        self.checkpoints: list = []
        self.wal_bytes = 0

    def batch(self, size: int, jobs: float, commit: float) -> None:
        self.batches.append((size, jobs, commit))

    def sync(self, batches: int, seconds: float) -> None:
        self.syncs.append((batches, seconds))

    def checkpoint(self, frames: int, copied: int, seconds: float, paused: bool) -> None:
        self.checkpoints.append((frames, copied, seconds, paused))

    def summary(self) -> dict:
        def ms(values, q):
            values = sorted(values)
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2) if values else 0.0
        batches, syncs, checkpoints = self.batches, self.syncs, self.checkpoints
        jobs = [b[1] for b in batches]
        commits = [b[2] for b in batches]
        fsyncs = [s[1] for s in syncs]
        took = [c[2] for c in checkpoints if not c[3]]
        paused = [c[2] for c in checkpoints if c[3]]
        return {"batches": len(batches), "mean_size": sum(b[0] for b in batches) / max(len(batches), 1),
                "jobs_ms_p50": ms(jobs, 0.5), "commit_ms_p50": ms(commits, 0.5), "commit_ms_p90": ms(commits, 0.9),
                "commit_ms_max": ms(commits, 1.0), "fsyncs": len(syncs),
                "batches_per_fsync": sum(s[0] for s in syncs) / max(len(syncs), 1),
                "fsync_ms_p50": ms(fsyncs, 0.5), "fsync_ms_p90": ms(fsyncs, 0.9), "fsync_ms_max": ms(fsyncs, 1.0),
                "checkpoints": len(took), "checkpoint_ms_p50": ms(took, 0.5), "checkpoint_ms_max": ms(took, 1.0),
                "pauses": len(paused), "pause_ms_p50": ms(paused, 0.5), "pause_ms_max": ms(paused, 1.0),
                "pause_ms_total": round(sum(paused) * 1000, 1),
                "checkpoint_frames_max": max((c[0] for c in checkpoints), default=0),
                "wal_mb": round(self.wal_bytes / 2**20, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.daemon")
    p.add_argument("--db", required=True)
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    p.add_argument("--log", default=os.devnull, help="where the text log goes (default: %(default)s)")
    p.add_argument("--what-if", default="", metavar="NAME,...",
                   help="run with changes proposed for files outside the benchmark's reach (bench.whatif)")
    p.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE",
                   help="an SQLite PRAGMA run on the ledger's connection after it opens (experiments)")
    p.add_argument("--timings", metavar="PATH", help="at exit, write to PATH (JSON) how long the batches' jobs, "
                   "COMMITs, fsyncs and checkpoints took, and the WAL's size")
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
    timings = None
    if args.timings:
        timings = service.writer.timings = Timings()
    # The reactor's thread runs everything but the fsyncs and checkpoints (tsls/server/writer.py),
    # so it is the thread to profile; the writer's threads only wait on the disk.
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
        if timings is not None:
            if os.path.exists(args.db + "-wal"):
                timings.wal_bytes = os.path.getsize(args.db + "-wal")     # its largest extent (never shrinks)
            with open(args.timings, "w") as f:
                json.dump(timings.summary(), f)
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
