"""What the console costs the grants: durable grants/s at 100 connections x 16 in flight, with and without
the console's licenses page refreshing every second and /metrics scraped every second.

    python -m bench.console [--duration 5] [--repeat 3] [--connections 100] [--pipeline 16] [--json]
    python -m bench.console --reads N      # how long each page's reads and a scrape take with N licenses

Three daemons per round, each in a fresh process on a fresh copy of an activated ledger with 1,000
licenses (bench.dbgen), each loaded by the same load generator (clients.load, its own process) with
first logons (every answer a temporary license committed before it leaves):

- "no console": ``bench.daemon`` as bench.throughput runs it;
- "console, idle": ``bench.daemon --console``: the console listens and the protocol's metrics hook
  counts every answer, but nobody looks;
- "console watched": the same, while a watcher (a thread of this process) logged in with a link from
  ``tsls-admin console`` does every second what the open licenses page does (GET /api/licenses, newest
  first, 50 rows, with the total count) and what a Prometheus scrape does (GET /metrics).

The watcher makes the page's own requests rather than running a browser: a headless chromium would
spend this machine's two cores on painting, which is the browser's cost, not the server's. The order
of the three rotates each round; figures are medians of --repeat rounds.
"""
from __future__ import annotations

import argparse
import http.cookiejar
import json
import subprocess
import sys
import threading
import time
import urllib.request

from bench import dbgen, harness

PAGE = "/api/licenses?sort=license_id&dir=desc&offset=0&limit=50"
CONFIGS = [("no console", False, False), ("console, idle", True, False), ("console watched", True, True)]
TARGET = 0.95


class Watcher(threading.Thread):
    """The open licenses page and a Prometheus scraper, once a second each, until stopped."""

    def __init__(self, base: str, link: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.opener.open(link, timeout=10).read()
        self.stopped = threading.Event()
        self.times: dict[str, list[float]] = {"licenses": [], "metrics": []}
        self.failures = 0
        self.total = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            for name, path in (("licenses", PAGE), ("metrics", "/metrics")):
                started = time.perf_counter()
                try:
                    body = self.opener.open(self.base + path, timeout=10).read()
                    if name == "licenses":
                        self.total = json.loads(body)["total"]
                    self.times[name].append(time.perf_counter() - started)
                except Exception:
                    self.failures += 1
            next_at += 1.0
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> dict:
        self.stopped.set()
        self.join(15)
        return {name: {"requests": len(t), "p50_ms": round(harness.median(t) * 1000, 1),
                       "max_ms": round(max(t, default=0) * 1000, 1)} for name, t in self.times.items()} | \
            {"failures": self.failures, "licenses_seen": self.total}


def link(endpoint: str, db: str) -> str:
    done = subprocess.run(harness.admin_command(endpoint, db, "--json", "console", "--viewer"), cwd=harness.ROOT,
                          capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"tsls-admin console failed: {done.stderr or done.stdout}")
    return json.loads(done.stdout)["url"]


def measure(db: str, console: bool, watch: bool, connections: int, pipeline: int, duration: float) -> dict:
    with harness.license_server(db, console=console) as server:
        watcher = None
        if watch:
            base = f"http://127.0.0.1:{server.ports[1]}"
            watcher = Watcher(base, link(server.endpoint, db))
            watcher.start()
        cmd = harness.load_command(server.endpoint, connections, pipeline, duration=duration, mix="first=1")
        cpu = server.cpu_seconds()
        result = harness.run_load(cmd)
        result["server_cpu_us"] = (server.cpu_seconds() - cpu) / max(result["answers"], 1) * 1e6
        result["command"] = harness.shown(cmd).replace(server.endpoint, "ENDPOINT")
        if watcher is not None:
            result["watcher"] = watcher.stop()
    if result["refusals"] or result["unanswered"]:
        raise RuntimeError(f"refused or dropped requests: {result['refusals']}, {result['unanswered']}")
    return result


def run(duration: float, repeat: int, connections: int, pipeline: int, work: harness.Workdir, log=print) -> dict:
    template = work.file("template.sqlite")
    dbgen.generate(template, 1000)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGS}
    for n in range(repeat):
        order = CONFIGS[n % 3:] + CONFIGS[:n % 3]
        for name, console, watch in order:
            db = harness.private_ledger(template, work.file(f"{n}-{name.replace(' ', '-').replace(',', '')}"))
            result = measure(db, console, watch, connections, pipeline, duration)
            runs[name].append(result)
            extra = ""
            if "watcher" in result:
                w = result["watcher"]
                extra = (f" | page p50 {w['licenses']['p50_ms']} ms x{w['licenses']['requests']}, "
                         f"/metrics p50 {w['metrics']['p50_ms']} ms x{w['metrics']['requests']}")
            log(f"round {n + 1} {name:<16} {result['throughput']:>8,.0f} grants/s p99 {result['latency_ms']['p99']:7.2f} ms{extra}")
    rows = {}
    for name, results in runs.items():
        rows[name] = {"grants_per_s": harness.median([r["throughput"] for r in results]),
                      "p50_ms": harness.median([r["latency_ms"]["p50"] for r in results]),
                      "p99_ms": harness.median([r["latency_ms"]["p99"] for r in results]),
                      "server_cpu_us": harness.median([r["server_cpu_us"] for r in results]),
                      "runs": [r["throughput"] for r in results]}
        if results and "watcher" in results[-1]:
            rows[name]["watcher"] = [r["watcher"] for r in results]
    base = rows["no console"]["grants_per_s"]
    for name, row in rows.items():
        row["ratio"] = row["grants_per_s"] / base
        # Each round's ratio to the no-console run of the same round (minutes apart at most): less
        # swayed by a shared machine's load coming and going than the ratio of the medians.
        row["round_ratios"] = [r["throughput"] / b["throughput"] for r, b in zip(runs[name], runs["no console"])]
        row["median_round_ratio"] = harness.median(row["round_ratios"])
        row["cpu_ratio"] = row["server_cpu_us"] / rows["no console"]["server_cpu_us"]
    watched = rows["console watched"]
    return {"rows": rows, "command": runs["no console"][-1]["command"], "target": TARGET,
            "met": watched["ratio"] >= TARGET and watched["median_round_ratio"] >= TARGET}


