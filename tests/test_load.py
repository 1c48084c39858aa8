"""The load generator end to end, against the real daemon on loopback: its counts are the server's."""
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from clients.load import LoadConfig, parse_mix, run_load
from tests.harness import activate_and_install
from tsls.errors import Code, TslsError

TIMEOUT = 10


def load(daemon, **options):
    config = LoadConfig(server=daemon.endpoint, prefix="t-", seed=1, **options)
    return defer.ensureDeferred(run_load(reactor, config)).addTimeout(TIMEOUT, reactor)


@pytest_twisted.inlineCallbacks
def test_n_first_logons_give_n_temporary_licenses(daemon):
    summary = yield load(daemon, terminal_servers=3, count=40, mix=parse_mix("first=1"), report=False, pipeline=4)
    assert summary["requests"] == summary["answers"] == 40
    assert summary["outcomes"] == {"temporary_issued": 40} and summary["grants"] == 40
    assert summary["refusals"] == {} and summary["devices_seen"] == 40
    admin = yield daemon.admin()
    licenses = yield admin.request("list_licenses", kind="temporary")
    assert len(licenses) == 40 and {lic["terminal_server"] for lic in licenses} == {"t-TS0000", "t-TS0001", "t-TS0002"}


@pytest_twisted.inlineCallbacks
def test_reported_devices_upgrade_at_their_next_logon_until_the_pack_runs_out(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin, quantity=5)
    # One terminal server, one request at a time: 8 first logons (each reported), then 32 repeat
    # logons of those 8 devices, drawn with a fixed seed.
    summary = yield load(daemon, terminal_servers=1, devices=8, count=40, mix=parse_mix("first=1"))
    outcomes = summary["outcomes"]
    assert outcomes["temporary_issued"] == outcomes["validated"] == summary["requests_by_kind"]["report"] == 8
    assert outcomes["upgraded"] == 5          # five CALs in the pack: five devices upgraded, no more
    assert summary["answers"] == summary["requests"] == 40 + 8 and summary["refusals"] == {}
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 5


@pytest_twisted.inlineCallbacks
def test_per_user_logons_go_through_per_user_terminal_servers(daemon):
    summary = yield load(daemon, terminal_servers=2, count=10, mix=parse_mix("per_user=1"), report=False)
    assert summary["per_user_servers"] == 2
    assert summary["outcomes"] == {"per_user": 10} and summary["grants"] == 0


def test_a_mix_names_known_kinds_only():
    with pytest.raises(TslsError) as e:
        parse_mix("first=1,sideways=2")
    assert e.value.code is Code.BAD_REQUEST


@pytest_twisted.inlineCallbacks
def test_prepared_devices_are_upgraded_and_the_preparation_is_not_counted(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin, quantity=30)
    # 20 devices log on and are reported before the run; the run is 12 upgrades, each presenting a
    # reported temporary license and getting a permanent CAL.
    summary = yield load(daemon, terminal_servers=2, devices=20, prepare=20, count=12, mix=parse_mix("upgrade=1"),
                         pipeline=4)
    assert summary["requests"] == summary["answers"] == 12
    assert summary["outcomes"] == {"upgraded": 12} and summary["grants"] == 12 and summary["refusals"] == {}
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 12
    temporaries = yield admin.request("list_licenses", kind="temporary")
    assert len(temporaries) == 20 and all(lic["validated"] for lic in temporaries)


@pytest_twisted.inlineCallbacks
def test_upgrades_fall_back_to_repeats_when_no_reported_device_is_left(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin, quantity=30)
    summary = yield load(daemon, terminal_servers=1, devices=3, prepare=3, count=5, mix=parse_mix("upgrade=1"))
    assert summary["outcomes"] == {"upgraded": 3, "existing": 2}
