"""What `tsls-admin status` prints as text, from a status answer (no daemon needed)."""
from clients.admin import _print_status

STATUS = {"product_id": "00038-334-2270241-43031", "server_version": "2019", "scope": "workgroup",
          "now": "2026-01-05T08:00:00Z", "key_packs": [], "licenses": {},
          "activation": {"status": "activated", "method": "automatic", "activated_at": "2025-01-06T08:00:00Z",
                         "license_server_id": "TY5AYQGPJU3ZBKW5NM7SJWRFL46V93CLRGF"}}


def test_status_shows_the_scope_docs_peruser_promises(capsys):
    _print_status(STATUS)
    lines = capsys.readouterr().out.splitlines()
    assert "scope:             workgroup" in lines
    assert lines.index("scope:             workgroup") == 2         # after the server version