def reads(licenses: int, work: harness.Workdir, repeat: int = 3) -> dict:
    """Each console answer's reads, timed on one snapshot of a ledger of ``licenses`` (bench.dbgen), in
    this process with nothing else running: what a reader thread spends per page load or scrape."""
    from tsls.console import views
    from tsls.console.metrics import Metrics
    from tsls.server.readstore import ReadStore

    db = work.file("reads.sqlite")
    dbgen.generate(db, licenses)
    store = ReadStore(db)
    now = int(time.time())

    class Clock:
        def seconds(self):
            return time.time()

    metrics = Metrics(store, Clock())
    answers = {
        "licenses page (newest 50, with the count)": lambda s: views.licenses_page(s, {}, None, "license_id", True, 0, 50),
        "licenses page sorted by machine": lambda s: views.licenses_page(s, {}, None, "machine", False, 0, 50),
        "licenses page searched": lambda s: views.licenses_page(s, {}, "PC00001", "license_id", True, 0, 50),
        "dashboard": lambda s: views.dashboard(s, now, "product", False),
        "history": lambda s: views.history(s, now),
        "session hosts": views.terminal_servers,
    }
    out = {}
    for name, view in answers.items():
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            with store.snapshot() as snap:
                view(snap)
            times.append(time.perf_counter() - started)
        out[name] = round(harness.median(times) * 1000, 1)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        metrics.scrape()
        times.append(time.perf_counter() - started)
    out["/metrics"] = round(harness.median(times) * 1000, 1)
    store.close()
    return out


def table(result: dict) -> str:
    out = ["| daemon | durable grants/s | ratio to no console | median of each round's ratio | p50 / p99 ms "
           "| server CPU per grant (ratio) |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        out.append(f"| {name} | {r['grants_per_s']:,.0f} | {r['ratio']:.3f} | {r['median_round_ratio']:.3f} "
                   f"| {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['server_cpu_us']:.0f} µs ({r['cpu_ratio']:.3f}) |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.console", description=__doc__.split("\n\n")[0])
    harness.add_load_options(p, 5.0)
    p.add_argument("--reads", type=int, metavar="N", help="instead: time each page's reads and a scrape on a "
                   "ledger of N licenses")
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.reads:
        with harness.Workdir() as work:
            timed = reads(args.reads, work)
        if args.json:
            print(json.dumps({"licenses": args.reads, "ms": timed, "machine": harness.machine()}, indent=2))
        else:
            for name, ms in timed.items():
                print(f"{name:<45} {ms:8.1f} ms")
            print(f"\n{args.reads:,} licenses; {harness.machine()}")
        return 0
    result = harness.figures(args.json, lambda work, log: run(args.duration, args.repeat, args.connections,
                                                               args.pipeline, work, log=log))
    if not args.json:
        print()
        print(table(result))
        watched = result["rows"]["console watched"]
        print(f"\nconsole watched / no console: {watched['ratio']:.3f} (medians), {watched['median_round_ratio']:.3f} "
              f"(median of rounds) (target >= {TARGET}: {'met' if result['met'] else 'NOT met'})")
        for w in watched.get("watcher", []):
            print(f"  watcher: licenses page {w['licenses']['requests']} loads, p50 {w['licenses']['p50_ms']} ms, max "
                  f"{w['licenses']['max_ms']} ms; /metrics {w['metrics']['requests']} scrapes, p50 "
                  f"{w['metrics']['p50_ms']} ms; {w['failures']} failures; {w['licenses_seen']:,} licenses at the end")
        print(f"\n{result['machine']}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
