"""The device-logon rules, with no sockets or clock; multi-step scenarios apply the decisions with
the real ledger (tests/core/ledger.py: tsls.server.store on a throwaway SQLite file)."""
import pytest

from tests.core.ledger import Ledger
from tsls.core.licensing import (
    CAL_DAYS, RENEWAL_WINDOW, Logon, Outcome, TerminalServer, cal_lifetime, check_terminal_server, expire,
    report_logon,
)
from tsls.core.model import (
    DAY, CalType, KeyPack, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef,
)
from tsls.errors import Code, TslsError

NOW = 1_800_000_000
TS2003 = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)
RETAIL = PurchaseRef(Program.RETAIL, retail_code="A" * 25)


def pack(id=1, version=ProductVersion.W2003, cal_type=CalType.PER_DEVICE, total=5, issued=0):
    return KeyPack(id, f"KP{id}".ljust(35, "0"), RETAIL, version, cal_type, total, issued, NOW - DAY)


def logon(hwid="h1", presented=None):
    return Logon(hwid, "PC1", "alice", presented)


def test_first_logon_gets_a_90_day_temporary_license_even_with_cals_free():
    d = Ledger([pack()]).logon()
    assert d.outcome is Outcome.TEMPORARY_ISSUED
    assert d.license.kind is LicenseKind.TEMPORARY
    assert d.license.expires_at == NOW + 90 * DAY
    assert d.reason is None


def test_second_logon_without_reported_success_keeps_the_temporary_license():
    ledger = Ledger([pack()])
    ledger.logon()
    d = ledger.logon()
    assert d.outcome is Outcome.TEMPORARY
    assert ledger.packs[1].issued == 0


def test_second_logon_after_reported_success_upgrades_to_a_permanent_cal():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    d = ledger.logon()
    assert d.outcome is Outcome.UPGRADED
    assert d.license.kind is LicenseKind.PERMANENT and d.license.key_pack == 1
    low, high = CAL_DAYS
    assert low * DAY <= d.license.expires_at - NOW <= high * DAY
    assert ledger.packs[1].issued == 1
    temporaries = [lic for lic in ledger.licenses.values() if lic.kind is LicenseKind.TEMPORARY]
    assert [t.status for t in temporaries] == [LicenseStatus.UPGRADED]


def test_a_device_with_a_cal_gets_the_same_cal_and_no_second_decrement():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    again = ledger.logon(presented=cal.id)
    assert again.outcome is Outcome.EXISTING and again.license == cal and again.changes == ()
    assert ledger.packs[1].issued == 1


def test_a_device_that_lost_its_license_gets_the_same_cal_back():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    assert ledger.logon(presented=None).license == cal


def test_full_pool_leaves_the_temporary_license_working_with_the_reason():
    ledger = Ledger([pack(total=1)])
    ledger.fill(1)
    ledger.report(ledger.logon())
    d = ledger.logon(now=NOW + 10 * DAY)
    assert d.outcome is Outcome.TEMPORARY and d.reason is Code.NO_LICENSE_AVAILABLE


def test_expired_temporary_license_without_a_free_cal_is_refused():
    ledger = Ledger([pack(total=1)])
    ledger.fill(1)
    ledger.logon()
    with pytest.raises(TslsError) as e:
        ledger.logon(now=NOW + 90 * DAY)
    assert e.value.code is Code.NO_LICENSE_AVAILABLE


def test_expired_temporary_license_gets_a_permanent_cal_when_one_is_free():
    ledger = Ledger([pack()])
    ledger.logon()
    assert ledger.logon(now=NOW + 91 * DAY).outcome is Outcome.UPGRADED


def test_a_device_gets_a_temporary_license_only_once():
    ledger = Ledger([])
    ledger.logon()
    ledger.logon(now=NOW + 10 * DAY)
    with pytest.raises(TslsError):
        ledger.logon(now=NOW + 100 * DAY)
    assert len(ledger.licenses) == 1


def test_unactivated_server_issues_only_temporary_licenses():
    ledger = Ledger([pack()], activated=False)
    ledger.report(ledger.logon())
    d = ledger.logon()
    assert d.outcome is Outcome.TEMPORARY and d.reason is Code.NOT_ACTIVATED
    assert ledger.packs[1].issued == 0


