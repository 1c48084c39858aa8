"""The RDP connection sequence's PDUs, up to and including licensing, as plain functions on bytes.

Parsers take exactly one PDU and refuse anything short, long or malformed with ``ProtocolError``
(a stable code and a message); builders return bytes. Only what a server needs is here: the
client's requests are parsed, the server's answers are built. References are to [MS-RDPBCGR],
[MS-RDPELE] and the ITU-T T.123 (TPKT), X.224, T.125 (MCS, BER and PER) and T.124 (GCC) layers.
"""
from __future__ import annotations

import struct

import attrs

# --- errors and a bounds-checked reader ------------------------------------------------------------


class ProtocolError(Exception):
    """Input we refuse. ``code`` is stable: tests and logs match on it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("TRUNCATED", f"{self.what}: needs {n} more bytes at offset {self.pos}, "
                                             f"has {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u16be(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def left(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("TRAILING_BYTES", f"{self.what}: {len(self.data) - self.pos} bytes past its end")

    def expect(self, wanted: bytes, name: str) -> None:
        got = self.take(len(wanted))
        if got != wanted:
            raise ProtocolError("MALFORMED", f"{self.what}: {name} is {got.hex()}, expected {wanted.hex()}")


# --- TPKT and X.224 ---------------------------------------------------------------------------------

TPKT_MAX = 0xFFFF


def next_tpkt(buffer: bytes) -> tuple[bytes | None, bytes]:
    """Split one TPKT off the front of ``buffer``: (its payload, what remains), or (None, buffer)
    if it has not all arrived. Fast-path PDUs cannot come before activation, so they are refused."""
    if not buffer:
        return None, buffer
    if buffer[0] != 3:
        raise ProtocolError("NOT_TPKT", f"expected a TPKT header (version 3), got byte 0x{buffer[0]:02x}")
    if len(buffer) < 4:
        return None, buffer
    length = struct.unpack_from(">H", buffer, 2)[0]
    if length < 7:
        raise ProtocolError("MALFORMED", f"TPKT length {length} is shorter than any X.224 TPDU")
    if len(buffer) < length:
        return None, buffer
    return buffer[4:length], buffer[length:]


def tpkt(payload: bytes) -> bytes:
    if len(payload) + 4 > TPKT_MAX:
        raise ProtocolError("TOO_LARGE", f"{len(payload)} bytes do not fit in one TPKT")
    return struct.pack(">BBH", 3, 0, len(payload) + 4) + payload


PROTOCOL_RDP, PROTOCOL_SSL, PROTOCOL_HYBRID = 0, 1, 2
SSL_REQUIRED_BY_SERVER = 1


@attrs.frozen
class ConnectionRequest:
    requested_protocols: int
    cookie: bytes = b""


def parse_connection_request(tpdu: bytes) -> ConnectionRequest:
    """X.224 Connection Request with its optional cookie and RDP Negotiation Request [MS-RDPBCGR 2.2.1.1]."""
    r = Reader(tpdu, "X.224 Connection Request")
    li = r.u8()
    if li != len(tpdu) - 1:
        raise ProtocolError("MALFORMED", f"X.224 length indicator {li} does not match the {len(tpdu) - 1} bytes sent")
    code = r.u8()
    if code & 0xF0 != 0xE0:
        raise ProtocolError("UNEXPECTED_PDU", f"expected an X.224 Connection Request, got TPDU code 0x{code:02x}")
    r.take(5)   # DST-REF, SRC-REF, class
    body = r.rest()
    cookie = b""
    if body.startswith(b"Cookie:") or body.startswith(b"tsv:"):
        end = body.find(b"\r\n")
        if end < 0:
            raise ProtocolError("MALFORMED", "X.224 Connection Request: cookie without CR LF")
        cookie, body = body[:end], body[end + 2:]
    if not body:
        return ConnectionRequest(PROTOCOL_RDP, cookie)
    neg = Reader(body, "RDP Negotiation Request")
    if neg.u8() != 0x01:
        raise ProtocolError("MALFORMED", "RDP Negotiation Request: wrong type")
    neg.u8()
    if neg.u16() != 8:
        raise ProtocolError("MALFORMED", "RDP Negotiation Request: length is not 8")
    protocols = neg.u32()
    neg.end()
    return ConnectionRequest(protocols, cookie)


def _x224_confirm(negotiation: bytes) -> bytes:
    return tpkt(bytes([6 + len(negotiation), 0xD0, 0, 0, 0x12, 0x34, 0]) + negotiation)


def connection_confirm(selected: int) -> bytes:
    """Connection Confirm with an RDP Negotiation Response [MS-RDPBCGR 2.2.1.2.1]."""
    return _x224_confirm(struct.pack("<BBHI", 0x02, 0x00, 8, selected))


def negotiation_failure(code: int) -> bytes:
    """Connection Confirm with an RDP Negotiation Failure [MS-RDPBCGR 2.2.1.2.2]."""
    return _x224_confirm(struct.pack("<BBHI", 0x03, 0x00, 8, code))


def x224_data(payload: bytes) -> bytes:
    return tpkt(b"\x02\xf0\x80" + payload)


def parse_x224_data(tpdu: bytes) -> bytes:
    if tpdu[:3] != b"\x02\xf0\x80":
        raise ProtocolError("UNEXPECTED_PDU", f"expected an X.224 Data TPDU, got {tpdu[:3].hex()}")
    return tpdu[3:]


# --- BER and PER, as much as MCS and GCC use ------------------------------------------------------

def _ber_length(r: Reader) -> int:
    first = r.u8()
    if first < 0x80:
        return first
    size = first & 0x7F
    if size not in (1, 2):
        raise ProtocolError("MALFORMED", f"{r.what}: BER length of {size} bytes")
    return int.from_bytes(r.take(size), "big")


def _ber_tlv(r: Reader, tag: bytes, name: str) -> bytes:
    r.expect(tag, name)
    return r.take(_ber_length(r))


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    return bytes([0x82]) + n.to_bytes(2, "big")


def _ber(tag: bytes, content: bytes) -> bytes:
    return tag + _ber_len(len(content)) + content


def _ber_int(value: int) -> bytes:
    size = 1 if value < 0x80 else 2 if value < 0x8000 else 3 if value < 0x800000 else 4
    return _ber(b"\x02", value.to_bytes(size, "big"))


def _per_length(r: Reader) -> int:
    first = r.u8()
    if first & 0x80:
        return ((first & 0x7F) << 8) | r.u8()
    return first


def _per_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else (n | 0x8000).to_bytes(2, "big")


# --- MCS Connect Initial / Response with GCC Conference Create -----------------------------------

T124_OID = b"\x05\x00\x14\x7c\x00\x01"   # PER: length 5, then {0 0 20 124 0 1}
CS_CORE, CS_SECURITY, CS_NET = 0xC001, 0xC002, 0xC003
SC_CORE, SC_SECURITY, SC_NET = 0x0C01, 0x0C02, 0x0C03
MCS_GLOBAL_CHANNEL = 1003
MAX_CHANNELS = 31


@attrs.frozen
class ClientData:
    client_name: str            # CS_CORE clientName (at most 15 characters)
    channels: tuple[str, ...]   # CS_NET static virtual channel names, in order


def parse_connect_initial(data: bytes) -> ClientData:
    """MCS Connect-Initial (BER) carrying a GCC Conference Create Request (PER) and the client data
    blocks [MS-RDPBCGR 2.2.1.3]. Only the client's name and its channels matter to us."""
    r = Reader(data, "MCS Connect-Initial")
    body = Reader(_ber_tlv(r, b"\x7f\x65", "application tag 101"), "MCS Connect-Initial")
    r.end()
    _ber_tlv(body, b"\x04", "callingDomainSelector")
    _ber_tlv(body, b"\x04", "calledDomainSelector")
    _ber_tlv(body, b"\x01", "upwardFlag")
    for name in ("targetParameters", "minimumParameters", "maximumParameters"):
        _ber_tlv(body, b"\x30", name)
    gcc = Reader(_ber_tlv(body, b"\x04", "userData"), "GCC Conference Create Request")
    body.end()
    gcc.expect(b"\x00" + T124_OID, "T.124 object identifier")
    _per_length(gcc)                        # connectPDU length; clients disagree, and it is not needed
    gcc.take(2)                             # ConnectGCCPDU choice, selection
    gcc.take((_per_length(gcc) + 2) // 2)   # conferenceName (numeric string, min 1)
    gcc.take(1)                             # padding
    gcc.expect(b"\x01\xc0\x00Duca", "H.221 client key")
    blocks = Reader(gcc.take(_per_length(gcc)), "client data blocks")
    gcc.end()
    client_name, channels = "", ()
    while blocks.left():
        kind, length = blocks.u16(), blocks.u16()
        if length < 4:
            raise ProtocolError("MALFORMED", f"client data block 0x{kind:04x} with length {length}")
        block = Reader(blocks.take(length - 4), f"client data block 0x{kind:04x}")
        if kind == CS_CORE:
            block.take(20)
            client_name = block.take(32).decode("utf-16-le", "replace").split("\x00")[0]
        elif kind == CS_NET:
            count = block.u32()
            if count > MAX_CHANNELS:
                raise ProtocolError("TOO_LARGE", f"{count} static channels requested; at most {MAX_CHANNELS}")
            names = []
            for _ in range(count):
                names.append(block.take(8).split(b"\x00")[0].decode("ascii", "replace"))
                block.u32()     # options
            channels = tuple(names)
    return ClientData(client_name, channels)


def server_data_blocks(requested_protocols: int, channel_ids: list[int]) -> bytes:
    """SC_CORE, SC_SECURITY (no RDP encryption: TLS protects the connection) and SC_NET, whose
    channel IDs answer the client's CS_NET channels one for one [MS-RDPBCGR 2.2.1.4]."""
    core = struct.pack("<HHIII", SC_CORE, 16, 0x00080004, requested_protocols, 0)
    security = struct.pack("<HHII", SC_SECURITY, 12, 0, 0)
    ids = b"".join(struct.pack("<H", c) for c in channel_ids) + (b"\x00\x00" if len(channel_ids) % 2 else b"")
    net = struct.pack("<HHHH", SC_NET, 8 + len(ids), MCS_GLOBAL_CHANNEL, len(channel_ids)) + ids
    return core + security + net


_DOMAIN_PARAMETERS = _ber(b"\x30", b"".join(_ber_int(v) for v in (34, 3, 0, 1, 0, 1, 0xFFF8, 2)))


def connect_response(server_data: bytes) -> bytes:
    """MCS Connect-Response carrying a GCC Conference Create Response [MS-RDPBCGR 2.2.1.4]."""
    ccr = (b"\x14" + (0x79F3 - 1001).to_bytes(2, "big") + b"\x01\x01" + b"\x00" + b"\x01" + b"\xc0"
           + b"\x00McDn" + _per_len(len(server_data)) + server_data)
    gcc = b"\x00" + T124_OID + _per_len(len(ccr)) + ccr
    body = b"\x0a\x01\x00" + _ber_int(0) + _DOMAIN_PARAMETERS + _ber(b"\x04", gcc)
    return x224_data(_ber(b"\x7f\x66", body))


# --- MCS domain PDUs ---------------------------------------------------------------------------------

ERECT_DOMAIN, DISCONNECT_ULTIMATUM, ATTACH_USER, CHANNEL_JOIN, SEND_DATA_REQUEST = 1, 8, 10, 14, 25


@attrs.frozen
class DomainPdu:
    kind: int
    channel: int = 0
    data: bytes = b""


def parse_domain_pdu(data: bytes) -> DomainPdu:
    """The MCS domain PDUs a client sends before activation (PER) [T.125]."""
    r = Reader(data, "MCS domain PDU")
    kind = r.u8() >> 2
    if kind == ERECT_DOMAIN:
        for _ in range(2):
            r.take(_per_length(r))
        r.end()
        return DomainPdu(kind)
    if kind in (ATTACH_USER, DISCONNECT_ULTIMATUM):
        r.rest()
        return DomainPdu(kind)
    if kind == CHANNEL_JOIN:
        r.u16be()
        channel = r.u16be()
        r.end()
        return DomainPdu(kind, channel)
    if kind == SEND_DATA_REQUEST:
        r.u16be()
        channel = r.u16be()
        r.u8()
        payload = r.take(_per_length(r))
        r.end()
        return DomainPdu(kind, channel, payload)
    raise ProtocolError("UNEXPECTED_PDU", f"MCS domain PDU {kind} is not expected before activation")


def attach_user_confirm(user_id: int) -> bytes:
    return x224_data(bytes([(11 << 2) | 2, 0]) + (user_id - 1001).to_bytes(2, "big"))


def channel_join_confirm(user_id: int, channel: int) -> bytes:
    return x224_data(bytes([(15 << 2) | 2, 0]) + (user_id - 1001).to_bytes(2, "big")
                     + channel.to_bytes(2, "big") * 2)


def send_data_indication(user_id: int, channel: int, payload: bytes) -> bytes:
    return x224_data(bytes([26 << 2]) + (user_id - 1001).to_bytes(2, "big") + channel.to_bytes(2, "big")
                     + b"\x70" + _per_len(len(payload)) + payload)


RN_PROVIDER_INITIATED, RN_USER_REQUESTED = 1, 3     # Disconnect Provider Ultimatum reasons [T.125]


def disconnect_ultimatum(reason: int = RN_USER_REQUESTED) -> bytes:
    """Disconnect Provider Ultimatum [T.125]: the 6-bit choice (8), then the 3-bit reason (PER)."""
    return x224_data(bytes([(DISCONNECT_ULTIMATUM << 2) | (reason >> 1), (reason & 1) << 7]))


# --- capabilities exchange, finalization and the end of the session [MS-RDPBCGR 1.3.1.1, 1.3.1.4.2] --------

PDUTYPE_DEMANDACTIVEPDU, PDUTYPE_CONFIRMACTIVEPDU, PDUTYPE_DEACTIVATEALLPDU, PDUTYPE_DATAPDU = 0x1, 0x3, 0x6, 0x7
TS_PROTOCOL_VERSION = 0x10
PDUTYPE2_CONTROL, PDUTYPE2_SYNCHRONIZE, PDUTYPE2_FONTLIST, PDUTYPE2_FONTMAP = 0x14, 0x1F, 0x27, 0x28
PDUTYPE2_SET_ERROR_INFO_PDU = 0x2F
CTRLACTION_GRANTED_CONTROL, CTRLACTION_COOPERATE = 0x0002, 0x0004
STREAM_LOW = 1
SERVER_CHANNEL = 1002           # the server's own MCS channel, the pduSource of what it sends
SHARE_ID = 0x000103EA
ERRINFO_RPC_INITIATED_DISCONNECT = 0x00000001    # the server ended the session [MS-RDPBCGR 2.2.5.1.1]
ERRINFO_LOGOFF_BY_USER = 0x0000000C

CAPSTYPE_GENERAL, CAPSTYPE_BITMAP, CAPSTYPE_ORDER, CAPSTYPE_POINTER, CAPSTYPE_INPUT = 1, 2, 3, 8, 13
CAPSTYPE_VIRTUALCHANNEL = 20


def _share_control(pdu_type: int, body: bytes) -> bytes:
    return struct.pack("<HHH", 6 + len(body), pdu_type | TS_PROTOCOL_VERSION, SERVER_CHANNEL) + body


def data_pdu(user_id: int, pdu_type2: int, payload: bytes) -> bytes:
    """A slow-path Data PDU from the server on the I/O channel (no security header under TLS)."""
    share_data = struct.pack("<IBBHBBH", SHARE_ID, 0, STREAM_LOW, len(payload) + 4, pdu_type2, 0, 0) + payload
    return send_data_indication(user_id, MCS_GLOBAL_CHANNEL, _share_control(PDUTYPE_DATAPDU, share_data))


def _capability(kind: int, body: bytes) -> bytes:
    return struct.pack("<HH", kind, 4 + len(body)) + body


def demand_active(user_id: int, width: int = 1024, height: int = 768) -> bytes:
    """Demand Active PDU [MS-RDPBCGR 2.2.1.13.1]: the few capability sets a client needs to go on to
    finalization (no drawing orders: the simulator never draws)."""
    caps = [
        _capability(CAPSTYPE_GENERAL, struct.pack("<HHHHHHHHHBB", 1, 3, 0x200, 0, 0, 0x0001 | 0x0004 | 0x0400,
                                                  0, 0, 0, 0, 0)),
        _capability(CAPSTYPE_BITMAP, struct.pack("<HHHHHHHHHBBHH", 24, 1, 1, 1, width, height, 0, 1, 1, 0, 0, 1, 0)),
        _capability(CAPSTYPE_ORDER, bytes(16) + struct.pack("<IHHHHHH", 0, 1, 20, 0, 1, 0, 0x0022) + bytes(32)
                    + struct.pack("<HHIIHH", 0x06A1, 0, 0, 480 * 480, 0, 0) + struct.pack("<HH", 0x04E4, 0)),
        _capability(CAPSTYPE_POINTER, struct.pack("<HHH", 1, 25, 25)),
        _capability(CAPSTYPE_INPUT, struct.pack("<HHIIII", 0x0001 | 0x0004 | 0x0010 | 0x0020, 0, 0x409, 4, 0, 12)
                    + bytes(64)),
        _capability(CAPSTYPE_VIRTUALCHANNEL, struct.pack("<II", 0, 0)),
    ]
    combined = struct.pack("<HH", len(caps), 0) + b"".join(caps)
    source = b"RDP\x00"
    body = (struct.pack("<IHH", SHARE_ID, len(source), len(combined)) + source + combined
            + struct.pack("<I", 0))                                 # sessionId
    return send_data_indication(user_id, MCS_GLOBAL_CHANNEL, _share_control(PDUTYPE_DEMANDACTIVEPDU, body))


def finalization(user_id: int) -> list[bytes]:
    """The server's side of finalization [MS-RDPBCGR 1.3.1.1]: Synchronize, Control (Cooperate),
    Control (Granted Control), Font Map. After them the client's connection is active."""
    return [
        data_pdu(user_id, PDUTYPE2_SYNCHRONIZE, struct.pack("<HH", 1, SERVER_CHANNEL)),
        data_pdu(user_id, PDUTYPE2_CONTROL, struct.pack("<HHI", CTRLACTION_COOPERATE, 0, 0)),
        data_pdu(user_id, PDUTYPE2_CONTROL, struct.pack("<HHI", CTRLACTION_GRANTED_CONTROL, user_id, SERVER_CHANNEL)),
        data_pdu(user_id, PDUTYPE2_FONTMAP, struct.pack("<HHHH", 0, 0, 0x0003, 4)),
    ]


def set_error_info(user_id: int, error_info: int) -> bytes:
    """Set Error Info PDU [MS-RDPBCGR 2.2.5.1.1]: why the server is about to end the connection."""
    return data_pdu(user_id, PDUTYPE2_SET_ERROR_INFO_PDU, struct.pack("<I", error_info))


@attrs.frozen
class ShareControl:
    pdu_type: int
    pdu_type2: int | None = None        # a Data PDU's type


def parse_share_control(payload: bytes) -> ShareControl:
    """The Share Control (and, for a Data PDU, Share Data) header of what a client sends after licensing."""
    r = Reader(payload, "share control header")
    length = r.u16()
    if length == 0x8000:                # a flow control PDU
        return ShareControl(0)
    pdu_type = r.u16() & 0x0F
    if pdu_type != PDUTYPE_DATAPDU:
        return ShareControl(pdu_type)
    r.u16()
    r.take(8)                           # shareId, pad1, streamId, uncompressedLength
    return ShareControl(pdu_type, r.u8())


# --- the security header and the Client Info PDU --------------------------------------------------

SEC_ENCRYPT, SEC_INFO_PKT, SEC_LICENSE_PKT = 0x0008, 0x0040, 0x0080


def split_security_header(payload: bytes) -> tuple[int, bytes]:
    r = Reader(payload, "security header")
    flags = r.u16()
    r.u16()
    if flags & SEC_ENCRYPT:
        raise ProtocolError("ENCRYPTED", "RDP Standard Security encryption is not supported; connect with TLS")
    return flags, r.rest()


@attrs.frozen
class ClientInfo:
    domain: str
    user: str


def parse_client_info(data: bytes) -> ClientInfo:
    """TS_INFO_PACKET [MS-RDPBCGR 2.2.1.11.1.1]: the domain and user name. The password is skipped
    and never kept."""
    r = Reader(data, "Client Info")
    r.u32()
    flags = r.u32()
    unicode = bool(flags & 0x10)
    cb_domain, cb_user = r.u16(), r.u16()
    r.take(6)
    terminator = 2 if unicode else 1

    def text(cb):
        raw = r.take(cb)
        r.take(terminator)
        return raw.decode("utf-16-le" if unicode else "latin-1", "replace")

    domain = text(cb_domain)
    user = text(cb_user)
    return ClientInfo(domain, user)


def licensing_pdu(user_id: int, message: bytes) -> bytes:
    """A server licensing message on the I/O channel, with the SEC_LICENSE_PKT header."""
    return send_data_indication(user_id, MCS_GLOBAL_CHANNEL, struct.pack("<HH", SEC_LICENSE_PKT, 0) + message)


# --- licensing [MS-RDPELE 2.2.2] ---------------------------------------------------------------------

LICENSE_REQUEST, PLATFORM_CHALLENGE, NEW_LICENSE, UPGRADE_LICENSE = 0x01, 0x02, 0x03, 0x04
LICENSE_INFO, NEW_LICENSE_REQUEST, PLATFORM_CHALLENGE_RESPONSE, ERROR_ALERT = 0x12, 0x13, 0x15, 0xFF
PREAMBLE_VERSION_3 = 0x03

BB_DATA, BB_RANDOM, BB_CERTIFICATE, BB_ERROR, BB_ENCRYPTED_DATA = 0x01, 0x02, 0x03, 0x04, 0x09
BB_KEY_EXCHG_ALG, BB_SCOPE, BB_CLIENT_USER_NAME, BB_CLIENT_MACHINE_NAME = 0x0D, 0x0E, 0x0F, 0x10
KEY_EXCHANGE_ALG_RSA = 1

# dwErrorCode and dwStateTransition of a Licensing Error Message [MS-RDPBCGR 2.2.1.12.1.3]
ERR_INVALID_SERVER_CERTIFICATE, ERR_NO_LICENSE, ERR_INVALID_MAC = 0x01, 0x02, 0x03
ERR_INVALID_SCOPE, ERR_NO_LICENSE_SERVER, STATUS_VALID_CLIENT, ERR_INVALID_CLIENT = 0x04, 0x06, 0x07, 0x08
ERR_INVALID_PRODUCTID, ERR_INVALID_MESSAGE_LEN = 0x0B, 0x0C
ST_TOTAL_ABORT, ST_NO_TRANSITION, ST_RESET_PHASE_TO_START, ST_RESEND_LAST_MESSAGE = 1, 2, 3, 4


def blob(kind: int, data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ProtocolError("TOO_LARGE", f"a licensing blob of {len(data)} bytes")
    return struct.pack("<HH", kind, len(data)) + data


def _read_blob(r: Reader, wanted: int | None, name: str) -> bytes:
    kind, length = r.u16(), r.u16()
    data = r.take(length)
    if wanted is not None and length and kind != wanted:
        raise ProtocolError("MALFORMED", f"{r.what}: {name} has blob type 0x{kind:04x}, expected 0x{wanted:04x}")
    return data


def _message(kind: int, body: bytes) -> bytes:
    return struct.pack("<BBH", kind, PREAMBLE_VERSION_3, len(body) + 4) + body


def split_licensing(data: bytes) -> tuple[int, bytes]:
    """The preamble of a client licensing message: (bMsgType, the message)."""
    r = Reader(data, "licensing preamble")
    kind = r.u8()
    r.u8()
    size = r.u16()
    if size != len(data):
        raise ProtocolError("MALFORMED", f"licensing message size {size} but {len(data)} bytes arrived")
    return kind, r.rest()


@attrs.frozen
class ProductInfo:
    version: int                # high word: major, low word: minor of the terminal server's Windows
    company: str = "Microsoft Corporation"
    product_id: str = "A02"
    scope: str = "microsoft.com"


def _utf16z(text: str) -> bytes:
    return (text + "\x00").encode("utf-16-le")


def license_request(server_random: bytes, product: ProductInfo, certificate: bytes) -> bytes:
    """Server License Request [MS-RDPELE 2.2.2.1]."""
    company, product_id = _utf16z(product.company), _utf16z(product.product_id)
    info = struct.pack("<II", product.version, len(company)) + company + struct.pack("<I", len(product_id)) + product_id
    body = (server_random + info + blob(BB_KEY_EXCHG_ALG, struct.pack("<I", KEY_EXCHANGE_ALG_RSA))
            + blob(BB_CERTIFICATE, certificate)
            + struct.pack("<I", 1) + blob(BB_SCOPE, product.scope.encode("ascii") + b"\x00"))
    return _message(LICENSE_REQUEST, body)


@attrs.frozen
class NewLicenseRequest:
    client_random: bytes
    encrypted_premaster: bytes
    user: str
    machine: str


@attrs.frozen
class LicenseInfo:
    client_random: bytes
    encrypted_premaster: bytes
    license: bytes
    encrypted_hwid: bytes
    mac: bytes


@attrs.frozen
class ChallengeResponse:
    encrypted_response: bytes
    encrypted_hwid: bytes
    mac: bytes


@attrs.frozen
class ErrorAlert:
    code: int
    state: int


def _text(raw: bytes) -> str:
    return raw.split(b"\x00")[0].decode("utf-8", "replace")


def _key_exchange(r: Reader) -> tuple[bytes, bytes]:
    if r.u32() != KEY_EXCHANGE_ALG_RSA:
        raise ProtocolError("MALFORMED", f"{r.what}: key exchange algorithm is not RSA")
    r.u32()                                     # PlatformId
    client_random = r.take(32)
    return client_random, _read_blob(r, BB_RANDOM, "EncryptedPreMasterSecret")


def parse_new_license_request(body: bytes) -> NewLicenseRequest:
    r = Reader(body, "Client New License Request")
    client_random, premaster = _key_exchange(r)
    user = _text(_read_blob(r, BB_CLIENT_USER_NAME, "ClientUserName"))
    machine = _text(_read_blob(r, BB_CLIENT_MACHINE_NAME, "ClientMachineName"))
    r.end()
    return NewLicenseRequest(client_random, premaster, user, machine)


def parse_license_info(body: bytes) -> LicenseInfo:
    r = Reader(body, "Client License Information")
    client_random, premaster = _key_exchange(r)
    license = _read_blob(r, BB_DATA, "LicenseInfo")
    hwid = _read_blob(r, BB_ENCRYPTED_DATA, "EncryptedHWID")
    mac = r.take(16)
    r.end()
    return LicenseInfo(client_random, premaster, license, hwid, mac)


def parse_challenge_response(body: bytes) -> ChallengeResponse:
    r = Reader(body, "Client Platform Challenge Response")
    response = _read_blob(r, BB_ENCRYPTED_DATA, "EncryptedPlatformChallengeResponse")
    hwid = _read_blob(r, BB_ENCRYPTED_DATA, "EncryptedHWID")
    mac = r.take(16)
    r.end()
    return ChallengeResponse(response, hwid, mac)


def parse_error_alert(body: bytes) -> ErrorAlert:
    r = Reader(body, "Licensing Error Message")
    code, state = r.u32(), r.u32()
    _read_blob(r, None, "bbErrorInfo")
    r.end()
    return ErrorAlert(code, state)


def challenge_response_data(challenge: bytes) -> bytes:
    """PLATFORM_CHALLENGE_RESPONSE_DATA as a client builds it [MS-RDPELE 2.2.2.5.1]; the server
    parses it with ``parse_challenge_response_data``."""
    return struct.pack("<HHHH", 0x0100, 0xFF00, 3, len(challenge)) + challenge


def parse_challenge_response_data(data: bytes) -> bytes:
    r = Reader(data, "Platform Challenge Response Data")
    r.take(6)
    challenge = r.take(r.u16())
    r.end()
    return challenge


def platform_challenge(encrypted: bytes, mac: bytes) -> bytes:
    """Server Platform Challenge [MS-RDPELE 2.2.2.4]."""
    return _message(PLATFORM_CHALLENGE, struct.pack("<I", 0) + blob(BB_ENCRYPTED_DATA, encrypted) + mac)


def new_license_info(product: ProductInfo, license: bytes) -> bytes:
    """New License Information, the plaintext of a New or Upgrade License [MS-RDPELE 2.2.2.6.1]."""
    if not license:
        raise ProtocolError("MALFORMED", "a license must not be empty: the client would not store it")
    scope = product.scope.encode("ascii") + b"\x00"
    company, product_id = _utf16z(product.company), _utf16z(product.product_id)
    return (struct.pack("<I", product.version) + b"".join(struct.pack("<I", len(f)) + f
                                                          for f in (scope, company, product_id, license)))


def parse_new_license_info(data: bytes) -> bytes:
    """The license in a New License Information (what a client stores)."""
    r = Reader(data, "New License Information")
    r.u32()
    for _ in range(3):
        r.take(r.u32())
    license = r.take(r.u32())
    r.end()
    return license


def new_license(kind: int, encrypted: bytes, mac: bytes) -> bytes:
    """Server New License (0x03) or Upgrade License (0x04) [MS-RDPELE 2.2.2.6, 2.2.2.7]."""
    return _message(kind, blob(BB_ENCRYPTED_DATA, encrypted) + mac)


def error_alert(code: int, state: int) -> bytes:
    """Licensing Error Message; bbErrorInfo is an empty error blob [MS-RDPBCGR 2.2.1.12.1.3]."""
    return _message(ERROR_ALERT, struct.pack("<II", code, state) + blob(BB_ERROR, b""))
