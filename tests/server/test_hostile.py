"""Hostile input: property-based garbage thrown at the protocol over a real ledger on SQLite, in
memory (StringTransport, a writer that runs each batch at once). After each example the protocol
answers a well-formed request, every answer is JSON, and the ledger passes its invariants."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tsls.clearinghouse.testing import FakeClearinghouse
from tests.server.test_limits import turns
from tsls.server.app import LicenseServer, load_identity
from tsls.server.check import check_ledger
from tsls.server.protocol import LicenseFactory
from tsls.server.store import LicenseStore
from tsls.server.writer import BatchWriter

OPS = ["hello", "logon", "logon_succeeded", "status", "activate", "install_key_pack", "revoke", "set_clock",
       "list_licenses", "list_events", "follow_events", "usage_report", "challenge", "register_terminal_server",
       "group_add", "set_policy", "product_connect", "product_disconnect", "switch_to_per_seat",
       "switch_to_per_server", "add_product", "add_product_licenses", "list_products", "sbs_setup",
       "sbs_apply_add_pack", "frobnicate"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=10)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS)},
    optional={"id": st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none(), values),
              "protocol": st.sampled_from([1, 2, "1", None]), "role": st.sampled_from(["terminal_server", "admin", 3]),
              "name": values, "version": st.sampled_from(["2003", "2000", "1995", 2003]),
              "mode": st.sampled_from(["per_device", "per_user", "x"]), "hwid": values, "machine": values,
              "user": values, "license": values, "license_id": values, "to": values, "purchase": values,
              "limit": values, "proof": values, "security_group": values, "method": values, "reason": values,
              "since": values, "event_id": values, "product": values, "server": values, "connection_id": values,
              "per_server_licenses": values, "seats": values, "confirm": values, "administrator": values,
              "pack": values, "used": values})
HELLO = {"op": "hello", "protocol": 1, "role": "terminal_server", "name": "TS", "version": "2003", "mode": "per_device"}


def encode(r):
    return json.dumps(r).encode()


lines = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    requests.map(encode),
    st.tuples(requests.map(encode), st.integers(0, 200)).map(lambda t: t[0][:t[1]]),     # truncated
    st.just(b"x" * (70 * 1024)),                                                         # oversize
)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hostile") / "ls.sqlite")
    store = LicenseStore.open(path)
    clock = Clock()
    clock.advance(1_800_000_000)
    writer = BatchWriter(None, clock, store, threaded=False)
    server = LicenseServer(writer, FakeClearinghouse(), load_identity(store, "1"))
    yield path, LicenseFactory(server, clock=clock)
    store.close()


def connection(factory):
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(lines, min_size=1, max_size=8), hello_first=st.booleans())
def test_garbage_never_hurts_the_protocol_or_the_ledger(ledger, batch, hello_first):
    path, factory = ledger
    protocol, transport = connection(factory)
    if hello_first:
        protocol.dataReceived(encode({"id": "h", **HELLO}) + b"\n")
    for line in batch:
        if transport.disconnecting:
            break
        protocol.dataReceived(line + b"\n")
        turns(factory.clock)
    for reply in transport.value().splitlines():
        assert isinstance(json.loads(reply), dict)
        assert json.loads(reply).get("error", {}).get("code") != "INTERNAL_ERROR"
    protocol.connectionLost(None)

    canary, out = connection(factory)
    canary.dataReceived(encode({"id": "h", **HELLO}) + b"\n" +
                        encode({"id": 1, "op": "logon", "hwid": "canary", "machine": "m", "user": "u"}) + b"\n")
    turns(factory.clock)
    answers = [json.loads(r) for r in out.value().splitlines()]
    assert [a["ok"] for a in answers] == [True, True] and answers[1]["result"]["license"]["hwid"] == "canary"
    canary.connectionLost(None)
    assert check_ledger(path) == []
