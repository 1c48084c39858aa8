"""The simulated directory (Active Directory's published license servers) as a small JSON file shared
by the daemons that publish themselves (``tsls server --publish-to FILE``) and the session hosts that
discover them (``tsls-ts --directory FILE``). The rules are in tsls/core/directory.py."""
from __future__ import annotations

import fcntl
import json
import os

from tsls.core.directory import Published, publishable
from tsls.core.reports import Scope
from tsls.files import write_private


def read(path: str) -> tuple[Published, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return ()
    return tuple(Published(e["endpoint"], Scope(e["scope"])) for e in data.get("license_servers", []))


def publish(path: str, entry: Published) -> bool:
    """PublishLS: add (or update) this license server; False when its scope is not published."""
    if not publishable(entry.scope):
        return False
    with open(f"{path}.lock", "a") as lock:           # several daemons may publish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = [e for e in read(path) if e.endpoint != entry.endpoint] + [entry]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_private(path, json.dumps({"license_servers": [{"endpoint": e.endpoint, "scope": e.scope.value}
                                                            for e in entries]}, indent=1), newline=True)
    return True