def test_per_device_server_with_only_per_user_cals_is_a_mode_mismatch():
    ledger = Ledger([pack(cal_type=CalType.PER_USER)])
    first = ledger.logon()
    assert first.reason is Code.MODE_MISMATCH
    ledger.report(first)
    assert ledger.logon().reason is Code.MODE_MISMATCH


def test_per_user_server_with_only_per_device_cals_gets_temporary_licenses():
    ts = TerminalServer("TSU", ProductVersion.W2003, CalType.PER_USER)
    ledger = Ledger([pack()])
    first = ledger.logon(ts=ts)
    ledger.report(first)
    second = ledger.logon(ts=ts)
    assert (first.outcome, second.outcome) == (Outcome.TEMPORARY_ISSUED, Outcome.TEMPORARY)
    assert second.reason is Code.MODE_MISMATCH and ledger.packs[1].issued == 0


def test_per_user_logon_is_allowed_past_the_installed_count_and_counts_nothing():
    ts = TerminalServer("TSU", ProductVersion.W2003, CalType.PER_USER)
    ledger = Ledger([pack(cal_type=CalType.PER_USER, total=2)])
    outcomes = {ledger.logon(hwid=f"h{i}", ts=ts).outcome for i in range(10)}
    assert outcomes == {Outcome.PER_USER}
    assert ledger.packs[1].issued == 0 and ledger.licenses == {}


def test_a_newer_cal_serves_an_older_terminal_server_but_never_the_reverse():
    ts2000 = TerminalServer("OLD", ProductVersion.W2000, CalType.PER_DEVICE)
    ledger = Ledger([pack(version=ProductVersion.W2003)])
    ledger.report(ledger.logon(ts=ts2000))
    assert ledger.logon(ts=ts2000).outcome is Outcome.UPGRADED

    old = Ledger([pack(version=ProductVersion.W2000)])
    old.report(old.logon())
    d = old.logon()
    assert d.outcome is Outcome.TEMPORARY and d.reason is Code.NO_LICENSE_AVAILABLE


def test_the_lowest_serving_version_is_issued_first():
    ledger = Ledger([pack(1, version=ProductVersion.W2008), pack(2, version=ProductVersion.W2003)])
    ledger.report(ledger.logon())
    assert ledger.logon().license.key_pack == 2


def test_presenting_a_license_issued_to_another_device_is_refused():
    ledger = Ledger([pack()])
    other = ledger.logon(hwid="h2").license
    with pytest.raises(TslsError) as e:
        ledger.logon(hwid="h1", presented=other.id)
    assert e.value.code is Code.INVALID_LICENSE


def test_cal_is_renewed_on_a_logon_within_seven_days_of_expiry():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    assert ledger.logon(now=cal.expires_at - RENEWAL_WINDOW - 1).outcome is Outcome.EXISTING
    later = cal.expires_at - RENEWAL_WINDOW + 1
    d = ledger.logon(now=later)
    assert d.outcome is Outcome.RENEWED and d.license.renewals == 1
    assert d.license.expires_at - later >= CAL_DAYS[0] * DAY
    assert ledger.packs[1].issued == 1


def test_expiry_returns_a_permanent_cal_to_its_pool():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    assert expire(cal, cal.expires_at - 1) is None
    ledger.apply(expire(cal, cal.expires_at))
    assert ledger.packs[1].issued == 0
    assert ledger.licenses[cal.id].status is LicenseStatus.EXPIRED


def test_cal_lifetime_is_reproducible_from_the_seed_and_varies_across_devices():
    draws = {cal_lifetime("7", f"h{i}", ProductVersion.W2003, 0) for i in range(50)}
    assert cal_lifetime("7", "h1", ProductVersion.W2003, 0) == cal_lifetime("7", "h1", ProductVersion.W2003, 0)
    assert len(draws) > 10 and all(52 * DAY <= d <= 89 * DAY for d in draws)


def test_reporting_a_logon_for_an_unknown_license_is_refused():
    ledger = Ledger([pack()])
    with pytest.raises(TslsError) as e:
        report_logon(99, "h1", ledger.world("h1"), NOW)
    assert e.value.code is Code.UNKNOWN_LICENSE


def test_windows_2000_terminal_server_cannot_run_per_user():
    with pytest.raises(TslsError) as e:
        check_terminal_server(TerminalServer("OLD", ProductVersion.W2000, CalType.PER_USER))
    assert e.value.code is Code.MODE_UNSUPPORTED


