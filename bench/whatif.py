"""Measured proposals: changes to files this benchmark does not own, applied inside the benchmark's
daemon process only (never to the code), so their effect can be measured before anyone makes them.

    python -m bench.whatif [--duration 4] [--repeat 3]

prints, for first logons at 100 connections x 16 in flight, the license server as it is and with
each change, against the baseline measured in the same run. The changes (names for
``bench.daemon --what-if``):

- quiet-grants: routine grant events (temporary license issued, CAL issued, renewed, Per User
  logon, expired) are not formatted into the text log: what ``LicenseServer.publish`` logging them
  at debug and ``tsls server`` filtering its log at info (a ``--log-level`` option) would do. They
  stay in the events table and reach live followers (``tsls-admin events --follow``).
- iso-cache: ``tsls.core.model.iso`` memoised (``functools.lru_cache``): each answer formats two
  dates with ``strftime``, and at scale they repeat within a second.
- hmac-digest: ``tsls.server.tokens`` signs with ``hmac.digest`` (one C call) instead of building an
  ``hmac.HMAC`` object per token; the tokens are byte-for-byte the same.
- no-log: no text log at all (an upper bound, not a proposal).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import sys

NAMES = ("quiet-grants", "iso-cache", "hmac-digest", "no-log")
ROUTINE = {1101, 1102, 1103, 1104, 1107}        # tsls.core.events.EventId: issued, CAL issued, renewed, expired, Per User


def apply(names: list[str], observer):
    """Patch this process for ``names``; returns the log observer to use."""
    unknown = set(names) - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown what-if {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    if "iso-cache" in names:
        from tsls import jsonshapes
        from tsls.core import model
        cached = functools.lru_cache(maxsize=1 << 16)(model.iso)
        model.iso = jsonshapes.iso = cached
    if "hmac-digest" in names:
        from tsls.server import tokens

        def _mac(secret: bytes, license_id: int, hwid: str) -> str:
            return hmac.digest(secret, f"{license_id}|{hwid}".encode(), hashlib.sha256).hex()[:32]
        tokens._mac = _mac
    if "no-log" in names:
        return lambda event: None
    if "quiet-grants" in names:
        inner = observer

        def observer(event):
            if event.get("event_id") in ROUTINE and event.get("log_namespace", "").startswith("tsls.server.records"):
                return
            inner(event)
    return observer


def main(argv=None) -> int:
    from bench import dbgen, harness
    from bench.throughput import measure

    p = argparse.ArgumentParser(prog="bench.whatif", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    variants = [("as it is", ""), *[(n, n) for n in NAMES if n != "no-log"],
                ("all three", "quiet-grants,iso-cache,hmac-digest"), ("no log at all", "no-log")]
    with harness.Workdir() as work:
        template = work.file("template.sqlite")
        dbgen.generate(template, 1000)

        def cmd_for(endpoint):
            return harness.load_command(endpoint, 100, 16, duration=args.duration)
        runs: dict = {name: [] for name, _ in variants}
        base = []
        for n in range(args.repeat):
            base.append(measure(harness.baseline(), cmd_for)["throughput"])
            for name, what in variants:
                db = harness.private_copy(template, work.file(f"ledger-{n}.sqlite"))
                server = harness.license_server(db)
                if what:
                    server.args += ["--what-if", what]
                result = measure(server, cmd_for)
                runs[name].append((result["throughput"], result["server_cpu_us"]))
    b = harness.median(base)
    print(f"baseline: {b:,.0f} answers/s")
    print("| license server | grants/s | ratio to baseline | server CPU per grant |")
    print("|---|---:|---:|---:|")
    for name, _ in variants:
        t = harness.median([r[0] for r in runs[name]])
        c = harness.median([r[1] for r in runs[name]])
        print(f"| {name} | {t:,.0f} | {t / b:.2f} | {c:.0f} us |")
    print(f"\n{harness.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
