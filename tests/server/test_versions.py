"""The license server's own Windows version, end to end on loopback (docs/versions.md)."""
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.harness import RETAIL, Daemon, logon, running
from tsls.clearinghouse.testing import CONTACT
from tsls.core.model import ProductVersion
from tsls.errors import Code, TslsError
from tsls.server.service import LicenseServerService


@pytest.fixture
def ls2019(tmp_path):
    yield from running(Daemon(tmp_path, version=ProductVersion.W2019))


@pytest_twisted.ensureDeferred
async def test_a_2019_license_server_refuses_2022_cals_before_asking_the_clearinghouse(ls2019):
    admin = await ls2019.admin()
    await admin.request("activate", method="automatic", contact=CONTACT)
    with pytest.raises(TslsError) as e:
        await admin.request("install_key_pack", purchase={**RETAIL, "product_version": "2022", "cal_type": "per_device"})
    assert e.value.code is Code.CAL_NEWER_THAN_SERVER
    assert e.value.details == {"server_version": "2019", "cal_version": "2022"}
    assert [c[0] for c in ls2019.clearinghouse.calls] == ["activate"]
    pack = await admin.request("install_key_pack", purchase={**RETAIL, "product_version": "2019",
                                                             "cal_type": "per_device"})
    assert pack["product_version"] == "2019"
    status = await admin.request("status")
    assert status["server_version"] == "2019"


@pytest_twisted.ensureDeferred
async def test_a_session_host_newer_than_the_license_server_is_refused_at_hello(ls2019):
    with pytest.raises(TslsError) as e:
        await ls2019.terminal_server(version="2022")
    assert e.value.code is Code.LS_VERSION_TOO_LOW
    ts = await ls2019.terminal_server(version="2019")
    answer = await logon(ts, "pc1")
    assert answer["outcome"] == "temporary_issued"


@pytest_twisted.ensureDeferred
async def test_the_version_is_kept_and_cannot_go_below_the_cals_installed(tmp_path):
    daemon = Daemon(tmp_path, version=ProductVersion.W2022)
    await daemon.start()
    admin = await daemon.admin()
    await admin.request("activate", method="automatic", contact=CONTACT)
    await admin.request("install_key_pack", purchase={**RETAIL, "product_version": "2022", "cal_type": "per_device"})
    await daemon.stop()
    again = Daemon(tmp_path)                 # no version given: the kept one
    await again.start()
    assert again.service.server.identity.version is ProductVersion.W2022
    await again.stop()
    with pytest.raises(TslsError) as e:       # a "downgrade" below the CALs it hosts does not start
        LicenseServerService(reactor, "tcp:0:interface=127.0.0.1", again.path, again.clearinghouse,
                             version=ProductVersion.W2019)
    assert e.value.code is Code.CAL_NEWER_THAN_SERVER


@pytest_twisted.ensureDeferred
async def test_the_prevent_license_upgrade_policy_through_the_protocol(ls2019):
    admin = await ls2019.admin()
    await admin.request("activate", method="automatic", contact=CONTACT)
    await admin.request("install_key_pack", purchase={**RETAIL, "product_version": "2019", "cal_type": "per_device"})
    answer = await admin.request("set_policy", prevent_upgrade=True)
    assert answer["prevent_upgrade_policy"] is True and answer["security_group_policy"] is False
    ts = await ls2019.terminal_server(version="2016")
    first = await logon(ts, "pc1")
    assert first["outcome"] == "temporary_issued" and first["reason"] == "UPGRADE_PREVENTED"
    second = await logon(ts, "pc1", license=first["license"]["token"])
    assert second["outcome"] == "temporary"
    await admin.request("set_policy", prevent_upgrade=False)
    third = await logon(ts, "pc1", license=first["license"]["token"])
    assert third["outcome"] == "upgraded" and third["license"]["product_version"] == "2019"
    with pytest.raises(TslsError) as e:
        await admin.request("set_policy")
    assert e.value.code is Code.BAD_REQUEST


@pytest_twisted.ensureDeferred
async def test_per_user_cals_are_tracked_and_reported_unless_the_server_is_in_a_workgroup(ls2019):
    admin = await ls2019.admin()
    await admin.request("activate", method="automatic", contact=CONTACT)
    await admin.request("install_key_pack", purchase={**RETAIL, "product_version": "2019", "cal_type": "per_user",
                                                      "quantity": 1})
    ts = await ls2019.terminal_server(version="2019", mode="per_user")
    for device in ("pc1", "pc2", "pc1"):
        answer = await logon(ts, device)
        assert answer["outcome"] == "per_user"          # never refused, never decremented
    report = await admin.request("cal_usage_report")
    assert report["scope"] == "Domain" and report["tracked"] is True
    assert (report["per_user_cals_installed"], report["per_user_cals_issued"], report["over_allocated"]) == (1, 2, 1)
    assert [e["user"] for e in report["entries"]] == ["user-pc1", "user-pc2"]
    assert [e["beyond_installed"] for e in report["entries"]] == [False, True]
    assert report["wmi"] == {"InstalledLicenses": 1, "LicenseUsageCount": 2, "ScopeType": 1}
    role = await admin.request("set_role", role="workgroup")
    assert role == {"scope": "workgroup", "wmi": {"ServerRole": 0}}
    report = await admin.request("cal_usage_report")
    assert report["tracked"] is False and report["entries"] == [] and report["per_user_cals_issued"] == 0
    assert (await admin.request("status"))["scope"] == "workgroup"
    with pytest.raises(TslsError) as e:
        await admin.request("set_role", role="galaxy")
    assert e.value.code is Code.BAD_REQUEST


@pytest_twisted.ensureDeferred
async def test_the_diagnoser_says_lower_version_for_a_license_server_older_than_the_host(ls2019, tmp_path):
    from clients.tssim import DeviceStore, TerminalServer, TerminalServerState
    host = TerminalServer(reactor, "TS25", "2025", "per_device", [ls2019.endpoint],
                          DeviceStore(str(tmp_path / "d.json")), TerminalServerState(str(tmp_path / "t.json")))
    try:
        d = await host.diagnose()
    finally:
        await host.close()
    assert (d["status"], d["status_code"], d["ok"]) == ("LOWER_VERSION", 4, False)
    assert "earlier Windows version" in d["messages"][0]
