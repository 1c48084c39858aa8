"""Profile the license server under load, to find where a grant's time goes.

    python -m bench.profile [--connections 100] [--pipeline 16] [--duration 8] [--licenses 1000]
                            [--profiler py-spy|cprofile] [--mix first=1] [--top 30]

py-spy (``pip install py-spy``; found on PATH or given with --py-spy) samples every thread of the
running daemon with --gil, so the shares are of the time each thread held the GIL, which is what
bounds a CPython server. cProfile (always there) traces the reactor's thread, which runs all of the
Python (the writer's thread only waits in COMMIT); it slows the server down and inflates small
functions, so read its shares, not its times.
"""
from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import time

from bench import dbgen, harness, stacks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--licenses", type=int, default=1000, help="licenses already in the database")
    p.add_argument("--mix", default=None, help="the load's mix (default: the workload's)")
    p.add_argument("--workload", choices=harness.WORKLOADS, default="first",
                   help="first logons, or upgrades of devices prepared (logged on and reported) first: "
                        "with cprofile the preparation is in the profile too (default: %(default)s)")
    p.add_argument("--prepare", type=int, default=harness.PREPARE, help="devices prepared for --workload upgrade")
    p.add_argument("--report", action="store_true", help="report logons (logon_succeeded), so repeats upgrade")
    p.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy program")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--keep", action="store_true", help="keep the work directory (database, profiles)")
    args = p.parse_args(argv)

    with harness.Workdir(keep=args.keep) as work:
        db = work.file("ledger.sqlite")
        dbgen.generate(db, args.licenses)
        cprofile = work.file("cprofile") if args.profiler == "cprofile" else None
        server = harness.license_server(db, cprofile=cprofile)
        with server:
            spy = None
            if args.profiler == "py-spy":
                raw = work.file("py-spy.txt")
                if not shutil.which(args.py_spy):
                    print(f"no py-spy at {args.py_spy!r}: pip install py-spy, pass --py-spy PATH, "
                          "or use --profiler cprofile", file=sys.stderr)
                    return 1
                spy = subprocess.Popen([args.py_spy, "record", "--pid", str(server.proc.pid), "--gil", "--threads",
                                        "--rate", "250", "--format", "raw", "--output", raw,
                                        "--duration", str(int(args.duration))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)
            load = harness.workload_load(args.workload, args.prepare)
            if args.mix is not None:
                load["mix"] = args.mix
            cmd = harness.load_command(server.endpoint, args.connections, args.pipeline, duration=args.duration,
                                       report=args.report, **load)
            result = harness.run_load(cmd)
            if spy is not None:
                _, err = spy.communicate()
                if spy.returncode:
                    print(f"py-spy failed: {err.strip()}", file=sys.stderr)
                    return 1
        print(f"load: {harness.shown(cmd)}")
        print(f"{result['answers']:,} answers at {result['throughput']:,.0f}/s under the profiler")
        if args.profiler == "py-spy":
            with open(raw) as f:
                print(stacks.summarise(f, args.top))
        else:
            if not os.path.exists(cprofile):
                print("the daemon wrote no profile", file=sys.stderr)
                return 1
            print("== the reactor's thread (cProfile, by own time)")
            pstats.Stats(cprofile).sort_stats("tottime").print_stats(args.top)
            print("== the reactor's thread (cProfile, by cumulative time)")
            pstats.Stats(cprofile).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
