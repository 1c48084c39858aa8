"""The README's walk-through as a test: every command of the sections below runs, on a fresh data directory
and a lab started as the section says (`./dev lab ...`, as a real process, on ephemeral ports), and every
comment after `#` is checked against what the command printed:

- `COLUMN value, COLUMN value`: one row of the command's table has these values;
- `COLUMN=value xN`: N rows have this value in this column;
- text in backticks appears in the output as it is;
- `exit N`: the command's exit status (0 otherwise).

`<that code>` / `<code>` stand for the retail code the last sale printed; each `<license id>` for the next ID
of the last table with an ID column. Commands run in-process (tsls-admin, tsls-ts, tsls check) with the lab's
real ports added; `$TSLS_DATA` and `export TSLS_DATA=...` work as in a shell. Each section runs alone, on its
own fresh directory: the README says each works alone and after the others (they use their own data
directories). Set TSLS_README_DEBUG=1 to print every command's output.
"""
import json
import os
import re
import shlex
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from clients import admin, tssim
from clients.cli import Failed
from tests.test_ready import Daemon
from tsls.errors import TslsError

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
SECTIONS = ["Walk-through", "Time: expiry, renewal, revocation, events",
            "Older models: Per Server / Per Seat, and SBS add packs", "Who may ask, and what survives"]
TIMEOUT = 30
ANY = "tcp:0:interface=127.0.0.1"
DEBUG = bool(os.environ.get("TSLS_README_DEBUG"))


def section(title: str) -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def commands(text: str):
    """(command line, its comment) for each line of a code block that starts with ./dev or export; an
    indented line that is only a comment continues the comment of the command before it."""
    out = []
    for line in text.split("\n"):
        if not line.startswith("    "):
            continue
        stripped = line.strip()
        if stripped.startswith("#") and out:
            out[-1] = (out[-1][0], f"{out[-1][1]} {stripped[1:].strip()}")
        elif stripped.startswith(("./dev ", "export ")):
            command, _, comment = stripped.partition(" # ")
            out.append((command.strip(), comment.strip()))
    return out


def tables(output: str) -> list[list[dict]]:
    """The aligned tables in a command's output: a header of capitals, columns where its words start."""
    found, lines = [], output.split("\n")
    for i, line in enumerate(lines):
        if not re.fullmatch(r"[A-Z#][A-Z #]*", line.strip() or "x") or "  " not in line and " " in line.strip():
            if not re.fullmatch(r"[A-Z#]+", line.strip()):
                continue
        starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", line)]
        names = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows = []
        for row in lines[i + 1:]:
            if not row.strip():
                break
            rows.append({n: row[a:b].strip() if b else row[a:].strip() for n, a, b in zip(names, starts, starts[1:] + [None])})
        found.append(rows)
    return found


def check(comment: str, output: str, status: int, where: str) -> None:
    expected = int(m[1]) if (m := re.search(r"\bexit (\d+)\b", comment)) else 0
    assert status == expected, f"{where}: exit {status}, the README says {expected}\n{output}"
    for text in re.findall(r"`([^`]+)`", comment):
        assert text in output, f"{where}: {text!r} is not in the output\n{output}"
    prose = re.sub(r"`[^`]*`", "", comment)
    rows = [r for t in tables(output) for r in t]
    items = [item.strip() for item in re.split(r"[,;:]", prose)]
    for item in items:
        if m := re.fullmatch(r"([A-Z][A-Z ]*[A-Z])=(\S+) x(\d+)", item):
            count = sum(1 for r in rows if r.get(m[1]) == m[2])
            assert count == int(m[3]), f"{where}: {m[1]}={m[2]} x{count}, the README says x{m[3]}\n{output}"
    wanted = dict(m.groups() for item in items if (m := re.fullmatch(r"([A-Z][A-Z ]*[A-Z]) (\S+)", item)))
    if wanted:
        assert any(all(r.get(k) == v for k, v in wanted.items()) for r in rows), \
            f"{where}: no row with {wanted}\n{output}"


