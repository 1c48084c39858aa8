"""What every command-line client shares: running a Twisted coroutine and reporting errors."""
from __future__ import annotations

import json
import os
import signal
import sys

from tsls.errors import TslsError

INTERRUPTED = 130       # exit status after Ctrl-C (128 + SIGINT), as a shell reports it


def enum_option(cls) -> dict:
    """add_argument keywords for an option whose values are a tsls.core enum's: the choices are the
    enum's values, the protocol's spelling, shown as such in help and errors; '-' for '_' and any
    case are accepted (per-device is per_device)."""
    values = [m.value for m in cls]

    def parse(text: str) -> str:
        key = text.strip().replace("-", "_").lower()
        return next((v for v in values if v.lower() == key), text)

    return {"type": parse, "choices": values}


def flags_after_subcommands(parser, *flags: str, _top: dict | None = None) -> None:
    """Accept the top-level store_true ``flags`` (such as --json) after any subcommand too:
    ``tsls-admin licenses --csv`` as well as ``tsls-admin --csv licenses``."""
    import argparse

    top = _top if _top is not None else {a.option_strings[0]: a for a in parser._actions
                                         if a.option_strings and a.option_strings[0] in flags}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for flag, original in top.items():
                    # SUPPRESS: absent after the subcommand leaves the top-level value alone
                    sub.add_argument(flag, dest=original.dest, action="store_true", default=argparse.SUPPRESS,
                                     help=original.help)
                flags_after_subcommands(sub, _top=top)


class Failed(Exception):
    """Raised by a command that printed its results but must exit with ``status`` (documented in its help)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status


class Interrupted(Failed):
    """Raised by a command that was interrupted (Ctrl-C) after printing what it had done so far."""

    def __init__(self, message: str = "") -> None:
        super().__init__(INTERRUPTED, message)


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
        except defer.CancelledError:
            print("interrupted", file=sys.stderr)
            status.append(INTERRUPTED)
        except Interrupted as e:
            print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
            status.append(e.status)
        except Failed as e:
            if str(e):
                print(str(e), file=sys.stderr)
            status.append(e.status)
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
            # First Ctrl-C: cancel the command, which saves its state and prints what it has so far.
            # A second one leaves at once (every file tsls writes is replaced atomically, so none is torn).
            interrupts.append(signum)
            if len(interrupts) == 1:
                reactor.callFromThread(work.cancel)
            else:
                os.write(2, b"interrupted again: leaving without waiting\n")
                os._exit(INTERRUPTED)

        signal.signal(signal.SIGINT, interrupt)
        return defer.ensureDeferred(body(reactor, work))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code
    return status[0] if status else INTERRUPTED
