"""Command-line habits shared by every command: help text on every option, output flags after the
subcommand too, one spelling for the enums' values (the protocol's), in help, errors and answers."""
import argparse
import re

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from clients import admin, load, tssim
from tsls import cli as daemons
from tsls.core.model import CalType, LicenseKind, LicenseStatus, ProductVersion
from tsls.errors import Code, TslsError

PARSERS = {"tsls": daemons._parser, "tsls-admin": admin.parser, "tsls-ts": tssim.parser, "tsls-load": load.parser}


def walk(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def options():
    for prog, make in PARSERS.items():
        for path, parser in walk(make(), prog):
            for action in parser._actions:
                if action.option_strings and action.help != argparse.SUPPRESS:
                    yield path, action


@pytest.mark.parametrize("path,action", [pytest.param(p, a, id=f"{p} {a.option_strings[-1]}") for p, a in options()])
def test_every_option_says_what_it_is(path, action):
    text = re.sub(r"\(default: .*\)", "", action.help or "").strip()
    assert len(text) >= 8, f"{path} {'/'.join(action.option_strings)} has no help text"


def test_output_flags_after_the_subcommand_too():
    for argv in (["--csv", "licenses"], ["licenses", "--csv"]):
        args = admin.parser().parse_args(argv)
        assert (args.csv, args.json) == (True, False)
    args = admin.parser().parse_args(["clearinghouse", "purchases", "--json"])
    assert args.json is True
    args = admin.parser().parse_args(["--json", "keypacks"])
    assert args.json is True            # not reset by the subcommand's own default
    args = tssim.parser().parse_args(["logon", "pc1", "--json"])
    assert args.json is True


def test_clock_takes_a_negative_duration_to_refuse_it_not_to_misparse_it():
    for argv in (["clock", "-1d"], ["--server", "tcp:127.0.0.1:1", "--json", "clock", "-1d"]):
        assert admin.parse_args(argv).to == "-1d"
    assert admin.parse_args(["--credential", "clock", "clock", "+1d"]).to == "+1d"


def test_one_spelling_per_enum_value(capsys):
    """The enums' values (the protocol's spelling) in help; '-' for '_' and any case are accepted."""
    args = admin.parser().parse_args(["install", "--retail", "X", "--cal-type", "Per-Device", "--version", "2008r2"])
    assert (args.cal_type, args.product_version) == ("per_device", "2008R2")
    args = tssim.parser().parse_args(["--mode", "per-user", "logon", "pc1"])
    assert args.mode == "per_user"
    with pytest.raises(SystemExit):
        admin.parser().parse_args(["install", "--retail", "X", "--cal-type", "device"])
    err = capsys.readouterr().err
    assert "invalid choice: 'device'" in err and "per_device" in err and "per-device" not in err
    usage = admin.parser()._subparsers._group_actions[0].choices["install"].format_help()
    assert "per_device" in usage and "per-device" not in usage
    lic = admin.parser()._subparsers._group_actions[0].choices["licenses"].format_help()
    for enum in (LicenseKind, LicenseStatus):
        assert ",".join(m.value for m in enum) in lic
    assert ",".join(m.value for m in ProductVersion) in lic
    assert ",".join(m.value for m in CalType) in tssim.parser().format_help()


@pytest_twisted.inlineCallbacks
def test_clock_backwards_end_to_end(tmp_path):
    from tests.harness import Lab

    lab = Lab(tmp_path, lab_clock=True)
    yield lab.start()
    try:
        args = admin.parse_args(["--server", lab.endpoint, "--credential", lab.credential, "clock", "-1d"])
        with pytest.raises(TslsError) as e:
            yield defer.ensureDeferred(admin.command(reactor, args)).addTimeout(10, reactor)
        assert e.value.code is Code.CLOCK_BACKWARDS
    finally:
        yield lab.stop()
