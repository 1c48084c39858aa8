"""The floor: a first logon's unavoidable steps timed alone, in this process, with no sockets, no
Twisted and no other load, to set beside the daemon's CPU per grant (bench.throughput, bench.versus).

    python -m bench.floor [--grants 20000] [--batch 400] [--repeat 3] [--workload first|upgrade] [--json]

Each step is what every durable grant must do in this design (the pure core deciding, SQLite in WAL
with its COMMIT and an fdatasync of the WAL per batch, as ``store.transaction()`` does), run for --grants new devices, in batches of --batch
(the batch size the daemon reaches at 100 x 16), on a fresh activated ledger (bench.dbgen, 1,000
licenses), and timed per grant:

- parse: the logon request line parsed (``orjson.loads``, as tsls.server.protocol parses a plain line);
- read: the device's licenses and the key packs (``store.world``) and the policies (with ``--workload
  upgrade``, the presented token's HMAC checked too);
- decide: ``licensing.device_logon`` (the pure core);
- write: the license row (``store.apply``) and its event (``store.add_events``, held for the batch); a
  logon decides before it writes, so it runs without a savepoint (tsls.server.writer.writes_last);
- events: the batch's events written together (INSERTs of 50 rows each, as the store writes them), divided by the grants it holds;
- answer: the answer's license (``license_json`` with its HMAC token) and the reply's line (``orjson.dumps``,
  as the protocol writes an answer);
- commit: the batch's COMMIT (its fsync), divided by the grants it holds.

Each step is timed by the wall clock (perf_counter); the CPU time of the whole loop (thread_time)
is given too, as a shared machine's load stretches the wall clock. Medians of --repeat runs. What the daemon spends above their sum is its shell: the protocol's
dispatch and checks, Deferreds, the writer's batching, the reactor and the sockets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import dbgen, harness

STEPS = ("parse", "read", "decide", "write", "events", "answer", "commit")


def run_once(grants: int, batch: int, work: harness.Workdir, n: int, workload: str = "first") -> dict:
    import orjson

    from tsls.core import events, licensing
    from tsls.core.licensing import Logon, TerminalServer
    from tsls.core.model import CalType, ProductVersion
    from tsls.server import tokens
    from tsls.server.app import load_identity
    from tsls.server.ledger import Ledger
    from tsls.server.store import LicenseStore

    directory = work.file(f"floor-{n}")
    os.makedirs(directory, mode=0o700)
    path = os.path.join(directory, "ledger.sqlite")
    dbgen.generate(path, 1000)
    store = LicenseStore.open(path)
    identity = load_identity(store, "1")
    ledger = Ledger(None, identity)
    ts = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)
    now = int(time.time())
    hwids = [f"{n:02d}{i:038x}" for i in range(grants)]
    presented = [None] * grants
    if workload == "upgrade":       # untimed: each device logs on and its logon is reported
        for first in range(0, grants, batch):
            with store.transaction(), store.held_events():
                for i in range(first, min(first + batch, grants)):
                    world = store.world(hwids[i], True, identity.seed)
                    decision = store.apply(licensing.device_logon(
                        ts, Logon(hwids[i], f"PC{i}", f"user{i}", None, store.next_license_id()), world, now))
                    store.apply(licensing.report_logon(decision.license.id, hwids[i],
                                                       store.world(hwids[i], True, identity.seed), now))
                    presented[i] = tokens.sign(identity.secret, decision.license.id, hwids[i])
        store.new_events.clear()
    spent = dict.fromkeys(STEPS, 0.0)
    clock = time.perf_counter
    cpu = time.thread_time()
    done = 0
    while done < grants:
        size = min(batch, grants - done)
        transaction = store.transaction()
        transaction.__enter__()
        held = store.held_events()
        held.__enter__()
        for i in range(done, done + size):
            line = json.dumps({"id": i, "op": "logon", "hwid": hwids[i], "machine": f"PC{i}",
                               "user": f"user{i}", "license": presented[i]}).encode()
            t0 = clock()
            request = orjson.loads(line)
            t1 = clock()
            in_group_only, activated, prevent_upgrade = store.logon_settings()
            store.registration(ts.name)
            token = request["license"]
            license_id = None if token is None else tokens.verify(identity.secret, token, request["hwid"])
            world = store.world(request["hwid"], activated, identity.seed, prevent_upgrade)
            new_id = store.next_license_id()
            t2 = clock()
            decision = licensing.device_logon(ts, Logon(request["hwid"], request["machine"], request["user"],
                                                        license_id, new_id), world, now)
            t3 = clock()
            decision = store.apply(decision)
            store.add_events(events.for_decision(decision, now, ts.name, request["hwid"], request["user"]))
            t4 = clock()
            orjson.dumps({"id": request["id"], "ok": True, "result": ledger._answer(decision, world)},
                         option=orjson.OPT_APPEND_NEWLINE)
            t5 = clock()
            spent["parse"] += t1 - t0
            spent["read"] += t2 - t1
            spent["decide"] += t3 - t2
            spent["write"] += t4 - t3
            spent["answer"] += t5 - t4
        t5 = clock()
        held.__exit__(None, None, None)
        spent["events"] += clock() - t5
        t6 = clock()
        transaction.__exit__(None, None, None)
        spent["commit"] += clock() - t6
        store.new_events.clear()
        done += size
    cpu = time.thread_time() - cpu
    store.close()
    return {**{step: spent[step] / grants * 1e6 for step in STEPS}, "cpu": cpu / grants * 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--grants", type=int, default=20_000, help="grants per run (default: %(default)s)")
    p.add_argument("--batch", type=int, default=400, help="grants per COMMIT (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="runs; medians are reported (default: %(default)s)")
    p.add_argument("--workload", choices=harness.WORKLOADS, default="first",
                   help="first logons, or upgrades: devices whose reported temporary license is presented and "
                        "upgraded to a permanent CAL (prepared untimed) (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    with harness.Workdir() as work:
        runs = [run_once(args.grants, args.batch, work, n, args.workload) for n in range(args.repeat)]
    result = {step: harness.median([r[step] for r in runs]) for step in STEPS}
    result["total"] = sum(result[step] for step in STEPS)
    result["cpu"] = harness.median([r["cpu"] for r in runs])
    if args.json:
        print(json.dumps({"us_per_grant": result, "runs": runs, "machine": harness.machine()}, indent=2))
        return 0
    for step in (*STEPS, "total"):
        print(f"{step:<9} {result[step]:7.1f} µs per grant")
    print(f"CPU time of the whole loop (this thread, the timing included): {result['cpu']:.1f} µs per grant")
    what = "first logons" if args.workload == "first" else "upgrades"
    print(f"\n{args.grants:,} {what} in batches of {args.batch}, median of {args.repeat}; {harness.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
