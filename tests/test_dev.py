"""./dev's own usage: help, no arguments, -h and --help print it and exit 0; an unknown command is one line, exit 2."""
import os
import subprocess

import pytest

DEV = os.path.join(os.path.dirname(__file__), "..", "dev")


def dev(*argv):
    return subprocess.run(["bash", DEV, *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [(), ("help",), ("-h",), ("--help",)])
def test_usage(argv):
    done = dev(*argv)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: ./dev COMMAND [ARGS...]")
    for command in ("./dev lab", "./dev test", "./dev tsls-admin", "./dev tsls-ts", "./dev tsls-load"):
        assert command in done.stdout
    assert "set -euo" not in done.stdout


@pytest.mark.parametrize("command", ["nosuch", "--nosuch", "../bin/sh"])
def test_an_unknown_command_is_one_line_and_exit_2(command):
    done = dev(command)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"dev: unknown command '{command}' (not in .venv/bin); ./dev help lists the commands\n"
