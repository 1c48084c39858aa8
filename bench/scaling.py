"""How the license server scales with its ledger: a grant's cost with 1,000 and with 1,000,000
licenses in the database, resident memory with 1,000,000 licenses and 1,000 open connections, and
start-up time with 1,000,000 licenses.

    python -m bench.scaling [--licenses 1000000] [--duration 4] [--repeat 3] [--cache DIR] [--json]

The two databases are made by bench.dbgen (direct SQL inserts; about 30 s for 1,000,000) and kept
in --cache (default: a directory under the system's temporary directory) so a second run starts at
once; each measurement runs on a fresh copy. Grants are first logons at 100 connections with 16
requests in flight each, the same load as bench.throughput's last line; runs on the small and the
large ledger alternate, and medians are reported; each run measures after a 3 s warm-up on the same
server. The cost of a grant is the server's CPU time per grant (user + system, all threads, from
/proc); the inverse of the throughput is shown beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

from bench import dbgen, harness
from tsls.server.store import SCHEMA_VERSION

SMALL = 1000
CACHE = os.path.join(tempfile.gettempdir(), "tsls-bench-cache")     # the generated ledgers, kept between runs
WARM_UP = 3.0
MEMORY_LOAD = 10.0      # seconds of grants on every connection: the page cache fills as it would


def template(cache: str, licenses: int, log=print) -> str:
    # Named by the schema's version: a ledger made by an older schema would be migrated at the daemon's
    # start, and the start-up figure would time the migration.
    path = os.path.join(cache, f"ledger-{licenses}-schema{SCHEMA_VERSION}.sqlite")
    stamp = path + ".ok"
    if not (os.path.exists(path) and os.path.exists(stamp)):
        os.makedirs(cache, mode=0o700, exist_ok=True)     # tsls refuses a database others can read
        log(f"making a database with {licenses:,} licenses in {path} ...")
        started = time.perf_counter()
        dbgen.generate(path, licenses)
        log(f"  {time.perf_counter() - started:.0f} s")
        open(stamp, "w").close()
    return path


def fresh_copy(src: str, work: harness.Workdir, name: str) -> str:
    dst = work.file(name)
    remove(dst)             # a WAL left beside an older copy would be replayed onto this one
    return harness.private_copy(src, dst)


def remove(db: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)


def grant_cost(small: str, large: str, licenses: int, duration: float, repeat: int, work, log=print) -> dict:
    runs: dict = {SMALL: [], licenses: []}
    cmd = None
    for n in range(repeat):
        for count, src in ((SMALL, small), (licenses, large)):
            db = fresh_copy(src, work, f"grant-{count}.sqlite")
            timings = work.file(f"timings-{count}.json")
            server = harness.license_server(db)
            server.args += ["--timings", timings]
            with server:
                # Warm up first, so the page cache holds what a server that has been running holds.
                harness.run_load(harness.load_command(server.endpoint, 100, 16, duration=WARM_UP))
                cpu = server.cpu_seconds()
                cmd = harness.load_command(server.endpoint, 100, 16, duration=duration)
                result = harness.run_load(cmd)
                used = server.cpu_seconds() - cpu
            if result["refusals"] or result["grants"] != result["answers"]:
                raise RuntimeError(f"not every answer was a grant: {result['outcomes']} {result['refusals']}")
            with open(timings) as f:
                batches = json.load(f)      # warm-up included
            runs[count].append({"grants_per_s": result["throughput"], "cpu_us": used / result["grants"] * 1e6,
                                "p99_ms": result["latency_ms"]["p99"], "jobs_ms_p50": batches["jobs_ms_p50"],
                                "commit_ms_p50": batches["commit_ms_p50"], "commit_ms_p90": batches["commit_ms_p90"],
                                "fsync_ms_p50": batches["fsync_ms_p50"], "fsync_ms_p90": batches["fsync_ms_p90"],
                                "checkpoint_ms_max": batches["checkpoint_ms_max"], "wal_mb": batches["wal_mb"],
                                "batch": batches["mean_size"]})
            log(f"  {count:>9,} licenses: {result['throughput']:>7,.0f} grants/s, "
                f"{used / result['grants'] * 1e6:.0f} us CPU per grant, p99 {result['latency_ms']['p99']:.1f} ms; "
                f"batches of {batches['mean_size']:.0f}: jobs {batches['jobs_ms_p50']:.0f} ms, "
                f"COMMIT p50 {batches['commit_ms_p50']:.0f} ms, p90 {batches['commit_ms_p90']:.0f} ms; "
                f"fsync p50 {batches['fsync_ms_p50']:.0f} ms, p90 {batches['fsync_ms_p90']:.0f} ms "
                f"({batches['batches_per_fsync']:.1f} batches each); {batches['checkpoints']} checkpoints, "
                f"longest {batches['checkpoint_ms_max']:.0f} ms, pause longest {batches['pause_ms_max']:.0f} ms; "
                f"WAL {batches['wal_mb']:.0f} MB at most")
            remove(db)
    out = {}
    for count, rs in runs.items():
        out[count] = {k: harness.median([r[k] for r in rs])
                      for k in ("grants_per_s", "cpu_us", "p99_ms", "jobs_ms_p50", "commit_ms_p50", "commit_ms_p90",
                          "fsync_ms_p50", "fsync_ms_p90", "checkpoint_ms_max", "wal_mb", "batch")}
    out["cpu_ratio"] = out[licenses]["cpu_us"] / out[SMALL]["cpu_us"]
    out["time_ratio"] = out[SMALL]["grants_per_s"] / out[licenses]["grants_per_s"]
    out["command"] = harness.shown(cmd).replace(cmd[cmd.index("--server") + 1], "ENDPOINT")
    return out


def _hello_answered(port: int, deadline: float) -> bool:
    """Connect and say hello as a terminal server; True once answered."""
    hello = (b'{"id":1,"op":"hello","protocol":1,"role":"terminal_server","name":"STARTUP","version":"2003",'
             b'"mode":"per_device"}\n')
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(hello)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b'"ok":true' in data:
                    return True
        except OSError:
            time.sleep(0.005)
    return False


def startup(large: str, repeat: int, work, log=print) -> dict:
    """Seconds from starting the daemon's process to the answer of a first hello (interpreter start,
    imports, opening the ledger and listening included)."""
    times, listen = [], []
    for _ in range(repeat):
        db = fresh_copy(large, work, "startup.sqlite")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = harness.Server(["bench.daemon", "--db", db, "--listen", f"tcp:{port}:interface=127.0.0.1"],
                                "license server")
        started = time.perf_counter()
        server.start()
        listened = time.perf_counter() - started
        ok = _hello_answered(port, started + 60)
        took = time.perf_counter() - started
        server.stop()
        if not ok:
            raise RuntimeError("the server did not answer a hello within 60 s")
        times.append(took)
        listen.append(listened)
        log(f"  started and answered a hello in {took:.2f} s (listening after {listened:.2f} s)")
        remove(db)
    return {"seconds": harness.median(times), "listening_seconds": harness.median(listen), "runs": times}


def memory(large: str, connections: int, work, log=print) -> dict:
    """Resident memory of the daemon with the large ledger while ``connections`` terminal servers
    are connected and logging devices on, sampled every 50 ms; VmHWM is the peak of its life."""
    db = fresh_copy(large, work, "memory.sqlite")
    samples = []
    with harness.license_server(db) as server:
        idle = server.rss_mb()[0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(server.rss_mb()[0])
                time.sleep(0.05)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cmd = harness.load_command(server.endpoint, connections, 1, duration=MEMORY_LOAD)
        result = harness.run_load(cmd)
        stop.set()
        sampler.join()
        now, peak = server.rss_mb()
    remove(db)
    out = {"connections": connections, "idle_mb": idle, "under_load_max_mb": max(samples), "peak_mb": peak,
           "grants": result["grants"], "grants_per_s": result["throughput"],
           "command": harness.shown(cmd).replace(cmd[cmd.index("--server") + 1], "ENDPOINT")}
    log(f"  idle {idle:.0f} MB; with {connections} connections granting: max {max(samples):.0f} MB "
        f"(peak of the process's life {peak:.0f} MB), {result['grants']:,} grants")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--licenses", type=int, default=1_000_000)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--connections", type=int, default=1000, help="open connections for the memory figure")
    p.add_argument("--cache", default=CACHE,
                   help="where the generated databases are kept (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    log = harness.progress(args.json)
    started = time.perf_counter()
    small = template(args.cache, SMALL, log)
    large = template(args.cache, args.licenses, log)
    with harness.Workdir() as work:
        log(f"grant cost, {SMALL:,} vs {args.licenses:,} licenses:")
        cost = grant_cost(small, large, args.licenses, args.duration, args.repeat, work, log)
        log(f"start-up with {args.licenses:,} licenses:")
        start = startup(large, args.repeat, work, log)
        log(f"resident memory with {args.licenses:,} licenses and {args.connections:,} connections:")
        mem = memory(large, args.connections, work, log)
    figures = {"machine": harness.machine(), "licenses": args.licenses, "grant_cost": cost, "startup": start,
               "memory": mem, "seconds": round(time.perf_counter() - started)}
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    else:
        c = cost
        print()
        print(f"grant cost: {c[SMALL]['cpu_us']:.0f} us CPU per grant with {SMALL:,} licenses, "
              f"{c[args.licenses]['cpu_us']:.0f} us with {args.licenses:,}: x{c['cpu_ratio']:.2f} "
              f"(throughput {c[SMALL]['grants_per_s']:,.0f} vs {c[args.licenses]['grants_per_s']:,.0f} grants/s: "
              f"x{c['time_ratio']:.2f})")
        for count in (SMALL, args.licenses):
            print(f"  batches with {count:,} licenses: {c[count]['batch']:.0f} grants, jobs {c[count]['jobs_ms_p50']:.0f} ms, "
                  f"COMMIT p50 {c[count]['commit_ms_p50']:.0f} ms, p90 {c[count]['commit_ms_p90']:.0f} ms, "
                  f"fsync p50 {c[count]['fsync_ms_p50']:.0f} ms, p90 {c[count]['fsync_ms_p90']:.0f} ms, "
                  f"longest checkpoint {c[count]['checkpoint_ms_max']:.0f} ms, WAL {c[count]['wal_mb']:.0f} MB at most")
        print(f"start-up with {args.licenses:,} licenses: {start['seconds']:.2f} s to the first answered hello")
        print(f"resident memory with {args.licenses:,} licenses and {mem['connections']:,} connections: "
              f"{mem['under_load_max_mb']:.0f} MB (peak {mem['peak_mb']:.0f} MB)")
        print(f"{harness.machine()}; {figures['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
