import pytest

from tsls.core.model import DAY, ProductVersion
from tsls.core.terminal import AdmittedBy, Grace, without_license_server
from tsls.errors import Code, TslsError

NOW = 1_800_000_000


def test_grace_lasts_120_days_from_the_first_connection_and_90_for_windows_2000():
    g = Grace(ProductVersion.W2003).connection(NOW)
    assert g.active(NOW + 120 * DAY - 1) and not g.active(NOW + 120 * DAY)
    old = Grace(ProductVersion.W2000).connection(NOW)
    assert not old.active(NOW + 90 * DAY)


def test_later_connections_do_not_restart_grace():
    g = Grace(ProductVersion.W2003).connection(NOW).connection(NOW + 50 * DAY)
    assert g.started_at == NOW


def test_grace_ends_at_the_first_permanent_cal():
    g = Grace(ProductVersion.W2003).connection(NOW).permanent_cal_issued(NOW + DAY)
    assert not g.active(NOW + 2 * DAY)


def test_without_a_license_server_grace_admits_and_then_refuses():
    g = Grace(ProductVersion.W2003).connection(NOW)
    assert without_license_server(g, None, NOW + DAY).how is AdmittedBy.GRACE
    with pytest.raises(TslsError) as e:
        without_license_server(g, None, NOW + 121 * DAY)
    assert e.value.code is Code.NO_LICENSE_SERVER


def test_a_valid_license_keeps_working_without_a_license_server_until_it_needs_renewal():
    g = Grace(ProductVersion.W2003).connection(NOW).permanent_cal_issued(NOW)
    expires = NOW + 60 * DAY
    assert without_license_server(g, expires, NOW + 10 * DAY).how is AdmittedBy.LICENSE
    with pytest.raises(TslsError) as e:
        without_license_server(g, expires, expires - DAY)
    assert e.value.code is Code.RENEWAL_FAILED
