"""An administrator's export alone: ``tsls-admin licenses --csv`` (or ``events``, or ``--json``) of
every row of a ledger of --licenses licenses, nothing else running: how long it takes, the CPU the
daemon spends serving its pages and the CPU the ``tsls-admin`` process spends parsing and writing them.

    python -m bench.export [--licenses 1000000] [--list licenses|events] [--format csv|json] [--repeat 3] [--json]

Each run starts ``bench.daemon`` on a fresh copy of the ledger bench.scaling keeps (bench.dbgen,
$TMPDIR/tsls-bench-cache) and runs one export to a file; figures are medians of --repeat runs. What an
export costs is what bench.readstall's administrator takes from the grants on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

from bench import harness
from bench.scaling import CACHE, template


def export_once(db: str, what: str, fmt: str, out: str) -> dict:
    with harness.license_server(db) as server:
        cmd = harness.admin_command(server.endpoint, db, "--timeout", "600", what, f"--{fmt}")
        daemon = server.cpu_seconds()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with open(out, "wb") as f:
            subprocess.run(cmd, cwd=harness.ROOT, stdout=f, stderr=subprocess.PIPE, check=True, timeout=600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon = server.cpu_seconds() - daemon
    rows = harness.rows_in(out, fmt)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rows": rows, "seconds": wall, "daemon_cpu_s": daemon, "client_cpu_s": client,
            "rows_per_s": rows / wall, "bytes": os.path.getsize(out)}


def run(licenses: int, what: str, fmt: str, repeat: int, work, log=print) -> dict:
    source = template(CACHE, licenses, log)
    runs = []
    for n in range(repeat):
        db = harness.private_ledger(source, work.file(f"run{n}"))
        result = export_once(db, what, fmt, work.file("export.out"))
        runs.append(result)
        log(f"run {n + 1}: {result['rows']:,} rows in {result['seconds']:.1f} s, daemon CPU {result['daemon_cpu_s']:.1f} s, "
            f"tsls-admin CPU {result['client_cpu_s']:.1f} s")
        os.remove(work.file("export.out"))
    return {key: harness.median([r[key] for r in runs]) for key in runs[0]} | {
        "licenses": licenses, "list": what, "format": fmt, "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--licenses", type=int, default=1_000_000, help="licenses in the ledger (default: %(default)s)")
    p.add_argument("--list", choices=["licenses", "events"], default="licenses", help="what to export (default: %(default)s)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="tsls-admin's output (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs; medians are reported (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    r = harness.figures(args.json, lambda work, log: run(args.licenses, args.list, args.format, args.repeat, work, log))
    if not args.json:
        print(f"\n`tsls-admin {r['list']} --{r['format']}` of {r['rows']:,.0f} rows ({r['licenses']:,} licenses): "
              f"{r['seconds']:.1f} s, {r['rows_per_s']:,.0f} rows/s; daemon CPU {r['daemon_cpu_s']:.1f} s, "
              f"tsls-admin CPU {r['client_cpu_s']:.1f} s (medians of {len(r['runs'])}); {r['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
