"""Make a license server database for benchmarks: activated, with key packs, and N issued licenses.

    python -m bench.dbgen PATH [--licenses N] [--packs P]

The schema comes from ``LicenseStore.open`` (every migration), the identity from
``tsls.server.app.load_identity``, activation is saved with ``LicenseStore.save_activation`` as
``Activations._set_activation`` saves it (telephone, with its event), and each key pack is added with ``LicenseStore.add_key_pack``.
The N licenses are written with direct SQL ``executemany`` in one transaction, as N/2 devices
that each hold an upgraded temporary license and the live permanent Per Device CAL that replaced
it (Windows Server 2003, from the key packs, whose Issued counts match), with one event each, as
the server would have recorded them. Every CAL expires 8 to 89 days from now, so no expiry sweep
runs during a benchmark. 1,000,000 licenses take about 30 s (400 MB).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

from tsls.core.events import Event, EventId
from tsls.core.model import DAY, CalType, ProductVersion, PurchaseRef
from tsls.core.activation import Activation, ActivationMethod, ActivationStatus
from tsls.public import hardware_id
from tsls.server.app import load_identity
from tsls.server.store import LicenseStore

PACK_SIZE = 1_000_000            # the most one purchase may hold (tsls.core.model.parse_quantity)
LICENSE_SERVER_ID = "BENCH" + "0" * 30


def generate(path: str, licenses: int = 1000, packs: int = 4, seed: str = "1") -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    now = int(time.time())
    store = LicenseStore.open(path)
    load_identity(store, seed)
    rng = random.Random(seed)
    devices = licenses // 2
    packs = max(packs, -(-devices // PACK_SIZE) + 1)
    with store.transaction():
        store.add_events([Event(now, EventId.ACTIVATED, f"license server activated (telephone) as {LICENSE_SERVER_ID}")])
        store.save_activation(Activation(ActivationStatus.ACTIVATED, LICENSE_SERVER_ID, ActivationMethod.TELEPHONE, now))
        pack_ids = []
        for n in range(packs):
            ref = PurchaseRef.from_json({"program": "retail", "retail_code": f"BENCH{n:020d}"})
            pack = store.add_key_pack(f"BENCHKP{n:028d}", ref, ProductVersion.W2003, CalType.PER_DEVICE, PACK_SIZE, now)
            pack_ids.append(pack.id)

        def rows():
            next_id = 1
            for d in range(licenses - devices):        # each device: a temporary license, then its CAL
                machine = f"DB{d:08d}"
                h, user = hardware_id(machine), f"dbuser{d}"
                issued = now - rng.randrange(1, 60) * DAY
                yield (next_id, "temporary", "upgraded" if d < devices else "active", h, machine, user, "DBTS", "2003",
                       None, 1, issued, issued + 90 * DAY, 0)
                next_id += 1
                if d < devices:
                    yield (next_id, "permanent", "active", h, machine, user, "DBTS", "2003",
                           pack_ids[d // PACK_SIZE], 1, issued + 60, now + rng.randrange(8, 90) * DAY, 0)
                    next_id += 1

        columns = ("id, kind, status, hwid, machine, user, terminal_server, product_version, key_pack, validated, "
                   "issued_at, expires_at, renewals")
        store.db.executemany(f"INSERT INTO licenses ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
        # the store counts the licenses it inserts (schema 10): these, written here, are counted here
        store.db.execute("INSERT INTO license_counts SELECT kind, status, product_version, count(*) FROM licenses "
                         "GROUP BY kind, status, product_version")
        store.db.execute(
            "INSERT INTO events (at, event_id, name, message, terminal_server, hwid, user, license_id) "
            "SELECT issued_at, CASE kind WHEN 'temporary' THEN ? ELSE ? END, "
            "CASE kind WHEN 'temporary' THEN ? ELSE ? END, "
            "CASE kind WHEN 'temporary' THEN 'temporary license issued' "
            "ELSE 'permanent CAL issued from key pack BENCHKP' END, terminal_server, hwid, user, id "
            "FROM licenses ORDER BY id",
            (int(EventId.TEMPORARY_ISSUED), int(EventId.CAL_ISSUED), EventId.TEMPORARY_ISSUED.name,
             EventId.CAL_ISSUED.name))
        for n, pack_id in enumerate(pack_ids):
            issued = max(0, min(PACK_SIZE, devices - n * PACK_SIZE))
            store.db.execute("UPDATE key_packs SET issued = ? WHERE id = ?", (issued, pack_id))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.dbgen", description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--licenses", type=int, default=1000, help="issued licenses to write (default: %(default)s)")
    p.add_argument("--packs", type=int, default=4, help="Per Device key packs of 1,000,000 CALs (default: %(default)s)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    generate(args.path, args.licenses, args.packs)
    print(f"{args.path}: {args.licenses:,} licenses in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