class Run:
    """One section: its lab as a process, its commands in-process, what they printed."""

    def __init__(self, tmp_path, monkeypatch, capsys):
        self.tmp, self.monkeypatch, self.capsys = tmp_path, monkeypatch, capsys
        self.lab = None
        self.code = None
        self.ids: list[str] = []

    @defer.inlineCallbacks
    def start_lab(self, argv):
        assert argv[:2] == ["./dev", "lab"]
        self.lab = Daemon.spawn("lab", *argv[2:], "--listen", ANY, "--clearinghouse-listen", ANY,
                                "--console-listen", "none")
        ready = yield self.lab.ready.addTimeout(TIMEOUT, reactor)
        self.endpoint, self.url = ready["license_server"]["endpoint"], ready["clearinghouse"]["url"]

    @defer.inlineCallbacks
    def stop(self):
        if self.lab is not None:
            code = yield self.lab.stop()
            assert code == 0

    @defer.inlineCallbacks
    def run(self, line: str):
        """Run one README command line; return (exit status, what it printed)."""
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            self.monkeypatch.setenv(name, value)
            return 0, ""
        line = os.path.expandvars(line)
        line = line.replace("<that code>", self.code or "?").replace("<code>", self.code or "?")
        if "<license id>" in line:
            line = line.replace("<license id>", self.ids.pop(0), 1)
        target = None
        if " > " in line:
            line, _, target = line.partition(" > ")
        outputs, status = [], 0
        for part in line.split(" && "):
            status, output = yield self._one(shlex.split(part))
            outputs.append(output)
            if status:
                break
        output = "".join(outputs)
        if target is not None:
            with open(target, "w") as f:
                f.write(output)
        if m := re.search(r"retail license code: (\w+)", output):
            self.code = m[1]
        ids = [r["ID"] for t in tables(output) for r in t if r.get("ID")]
        if ids:
            self.ids = ids
        return status, output

    @defer.inlineCallbacks
    def _one(self, argv):
        assert argv[0] == "./dev", argv
        self.capsys.readouterr()
        status = 0
        try:
            if argv[1] == "lab":
                yield self.start_lab(argv)
            elif argv[1] == "tsls-admin":
                args = admin.parse_args(["--server", self.endpoint, "--clearinghouse", self.url, *argv[2:]])
                yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(TIMEOUT, reactor)
            elif argv[1] == "tsls-ts":
                args = tssim.parser().parse_args(["--server", self.endpoint, *argv[2:]])
                yield defer.ensureDeferred(tssim.command(reactor, args)).addTimeout(TIMEOUT, reactor)
            elif argv[1] == "tsls":
                from tsls import cli
                status = cli.check(cli._parser().parse_args(argv[2:]))
            else:
                raise AssertionError(f"the README test does not know how to run {argv}")
        except TslsError as e:
            print(f"error {e.code.value}: {e.message}")
            status = 1
        except Failed as e:
            print(str(e))
            status = e.status
        captured = self.capsys.readouterr()
        return status, captured.out + captured.err


@pytest.mark.parametrize("title", SECTIONS)
@pytest_twisted.inlineCallbacks
def test_a_readme_section_alone_on_a_fresh_data_directory(title, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TSLS_DATA", raising=False)
    steps = commands(section(title))
    assert any(c.startswith("./dev lab ") for c, _ in steps), f"{title}: no ./dev lab line to start its lab"
    run = Run(tmp_path, monkeypatch, capsys)
    try:
        for n, (line, comment) in enumerate(steps, 1):
            status, output = yield run.run(line)
            if DEBUG:
                with capsys.disabled():
                    print(f"\n$ {line}    # {comment}\n[exit {status}]\n{output}", file=sys.stderr)
            check(comment, output, status, f"{title}, command {n}: {line}")
    finally:
        yield run.stop()


def test_the_rdp_sections_lifetime_is_the_seeds():
    """The RDP section (not run here: it needs xfreerdp) names the lifetime of lictest's CAL under its seed."""
    from clients.tssim import hardware_id
    from tsls.core.licensing import cal_lifetime
    from tsls.core.model import DAY, ProductVersion

    text = section("Real RDP clients: the RDP front")
    seed = re.search(r"\./dev lab --lab-clock --seed (\S+)", text)[1]
    days = int(re.search(r"`lictest`'s CAL lives (\d+) days, so `\./dev tsls-admin clock \+(\d+)d`", text)[1])
    move = int(re.search(r"`lictest`'s CAL lives \d+ days, so `\./dev tsls-admin clock \+(\d+)d`", text)[1])
    assert cal_lifetime(seed, hardware_id("lictest"), ProductVersion.W2003, 0) == days * DAY
    assert days - 7 <= move < days          # within the renewal window, before it runs out
