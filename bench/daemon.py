"""The license server as the benchmarks run it: its own process, a prepared database, real time.

    python -m bench.daemon --db PATH [--listen tcp:0:interface=127.0.0.1] [--log PATH] [--cprofile PATH]
                           [--what-if NAME,...]

It is the daemon ``tsls server`` builds (``LicenseServerService``: SQLite ledger, group-commit
writer, JSON-lines protocol), logging every event as text to ``--log`` as ``tsls server`` logs it to
standard output. No Clearinghouse is reachable: the benchmarks never ask one. It prints
``listening PORT`` once it accepts connections, and stops cleanly on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import sys


class NoClearinghouse:
    """Benchmarks install their key packs directly in the database (bench.dbgen)."""

    def __getattr__(self, name):
        from twisted.internet import defer

        from tsls.errors import Code, TslsError
        return lambda *a, **kw: defer.fail(TslsError(Code.CLEARINGHOUSE_UNREACHABLE, "no Clearinghouse in benchmarks"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.daemon")
    p.add_argument("--db", required=True)
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    p.add_argument("--log", default=os.devnull, help="where the text log goes (default: %(default)s)")
    p.add_argument("--what-if", default="", metavar="NAME,...",
                   help="run with changes proposed for files outside the benchmark's reach (bench.whatif)")
    p.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE",
                   help="an SQLite PRAGMA run on the ledger's connection after it opens (experiments)")
    p.add_argument("--cprofile", metavar="PATH", help="profile the reactor's thread with cProfile; the stats are "
                   "written to PATH at exit")
    args = p.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tsls.server.service import LicenseServerService

    from bench import whatif

    log = open(args.log, "a")
    observer = whatif.apply([n for n in args.what_if.split(",") if n], textFileLogObserver(log))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    service = LicenseServerService(reactor, args.listen, args.db, NoClearinghouse())
    for pragma in args.pragma:
        service.writer._store.db.execute(f"PRAGMA {pragma}")
    # The reactor's thread runs everything but the COMMITs (tsls/server/writer.py), so it is the
    # thread to profile; the writer's thread only waits in SQLite's COMMIT.
    profile = cProfile.Profile() if args.cprofile else None

    def start():
        service.startService()
        if profile is not None:
            profile.enable()

        def listening(port):
            print(f"listening {port.getHost().port}", flush=True)
        service.listener.listening.addCallbacks(listening, lambda f: (print(f"cannot listen: {f.getErrorMessage()}",
                                                                            flush=True), reactor.stop()))

    def stop():
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.cprofile)
        return service.stopService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
