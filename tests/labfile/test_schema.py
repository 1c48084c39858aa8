"""Lab files are checked before anything starts: every problem names its line and field."""
import pytest

from tests.labfile.labs import fleet, host, install, lab, purchase, server, step, wave
from clients.labfile import plan, schema
from clients.labfile.schema import LabFileError

GOOD = lab("two servers",
           server(),
           server("LS2"),
           host("TS01", ["LS1", "LS2"]),
           fleet(devices=4),
           purchase(quantity=5),
           install(),
           step("+1h", "cut", session_host="TS01", license_server="LS1", **{"for": "2d"}),
           wave(expect={"temporary": 4, "served_by": {"LS2": 4}}),
           step("30d", "expect", key_pack="cals", issued=0),
           seed=3)


def problems(text):
    with pytest.raises(LabFileError) as caught:
        plan.plan(schema.loads(text, "lab.toml"), "lab.toml")
    return [(p.line, p.field, p.message) for p in caught.value.problems], str(caught.value)


def test_a_valid_file_becomes_values_and_times_in_seconds():
    lab = schema.loads(GOOD)
    assert [s.name for s in lab.license_servers] == ["LS1", "LS2"]
    assert lab.session_host("TS01").license_servers == ("LS1", "LS2")
    assert lab.fleet("desks").machines() == ["desks-001", "desks-002", "desks-003", "desks-004"]
    assert [(s.at, s.do) for s in lab.steps] == [(0, "install"), (3600, "cut"), (7200, "wave"), (30 * 86400, "expect")]
    assert lab.steps[2].args["expect"] == {"temporary": 4, "served_by": {"LS2": 4}}


def test_the_plan_adds_setup_the_end_of_a_timed_fault_and_closing_checks():
    steps = plan.plan(schema.loads(GOOD))
    assert [(s.at, s.kind, s.step) for s in steps] == [
        (0, "activate", None), (0, "activate", None), (0, "install", 1), (3600, "cut", 2), (7200, "wave", 3),
        (3600 + 2 * 86400, "heal", None), (30 * 86400, "expect", 4), (30 * 86400, "expect", None)]
    assert steps[-1].args == {"ledger": True, "unique": True}


def test_an_unknown_reference_names_the_line_and_the_field():
    found, text = problems(GOOD.replace('fleet = "desks"\nthrough', 'fleet = "dekss"\nthrough'))
    assert found == [(40, "step[3].fleet", "no fleet named 'dekss' (known: desks)")]
    assert text.startswith("lab.toml:40: step[3].fleet: no fleet named 'dekss'")


def test_every_problem_is_reported_not_only_the_first():
    bad = GOOD.replace('devices = 4', 'devices = "four"').replace('quantity = 5', 'quantity = 0\ncolour = "red"')
    found, _ = problems(bad)
    assert [(line, field) for line, field, _ in found] == [(18, "fleet[1].devices"), (23, "purchase[1].quantity"),
                                                          (24, "purchase[1].colour")]


def test_time_never_goes_backwards():
    found, _ = problems(GOOD.replace('at = "30d"', 'at = "1h"'))
    assert found[0][:2] == (45, "step[4].at")
    assert "never goes backwards" in found[0][2]


def test_a_malformed_time_and_an_unknown_step_kind():
    found, _ = problems(GOOD.replace('at = "30d"', 'at = "thirty days"').replace('do = "cut"', 'do = "snip"'))
    assert (32, "step[2].do") in [f[:2] for f in found]
    assert any(f[1] == "step[4].at" and "like 0d, 30d, +6h" in f[2] for f in found)


def test_toml_syntax_errors_name_their_line():
    found, _ = problems(GOOD.replace('name = "LS2"', 'name = LS2'))
    assert found[0][0] == 10 and "not TOML" in found[0][2]


def test_a_timeline_that_cannot_be_played_is_refused_before_anything_starts():
    text = GOOD + '\n[[step]]\nat = "+1d"\ndo = "resume"\nlicense_server = "LS1"\n'
    found, _ = problems(text)
    assert found == [(52, "step[5].do", "cannot resume license server LS1: it is running then")]


