import pytest

from tsls.core.labtime import clock_target, parse_date
from tsls.core.model import DAY
from tsls.errors import Code, TslsError

NOW = 1_800_000_000


@pytest.mark.parametrize("text, seconds", [("+90d", 90 * DAY), ("+6h", 6 * 3600), ("+30m", 1800), ("+1w", 7 * DAY),
                                           ("+0s", 0)])
def test_durations_move_the_clock_forward(text, seconds):
    assert clock_target(text, NOW) == NOW + seconds


def test_an_iso_date_sets_the_clock():
    assert clock_target("2030-01-01", NOW) == parse_date("2030-01-01T00:00:00Z")


@pytest.mark.parametrize("text", ["90d", "+90", "+-3d", "+3y", "soon", "", None, 5])
def test_malformed_changes_are_refused(text):
    with pytest.raises(TslsError) as e:
        clock_target(text, NOW)
    assert e.value.code is Code.BAD_REQUEST


@pytest.mark.parametrize("text", ["2020-01-01", "-1d"])
def test_the_clock_never_goes_backwards(text):
    with pytest.raises(TslsError) as e:
        clock_target(text, NOW)
    assert e.value.code is Code.CLOCK_BACKWARDS
