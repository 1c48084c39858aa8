"""The baseline: a minimal Twisted server on the license server's framing that does no licensing.

    python -m bench.baseline [--listen tcp:0:interface=127.0.0.1]

Each request line is parsed with ``json.loads`` and answered with ``json.dumps``, on the same
``LineOnlyReceiver`` framing as ``tsls.server.protocol``. The answer has the shape and size of the
license server's (a hello result, or a logon result carrying a license), so the load generator does
exactly the same work against both and the ratio measures only what the license server adds:
dispatch, the ledger, the rules, durable commits. Prints ``listening PORT``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

_ids = itertools.count(1)
NOW = "2026-11-23T10:00:00Z"
LATER = "2027-02-21T10:00:00Z"


class Baseline(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def lineReceived(self, line: bytes) -> None:
        request = json.loads(line)
        op = request.get("op")
        if op == "hello":
            result = {"protocol": 1, "server": "tsls", "role": request.get("role"),
                      "product_id": "00000-000-0000000-00000", "now": NOW}
        else:
            # A logon or a report answered as the license server would, with no ledger behind it.
            license_id = next(_ids)
            result = {"outcome": "temporary_issued", "reason": None, "message": "temporary license issued",
                      "license": {"license_id": license_id, "kind": "temporary", "status": "active",
                                  "hwid": request.get("hwid"), "machine": request.get("machine"),
                                  "user": request.get("user"), "terminal_server": "TS0000",
                                  "product_version": "2003", "key_pack_id": None, "validated": op != "logon",
                                  "issued_at": NOW, "expires_at": LATER, "renewals": 0,
                                  "token": f"TSLS1.{license_id}.0123456789abcdef0123456789abcdef"}}
        reply = {"id": request.get("id"), "ok": True, "result": result}
        self.transport.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.baseline")
    p.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    args = p.parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    d = serverFromString(reactor, args.listen).listen(Factory.forProtocol(Baseline))
    d.addCallbacks(lambda port: print(f"listening {port.getHost().port}", flush=True),
                   lambda f: (print(f"cannot listen: {f.getErrorMessage()}", flush=True), reactor.stop()))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
