"""Memory and fairness under clients that send tiny bad lines and never read their answers (issue 11 item 4).

    .venv/bin/python -m bench.hostile_memory [--connections 1000] [--duration 20] [--json]

Starts the license server (bench.daemon, its own process, an activated ledger), then in another process
opens N connections that each send ``1\\n`` as fast as the server takes it and never read a byte (every
such line is a BAD_REQUEST answer of ~90 bytes the server must hold or drop). While they do, a
well-behaved terminal server on its own connection logs new devices on one at a time and times each
answer. Prints the server's resident memory (before, peak, after) and the well-behaved client's latency
(p50, p99, max), with the bytes the abusers got the server to take.

Targets (issue 11): resident memory < 300 MB and p99 < 100 ms with 1,000 such connections.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

from bench.harness import PYTHON, ROOT, Workdir, license_server, machine

HELLO = (b'{"id":0,"op":"hello","protocol":1,"role":"terminal_server","name":"GOOD","version":"2003",'
         b'"mode":"per_device"}\n')


def abuse(port: int, connections: int, duration: float) -> None:
    """The abusers' process: connect them all, then write ``1\\n`` whenever a socket takes it; never read."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, connections + 64)), hard))
    block = b"1\n" * 32 * 1024
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    print("connected", flush=True)
    sent = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            try:
                sent += key.fileobj.send(block)
            except BlockingIOError:
                pass
            except OSError:             # closed by the server: it may do that to a flood
                sel.unregister(key.fileobj)
    print(json.dumps({"sent_bytes": sent, "open": len(sel.get_map())}), flush=True)
    for s in socks:
        s.close()


def well_behaved(port: int, until: float) -> list[float]:
    """Sequential logons of new devices on one connection; the time of each answer, in seconds."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        s.sendall(HELLO)
        assert json.loads(f.readline())["ok"]
        n = 0
        while time.monotonic() < until:
            n += 1
            line = b'{"id":%d,"op":"logon","hwid":"good-%d","machine":"G%d","user":"u"}\n' % (n, n, n)
            started = time.perf_counter()
            s.sendall(line)
            answer = json.loads(f.readline())
            times.append(time.perf_counter() - started)
            assert answer["id"] == n and answer["ok"], answer
    return times


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run(connections: int, duration: float) -> dict:
    from bench.dbgen import generate

    with Workdir() as work:
        db = work.file("license-server.sqlite")
        generate(db, licenses=1000)
        with license_server(db) as server:
            before = server.rss_mb()[0]
            abusers = subprocess.Popen([PYTHON, "-m", "bench.hostile_memory", "--abuse", str(server.port),
                                        "--connections", str(connections), "--duration", str(duration + 5)],
                                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                assert abusers.stdout.readline().strip() == "connected"
                samples = []
                stop = threading.Event()

                def sample():
                    while not stop.wait(0.25):
                        samples.append(server.rss_mb()[0])
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                times = well_behaved(server.port, time.monotonic() + duration)
                stop.set()
                sampler.join()
                during, peak = server.rss_mb()
                abused = json.loads(abusers.stdout.readline())
            finally:
                abusers.kill()
                abusers.wait()
            after = server.rss_mb()[0]
    return {
        "connections": connections, "duration_s": duration, "machine": machine(),
        "rss_mb": {"before": round(before, 1), "peak": round(max([peak, *samples]), 1), "at_end": round(during, 1),
                   "after_abusers_left": round(after, 1)},
        "abusers": abused,
        "well_behaved": {"logons": len(times), "p50_ms": round(percentile(times, 0.5) * 1000, 2),
                         "p99_ms": round(percentile(times, 0.99) * 1000, 2), "max_ms": round(max(times) * 1000, 2)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.hostile_memory", description=__doc__.split("\n\n")[2])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--duration", type=float, default=20.0, help="seconds the well-behaved client runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--abuse", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.abuse:
        abuse(args.abuse, args.connections, args.duration)
        return 0
    result = run(args.connections, args.duration)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        r, w = result["rss_mb"], result["well_behaved"]
        print(f"{args.connections} connections sending 1\\n and never reading, {args.duration:g} s ({result['machine']})")
        print(f"server RSS (MB): before {r['before']}, peak {r['peak']}, at the end {r['at_end']}, "
              f"after they left {r['after_abusers_left']}")
        print(f"abusers got the server to take {result['abusers']['sent_bytes']:,} bytes; "
              f"{result['abusers']['open']} connections still open")
        print(f"well-behaved logons: {w['logons']}, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, max {w['max_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
