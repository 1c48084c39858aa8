"""Who may ask: the administrator's credential, registered terminal servers, the security group policy."""
import json
import os
import stat

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.harness import activate_and_install, logon
from tsls.errors import Code, TslsError
from tsls.public import proof


@pytest_twisted.inlineCallbacks
def test_the_admin_credential_file_is_readable_by_its_owner_only(daemon):
    path = daemon.service.credential_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    admin = yield daemon.connect()
    yield admin.hello_admin(open(path).read().strip())


@pytest_twisted.inlineCallbacks
def test_an_admin_without_the_credential_changes_nothing(daemon):
    for hello in ({"protocol": 1, "role": "admin"},
                  {"protocol": 1, "role": "admin", "proof": "0" * 64}):
        conn = yield daemon.connect()
        yield conn.request("challenge")
        with pytest.raises(TslsError) as e:
            yield conn.request("hello", **hello)
        assert e.value.code is Code.BAD_CREDENTIALS
        with pytest.raises(TslsError) as e:
            yield conn.request("activate", method="telephone", license_server_id="A" * 35, certificate="C" * 35)
        assert e.value.code is Code.HELLO_REQUIRED
    admin = yield daemon.admin()
    status = yield admin.request("status")
    assert status["activation"]["status"] == "not_activated"


@pytest_twisted.inlineCallbacks
def test_a_challenge_answers_one_hello_only(daemon):
    conn = yield daemon.connect()
    nonce = (yield conn.request("challenge"))["nonce"]
    secret = daemon.service.server.identity.admin_secret
    good = proof(secret, nonce, "admin")
    other = yield daemon.connect()
    with pytest.raises(TslsError) as e:          # replayed on another connection: no challenge there
        yield other.request("hello", protocol=1, role="admin", proof=good)
    assert e.value.code is Code.BAD_CREDENTIALS
    yield conn.request("hello", protocol=1, role="admin", proof=good)


@pytest_twisted.inlineCallbacks
def test_a_registered_terminal_server_must_prove_its_name(daemon):
    admin = yield daemon.admin()
    registered = yield admin.request("register_terminal_server", name="TS01")
    with pytest.raises(TslsError) as e:
        yield daemon.terminal_server("TS01")
    assert e.value.code is Code.BAD_CREDENTIALS
    with pytest.raises(TslsError) as e:
        yield daemon.terminal_server("TS01", secret="wrong")
    assert e.value.code is Code.BAD_CREDENTIALS
    ts = yield daemon.terminal_server("TS01", secret=registered["secret"])
    assert ts.hello["authenticated"] is True
    with pytest.raises(TslsError) as e:
        yield daemon.terminal_server("NOBODY", secret="anything")
    assert e.value.code is Code.UNKNOWN_TERMINAL_SERVER


@pytest_twisted.inlineCallbacks
def test_with_the_group_policy_on_only_members_get_licenses(daemon):
    admin = yield daemon.admin()
    yield activate_and_install(admin)
    member = yield admin.request("register_terminal_server", name="TS01")
    yield admin.request("group_add", name="TS01")
    yield admin.request("set_policy", security_group=True)
    stranger = yield daemon.terminal_server("TS02")
    with pytest.raises(TslsError) as e:
        yield logon(stranger, "pc1")
    assert e.value.code is Code.NOT_IN_GROUP and '"TS02"' in e.value.message
    events = yield admin.request("list_events", event_id=4141)
    assert [ev["terminal_server"] for ev in events] == ["TS02"]
    ts = yield daemon.terminal_server("TS01", secret=member["secret"])
    assert (yield logon(ts, "pc1"))["outcome"] == "temporary_issued"
    yield admin.request("group_remove", name="TS01")
    with pytest.raises(TslsError) as e:
        yield logon(ts, "pc2")
    assert e.value.code is Code.NOT_IN_GROUP
    packs = yield admin.request("list_key_packs")
    assert packs[0]["issued"] == 0


@pytest_twisted.inlineCallbacks
def test_secrets_never_reach_the_log(daemon):
    lines = []
    observer = lambda event: lines.append(json.dumps(event, default=repr))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        admin = yield daemon.admin()
        registered = yield admin.request("register_terminal_server", name="TS01")
        yield admin.request("group_add", name="TS01")
        ts = yield daemon.terminal_server("TS01", secret=registered["secret"])
        yield logon(ts, "pc1")
    finally:
        globalLogPublisher.removeObserver(observer)
    text = "\n".join(lines)
    assert lines and registered["secret"] not in text
    assert daemon.service.server.identity.admin_secret not in text
    assert daemon.service.server.identity.admin_secret not in repr(daemon.service.server.identity)


@pytest_twisted.inlineCallbacks
def test_only_a_proven_administrator_connection_passes_a_per_server_limit(daemon):
    admin = yield daemon.admin()
    yield admin.request("add_product", name="SQL", server="SQLSRV01", per_server_licenses=1)
    for secret in (None, "registered"):
        if secret:
            secret = (yield admin.request("register_terminal_server", name="SQLSRV01"))["secret"]
        ts = yield daemon.terminal_server("SQLSRV01", secret=secret)
        held = yield ts.request("product_connect", product="SQL", hwid="h0")
        with pytest.raises(TslsError) as e:         # a terminal server's word, even a registered one's, is not proof
            yield ts.request("product_connect", product="SQL", hwid="h1", administrator=True)
        assert e.value.code is Code.NOT_PERMITTED
        with pytest.raises(TslsError) as e:
            yield ts.request("product_connect", product="SQL", hwid="h1")
        assert e.value.code is Code.NO_PER_SERVER_LICENSE
        yield ts.request("product_disconnect", connection_id=held["connection_id"])
    ts = yield daemon.terminal_server("OTHER")
    yield ts.request("product_connect", product="SQL", hwid="h0")
    answer = yield admin.request("product_connect", product="SQL", hwid="a1", administrator=True)
    assert answer["licensed_by"] == "administrator"
    yield admin.request("product_disconnect", connection_id=answer["connection_id"])
