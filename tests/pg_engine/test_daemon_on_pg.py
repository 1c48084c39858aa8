"""The daemon's end-to-end tests (tests/server/test_daemon.py, test_auth.py) again, with the license
server on PostgreSQL instead of SQLite: the storage seam's second engine answers the same."""
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.harness import Daemon, activate_and_install, logon, running
from tests.pg import OnPostgres
from tests.server.test_auth import (  # noqa: F401  (collected here again, with the daemon below)
    test_a_challenge_answers_one_hello_only, test_a_registered_terminal_server_must_prove_its_name,
    test_an_admin_without_the_credential_changes_nothing, test_secrets_never_reach_the_log,
    test_the_admin_credential_file_is_readable_by_its_owner_only, test_with_the_group_policy_on_only_members_get_licenses)
from tests.server.test_daemon import (  # noqa: F401
    test_a_client_that_shuts_its_side_after_sending_still_gets_every_answer, test_a_forged_license_is_refused_with_a_code,
    test_an_oversize_line_closes_that_connection_only, test_bad_input_gets_coded_errors_and_the_connection_keeps_working,
    test_five_cals_serve_five_devices_and_the_sixth_keeps_a_temporary_license,
    test_install_without_activation_is_refused_and_nothing_is_asked_of_the_clearinghouse,
    test_per_user_logons_are_logged_and_never_counted, test_pipelined_duplicate_logons_decrement_once,
    test_telephone_activation_takes_the_typed_codes_checked_against_the_product_id,
    test_two_terminal_servers_logging_one_device_on_at_once_decrement_once,
    test_unactivated_server_answers_with_temporary_licenses_and_says_why,
    test_unreachable_clearinghouse_is_a_clear_error_and_licensing_goes_on)
from tests.server.test_paging import (  # noqa: F401
    test_a_cursor_not_given_for_that_list_is_refused, test_event_pages_are_byte_for_byte_the_row_by_row_encoding,
    test_events_page_oldest_first_or_newest_first,
    test_key_packs_terminal_servers_and_usage_page_too, test_licenses_page_by_license_id_with_the_total_until_the_list_ends,
    test_pages_show_each_license_as_the_whole_list_does, test_rows_written_between_pages_do_not_shift_the_next_page,
    test_tsls_admin_exports_every_row_and_a_table_says_how_many_it_shows)


class PgDaemon(OnPostgres, Daemon):
    """tests.harness.Daemon with its ledger in a PostgreSQL database."""


@pytest.fixture
def daemon(pg, tmp_path):
    yield from running(PgDaemon(pg, tmp_path))


@pytest_twisted.inlineCallbacks
def test_everything_survives_a_restart_on_postgresql(pg, tmp_path):
    first = PgDaemon(pg, tmp_path)
    yield first.start()
    admin = yield first.admin()
    yield activate_and_install(admin, quantity=2)
    ts = yield first.terminal_server()
    yield logon(ts, "pc1")
    issued = yield logon(ts, "pc1")
    yield first.stop()
    second = PgDaemon(pg, tmp_path, first.clearinghouse)
    yield second.start()
    try:
        ts = yield second.terminal_server()
        again = yield logon(ts, "pc1", license=issued["license"]["token"])
        assert again["outcome"] == "existing" and again["license"]["license_id"] == issued["license"]["license_id"]
        assert second.service.server.identity == first.service.server.identity
        admin = yield second.admin()
        status = yield admin.request("status")
        assert status["activation"]["status"] == "activated"
        assert status["key_packs"][0]["issued"] == 1
        assert os.stat(second.credential_path).st_mode & 0o077 == 0
    finally:
        yield second.stop()


@pytest_twisted.inlineCallbacks
def test_two_daemons_share_events_and_the_lab_clock(pg, tmp_path):
    """A change made through one daemon reaches the other's followers (LISTEN/NOTIFY), and moving the
    lab clock through one moves the other's."""
    from tsls.labclock import LabClock

    first = PgDaemon(pg, tmp_path / "a", lab_clock=LabClock(reactor))
    second = PgDaemon(pg, tmp_path / "b", first.clearinghouse, lab_clock=LabClock(reactor))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    yield first.start()
    yield second.start()
    try:
        watcher = yield second.admin()
        seen = []
        clock_moved = defer.Deferred()

        def follow(event):
            seen.append(event["name"])
            if event["name"] == "CLOCK_CHANGED" and not clock_moved.called:
                clock_moved.callback(event)
        watcher.on_event = follow
        yield watcher.request("follow_events")
        admin = yield first.admin()
        yield activate_and_install(admin, quantity=2)
        before = (yield watcher.request("status"))["now"]
        yield admin.request("set_clock", to="+30d")
        yield clock_moved.addTimeout(30, reactor)
        after = (yield watcher.request("status"))["now"]
        assert after[:10] > before[:10] and second.lab_clock.offset >= 30 * 86400 - 5
        assert {"ACTIVATED", "KEY_PACK_INSTALLED", "CLOCK_CHANGED"} <= set(seen)
    finally:
        yield first.stop()
        yield second.stop()
