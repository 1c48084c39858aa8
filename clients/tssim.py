"""``tsls-ts``: a simulated terminal server that logs clients on and gets their licenses.

Each simulated client device keeps the license it was given in a small store (like a Windows
client's MSLicensing registry key), and presents it at its next logon.

    tsls-ts --name TS01 --version 2003 --mode per-device logon pc1 pc2 pc3
    tsls-ts --name TSU --version 2003 --mode per-user logon --count 10
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

from clients.cli import run
from clients.connection import DEFAULT_SERVER, connect
from clients.output import emit, table

PLATFORM_ID = 0x04010000   # WINNT_POST_52 + Microsoft, what FreeRDP sends [REFERENCE §6]


def hardware_id(machine: str) -> str:
    """The 20-byte HWID an RDP client derives from its host name: LE32(PlatformId) + MD5(name), in hex.
    The RDP front computes the same value, so a device is the same device on either path."""
    return (PLATFORM_ID.to_bytes(4, "little") + hashlib.md5(machine.encode()).digest()).hex()


class DeviceStore:
    """Licenses held by simulated devices: {machine: {product_version: token}} in one JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path) as f:
                self.held = json.load(f)
        except FileNotFoundError:
            self.held = {}

    def get(self, machine: str, version: str) -> str | None:
        return self.held.get(machine, {}).get(version)

    def put(self, machine: str, version: str, token: str) -> None:
        self.held.setdefault(machine, {})[version] = token

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            json.dump(self.held, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsls-ts", description="Simulate a terminal server.")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="license server endpoint (default: %(default)s)")
    parser.add_argument("--name", default="TS01", help="the terminal server's name (default: %(default)s)")
    parser.add_argument("--version", default="2003", help="Windows version it emulates (default: %(default)s)")
    parser.add_argument("--mode", default="per-device", choices=["per-device", "per-user"])
    parser.add_argument("--devices", default=os.path.join("tsls-data", "devices.json"),
                        help="where simulated devices keep their licenses (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True)
    logon = sub.add_parser("logon", help="log clients on, report success, print their licenses")
    logon.add_argument("clients", nargs="*", metavar="MACHINE[:USER]",
                       help="client machines, each with an optional user name (default user: user-MACHINE)")
    logon.add_argument("--count", type=int, help="also log on N generated clients pc001..pcN")
    logon.add_argument("--prefix", default="pc", help="name prefix for --count (default: %(default)s)")
    logon.add_argument("--times", type=int, default=1, help="log each client on this many times (default: 1)")
    logon.add_argument("--fail", action="store_true",
                       help="do not report the logons as successful (temporary licenses stay unvalidated)")
    return parser


def _clients(args) -> list[tuple[str, str]]:
    out = []
    for spec in args.clients:
        machine, _, user = spec.partition(":")
        out.append((machine, user or f"user-{machine}"))
    for i in range(1, (args.count or 0) + 1):
        machine = f"{args.prefix}{i:03d}"
        out.append((machine, f"user-{machine}"))
    return out


async def logon_all(conn, store: DeviceStore, version: str, clients, times: int, report: bool) -> list[dict]:
    rows = []
    for round_ in range(1, times + 1):
        for machine, user in clients:
            hwid = hardware_id(machine)
            row = {"round": round_, "machine": machine, "user": user}
            try:
                answer = await conn.request("logon", hwid=hwid, machine=machine, user=user,
                                            license=store.get(machine, version))
            except Exception as e:   # a refusal is a result to show, not a reason to stop
                code = getattr(e, "code", None)
                row.update(outcome="refused", reason=code.value if code else str(e), message=getattr(e, "message", ""))
                rows.append(row)
                continue
            lic = answer["license"]
            row.update(outcome=answer["outcome"], reason=answer["reason"], message=answer["message"], license=lic)
            if lic is not None:
                store.put(machine, version, lic["token"])
                if report:
                    await conn.request("logon_succeeded", hwid=hwid, license=lic["token"])
            rows.append(row)
    return rows


async def command(reactor, args) -> None:
    store = DeviceStore(args.devices)
    conn = await connect(reactor, args.server)
    try:
        await conn.hello_terminal_server(args.name, args.version, args.mode.replace("-", "_"))
        rows = await logon_all(conn, store, args.version, _clients(args), args.times, not args.fail)
    finally:
        store.save()
        await conn.close()
    emit(rows, args.json, _print_rows)


def _print_rows(rows: list[dict]) -> None:
    flat = []
    for r in rows:
        lic = r.get("license") or {}
        flat.append({**r, "kind": lic.get("kind"), "license_id": lic.get("license_id"),
                     "expires_at": lic.get("expires_at"), "key_pack_id": lic.get("key_pack_id")})
    table(flat, [("round", "ROUND"), ("machine", "MACHINE"), ("user", "USER"), ("outcome", "OUTCOME"),
                 ("kind", "LICENSE"), ("license_id", "ID"), ("expires_at", "EXPIRES"), ("key_pack_id", "KEY PACK"),
                 ("reason", "REASON")])


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return run(lambda reactor: command(reactor, args), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
