"""What every command-line client shares: running a Twisted coroutine and reporting errors."""
from __future__ import annotations

import json
import sys

from tsls.errors import TslsError


def run(coroutine_factory, as_json: bool) -> int:
    """Run ``coroutine_factory(reactor)`` on the reactor; a TslsError becomes a coded message and exit 1.
    Files the command writes (device stores, secrets, keys) are private to their owner."""
    from twisted.internet import defer, task

    from tsls.files import private_umask

    private_umask()

    status = []

    async def body(reactor):
        try:
            await coroutine_factory(reactor)
            status.append(0)
        except BrokenPipeError:         # the output was piped to head, say: not an error
            status.append(0)
        except TslsError as e:
            if as_json:
                print(json.dumps({"error": e.to_json()}, indent=2))
            else:
                print(f"error {e.code.value}: {e.message}", file=sys.stderr)
            status.append(1)

    try:
        task.react(lambda reactor: defer.ensureDeferred(body(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code
    return status[0] if status else 1
