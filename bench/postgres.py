"""Durable grants/s with 1, 2 and 3 license-server daemons on one PostgreSQL database, against one
daemon on SQLite, on the same machine in the same run; and what a grant costs PostgreSQL.

    python -m bench.postgres [--duration 5] [--repeat 2] [--connections 24] [--pipeline 8] [--json]

PostgreSQL is a throwaway cluster of Debian's binaries (tests/pg.py), in a directory on disk beside
the SQLite file (not in memory), with its defaults for durability: fsync on, synchronous_commit on,
so every COMMIT waits for its WAL on disk, as every SQLite batch's answers wait for its WAL's fsync. Every configuration
starts from a fresh, activated ledger and is loaded with first logons (``clients.load --mix
first=1``: every answer a temporary license committed before it leaves), by one load generator
process per daemon, the terminal servers shared out evenly, for the same time. The order of the
configurations rotates each round; figures are medians of --repeat rounds.

For PostgreSQL it also reports, per grant: the statements the daemons sent (each a round trip, as
each waits for its answer; ``PgLicenseStore.round_trips``), the COMMITs, and the WAL written
(``pg_current_wal_lsn()`` before and after). On this machine every process shares two cores, so the
figures say what the design costs, not what several machines would do: docs/performance.md says that.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import dbgen, harness

CONFIGS = [("SQLite, 1 daemon", "sqlite", 1), ("PostgreSQL, 1 daemon", "pg", 1), ("PostgreSQL, 2 daemons", "pg", 2),
           ("PostgreSQL, 3 daemons", "pg", 3)]


def cluster(work: harness.Workdir):
    sys.path.insert(0, harness.ROOT)
    from tests.pg import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        raise SystemExit("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    # On disk (not /dev/shm, as the tests put it), in a directory of its own the postgres user can reach.
    c = Cluster(bindir, base=os.environ.get("TSLS_BENCH_DIR") or tempfile.gettempdir())
    c.init()
    os.environ["PGPASSWORD"] = c.password
    return c


def pg_database(c, name: str) -> str:
    from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
    from tsls.core.model import CalType, ProductVersion, PurchaseRef
    from tsls.server.app import load_identity
    from tsls.server.pgstore import PgLicenseStore

    c.psql(f"CREATE DATABASE {name} OWNER tsls")
    dsn = c.dsn(name)
    store = PgLicenseStore.open(dsn)
    try:
        load_identity(store, "1")
        with store.transaction():
            store.save_activation(Activation(ActivationStatus.ACTIVATED, dbgen.LICENSE_SERVER_ID,
                                             ActivationMethod.TELEPHONE, int(time.time())))
            store.add_key_pack("BENCHKP".ljust(35, "0"), PurchaseRef.from_json({"program": "retail",
                                                                                 "retail_code": "BENCH".ljust(25, "0")}),
                               ProductVersion.W2003, CalType.PER_DEVICE, dbgen.PACK_SIZE, int(time.time()))
    finally:
        store.close()
    return dsn


def wal_lsn(c, database: str) -> int:
    out = c.psql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", database).strip()
    return int(out)


def measure(db: str, daemons: int, connections: int, pipeline: int, duration: float, work: harness.Workdir,
            tag: str) -> dict:
    stats = [work.file(f"{tag}-stats-{i}.json") for i in range(daemons)]
    servers = []
    try:
        for i in range(daemons):
            args = ["bench.daemon", "--db", db] + (["--store-stats", stats[i]] if db.startswith("postgresql") else [])
            servers.append(harness.Server(args, f"license server {i}").start())
        share = [connections // daemons + (1 if i < connections % daemons else 0) for i in range(daemons)]
        loads = []
        for i, server in enumerate(servers):
            cmd = harness.load_command(server.endpoint, share[i], pipeline, duration=duration, mix="first=1",
                                       extra=("--prefix", f"{tag}d{i}"))
            loads.append(subprocess.Popen(cmd, cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        results = []
        for p in loads:
            out, err = p.communicate(timeout=duration + 120)
            if p.returncode:
                raise RuntimeError(f"load failed: {err or out}")
            results.append(json.loads(out))
    finally:
        for s in servers:
            s.stop()
    for r in results:
        if r["refusals"] or r["unanswered"]:
            raise RuntimeError(f"refused or dropped requests: {r['refusals']}, {r['unanswered']}")
    grants = sum(r["grants"] for r in results)
    elapsed = max(r["elapsed_s"] for r in results)
    out = {"grants": grants, "grants_per_s": grants / elapsed, "p99_ms": max(r["latency_ms"]["p99"] for r in results),
           "per_daemon": [round(r["grants"] / r["elapsed_s"]) for r in results]}
    if db.startswith("postgresql"):
        trips = commits = 0
        for path in stats:
            with open(path) as f:
                s = json.load(f)
            trips += s["round_trips"]
            commits += s["commits"]
        out["round_trips"] = trips
        out["commits"] = commits
    return out


def run(duration: float, repeat: int, connections: int, pipeline: int, work: harness.Workdir, log=print) -> dict:
    c = cluster(work)
    try:
        template = work.file("template.sqlite")
        dbgen.generate(template, 1000)
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGS}
        for n in range(repeat):
            order = CONFIGS[n % len(CONFIGS):] + CONFIGS[:n % len(CONFIGS)]
            for name, engine, daemons in order:
                tag = f"r{n}{engine}{daemons}"
                if engine == "sqlite":
                    db = harness.private_ledger(template, work.file(tag))
                    result = measure(db, 1, connections, pipeline, duration, work, tag)
                else:
                    db = pg_database(c, tag)
                    before = wal_lsn(c, tag)
                    result = measure(db, daemons, connections, pipeline, duration, work, tag)
                    result["wal_bytes"] = wal_lsn(c, tag) - before
                runs[name].append(result)
                extra = ""
                if "round_trips" in result:
                    extra = (f" | {result['round_trips'] / result['grants']:.2f} round trips, "
                             f"{result['wal_bytes'] / result['grants']:.0f} WAL bytes, "
                             f"{result['grants'] / max(result['commits'], 1):.1f} grants per COMMIT")
                log(f"round {n + 1} {name:<22} {result['grants_per_s']:>8,.0f} grants/s "
                    f"(per daemon {result['per_daemon']}) p99 {result['p99_ms']:.1f} ms{extra}")
    finally:
        c.remove()
    rows = {}
    for name, results in runs.items():
        row = {"grants_per_s": harness.median([r["grants_per_s"] for r in results]),
               "p99_ms": harness.median([r["p99_ms"] for r in results]),
               "runs": [round(r["grants_per_s"]) for r in results]}
        if "round_trips" in results[0]:
            row["round_trips_per_grant"] = harness.median([r["round_trips"] / r["grants"] for r in results])
            row["wal_bytes_per_grant"] = harness.median([r["wal_bytes"] / r["grants"] for r in results])
            row["grants_per_commit"] = harness.median([r["grants"] / max(r["commits"], 1) for r in results])
        rows[name] = row
    # Each round's ratio to SQLite in the same round (a minute apart at most): less swayed than the
    # medians by a shared machine's load coming and going.
    base = runs[CONFIGS[0][0]]
    for name, row in rows.items():
        row["round_ratios"] = [round(r["grants_per_s"] / b["grants_per_s"], 3) for r, b in zip(runs[name], base)]
        row["median_round_ratio"] = harness.median(row["round_ratios"])
    return {"rows": rows, "machine": harness.machine(), "connections": connections, "pipeline": pipeline,
            "duration": duration, "repeat": repeat}


def table(result: dict) -> str:
    out = ["| configuration | durable grants/s | runs | to SQLite, each round (median) | p99 ms | round trips per grant "
           "| WAL bytes per grant | grants per COMMIT |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        pg = "round_trips_per_grant" in r
        ratios = f"{', '.join(f'{x:.2f}' for x in r['round_ratios'])} ({r['median_round_ratio']:.2f})"
        out.append(f"| {name} | {r['grants_per_s']:,.0f} | {', '.join(f'{x:,}' for x in r['runs'])} | {ratios} "
                   f"| {r['p99_ms']:.1f} "
                   f"| {r['round_trips_per_grant']:.2f} | {r['wal_bytes_per_grant']:,.0f} | {r['grants_per_commit']:.1f} |"
                   if pg else
                   f"| {name} | {r['grants_per_s']:,.0f} | {', '.join(f'{x:,}' for x in r['runs'])} | {ratios} "
                   f"| {r['p99_ms']:.1f} | - | - | - |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.postgres", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--connections", type=int, default=24, help="terminal servers in all, shared out over the daemons")
    p.add_argument("--pipeline", type=int, default=8)
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with harness.Workdir(keep=args.keep, base=os.environ.get("TSLS_BENCH_DIR")) as work:
        result = run(args.duration, args.repeat, args.connections, args.pipeline, work,
                     log=harness.progress(args.json))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\n{result['machine']}; {args.connections} terminal servers x {args.pipeline} in flight, "
              f"{args.duration:g} s, median of {args.repeat}\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
