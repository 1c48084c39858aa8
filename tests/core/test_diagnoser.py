"""The RD Licensing Diagnoser's judgement, one broken setup at a time [§9, DIAG]."""
import pytest

from tsls.core.diagnoser import Connectivity, Probe, diagnose, not_configured_admission
from tsls.core.model import DAY, CalType, ProductVersion as V
from tsls.core.terminal import Grace
from tsls.errors import Code, TslsError

NOW = 1_800_000_000
GRACE_OVER = Grace(V.W2019, started_at=NOW - 200 * DAY)
IN_GRACE = Grace(V.W2019, started_at=NOW - 20 * DAY)
GOOD = Probe("ls1", True, None, V.W2019, True, False, False, 10, 4, 0)


def run(*probes, mode=CalType.PER_DEVICE, grace=GRACE_OVER):
    return diagnose(V.W2019, mode, probes, grace, NOW)


def test_a_working_setup_is_valid_ls():
    d = run(GOOD)
    assert d.ok and d.status is Connectivity.VALID_LS and d.status == 11


def test_no_license_server_after_the_grace_period():
    d = run()
    assert not d.ok and "has not been configured with any license servers" in " ".join(d.messages)


def test_an_unreachable_license_server_is_not_connectable_and_the_next_one_serves():
    d = run(Probe("ls1", False), GOOD)
    assert d.ok and [f.status for f in d.findings] == [Connectivity.NOT_CONNECTABLE, Connectivity.VALID_LS]
    assert "License server ls1 is not available" in d.messages[0]
    assert not run(Probe("ls1", False)).ok and run(Probe("ls1", False)).status == 6


@pytest.mark.parametrize("probe, status, words", [
    (Probe("ls1", True, Code.LS_VERSION_TOO_LOW.value), Connectivity.LOWER_VERSION, "earlier Windows version"),
    (Probe("ls1", True, Code.NOT_IN_GROUP.value), Connectivity.NOT_IN_TSCGROUP, "Terminal Server Computers"),
    (Probe("ls1", True, None, V.W2019, False, False, False, 10, 10, 0), Connectivity.VALID_LS, "not activated"),
    (Probe("ls1", True, None, V.W2019, True, False, False, 0, 0, 5), Connectivity.VALID_LS, "does not match"),
    (Probe("ls1", True, None, V.W2019, True, False, False, 0, 0, 0), Connectivity.VALID_LS, "no Per Device CALs"),
    (Probe("ls1", True, None, V.W2019, True, False, False, 5, 0, 0), Connectivity.VALID_LS, "all 5 are issued"),
])
def test_each_broken_license_server_is_named_with_its_status(probe, status, words):
    d = run(probe)
    assert not d.ok and d.findings[0].status is status
    assert words in " ".join(d.messages) and "Licenses are not available" in d.messages[-2]


def test_not_configured_mode_gets_in_during_grace_then_event_1069():
    assert not_configured_admission(IN_GRACE, NOW) == 100
    assert not_configured_admission(Grace(V.W2019), NOW) == 120
    with pytest.raises(TslsError) as e:
        not_configured_admission(GRACE_OVER, NOW)
    assert e.value.code is Code.MODE_NOT_CONFIGURED and "1069" in e.value.message
    d = run(GOOD, mode=None)
    assert not d.ok and "not configured" in d.messages[0] and "1069" in d.messages[0]
    assert run(GOOD, grace=IN_GRACE).grace_days_left == 100
