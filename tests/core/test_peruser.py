"""Per User CALs as a 2008 or later license server tracks them [§9, RDSCAL; TRACK; cc771021]."""
from tests.core.test_licensing import NOW, pack
from tsls.core.model import DAY, CalType, ProductVersion as V
from tsls.core.reports import PerUserCal, Scope, cal_usage_report, per_user_cals, per_user_usage, tracks_per_user


def test_a_users_record_expires_60_days_after_the_last_sign_in_and_each_sign_in_extends_it():
    logons = [(NOW, "alice"), (NOW + 10 * DAY, "alice"), (NOW + 5 * DAY, "bob")]
    assert per_user_cals(logons, NOW + 11 * DAY) == (
        PerUserCal("alice", NOW, NOW + 70 * DAY), PerUserCal("bob", NOW + 5 * DAY, NOW + 65 * DAY))
    assert per_user_cals(logons, NOW + 65 * DAY) == (PerUserCal("alice", NOW, NOW + 70 * DAY),)   # bob's ran out
    assert per_user_cals(logons, NOW + 70 * DAY) == ()


def test_a_user_back_after_60_days_gets_a_new_record():
    logons = [(NOW, "alice"), (NOW + 61 * DAY, "alice")]
    assert per_user_cals(logons, NOW + 62 * DAY) == (PerUserCal("alice", NOW + 61 * DAY, NOW + 121 * DAY),)
    assert per_user_cals(logons, NOW + 30 * DAY) == (PerUserCal("alice", NOW, NOW + 60 * DAY),)   # as it was then


def test_only_2008_and_later_in_a_domain_or_forest_track():
    assert tracks_per_user(V.W2008, Scope.DOMAIN) and tracks_per_user(V.W2025, Scope.FOREST)
    assert not tracks_per_user(V.W2003, Scope.DOMAIN) and not tracks_per_user(V.W2019, Scope.WORKGROUP)


def test_the_cal_usage_report_counts_installed_issued_and_the_users_beyond_installed():
    packs = (pack(1, version=V.W2019, cal_type=CalType.PER_USER, total=2), pack(2, version=V.W2019, total=9))
    logons = [(NOW + i * DAY, user) for i, user in enumerate(["carol", "alice", "bob", "alice"])]
    report = cal_usage_report(logons, packs, V.W2019, Scope.DOMAIN, NOW + 5 * DAY)
    assert (report.installed, report.issued, report.over_allocated) == (2, 3, 1)
    assert [c.user for c in report.beyond_installed] == ["bob"]          # the third to get one
    assert report.scope.wmi_report_scope_type == 1
    workgroup = cal_usage_report(logons, packs, V.W2019, Scope.WORKGROUP, NOW + 5 * DAY)
    assert not workgroup.tracked and workgroup.entries == () and workgroup.over_allocated == 0


def test_the_usage_report_of_the_whole_log_starts_on_its_first_logon_day_or_has_no_start_without_one():
    day = 86400
    report = per_user_usage([(20 * day + 5, "ann"), (21 * day, "bob"), (21 * day + 9, "ann")], (), None, 30 * day)
    assert report.start == 20 * day and report.users == (("ann", 2, 21 * day + 9), ("bob", 1, 21 * day))
    assert report.per_day == ((20 * day, 1), (21 * day, 2)) and report.peak == 2
    empty = per_user_usage([], (), None, 30 * day)
    assert empty.start is None and empty.end == 30 * day and empty.users == () and empty.peak == 0
    asked = per_user_usage([], (), 10 * day, 30 * day)
    assert asked.start == 10 * day                  # a period asked for is kept, even with no logon in it
