"""The Prevent License Upgrade policy [§9, PLU]: with it on, a session host is
never given a CAL newer than itself; a device gets a temporary license once, then it is refused
(the terminal server admits it only inside its grace period)."""
import attrs
import pytest

from tests.core.test_licensing import NOW, Ledger, pack
from tsls.core.licensing import Outcome, TerminalServer
from tsls.core.model import DAY, CalType, LicenseKind, ProductVersion as V
from tsls.core.terminal import Grace, refused_by_policy
from tsls.errors import Code, TslsError

TS2016 = TerminalServer("TS16", V.W2016, CalType.PER_DEVICE)


class Policy(Ledger):
    def world(self, hwid):
        return attrs.evolve(super().world(hwid), prevent_upgrade=True)


def test_without_the_policy_a_newer_cal_is_given():
    ledger = Ledger([pack(version=V.W2019)])
    ledger.report(ledger.logon(ts=TS2016))
    d = ledger.logon(ts=TS2016)
    assert d.outcome is Outcome.UPGRADED and d.license.product_version is V.W2019


def test_with_the_policy_a_newer_cal_is_never_given_a_temporary_license_once_then_refusal():
    ledger = Policy([pack(version=V.W2019)])
    first = ledger.logon(ts=TS2016)
    assert first.outcome is Outcome.TEMPORARY_ISSUED and first.reason is Code.UPGRADE_PREVENTED
    ledger.report(first)
    second = ledger.logon(ts=TS2016)
    assert second.outcome is Outcome.TEMPORARY and second.license.kind is LicenseKind.TEMPORARY
    assert ledger.packs[1].issued == 0
    with pytest.raises(TslsError) as e:
        ledger.logon(ts=TS2016, now=NOW + 91 * DAY)
    assert e.value.code is Code.UPGRADE_PREVENTED


def test_with_the_policy_a_cal_of_the_hosts_own_version_is_given_first_and_the_2008_generation_counts():
    ledger = Policy([pack(1, version=V.W2019), pack(2, version=V.W2016)])
    ledger.report(ledger.logon(ts=TS2016))
    assert ledger.logon(ts=TS2016).license.product_version is V.W2016
    ts = TerminalServer("TS8", V.W2008R2, CalType.PER_DEVICE)
    ledger = Policy([pack(1, version=V.W2008)])          # a 2008 TS CAL equals a 2008 R2 RDS CAL
    ledger.report(ledger.logon(ts=ts))
    assert ledger.logon(ts=ts).outcome is Outcome.UPGRADED


def test_a_refusal_under_the_policy_is_admitted_only_inside_the_grace_period():
    refusal = TslsError(Code.UPGRADE_PREVENTED, "no CAL of the host's version")
    grace = Grace(V.W2016, started_at=NOW)
    admitted = refused_by_policy(grace, refusal, NOW + 10 * DAY)
    assert admitted.grace_days_left == 110
    with pytest.raises(TslsError) as e:
        refused_by_policy(grace, refusal, NOW + 121 * DAY)
    assert e.value.code is Code.UPGRADE_PREVENTED
