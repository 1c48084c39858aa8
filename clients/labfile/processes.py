"""The lab's daemons as real child processes: started on ephemeral loopback ports, found ready by
the line they print once listening, signalled (SIGKILL, SIGSTOP, SIGCONT) and always stopped."""
from __future__ import annotations

import json
import os
import signal
import sys

from twisted.internet import defer, error, protocol

from tsls.errors import Code, TslsError

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def ready_record(line: str) -> dict | None:
    """A daemon's ready line, the JSON line it prints once every port is bound:
    {"event": "ready", ..., "license_server": {"port": N, ...}, "console": {"url": ...}}; None otherwise."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("event") == "ready" else None


def ready_port(line: str, part: str) -> int | None:
    """The port of ``part`` ("license_server" or "clearinghouse") in a daemon's ready line."""
    record = ready_record(line)
    port = ((record or {}).get(part) or {}).get("port")
    return port if isinstance(port, int) else None


class _Output(protocol.ProcessProtocol):
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.daemon.line(line.decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self.daemon.stderr += data.decode("utf-8", "replace")
        self.daemon.stderr = self.daemon.stderr[-4000:]

    def processEnded(self, reason) -> None:
        self.daemon.ended(reason)


class Daemon:
    """One ``tsls`` daemon process: ``argv`` after ``tsls``; its output kept in ``log_path``."""

    def __init__(self, reactor, name: str, argv: list[str], log_path: str, part: str = "license_server",
                 module: str = "tsls.cli") -> None:
        self.reactor, self.name, self.argv, self.log_path, self.part = reactor, name, argv, log_path, part
        self.module = module             # tsls.cli, or clients.tssim for `tsls-ts rdp` (part "rdp")
        self.lines: list = []            # callables given each line after the ready one
        self.transport = None
        self.port: int | None = None
        self.ready: dict = {}            # the ready line's record (console.url when it serves the console)
        self.stderr = ""
        self.state = "new"          # running, stopped (SIGSTOP), ended
        self._ready: defer.Deferred | None = None
        self._waiting: list[defer.Deferred] = []
        self._log = None

    def start(self, argv: list[str] | None = None) -> defer.Deferred:
        """Start the process; fires with its port once it said it listens."""
        if argv is not None:
            self.argv = argv
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._ready = defer.Deferred()
        self.port = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.transport = self.reactor.spawnProcess(_Output(self), sys.executable, [sys.executable, "-m", self.module, *self.argv],
                                                   env=env)
        self.state = "running"
        ready = self._ready

        def late(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise TslsError(Code.SERVER_UNREACHABLE, f"{self.name} did not say it was listening within "
                            f"{READY_TIMEOUT:.0f} s; its log: {self.log_path}")
        return ready.addTimeout(READY_TIMEOUT, self.reactor).addErrback(late)

    def line(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")
        port = ready_port(text, self.part)
        if port is not None and self._ready is not None and not self._ready.called:
            self.port, self.ready = port, ready_record(text)
            self._ready.callback(port)
            return
        for listener in list(self.lines):
            listener(text)

    def ended(self, reason) -> None:
        self.state = "ended"
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._ready is not None and not self._ready.called:
            self._ready.errback(TslsError(Code.SERVER_UNREACHABLE, f"{self.name} exited before it listened: "
                                          f"{self.stderr.strip()[-500:] or reason.getErrorMessage()}"))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def when_ended(self) -> defer.Deferred:
        if not self.alive:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    @property
    def alive(self) -> bool:
        return self.state in ("running", "stopped")

    def signal(self, name: str) -> None:
        if not self.alive:
            return
        try:
            self.transport.signalProcess(getattr(signal, f"SIG{name}"))
        except error.ProcessExitedAlready:
            return
        if name == "STOP":
            self.state = "stopped"
        elif name == "CONT":
            self.state = "running"

    def kill(self) -> defer.Deferred:
        """SIGKILL: no goodbye, no flush; fires once the process is gone."""
        ended = self.when_ended()
        self.signal("KILL")
        return ended

    def stop(self) -> defer.Deferred:
        """A clean stop (SIGTERM, after SIGCONT if it was stopped), SIGKILL if it lingers."""
        if not self.alive:
            return defer.succeed(None)
        ended = self.when_ended()
        if self.state == "stopped":
            self.signal("CONT")
        self.signal("TERM")
        timer = self.reactor.callLater(STOP_TIMEOUT, self.signal, "KILL")

        def done(result):
            if timer.active():
                timer.cancel()
            return result
        return ended.addBoth(done)

    def stop_now(self) -> None:
        """On the way out with no reactor left to wait on: SIGKILL what still runs."""
        if self.alive and self.transport is not None and self.transport.pid:
            try:
                os.kill(self.transport.pid, signal.SIGCONT)
                os.kill(self.transport.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
