"""What every command-line client shares: running a Twisted coroutine and reporting errors."""
from __future__ import annotations

import json
import signal
import sys

from tsls.errors import TslsError

INTERRUPTED = 130       # exit status after Ctrl-C (128 + SIGINT), as a shell reports it


class Interrupted(Exception):
    """Raised by a command that was interrupted (Ctrl-C) after printing what it had done so far."""


def run(coroutine_factory, as_json: bool) -> int:
    """Run ``coroutine_factory(reactor)`` on the reactor; a TslsError becomes a coded message and exit 1.
    Files the command writes (device stores, secrets, keys) are private to their owner. Ctrl-C cancels
    the command (a command catches CancelledError to save and print what it has, then raises Interrupted)
    and exits 130."""
    from twisted.internet import defer, task

    from tsls.files import private_umask

    private_umask()

    status = []

    async def body(reactor, work):
        try:
            await work
            status.append(0)
        except BrokenPipeError:         # the output was piped to head, say: not an error
            status.append(0)
        except (Interrupted, defer.CancelledError) as e:
            print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
            status.append(INTERRUPTED)
        except TslsError as e:
            if as_json:
                print(json.dumps({"error": e.to_json()}, indent=2))
            else:
                print(f"error {e.code.value}: {e.message}", file=sys.stderr)
            status.append(1)

    def main(reactor):
        work = defer.ensureDeferred(coroutine_factory(reactor))
        interrupts = []

        def interrupt(signum, frame):
            # First Ctrl-C: cancel the command, which saves its state and prints what it has so far;
            # a second one stops the reactor at once.
            interrupts.append(signum)
            reactor.callFromThread(work.cancel if len(interrupts) == 1 else reactor.stop)

        signal.signal(signal.SIGINT, interrupt)
        return defer.ensureDeferred(body(reactor, work))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code
    return status[0] if status else INTERRUPTED
