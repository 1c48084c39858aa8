"""Durable grants against the baseline, in one run: 1, 10 and 100 connections, with and without pipelining.

    python -m bench.throughput [--duration 4] [--repeat 3] [--pipeline 16] [--json]

For each load, in turn and each in fresh processes: (1) the baseline (bench.baseline: a bare
Twisted JSON-lines server that parses each line and answers it, no licensing); (2) the license
server (bench.daemon: the real daemon on a fresh activated database with 1,000 licenses) granting
a temporary Per Device license to a new device at every logon, each grant committed and its WAL
fsynced before its answer. The same load generator (clients.load, its own process)
drives both; the two share this machine's cores. Each figure is the median of --repeat runs; the
ratios are of the license server to the baseline measured in the same run. A last pair runs the
lab mix (first, repeat and renewal logons with reports, so permanent CALs are issued) at 100
pipelined connections.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from bench import dbgen, harness

LOADS = [(1, 1), (10, 1), (100, 1), (1, None), (10, None), (100, None)]     # (connections, pipeline or default)
LAB_MIX = "first=3,repeat=6,renewal=1"


def measure(server: harness.Server, cmd_for) -> dict:
    with server:
        cpu = server.cpu_seconds()
        cmd = cmd_for(server.endpoint)
        result = harness.run_load(cmd)
        result["server_cpu_us"] = (server.cpu_seconds() - cpu) / max(result["answers"], 1) * 1e6
        result["command"] = cmd
    return result


def run(duration: float, repeat: int, pipeline: int, template: str, work: harness.Workdir, log=print) -> list[dict]:
    rows = []
    loads = [(c, p or pipeline, "first=1", False) for c, p in LOADS] + [(100, pipeline, LAB_MIX, True)]
    for connections, depth, mix, report in loads:
        runs = {"baseline": [], "license server": []}
        for n in range(repeat):
            def cmd_for(endpoint):
                return harness.load_command(endpoint, connections, depth, duration=duration, mix=mix, report=report)
            runs["baseline"].append(measure(harness.baseline(), cmd_for))
            db = harness.private_copy(template, work.file(f"ledger-{connections}-{depth}-{n}.sqlite"))
            runs["license server"].append(measure(harness.license_server(db), cmd_for))
        row = {"connections": connections, "pipeline": depth, "mix": mix, "report": report}
        for name, results in runs.items():
            if any(r["refusals"] or r["unanswered"] for r in results):
                raise RuntimeError(f"{name} refused or dropped requests: {[r['refusals'] for r in results]}")
            row[name] = {
                "answers_per_s": harness.median([r["throughput"] for r in results]),
                "p50_ms": harness.median([r["latency_ms"]["p50"] for r in results]),
                "p99_ms": harness.median([r["latency_ms"]["p99"] for r in results]),
                "max_ms": harness.median([r["latency_ms"]["max"] for r in results]),
                "server_cpu_us": harness.median([r["server_cpu_us"] for r in results]),
                "outcomes": results[-1]["outcomes"],
                "runs": [r["throughput"] for r in results],
            }
        row["command"] = harness.shown(runs["license server"][-1]["command"]).replace(
            runs["license server"][-1]["server"], "ENDPOINT")
        base, ls = row["baseline"], row["license server"]
        row["throughput_ratio"] = ls["answers_per_s"] / base["answers_per_s"]
        row["p99_ratio"] = ls["p99_ms"] / base["p99_ms"]
        rows.append(row)
        log(f"{connections:>4} x {depth:<3} {mix:<28} baseline {base['answers_per_s']:>8,.0f}/s p99 {base['p99_ms']:8.2f} ms"
            f" | license server {ls['answers_per_s']:>7,.0f}/s p99 {ls['p99_ms']:8.2f} ms"
            f" | ratio {row['throughput_ratio']:.3f}, p99 x{row['p99_ratio']:.1f}")
    return rows


def table(rows: list[dict]) -> str:
    out = ["| connections | in flight each | workload | baseline answers/s | license server answers/s | ratio "
           "| baseline p50 / p99 ms | license server p50 / p99 ms | p99 ratio | server CPU per answer (baseline / license server) |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, l = r["baseline"], r["license server"]
        work = "first logons" if r["mix"] == "first=1" else f"lab mix {r['mix']}, reported"
        out.append(f"| {r['connections']} | {r['pipeline']} | {work} | {b['answers_per_s']:,.0f} | {l['answers_per_s']:,.0f} "
                   f"| {r['throughput_ratio']:.2f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {l['p50_ms']:.2f} / {l['p99_ms']:.2f} "
                   f"| {r['p99_ratio']:.1f} | {b['server_cpu_us']:.0f} / {l['server_cpu_us']:.0f} µs |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds of load per run (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each load; medians are reported (default: %(default)s)")
    p.add_argument("--pipeline", type=int, default=16, help="requests in flight per connection when pipelined "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    started = time.perf_counter()
    with harness.Workdir() as work:
        template = work.file("template.sqlite")
        dbgen.generate(template, 1000)
        rows = run(args.duration, args.repeat, args.pipeline, template, work,
                   log=harness.progress(args.json))
    if args.json:
        print(json.dumps({"machine": harness.machine(), "rows": rows}, indent=2))
    else:
        print()
        print(table(rows))
        print(f"\n{harness.machine()}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
