"""What the benchmark commands share: servers in their own processes, loads in theirs.

Every process is started by pid and stopped by that pid (SIGTERM, then SIGKILL after a while).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from clients.load import PREPARED

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Server:
    """A server process that prints ``listening PORT`` once it accepts connections."""

    def __init__(self, args: list[str], name: str, cwd: str | None = None) -> None:
        self.args = [PYTHON, "-m", *args]
        self.name = name
        self.cwd = cwd or ROOT          # another checkout runs that checkout's code (bench.versus)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.started_in: float | None = None

    def start(self) -> "Server":
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        said = []
        for line in self.proc.stdout:       # warnings may come first; EOF means it exited
            if line.startswith("listening "):
                break
            said.append(line)
        else:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {''.join(said).strip()}")
        self.port = int(line.split()[1])
        self.ports = [int(word) for word in line.split()[1:]]     # bench.daemon --console: and the console's
        self.started_in = time.perf_counter() - started
        return self

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (all its threads) so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> tuple[float, float]:
        """(resident now, peak resident) in MB."""
        now = peak = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        return now / 1024, peak / 1024

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def baseline() -> Server:
    return Server(["bench.baseline"], "baseline")


def license_server(db: str, log: str = os.devnull, cprofile: str | None = None, console: bool = False) -> Server:
    args = ["bench.daemon", "--db", db, "--log", log] + (["--console"] if console else [])
    if cprofile:
        args += ["--cprofile", cprofile]
    return Server(args, "license server")


def load_command(endpoint: str, connections: int, pipeline: int, duration: float | None = None,
                 count: int | None = None, mix: str = "first=1", report: bool = False, devices: int = 10_000_000,
                 extra: tuple = ()) -> list[str]:
    cmd = [PYTHON, "-m", "clients.load", "--server", endpoint, "--terminal-servers", str(connections),
           "--pipeline", str(pipeline), "--mix", mix, "--devices", str(devices), "--json", "--no-progress", "--seed", "1"]
    cmd += ["--duration", str(duration)] if count is None else ["--count", str(count)]
    if not report:
        cmd.append("--no-report")
    return cmd + list(extra)


def admin_command(endpoint: str, db: str, *args: str) -> list[str]:
    """A ``tsls-admin`` command for the daemon serving ``db`` (a private_ledger: admin.secret beside it)."""
    return [PYTHON, "-m", "clients.admin", "--server", endpoint, "--credential",
            os.path.join(os.path.dirname(db), "admin.secret"), *args]


def rows_in(path: str, fmt: str = "csv") -> int:
    """Rows in a list tsls-admin wrote: lines less its CSV header, or its JSON array's brackets."""
    with open(path, "rb") as f:
        return max(sum(1 for _ in f) - (1 if fmt == "csv" else 2), 0)


def run_load(cmd: list[str], timeout: float = 600, on_start=None) -> dict:
    """Run a load command and return its JSON summary. ``on_start()`` is called when its timed run
    starts: at once, or when a load with ``--prepare`` says its preparation is over."""
    if on_start is None or "--prepare" not in cmd:
        if on_start is not None:
            on_start()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, err, code = done.stdout, done.stderr, done.returncode
    else:
        with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            said = []
            for line in proc.stderr:        # the load says one line when its preparation is over
                said.append(line)
                if line.startswith(PREPARED):
                    on_start()
                    break
            try:
                out, rest = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            err, code = "".join(said) + rest, proc.returncode
    if code != 0:
        raise RuntimeError(f"load failed ({code}): {err.strip() or out.strip()}")
    return json.loads(out)


def shown(cmd: list[str]) -> str:
    """A command as a person would type it from the repository's root."""
    out = [".venv/bin/python" if c == PYTHON else c for c in cmd]
    return shlex.join(out)


# The two workloads of issue 14's targets, as load options: every answer a durable grant.
#   first:   a new device's first logon gets a temporary license (a license row and an event written);
#   upgrade: a device presents its reported (validated) temporary license and gets a permanent CAL from a
#            key pack (the CAL inserted, the temporary license marked upgraded, the pack's Issued counted).
#            The load generator logs --prepare devices on and reports them before the clock starts.
WORKLOADS = ("first", "upgrade")
PREPARE = 60_000


def workload_load(workload: str, prepare: int = PREPARE) -> dict:
    """load_command's keyword arguments for a workload."""
    if workload == "first":
        return {"mix": "first=1"}
    return {"mix": "upgrade=1", "extra": ("--prepare", str(prepare))}


def check_workload(workload: str, result: dict, name: str) -> None:
    """Every answer of an upgrade run was an upgrade (a run that outlasts its prepared devices is not)."""
    if workload == "upgrade" and set(result["outcomes"]) - {"upgraded"}:
        raise RuntimeError(f"{name}: not every answer was an upgrade ({result['outcomes']}): raise --prepare")


def add_load_options(p, duration: float, duration_help: str = "seconds of load per run") -> None:
    """The options every load benchmark takes: how long, how many rounds, how much load, JSON out."""
    p.add_argument("--duration", type=float, default=duration, help=f"{duration_help} (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default: %(default)s)")
    p.add_argument("--connections", type=int, default=100, help="(default: %(default)s)")
    p.add_argument("--pipeline", type=int, default=16, help="requests in flight per connection (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def progress(as_json: bool):
    """Where a benchmark says how it is going: stderr when stdout carries the JSON figures."""
    return (lambda *a: print(*a, file=sys.stderr)) if as_json else print


def figures(as_json: bool, run) -> dict:
    """run(work, log) in a fresh Workdir, with the machine added to its figures; printed as JSON if asked."""
    with Workdir() as work:
        result = run(work, progress(as_json))
    result["machine"] = machine()
    if as_json:
        print(json.dumps(result, indent=2))
    return result


def private_copy(source: str, db: str) -> str:
    """A copy of a template database at db, readable by its owner only (tsls refuses one others can read)."""
    shutil.copyfile(source, db)
    os.chmod(db, 0o600)
    return db


def private_ledger(source: str, directory: str) -> str:
    """A copy of source as ledger.sqlite in a new private directory of its own (admin.secret goes beside it)."""
    os.makedirs(directory, mode=0o700)
    return private_copy(source, os.path.join(directory, "ledger.sqlite"))


def median(values):
    return statistics.median(values) if values else 0.0


class Workdir:
    """A temporary directory for databases and logs, removed at the end unless kept."""

    def __init__(self, keep: bool = False, base: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="tsls-bench-", dir=base)
        self.keep = keep

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def machine() -> str:
    import platform
    return (f"{os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
            f"{__import__('sqlite3').sqlite_version}, {platform.system()} {platform.release()}")
