"""The version matrix, edge by edge, against Microsoft's tables [§9, RDSCAL; NOLS]."""
import pytest

from tsls.core.licensing import TerminalServer, check_terminal_server
from tsls.core.model import (
    CalType, Program, ProductVersion as V, Purchase, PurchaseRef, cal_serves_host, check_cal_version,
    check_server_hosts, server_hosts_cal, server_serves_host,
)
from tsls.errors import Code, TslsError

CALS = [v for v in V if v.has_cal]
NEW = [V.W2008, V.W2008R2, V.W2012, V.W2012R2, V.W2016, V.W2019, V.W2022, V.W2025]

# The session host table of rds-client-access-license.md, with the 2025 row and column added by the
# same rule ("you can use later versions of RDS CALs to access earlier versions"): columns are the
# CALs 2008 R2-and-earlier (2008, 2008 R2), 2012, 2016, 2019, 2022, 2025.
HOST_TABLE = {
    V.W2008:   "YYYYYY",
    V.W2008R2: "YYYYYY",
    V.W2012:   "NYYYYY",
    V.W2012R2: "NYYYYY",
    V.W2016:   "NNYYYY",
    V.W2019:   "NNNYYY",
    V.W2022:   "NNNNYY",
    V.W2025:   "NNNNNY",
}
# The license server table: a server hosts its version's CALs and every earlier one.
SERVER_TABLE = {
    V.W2008:   "YNNNNN",
    V.W2008R2: "YNNNNN",
    V.W2012:   "YYNNNN",
    V.W2012R2: "YYNNNN",
    V.W2016:   "YYYNNN",
    V.W2019:   "YYYYNN",
    V.W2022:   "YYYYYN",
    V.W2025:   "YYYYYY",
}
COLUMNS = [(V.W2008, V.W2008R2), (V.W2012,), (V.W2016,), (V.W2019,), (V.W2022,), (V.W2025,)]


@pytest.mark.parametrize("host", list(HOST_TABLE))
def test_a_cal_serves_session_hosts_of_its_version_and_older_as_the_table_says(host):
    for cells, cals in zip(HOST_TABLE[host], COLUMNS):
        for cal in cals:
            assert cal_serves_host(cal, host) is (cells == "Y"), (cal, host)


@pytest.mark.parametrize("server", list(SERVER_TABLE))
def test_a_license_server_hosts_cals_of_its_version_and_older_as_the_table_says(server):
    for cells, cals in zip(SERVER_TABLE[server], COLUMNS):
        for cal in cals:
            assert server_hosts_cal(server, cal) is (cells == "Y"), (server, cal)


def test_the_edges_named_in_the_sources():
    assert not cal_serves_host(V.W2008R2, V.W2012)      # 2012 hosts need 2012 or later CALs
    assert not cal_serves_host(V.W2008R2, V.W2012R2)
    assert cal_serves_host(V.W2012, V.W2012R2)          # no separate 2012 R2 CAL: the 2012 CAL serves it
    assert cal_serves_host(V.W2008R2, V.W2008) and cal_serves_host(V.W2008, V.W2008R2)   # equal [hh553159]
    assert cal_serves_host(V.W2025, V.W2008)            # a newer CAL serves an older host
    assert not cal_serves_host(V.W2003, V.W2008)        # same or newer [§3]
    assert server_hosts_cal(V.W2012R2, V.W2012) and not server_hosts_cal(V.W2012R2, V.W2016)
    assert server_hosts_cal(V.W2025, V.W2003)           # all previous versions, down to 2003
    assert not server_hosts_cal(V.W2022, V.W2025)


def test_2012_r2_has_no_cal_of_its_own():
    assert [v for v in V if not v.has_cal] == [V.W2012R2]
    with pytest.raises(TslsError) as e:
        check_cal_version(V.W2012R2)
    assert e.value.code is Code.NO_SUCH_CAL_VERSION
    with pytest.raises(TslsError) as e:
        Purchase(PurchaseRef(Program.RETAIL, retail_code="A" * 25), V.W2012R2, CalType.PER_DEVICE, 5)
    assert e.value.code is Code.NO_SUCH_CAL_VERSION


def test_installing_newer_cals_is_refused_naming_both_versions():
    with pytest.raises(TslsError) as e:
        check_server_hosts(V.W2019, V.W2022)
    assert e.value.code is Code.CAL_NEWER_THAN_SERVER
    assert e.value.details == {"server_version": "2019", "cal_version": "2022"}
    assert "Windows Server 2019" in e.value.message and "Windows Server 2022" in e.value.message
    check_server_hosts(V.W2019, V.W2019)


@pytest.mark.parametrize("server", NEW)
def test_a_license_server_serves_session_hosts_of_its_version_and_older(server):
    for host in NEW:
        ts = TerminalServer("TS", host, CalType.PER_DEVICE)
        if server_serves_host(server, host):
            check_terminal_server(ts, server)
        else:
            with pytest.raises(TslsError) as e:
                check_terminal_server(ts, server)
            assert e.value.code is Code.LS_VERSION_TOO_LOW
            assert e.value.details == {"server_version": server.value, "host_version": host.value}
    assert server_serves_host(V.W2012R2, V.W2012) and server_serves_host(V.W2012, V.W2012R2)


def test_rdp_versions_and_wmi_numbers():
    assert V.W2012R2.windows_version == (6, 3) and V.W2025.windows_version == (10, 0)
    assert V.W2008.info.wmi_product_version_id == 2 and V.W2008R2.info.wmi_product_version_id == 3
    assert V.W2012.info.wmi_product_version_id == 4 and V.W2016.info.wmi_product_version_id is None
    assert [V(v).info.wmi_install_version for v in ("2008", "2008R2", "2012", "2012R2", "2016", "2019")] == [2, 2, 4, 4, 5, 6]
    assert V.W2022.info.wmi_install_version is None and V.W2025.info.wmi_install_version is None


def test_parse_takes_the_spellings_labs_write_and_refuses_others():
    assert V.parse("2008R2") is V.W2008R2 and V.parse("2012 R2") is V.W2012R2 and V.parse("2012r2") is V.W2012R2
    assert V.newest() is V.W2025
    with pytest.raises(TslsError) as e:
        V.parse("2024")
    assert e.value.code is Code.BAD_REQUEST and "2025" in e.value.message
