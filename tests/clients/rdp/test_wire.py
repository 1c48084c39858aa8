"""The RDP codecs on bytes: what a client sends parses, what we build has the layout a client
reads, and truncated, oversize or malformed input is refused with a ProtocolError, never a crash."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from clients.rdp import wire
from clients.rdp.wire import ProtocolError
from tests.clients.rdp import mirror

PARSERS = [wire.parse_connection_request, wire.parse_connect_initial, wire.parse_domain_pdu,
           wire.parse_client_info, wire.split_licensing, wire.parse_new_license_request,
           wire.parse_license_info, wire.parse_challenge_response, wire.parse_error_alert,
           wire.parse_new_license_info, wire.parse_challenge_response_data, wire.split_security_header]


def payload(tpkt_bytes):
    pdu, rest = wire.next_tpkt(tpkt_bytes)
    assert rest == b""
    return pdu


def test_tpkt_framing_waits_for_the_whole_pdu():
    whole = wire.tpkt(b"\x02\xf0\x80hello")
    for cut in range(len(whole)):
        assert wire.next_tpkt(whole[:cut]) == (None, whole[:cut])
    assert wire.next_tpkt(whole + b"\x03") == (b"\x02\xf0\x80hello", b"\x03")


@pytest.mark.parametrize("data,code", [(b"\x30\x00\x00\x10", "NOT_TPKT"), (b"\x03\x00\x00\x05", "MALFORMED")])
def test_tpkt_refuses_fast_path_and_short_lengths(data, code):
    with pytest.raises(ProtocolError) as e:
        wire.next_tpkt(data)
    assert e.value.code == code


def test_tpkt_cannot_carry_more_than_64_kib():
    with pytest.raises(ProtocolError) as e:
        wire.tpkt(bytes(0xFFFF))
    assert e.value.code == "TOO_LARGE"


def test_connection_request_and_confirm():
    request = wire.parse_connection_request(payload(mirror.connection_request()))
    assert request.requested_protocols == wire.PROTOCOL_SSL | wire.PROTOCOL_HYBRID
    assert request.cookie == b"Cookie: mstshash=test"
    bare = wire.parse_connection_request(payload(mirror.connection_request(cookie=b"")))
    assert bare.cookie == b""
    confirm = payload(wire.connection_confirm(wire.PROTOCOL_SSL))
    assert confirm[0] == len(confirm) - 1 and confirm[1] == 0xD0
    assert struct.unpack("<BBHI", confirm[7:]) == (2, 0, 8, wire.PROTOCOL_SSL)


def test_connect_initial_gives_the_client_name_and_channels():
    client = wire.parse_connect_initial(wire.parse_x224_data(payload(mirror.connect_initial())))
    assert client.client_name == "lictest"
    assert client.channels == ("cliprdr", "rdpdr", "rdpsnd")


def test_too_many_channels_are_refused():
    pdu = payload(mirror.connect_initial(channels=tuple(f"c{i}" for i in range(40))))
    with pytest.raises(ProtocolError) as e:
        wire.parse_connect_initial(wire.parse_x224_data(pdu))
    assert e.value.code == "TOO_LARGE"


def test_connect_response_layout():
    data = wire.server_data_blocks(wire.PROTOCOL_SSL, [1004, 1005, 1006])
    kinds = []
    r = wire.Reader(data, "blocks")
    while r.left():
        kind, length = r.u16(), r.u16()
        kinds.append(kind)
        body = r.take(length - 4)
        if kind == wire.SC_NET:
            assert struct.unpack("<HH", body[:4]) == (1003, 3)
            assert struct.unpack("<HHH", body[4:10]) == (1004, 1005, 1006) and body[10:] == b"\x00\x00"
        if kind == wire.SC_SECURITY:
            assert body == bytes(8)       # no RDP encryption under TLS, and so no random or certificate
    assert kinds == [wire.SC_CORE, wire.SC_SECURITY, wire.SC_NET]
    response = wire.parse_x224_data(payload(wire.connect_response(data)))
    assert response[:2] == b"\x7f\x66" and response.endswith(data)
    assert b"McDn" in response


def test_domain_pdus():
    assert wire.parse_domain_pdu(wire.parse_x224_data(payload(mirror.erect_domain()))).kind == wire.ERECT_DOMAIN
    assert wire.parse_domain_pdu(wire.parse_x224_data(payload(mirror.attach_user()))).kind == wire.ATTACH_USER
    join = wire.parse_domain_pdu(wire.parse_x224_data(payload(mirror.channel_join(1007, 1003))))
    assert (join.kind, join.channel) == (wire.CHANNEL_JOIN, 1003)
    data = wire.parse_domain_pdu(wire.parse_x224_data(payload(mirror.send_data(1007, 0x40, b"x" * 300))))
    assert (data.kind, data.channel, data.data[4:]) == (wire.SEND_DATA_REQUEST, 1003, b"x" * 300)
    assert payload(wire.attach_user_confirm(1007))[3:] == b"\x2e\x00\x00\x06"
    assert payload(wire.channel_join_confirm(1007, 1004))[3:] == b"\x3e\x00\x00\x06\x03\xec\x03\xec"


def test_client_info_gives_the_user_and_not_the_password():
    info = wire.parse_client_info(mirror.client_info(user="alice", domain="LAB"))
    assert (info.domain, info.user) == ("LAB", "alice")
    assert "secret" not in repr(info)


def test_encrypted_security_headers_are_refused():
    with pytest.raises(ProtocolError) as e:
        wire.split_security_header(struct.pack("<HH", wire.SEC_ENCRYPT | wire.SEC_LICENSE_PKT, 0) + bytes(12))
    assert e.value.code == "ENCRYPTED"


def test_licensing_messages_round_trip():
    product = wire.ProductInfo(0x00050002)
    info = wire.new_license_info(product, b"the license")
    assert wire.parse_new_license_info(info) == b"the license"
    kind, body = wire.split_licensing(wire.error_alert(wire.STATUS_VALID_CLIENT, wire.ST_NO_TRANSITION))
    assert kind == wire.ERROR_ALERT
    assert wire.parse_error_alert(body) == wire.ErrorAlert(7, 2)
    assert body[-4:] == struct.pack("<HH", wire.BB_ERROR, 0)        # the mandatory empty error blob


def test_an_empty_license_is_never_sent():
    with pytest.raises(ProtocolError):
        wire.new_license_info(wire.ProductInfo(0x00050002), b"")


def test_a_wrong_message_size_is_refused():
    message = wire.error_alert(7, 2)
    with pytest.raises(ProtocolError) as e:
        wire.split_licensing(message + b"\x00")
    assert e.value.code == "MALFORMED"


def _valid_inputs():
    client = mirror.LicensingClient()
    return {
        wire.parse_connection_request: payload(mirror.connection_request()),
        wire.parse_connect_initial: wire.parse_x224_data(payload(mirror.connect_initial())),
        wire.parse_domain_pdu: wire.parse_x224_data(payload(mirror.send_data(1007, 0x80, b"abc"))),
        wire.parse_client_info: mirror.client_info(),
        wire.parse_error_alert: wire.split_licensing(wire.error_alert(2, 1))[1],
        wire.parse_new_license_info: wire.new_license_info(wire.ProductInfo(1), b"lic"),
        wire.parse_new_license_request: mirror.licensing(wire.NEW_LICENSE_REQUEST,
                                                         struct.pack("<II", 1, 0x04010000) + bytes(32)
                                                         + wire.blob(2, bytes(72)) + wire.blob(0x0F, b"u\0")
                                                         + wire.blob(0x10, b"m\0"))[4:],
        wire.parse_challenge_response: wire.blob(9, bytes(24)) + wire.blob(9, bytes(20)) + bytes(16),
    }, client


@pytest.mark.parametrize("parse", list(_valid_inputs()[0]))
def test_every_truncation_is_refused(parse):
    whole = _valid_inputs()[0][parse]
    parse(whole)
    for cut in range(len(whole)):
        try:
            parse(whole[:cut])
        except ProtocolError:
            continue
        if parse in (wire.parse_client_info,):     # trailing extended info is optional
            continue
        pytest.fail(f"{parse.__name__} accepted {cut} of {len(whole)} bytes")


@pytest.mark.parametrize("parse", [p for p in _valid_inputs()[0] if p is not wire.parse_client_info])
def test_a_trailing_byte_is_refused(parse):
    whole = _valid_inputs()[0][parse]
    with pytest.raises(ProtocolError):
        parse(whole + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.binary(max_size=600))
def test_garbage_is_refused_cleanly(parse, data):
    try:
        parse(data)
    except ProtocolError as e:
        assert e.code in {"TRUNCATED", "TRAILING_BYTES", "MALFORMED", "UNEXPECTED_PDU", "TOO_LARGE", "ENCRYPTED"}
