"""Reads never stall grants: grant p99 while an administrator exports every license and polls status
every second, against the same daemon with nobody reading, in the same run.

    python -m bench.readstall [--licenses 1000000] [--duration 15] [--repeat 3] [--json]

Each run starts ``bench.daemon`` on a fresh copy of a ledger of --licenses licenses (bench.dbgen,
kept in $TMPDIR/tsls-bench-cache like bench.scaling's), warms it with 3 s of the same load, then
measures --duration seconds of first logons at 100 connections x 16 in flight (clients.load, its own
process; every answer a temporary license committed before it leaves). In the "administrator" runs,
for the whole measured window:

- ``tsls-admin licenses --csv`` (its own process) exports every license, page by page (the cursor),
  to a file; when it ends it starts again;
- a thread of this process asks ``status`` on an administrator's connection every second and times
  each answer.

"Nobody reading" and "administrator" alternate (the order swaps each round); figures are medians of
--repeat rounds, and each round's own ratio is given (the machine is shared: compare within a round).
Target: grant p99 with the administrator <= 1.2 x without.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

from bench import harness
from bench.scaling import CACHE, WARM_UP, template
from tsls.public import PROTOCOL_VERSION, proof

TARGET = 1.2


class StatusPoller(threading.Thread):
    """``status`` once a second on one administrator's connection, each answer timed."""

    def __init__(self, port: int, secret: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")
        nonce = self._ask("challenge")["nonce"]
        self._ask("hello", protocol=PROTOCOL_VERSION, role="admin", proof=proof(secret, nonce, "admin"))
        self.stopped = threading.Event()
        self.times: list[float] = []
        self.licenses = 0

    def _ask(self, op: str, **fields) -> dict:
        self.file.write(json.dumps({"id": 1, "op": op, **fields}).encode() + b"\n")
        self.file.flush()
        answer = json.loads(self.file.readline())
        if not answer.get("ok"):
            raise RuntimeError(f"{op}: {answer}")
        return answer["result"]

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            started = time.perf_counter()
            result = self._ask("status")
            self.times.append(time.perf_counter() - started)
            self.licenses = sum(result["licenses"].values())
            next_at += 1.0
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> dict:
        self.stopped.set()
        self.join(60)
        self.sock.close()
        return {"answers": len(self.times), "p50_ms": round(harness.median(self.times) * 1000, 1),
                "max_ms": round(max(self.times, default=0) * 1000, 1), "licenses": self.licenses}


class Exporter(threading.Thread):
    """``tsls-admin licenses --csv`` to a file, again and again until stopped."""

    def __init__(self, endpoint: str, db: str, out: str) -> None:
        super().__init__(daemon=True)
        self.cmd = harness.admin_command(endpoint, db, "--timeout", "600", "licenses", "--csv")
        self.out = out
        self.stopped = threading.Event()
        self.proc = None
        self.exports: list[tuple[float, int]] = []     # (seconds, rows) of each export that ended
        self.began = None

    def run(self) -> None:
        self.began = time.perf_counter()
        while not self.stopped.is_set():
            started = time.perf_counter()
            with open(self.out, "wb") as f:
                self.proc = subprocess.Popen(self.cmd, cwd=harness.ROOT, stdout=f, stderr=subprocess.PIPE)
                _, err = self.proc.communicate()
            if self.stopped.is_set():
                break
            if self.proc.returncode:
                raise RuntimeError(f"export failed: {err.decode()}")
            self.exports.append((time.perf_counter() - started, harness.rows_in(self.out)))

    def stop(self) -> dict:
        self.stopped.set()
        seconds = time.perf_counter() - self.began
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.join(60)
        rows = sum(n for _, n in self.exports) + harness.rows_in(self.out)     # and the export cut short
        return {"exports_finished": len(self.exports), "rows_exported": rows, "rows_per_s": round(rows / seconds),
                "seconds": [round(s, 1) for s, _ in self.exports], "rows": [n for _, n in self.exports]}


def measure(db: str, admin: bool, duration: float, connections: int, pipeline: int, work) -> dict:
    with harness.license_server(db) as server:
        harness.run_load(harness.load_command(server.endpoint, connections, pipeline, duration=WARM_UP))
        poller = exporter = None
        if admin:
            credential = os.path.join(os.path.dirname(db), "admin.secret")
            with open(credential) as f:
                secret = f.read().strip()
            exporter = Exporter(server.endpoint, db, work.file("export.csv"))
            exporter.start()
            poller = StatusPoller(server.port, secret)
            poller.start()
            time.sleep(1.0)         # the export is under way before the measured load begins
        cmd = harness.load_command(server.endpoint, connections, pipeline, duration=duration)
        cpu = server.cpu_seconds()
        result = harness.run_load(cmd)
        result["server_cpu_us"] = (server.cpu_seconds() - cpu) / max(result["answers"], 1) * 1e6
        result["command"] = harness.shown(cmd).replace(server.endpoint, "ENDPOINT")
        if admin:
            result["status"] = poller.stop()
            result["export"] = exporter.stop()
    if result["refusals"] or result["unanswered"]:
        raise RuntimeError(f"refused or dropped requests: {result['refusals']}, {result['unanswered']}")
    return result


def run(licenses: int, duration: float, repeat: int, connections: int, pipeline: int, work, log=print) -> dict:
    cache = CACHE
    source = template(cache, licenses, log)
    runs: dict[str, list[dict]] = {"nobody reading": [], "administrator": []}
    for n in range(repeat):
        order = [("nobody reading", False), ("administrator", True)]
        for name, admin in (order if n % 2 == 0 else order[::-1]):
            db = harness.private_ledger(source, work.file(f"{n}-{int(admin)}"))
            result = measure(db, admin, duration, connections, pipeline, work)
            runs[name].append(result)
            extra = ""
            if admin:
                s, e = result["status"], result["export"]
                extra = (f" | status x{s['answers']} p50 {s['p50_ms']} ms max {s['max_ms']} ms | "
                         f"{e['rows_exported']:,} rows exported ({e['rows_per_s']:,}/s) | exports finished "
                         f"{e['exports_finished']} ({', '.join(f'{r:,} rows in {t} s' for t, r in zip(e['seconds'], e['rows']))})")
            log(f"round {n + 1} {name:<15} {result['throughput']:>7,.0f} grants/s p50 {result['latency_ms']['p50']:7.1f} "
                f"p99 {result['latency_ms']['p99']:7.1f} ms{extra}")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
    rows = {name: {"grants_per_s": harness.median([r["throughput"] for r in rs]),
                   "p50_ms": harness.median([r["latency_ms"]["p50"] for r in rs]),
                   "p99_ms": harness.median([r["latency_ms"]["p99"] for r in rs]),
                   "server_cpu_us": harness.median([r["server_cpu_us"] for r in rs]),
                   "runs_p99_ms": [r["latency_ms"]["p99"] for r in rs],
                   "runs_grants_per_s": [r["throughput"] for r in rs]} for name, rs in runs.items()}
    quiet, busy = runs["nobody reading"], runs["administrator"]
    round_p99 = [b["latency_ms"]["p99"] / q["latency_ms"]["p99"] for q, b in zip(quiet, busy)]
    round_tput = [b["throughput"] / q["throughput"] for q, b in zip(quiet, busy)]
    return {"rows": rows, "licenses": licenses, "round_p99_ratios": round_p99, "round_throughput_ratios": round_tput,
            "p99_ratio": rows["administrator"]["p99_ms"] / rows["nobody reading"]["p99_ms"],
            "median_round_p99_ratio": harness.median(round_p99),
            "admin": [{"status": r["status"], "export": r["export"]} for r in busy],
            "command": quiet[-1]["command"], "target": TARGET}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.readstall", description=__doc__.split("\n\n")[0])
    p.add_argument("--licenses", type=int, default=1_000_000, help="licenses in the ledger (default: %(default)s)")
    harness.add_load_options(p, 15.0, "seconds of measured load per run")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = harness.figures(args.json, lambda work, log: run(args.licenses, args.duration, args.repeat,
                                                               args.connections, args.pipeline, work, log=log))
    if args.json:
        return 0
    print()
    print("| run | durable grants/s | p50 / p99 ms | server CPU per grant |")
    print("|---|---:|---:|---:|")
    for name, r in result["rows"].items():
        print(f"| {name} | {r['grants_per_s']:,.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['server_cpu_us']:.0f} µs |")
    print(f"\np99 administrator / nobody reading: {result['p99_ratio']:.2f} (medians), "
          f"{result['median_round_p99_ratio']:.2f} (median of rounds: "
          f"{', '.join(f'{x:.2f}' for x in result['round_p99_ratios'])}); target <= {TARGET}")
    print(f"grants/s ratio per round: {', '.join(f'{x:.2f}' for x in result['round_throughput_ratios'])}")
    speeds = ", ".join(f"{a['export']['rows_per_s']:,}" for a in result["admin"])
    print(f"the export meanwhile: {speeds} rows/s per round")
    print(f"\n{result['licenses']:,} licenses; {result['machine']}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
