"""A year of a 10,000-device deployment replayed as a lab file: how long `tsls lab run` takes.

    .venv/bin/python -m bench.labyear                       # 10,000 devices, 2 license servers, 20 session hosts, 52 weeks
    .venv/bin/python -m bench.labyear --devices 2000 --weeks 8 --keep lab.toml

The lab: two license servers with the CALs split between them (each with 2% spare), twenty session
hosts (the first ten list LS1 then LS2, the others LS2 then LS1), one fleet whose devices log on twice
on day 0 (temporary license, then a permanent CAL) and once a week after that for the year, through
the hosts in turn; 5% of them (the leavers) log on on day 0 only. CALs live 52-89 days, so renewals
fall as they come due, each week a different share, and the leavers' CALs expire and go back to their
key packs; expectations check every wave (all permanent, none refused), the key packs at the end, every
device licensed, the ledgers, and that no CAL circulates twice. The run is `tsls lab run` as a user runs
it, in its own process; the time is its wall clock, start-up and shut-down of the daemons included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _share(devices: int, hosts: int) -> int:
    """How many of a fleet's devices the first half of the hosts (LS1 first) get: device i goes through host i mod n."""
    return sum(len(range(i, devices, hosts)) for i in range(hosts // 2))


def lab_file(devices: int, weeks: int, hosts: int = 20, seed: int = 1) -> str:
    leavers = devices // 20
    staff = devices - leavers
    spare = max(1, devices // 50)
    per_server = devices // 2 + devices % 2 + spare
    names = [f"TS{i:02d}" for i in range(1, hosts + 1)]
    out = [f'[lab]\nname = "A year of {devices} devices"\nstart = "2025-01-06"\nseed = {seed}\n',
           '[[license_server]]\nname = "LS1"\n', '[[license_server]]\nname = "LS2"\n']
    for i, name in enumerate(names):
        order = '["LS1", "LS2"]' if i < hosts // 2 else '["LS2", "LS1"]'
        out.append(f'[[session_host]]\nname = "{name}"\nlicense_servers = {order}\n')
    out.append(f'[[fleet]]\nname = "staff"\ndevices = {staff}\nprefix = "pc"\n')
    out.append(f'[[fleet]]\nname = "leavers"\ndevices = {leavers}\nprefix = "gone"\n')
    for ls in ("LS1", "LS2"):
        out.append(f'[[purchase]]\nname = "cals-{ls}"\nlicense_server = "{ls}"\nquantity = {per_server}\n')
        out.append(f'[[step]]\nat = "0d"\ndo = "install"\npurchase = "cals-{ls}"\n')
    through = ", ".join(f'"{n}"' for n in names)
    for fleet, count in (("leavers", leavers), ("staff", staff)):
        out.append(f'[[step]]\nat = "1h"\ndo = "wave"\nfleet = "{fleet}"\nthrough = [{through}]\ntimes = 2\n'
                   f'expect = {{ permanent = {count} }}\n')
    out.append(f'[[step]]\nat = "7d"\ndo = "wave"\nfleet = "staff"\nthrough = [{through}]\nevery = "7d"\n'
               f'until = "{7 * weeks}d"\nexpect = {{ permanent = {staff}, refused = 0 }}\n')
    on_ls1 = _share(staff, hosts)
    out.append(f'[[step]]\nat = "{7 * weeks}d"\ndo = "expect"\nlicense_server = "LS1"\nissued = {on_ls1}\n'
               f'[[step]]\nat = "+1h"\ndo = "expect"\nlicense_server = "LS2"\nissued = {staff - on_ls1}\n'
               'licensed = "staff"\npresent = ["CAL_RENEWED"]\nabsent = ["NO_PERMANENT_CALS"]\n')
    if weeks >= 13:     # every leaver's CAL (52-89 days) has run out and gone back to its key pack
        out.append('[[step]]\nat = "+1h"\ndo = "expect"\npresent = ["LICENSE_EXPIRED"]\n')
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.labyear", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--weeks", type=int, default=52)
    p.add_argument("--journal-logons", action="store_true", help="journal every logon too (default: --no-logons)")
    p.add_argument("--keep", metavar="PATH", help="also write the generated lab file there")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    text = lab_file(args.devices, args.weeks)
    with tempfile.TemporaryDirectory(prefix="tsls-labyear-") as where:
        path = args.keep or os.path.join(where, "year.toml")
        with open(path, "w") as f:
            f.write(text)
        work = os.path.join(where, "run")
        cmd = [sys.executable, "-m", "tsls.cli", "lab", "run", path, "--work-dir", work]
        if not args.journal_logons:
            cmd.append("--no-logons")
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - started
        with open(os.path.join(work, "journal.jsonl")) as f:
            records = [json.loads(line) for line in f]
    waves = [r for r in records if r["kind"] == "wave"]
    expectations = [r for r in records if r["kind"] == "expectation"]
    asked = sum(sum(w["served_by"].values()) for w in waves)
    result = {"devices": args.devices, "weeks": args.weeks, "seconds": round(seconds, 1), "exit": done.returncode,
              "waves": len(waves), "logons": sum(w["devices"] * w["times"] for w in waves),
              "answered_by_a_license_server": asked,
              "expectations": len(expectations), "failed": sum(not r["ok"] for r in expectations),
              "journal_records": len(records)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.devices} devices, {args.weeks} weeks: {seconds:.1f} s wall clock (tsls lab run, exit {done.returncode})")
        print(f"  {result['waves']} waves, {result['logons']} logons, {asked} of them answered by a license server "
              f"(the rest checked by the session host: CAL valid for more than 7 days)")
        print(f"  {result['expectations']} expectations, {result['failed']} failed; {len(records)} journal records")
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