def test_revoking_a_cal_frees_its_seat_at_once():
    from tsls.core.licensing import revoke
    ledger = Ledger([pack(total=10)])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    d = ledger.apply(revoke(cal, tuple(ledger.packs.values()), (), NOW))
    assert d.license.status is LicenseStatus.REVOKED and ledger.packs[1].issued == 0


def test_revocation_stops_at_twenty_percent_and_names_the_next_date():
    from tsls.core.licensing import revoke
    ledger = Ledger([pack(total=10)])
    cals = []
    for i in range(3):
        ledger.report(ledger.logon(hwid=f"h{i}"))
        cals.append(ledger.logon(hwid=f"h{i}").license)
    revoked = []
    for cal in cals[:2]:
        revoked.append(ledger.apply(revoke(cal, tuple(ledger.packs.values()), tuple(revoked), NOW)).license)
    with pytest.raises(TslsError) as e:
        revoke(cals[2], tuple(ledger.packs.values()), tuple(revoked), NOW)
    assert e.value.code is Code.REVOCATION_LIMIT
    assert e.value.details["revoked"] == 2 and e.value.details["installed"] == 10
    first_free = min(r.expires_at for r in revoked)
    assert e.value.details["next_allowed_at"] in e.value.message
    ledger.report(ledger.logon(hwid="h9", now=first_free), now=first_free)
    fresh = ledger.logon(hwid="h9", now=first_free).license
    assert revoke(fresh, tuple(ledger.packs.values()), tuple(revoked), first_free).outcome is Outcome.REVOKED


def test_a_small_pool_may_still_revoke_one():
    from tsls.core.licensing import revocation_limit
    assert revocation_limit((pack(total=3),), ProductVersion.W2003) == (3, 1)


def test_temporary_licenses_cannot_be_revoked():
    from tsls.core.licensing import revoke
    temp = Ledger([]).logon().license
    with pytest.raises(TslsError) as e:
        revoke(temp, (), (), NOW)
    assert e.value.code is Code.NOT_REVOCABLE


def test_a_device_returning_after_its_cal_expired_gets_that_cal_renewed():
    ledger = Ledger([pack()])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    ledger.apply(expire(cal, cal.expires_at))
    d = ledger.logon(now=cal.expires_at + DAY, presented=cal.id)
    assert d.outcome is Outcome.RENEWED and d.license.id == cal.id and d.license.renewals == 1
    assert d.license.status is LicenseStatus.ACTIVE and ledger.packs[1].issued == 1


def test_a_returning_device_with_no_seat_free_is_refused():
    ledger = Ledger([pack(total=1)])
    ledger.report(ledger.logon())
    cal = ledger.logon().license
    ledger.apply(expire(cal, cal.expires_at))
    ledger.report(ledger.logon(hwid="h2", now=cal.expires_at))
    ledger.logon(hwid="h2", now=cal.expires_at)     # takes the only seat
    with pytest.raises(TslsError) as e:
        ledger.logon(now=cal.expires_at + DAY)
    assert e.value.code is Code.NO_LICENSE_AVAILABLE


def test_the_reason_a_logon_gets_no_cal_follows_everything_it_depends_on_with_the_same_key_packs():
    """The reason is kept per tuple of key packs (the shell passes the same one until a pack changes):
    the activation, the policy and the terminal server's version still change it."""
    from tsls.core.licensing import World, device_logon

    packs = (pack(version=ProductVersion.W2008, total=1, issued=1), pack(2, version=ProductVersion.W2012))

    def reason(version=ProductVersion.W2008, activated=True, prevent_upgrade=False, packs=packs):
        ts = TerminalServer("TS01", version, CalType.PER_DEVICE)
        return device_logon(ts, logon(), World(activated, packs, (), "0", prevent_upgrade), NOW).reason

    for _ in range(2):
        assert reason() is None
        assert reason(prevent_upgrade=True) is Code.UPGRADE_PREVENTED
        assert reason(activated=False) is Code.NOT_ACTIVATED
        assert reason(ProductVersion.W2016) is Code.NO_LICENSE_AVAILABLE
        assert reason(packs=(packs[0],)) is Code.NO_LICENSE_AVAILABLE
        assert reason(packs=(pack(cal_type=CalType.PER_USER),)) is Code.MODE_MISMATCH