def test_a_link_must_exist():
    text = GOOD.replace('license_servers = ["LS1", "LS2"]', 'license_servers = ["LS2"]')
    found, _ = problems(text)
    assert (34, "step[2].license_server") in [f[:2] for f in found]


def test_codes_and_events_are_checked_against_the_documented_ones():
    text = GOOD.replace('issued = 0', 'issued = 0\npresent = ["CAL_ISSUED", 9999]') \
               .replace('served_by = { LS2 = 4 }', 'refused_by = { NO_SUCH_CODE = 1 }')
    found, _ = problems(text)
    assert [f[1] for f in found] == ["step[3].expect", "step[4].present"]


def test_a_fleet_shares_its_devices_among_fewer_users():
    lab = schema.loads(GOOD.replace("devices = 4", "devices = 4\nusers = 3"))
    assert lab.fleet("desks").user_names() == {"desks-001": "desks-user001", "desks-002": "desks-user002",
                                                "desks-003": "desks-user003", "desks-004": "desks-user001"}
    assert schema.loads(GOOD).fleet("desks").user_names()["desks-002"] == "user-desks-002"


def test_a_session_host_may_be_not_configured():
    lab = schema.loads(GOOD.replace('name = "TS01"', 'name = "TS01"\nmode = "not-configured"'))
    assert lab.session_host("TS01").mode is None
    found, _ = problems(GOOD.replace('name = "TS01"', 'name = "TS01"\nmode = "per-seat"'))
    assert found[0][:2] == (14, "session_host[1].mode")


def test_a_license_server_scope_is_set_at_the_start():
    lab = schema.loads(GOOD.replace('name = "LS2"', 'name = "LS2"\nscope = "forest"'))
    assert lab.license_server("LS2").scope.value == "forest" and lab.license_server("LS1").scope is None
    setup = [p for p in plan.plan(lab) if p.kind == "role"]
    assert [(p.at, p.args) for p in setup] == [(0, {"license_server": "LS2", "scope": "forest"})]
    found, _ = problems(GOOD.replace('name = "LS2"', 'name = "LS2"\nscope = "galaxy"'))
    assert found == [(11, "license_server[2].scope", "unknown scope 'galaxy'; expected workgroup, domain or forest")]


def test_a_session_host_discovers_license_servers_after_its_own_list():
    # Its list, then forest-wide servers, then the domain's (the default scope); a workgroup one is
    # not published.
    text = GOOD.replace('name = "LS2"', 'name = "LS2"\n\n[[license_server]]\nname = "LS3"\nscope = "forest"'
                        '\n\n[[license_server]]\nname = "LS4"\nscope = "workgroup"')
    host = schema.loads(text.replace('license_servers = ["LS1", "LS2"]', 'discover = true')).session_host("TS01")
    assert host.discover and host.license_servers == ("LS3", "LS1", "LS2") and host.specified == ()
    host = schema.loads(text.replace('license_servers = ["LS1", "LS2"]', 'license_servers = ["LS4"]\ndiscover = true')) \
        .session_host("TS01")
    assert host.license_servers == ("LS4", "LS3", "LS1", "LS2")
    found, _ = problems(GOOD.replace('license_servers = ["LS1", "LS2"]', 'license_servers = ["LS9"]\ndiscover = true'))
    assert [f[1] for f in found] == ["session_host[1].license_servers"]


def test_a_fleet_per_user_share_goes_through_the_per_user_hosts():
    text = GOOD.replace("devices = 4", "devices = 4\nper_user = 0.5").replace(
        '[[fleet]]', '[[session_host]]\nname = "TSU"\nmode = "per-user"\nlicense_servers = ["LS1"]\n\n[[fleet]]')
    lab = schema.loads(text.replace('through = ["TS01"]', 'through = ["TS01", "TSU"]'))
    assert lab.fleet("desks").per_user_machines() == {"desks-002", "desks-004"}
    assert plan.wave_shares(lab, "desks", ("TSU", "TS01")) == [["desks-002", "desks-004"], ["desks-001", "desks-003"]]
    assert plan.wave_shares(schema.loads(GOOD), "desks", ("TS01",)) == [["desks-001", "desks-002", "desks-003", "desks-004"]]
    found, _ = problems(text)       # GOOD's wave goes through TS01 only
    assert found == [(47, "step[3].through",
                      "fleet 'desks' has 2 Per User devices (per_user = 0.5) and none of these session hosts is in per-user mode")]
    found, _ = problems(GOOD.replace("devices = 4", "devices = 4\nper_user = 1.5"))
    assert found == [(19, "fleet[1].per_user", "a share from 0 to 1 (0.25 is a quarter of the devices), not 1.5")]


