"""The console's tests (tests/console/test_console.py) again, with the license server on PostgreSQL:
its read store (tsls.server.readstore.PgReadStore) answers the same as on SQLite."""
import pytest

from tests.console.harness import ConsoleDaemon
from tests.console.test_console import (  # noqa: F401  (collected here again, with the daemon below)
    test_a_change_needs_the_csrf_token_and_an_administrator, test_a_refusal_comes_back_with_its_code_and_a_message_for_a_person,
    test_committed_events_stream_to_a_session_as_server_sent_events, test_metrics_agree_with_the_ledger_after_a_load,
    test_reports_and_history_match_the_ledger, test_session_hosts_and_the_policy_switch_go_through_the_same_operations,
    test_the_dashboard_agrees_with_the_protocols_status, test_the_licenses_page_pages_sorts_filters_and_searches)
from tests.harness import running
from tests.pg import OnPostgres


class PgConsoleDaemon(OnPostgres, ConsoleDaemon):
    """tests.console.harness.ConsoleDaemon with its ledger in a PostgreSQL database."""


@pytest.fixture
def served(pg, tmp_path):
    yield from running(PgConsoleDaemon(pg, tmp_path))
