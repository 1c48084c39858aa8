"""What `tsls-admin status` and `usage` print as text, from their answers (no daemon needed)."""
from clients.admin import _print_status, _print_usage

STATUS = {"product_id": "00038-334-2270241-43031", "server_version": "2019", "scope": "workgroup",
          "now": "2026-01-05T08:00:00Z", "key_packs": [], "licenses": {},
          "activation": {"status": "activated", "method": "automatic", "activated_at": "2025-01-06T08:00:00Z",
                         "license_server_id": "TY5AYQGPJU3ZBKW5NM7SJWRFL46V93CLRGF"}}


def test_status_shows_the_scope_docs_peruser_promises(capsys):
    _print_status(STATUS)
    lines = capsys.readouterr().out.splitlines()
    assert "scope:             workgroup" in lines
    assert lines.index("scope:             workgroup") == 2         # after the server version


USAGE = {"start": "2026-01-05T00:00:00Z", "end": "2026-01-09T08:00:01Z", "per_user_cals_installed": 2,
         "users_seen": 1, "peak_users_per_day": 1, "users_over_installed": 0,
         "users": [{"user": "ann", "logons": 3, "last_seen": "2026-01-08T09:00:00Z"}],
         "per_day": [{"day": "2026-01-05", "users": 1}]}


def test_usage_with_no_per_user_logon_yet_says_so_instead_of_a_period(capsys):
    _print_usage({**USAGE, "start": None, "users_seen": 0, "peak_users_per_day": 0, "users": [], "per_day": []})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Per User usage: no Per User logon yet"
    assert lines[1].startswith("Per User CALs installed: 2   users seen: 0")
    assert USAGE["end"] not in "\n".join(lines)


def test_usage_of_a_period_without_logons_says_so_and_one_with_logons_shows_them(capsys):
    _print_usage({**USAGE, "users_seen": 0, "peak_users_per_day": 0, "users": [], "per_day": []})
    assert capsys.readouterr().out.splitlines()[0] == \
        "Per User usage 2026-01-05T00:00:00Z .. 2026-01-09T08:00:01Z: no Per User logon in this period"
    _print_usage(USAGE)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Per User usage 2026-01-05T00:00:00Z .. 2026-01-09T08:00:01Z" and "ann" in out[-1]