def test_a_wave_with_a_rate_takes_lab_time_and_nothing_may_come_before_it_ends():
    text = GOOD.replace('through = ["TS01"]', 'through = ["TS01"]\nrate = 3\ntimes = 2')
    steps = plan.plan(schema.loads(text))
    wave = next(p for p in steps if p.kind == "wave")
    assert wave.lasts == 2 * 3600           # 8 logons, 3 an hour: batches at +0h, +1h, +2h
    assert [len(b) for b in plan.wave_batches(schema.loads(text), wave.args)] == [3, 3, 2]
    assert plan.wave_batches(schema.loads(text), wave.args)[1] == [(1, "desks-004"), (2, "desks-001"), (2, "desks-002")]
    found, _ = problems(text.replace('at = "30d"', 'at = "+1h"'))
    assert found == [(42, "step[3].rate", "at 3 logons per lab hour the wave lasts 2h more, until 0d+4h, "
                                          "and step 4 (expect) comes at 0d+3h, before it ends")]
    found, _ = problems(GOOD.replace('through = ["TS01"]', 'through = ["TS01"]\nrate = 0'))
    assert found[0][1:] == ("step[3].rate", "must be from 1 to 1000000000, not 0")


def test_a_convert_step_names_the_new_key_pack_for_later_steps():
    text = GOOD + '\n[[step]]\nat = "+1d"\ndo = "convert"\nkey_pack = "cals"\ncount = 2\ninto = "users"\n' \
                  '\n[[step]]\nat = "+1h"\ndo = "expect"\nkey_pack = "users"\ntotal = 2\n'
    lab = schema.loads(text)
    assert lab.steps[4].args == {"key_pack": "cals", "count": 2, "into": "users"}
    found, _ = problems(text.replace('into = "users"', 'into = "cals"'))
    assert found[0] == (55, "step[5].into", "'cals' already names a key pack: give the converted CALs a new name")
    found, _ = problems(text.replace('do = "convert"', 'do = "convert"\nlicense_server = "LS1"'))
    assert found[0][1] == "step[5].license_server"


def test_a_migrate_step_moves_a_purchase_for_later_steps():
    text = GOOD + '\n[[step]]\nat = "+1d"\ndo = "migrate"\npurchase = "cals"\nto = "LS2"\nreason = "not-working"\n' \
                  '\n[[step]]\nat = "+1h"\ndo = "expect"\nkey_pack = "cals"\nlicense_server = "LS2"\ntotal = 5\n'
    assert schema.loads(text).steps[4].args == {"purchase": "cals", "to": "LS2", "reason": "not_working"}
    found, _ = problems(text.replace('to = "LS2"', 'to = "LS1"').replace('"not-working"', '"lost"'))
    assert [f[1:] for f in found] == [("step[5].to", "purchase 'cals' is on LS1 already then"),
                                      ("step[5].reason", "unknown reason 'lost'; expected replaced or not-working"),
                                      ("step[6].key_pack", "purchase 'cals' is installed on LS1, not LS2")]


def test_a_fleet_may_have_a_few_real_rdp_clients():
    lab = schema.loads(GOOD.replace("devices = 4", "devices = 4\nrdp = 2"))
    assert lab.fleet("desks").rdp_machines() == {"desks-001", "desks-002"}
    found, _ = problems(GOOD.replace("devices = 4", "devices = 4\nrdp = 5"))
    assert found == [(19, "fleet[1].rdp", "5 RDP clients among 4 devices")]
    found, _ = problems(GOOD.replace("devices = 4", "devices = 4\nrdp = 1")
                        .replace('name = "TS01"', 'name = "TS01"\ngroup = true'))
    assert [f[1] for f in found] == ["step[3].through"]
