"""Before and after, in the same run: durable grants of the license server at an older commit and at
this checkout, each against the baseline of the same round, at 100 connections x 16 in flight.

    python -m bench.versus COMMIT [--workload first|upgrade] [--duration 4] [--repeat 3] [--connections 100]
                                  [--pipeline 16] [--json]

COMMIT's tree is extracted (git archive) into a work directory and its own ``bench.daemon`` and
``bench.dbgen`` run from there (with this checkout's virtualenv), so each version runs on a ledger
of 1,000 licenses made by its own schema. Each round runs the baseline (bench.baseline), the
daemon at COMMIT and the daemon here, in an order that rotates, each in fresh processes, driven by
this checkout's load generator with first logons (every answer a temporary license committed before
it leaves) or, with ``--workload upgrade``, upgrades (each device presents its reported temporary
license and gets a permanent CAL; the load generator prepares the devices before the clock starts). Ratios are taken within each round (the machine is shared: its load comes and goes),
and their medians reported.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench import harness


def checkout(commit: str, work: harness.Workdir) -> str:
    tree = work.file("before")
    os.makedirs(tree)
    archive = subprocess.run(["git", "archive", commit], cwd=harness.ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def template(tree: str, path: str) -> str:
    subprocess.run([harness.PYTHON, "-m", "bench.dbgen", path, "--licenses", "1000"], cwd=tree, check=True,
                   capture_output=True)
    return path


def measure(server: harness.Server, connections: int, pipeline: int, duration: float, workload: str = "first",
            prepare: int = harness.PREPARE) -> dict:
    with server:
        cmd = harness.load_command(server.endpoint, connections, pipeline, duration=duration,
                                   **harness.workload_load(workload, prepare))
        start = []
        result = harness.run_load(cmd, on_start=lambda: start.append(server.cpu_seconds()))
        result["server_cpu_us"] = (server.cpu_seconds() - start[0]) / max(result["answers"], 1) * 1e6
    if result["refusals"] or result["unanswered"]:
        raise RuntimeError(f"{server.name}: refused or dropped requests")
    if server.name != "baseline":
        harness.check_workload(workload, result, server.name)
    return result


def run(commit: str, duration: float, repeat: int, connections: int, pipeline: int, work, log=print,
        workload: str = "first", prepare: int = harness.PREPARE) -> dict:
    tree = checkout(commit, work)
    templates = {"before": template(tree, work.file("before.sqlite")),
                 "after": template(harness.ROOT, work.file("after.sqlite"))}
    names = ["baseline", "before", "after"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for n in range(repeat):
        for name in names[n % 3:] + names[:n % 3]:
            if name == "baseline":
                server = harness.baseline()
            else:
                db = harness.private_copy(templates[name], work.file(f"{name}-{n}.sqlite"))
                server = harness.Server(["bench.daemon", "--db", db, "--log", os.devnull], name,
                                        cwd=tree if name == "before" else None)
            result = measure(server, connections, pipeline, duration, workload, prepare)
            runs[name].append(result)
            log(f"round {n + 1} {name:<9} {result['throughput']:>8,.0f}/s p99 {result['latency_ms']['p99']:8.1f} ms "
                f"CPU {result['server_cpu_us']:.0f} µs per answer")
    out = {"commit_before": commit, "workload": workload, "connections": connections, "pipeline": pipeline,
           "rows": {}}
    for name in names:
        rs = runs[name]
        out["rows"][name] = {"answers_per_s": harness.median([r["throughput"] for r in rs]),
                             "p99_ms": harness.median([r["latency_ms"]["p99"] for r in rs]),
                             "server_cpu_us": harness.median([r["server_cpu_us"] for r in rs]),
                             "runs": [r["throughput"] for r in rs]}
        if name != "baseline":
            out["rows"][name]["ratio_each_round"] = [r["throughput"] / b["throughput"]
                                                     for r, b in zip(rs, runs["baseline"])]
            out["rows"][name]["p99_ratio_each_round"] = [r["latency_ms"]["p99"] / b["latency_ms"]["p99"]
                                                         for r, b in zip(rs, runs["baseline"])]
            out["rows"][name]["ratio"] = harness.median(out["rows"][name]["ratio_each_round"])
            out["rows"][name]["p99_ratio"] = harness.median(out["rows"][name]["p99_ratio_each_round"])
    out["after_to_before_each_round"] = [a["throughput"] / b["throughput"] for a, b in zip(runs["after"], runs["before"])]
    out["after_to_before"] = harness.median(out["after_to_before_each_round"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.versus", description=__doc__.split("\n\n")[0])
    p.add_argument("commit", help="the older commit (anything git names: a hash, main~3)")
    harness.add_load_options(p, 4.0)
    p.add_argument("--workload", choices=harness.WORKLOADS, default="first",
                   help="first logons, or upgrades to permanent CALs (default: %(default)s)")
    p.add_argument("--prepare", type=int, default=harness.PREPARE,
                   help="devices prepared for --workload upgrade (default: %(default)s)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = harness.figures(args.json, lambda work, log: run(args.commit, args.duration, args.repeat,
                                                               args.connections, args.pipeline, work, log=log,
                                                               workload=args.workload, prepare=args.prepare))
    if args.json:
        return 0
    print("\n| server | answers/s (median) | to the baseline, each round (median) | p99 ms | p99 to the baseline's | "
          "server CPU per answer |\n|---|---:|---|---:|---:|---:|")
    for name, r in result["rows"].items():
        ratio = ("-" if name == "baseline" else
                 f"{', '.join(f'{x:.3f}' for x in r['ratio_each_round'])} ({r['ratio']:.3f})")
        p99 = "-" if name == "baseline" else f"{r['p99_ratio']:.1f}"
        print(f"| {name} | {r['answers_per_s']:,.0f} | {ratio} | {r['p99_ms']:.1f} | {p99} | {r['server_cpu_us']:.0f} µs |")
    print(f"\nafter / before, each round: {', '.join(f'{x:.3f}' for x in result['after_to_before_each_round'])} "
          f"(median {result['after_to_before']:.3f}); before = {args.commit}; workload {args.workload}")
    print(f"{result['machine']}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
