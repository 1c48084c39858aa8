"""A Python mirror of an RDP client's side of the connection sequence and of MS-RDPELE, as
FreeRDP 2.11 implements it: tests drive the RDP front with it where xfreerdp is not needed."""
import hashlib
import os
import struct

from clients.rdp import crypto, wire

PLATFORM_ID = 0x04010000


def hwid(host: str) -> bytes:
    return struct.pack("<I", PLATFORM_ID) + hashlib.md5(host.encode()).digest()


def _ber(tag: bytes, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n <= 0xFF else b"\x82" + n.to_bytes(2, "big")
    return tag + length + content


def _per_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else (n | 0x8000).to_bytes(2, "big")


def connection_request(protocols=wire.PROTOCOL_SSL | wire.PROTOCOL_HYBRID, cookie=b"Cookie: mstshash=test\r\n"):
    body = b"\xe0\x00\x00\x00\x00\x00" + cookie + struct.pack("<BBHI", 1, 0, 8, protocols)
    return wire.tpkt(bytes([len(body)]) + body)


def connect_initial(name="lictest", channels=("cliprdr", "rdpdr", "rdpsnd")):
    core = struct.pack("<IHHHHII", 0x00080004, 1024, 768, 0xCA01, 0xAA03, 0x409, 2600)
    core += name.encode("utf-16-le").ljust(32, b"\x00")
    core += bytes(128)   # the rest of a CS_CORE a client sends; the server ignores it
    net = struct.pack("<I", len(channels)) + b"".join(c.encode().ljust(8, b"\x00") + struct.pack("<I", 0x80800000)
                                                     for c in channels)
    security = struct.pack("<II", 0x1B, 0)
    blocks = b"".join(struct.pack("<HH", kind, len(data) + 4) + data
                      for kind, data in ((wire.CS_CORE, core), (wire.CS_SECURITY, security), (wire.CS_NET, net)))
    ccr = b"\x00\x08\x00\x10\x00\x01\xc0\x00Duca" + _per_len(len(blocks)) + blocks
    gcc = b"\x00\x05\x00\x14\x7c\x00\x01" + _per_len(len(ccr)) + ccr
    params = _ber(b"\x30", b"".join(_ber(b"\x02", v.to_bytes(2, "big")) for v in (34, 2, 0, 1, 0, 1, 0xFFFF, 2)))
    body = _ber(b"\x04", b"\x01") + _ber(b"\x04", b"\x01") + _ber(b"\x01", b"\xff") + params * 3 + _ber(b"\x04", gcc)
    return wire.x224_data(_ber(b"\x7f\x65", body))


def erect_domain():
    return wire.x224_data(b"\x04\x01\x00\x01\x00")


def attach_user():
    return wire.x224_data(b"\x28")


def channel_join(user_id, channel):
    return wire.x224_data(b"\x38" + (user_id - 1001).to_bytes(2, "big") + channel.to_bytes(2, "big"))


def send_data(user_id, flags, data, channel=wire.MCS_GLOBAL_CHANNEL):
    payload = struct.pack("<HH", flags, 0) + data
    return wire.x224_data(b"\x64" + (user_id - 1001).to_bytes(2, "big") + channel.to_bytes(2, "big") + b"\x70"
                          + _per_len(len(payload)) + payload)


def client_info(user="test", domain="", password="secret-password"):
    def text(s):
        return s.encode("utf-16-le")
    fields = [text(domain), text(user), text(password), b"", b""]
    head = struct.pack("<II", 0, 0x10) + b"".join(struct.pack("<H", len(f)) for f in fields)
    return head + b"".join(f + b"\x00\x00" for f in fields)


def licensing(kind, body):
    return struct.pack("<BBH", kind, 0x83, len(body) + 4) + body


def send_data_indication(data: bytes) -> bytes:
    """The user data of an MCS Send Data Indication (an X.224 data payload)."""
    r = wire.Reader(data, "send data indication")
    assert r.u8() >> 2 == 26
    r.u16be(), r.u16be(), r.u8()
    first = r.u8()
    length = ((first & 0x7F) << 8 | r.u8()) if first & 0x80 else first
    payload = r.take(length)
    r.end()
    return payload


def parse_server_licensing(pdu: bytes):
    """(bMsgType, message) of a server licensing PDU (a TPKT payload)."""
    payload = send_data_indication(wire.parse_x224_data(pdu))
    flags, message = wire.split_security_header(payload)
    assert flags & wire.SEC_LICENSE_PKT
    kind = message[0]
    assert struct.unpack_from("<H", message, 2)[0] == len(message)
    return kind, message[4:]


class LicensingClient:
    """The client's licensing state, step by step, as FreeRDP 2.11's license.c does it."""

    def __init__(self, host="lictest", user="test", cal: bytes | None = None):
        self.host, self.user, self.cal = host, user, cal
        self.client_random = os.urandom(32)
        self.premaster = os.urandom(48)
        self.stored = None

    def on_license_request(self, body: bytes) -> bytes:
        r = wire.Reader(body, "License Request")
        server_random = r.take(32)
        r.u32()                             # ProductInfo: dwVersion, company, product id
        r.take(r.u32())
        r.take(r.u32())
        kind, length = r.u16(), r.u16()
        r.take(length)                      # key exchange list
        kind, length = r.u16(), r.u16()
        self.certificate = r.take(length)
        key_length = struct.unpack_from("<H", self.certificate, 14)[0]
        public = self.certificate[16:16 + key_length]
        keylen, _, _ = struct.unpack_from("<III", public, 4)
        e = int.from_bytes(public[16:20], "little")
        n = int.from_bytes(public[20:20 + keylen - 8], "little")
        self.server_key = crypto.RsaKey(n, e, 0)
        self.keys = crypto.LicensingKeys.derive(self.premaster, self.client_random, server_random)
        encrypted = self.server_key.encrypt(self.premaster) + bytes(8)
        head = struct.pack("<II", 1, PLATFORM_ID) + self.client_random + wire.blob(wire.BB_RANDOM, encrypted)
        if self.cal is None:
            return licensing(wire.NEW_LICENSE_REQUEST, head + wire.blob(wire.BB_CLIENT_USER_NAME, self.user.encode() + b"\0")
                             + wire.blob(wire.BB_CLIENT_MACHINE_NAME, self.host.encode() + b"\0"))
        h = hwid(self.host)
        return licensing(wire.LICENSE_INFO, head + wire.blob(wire.BB_DATA, self.cal)
                         + wire.blob(wire.BB_ENCRYPTED_DATA, self.keys.encrypt(h)) + self.keys.mac(h))

    def on_platform_challenge(self, body: bytes) -> bytes:
        r = wire.Reader(body, "Platform Challenge")
        r.u32()
        r.u16()
        encrypted = r.take(r.u16())
        mac = r.take(16)
        challenge = self.keys.decrypt(encrypted)
        assert self.keys.mac(challenge) == mac, "the server's challenge MAC is wrong"
        data = wire.challenge_response_data(challenge)
        h = hwid(self.host)
        return licensing(wire.PLATFORM_CHALLENGE_RESPONSE, wire.blob(wire.BB_ENCRYPTED_DATA, self.keys.encrypt(data))
                         + wire.blob(wire.BB_ENCRYPTED_DATA, self.keys.encrypt(h)) + self.keys.mac(data + h))

    def on_new_license(self, body: bytes) -> bytes:
        r = wire.Reader(body, "New License")
        r.u16()
        encrypted = r.take(r.u16())
        mac = r.take(16)
        r.end()
        info = self.keys.decrypt(encrypted)
        assert self.keys.mac(info) == mac, "new or upgrade license MAC mismatch"
        self.stored = wire.parse_new_license_info(info)
        return self.stored


# After licensing: what FreeRDP sends and reads while its connection becomes active [MS-RDPBCGR 1.3.1.1].

def send_pdu(user_id, share_control: bytes):
    """A client PDU after licensing: under TLS, no security header."""
    return wire.x224_data(b"\x64" + (user_id - 1001).to_bytes(2, "big") + wire.MCS_GLOBAL_CHANNEL.to_bytes(2, "big")
                          + b"\x70" + _per_len(len(share_control)) + share_control)


def client_data(user_id, pdu_type2, payload=b""):
    share_data = struct.pack("<IBBHBBH", wire.SHARE_ID, 0, 1, len(payload) + 4, pdu_type2, 0, 0) + payload
    return send_pdu(user_id, struct.pack("<HHH", 6 + len(share_data), 0x17, user_id) + share_data)


def confirm_active(user_id):
    body = struct.pack("<IHHH", wire.SHARE_ID, 1002, 4, 4) + b"MSTS" + struct.pack("<HH", 0, 0)
    return send_pdu(user_id, struct.pack("<HHH", 6 + len(body), 0x13, user_id) + body)


def disconnect_ultimatum():
    return wire.x224_data(b"\x21\x80")


def server_pdu(pdu: bytes):
    """What a server PDU is, as FreeRDP reads it: ("licensing", kind, body), ("demand_active", capability
    types), ("data", pduType2, payload) or ("ultimatum", reason)."""
    data = wire.parse_x224_data(pdu)
    if data[0] >> 2 == wire.DISCONNECT_ULTIMATUM:
        return ("ultimatum", ((data[0] & 3) << 1) | (data[1] >> 7))     # a 6-bit choice, a 3-bit reason (PER)
    payload = send_data_indication(data)
    if struct.unpack_from("<H", payload)[0] & wire.SEC_LICENSE_PKT:
        return ("licensing", *parse_server_licensing(pdu))
    total, pdu_type, source = struct.unpack_from("<HHH", payload)
    assert total == len(payload) and pdu_type & 0x10 and source == 1002
    if pdu_type & 0xF == wire.PDUTYPE_DEMANDACTIVEPDU:
        share_id, source_len, caps_len = struct.unpack_from("<IHH", payload, 6)
        assert payload[14:14 + source_len] == b"RDP\x00" and share_id == wire.SHARE_ID
        caps = payload[14 + source_len:14 + source_len + caps_len]
        count, at, types = struct.unpack_from("<H", caps)[0], 4, []
        for _ in range(count):
            kind, size = struct.unpack_from("<HH", caps, at)
            types.append(kind)
            at += size
        assert at == len(caps) and len(payload) == 14 + source_len + caps_len + 4      # then the sessionId
        return ("demand_active", types)
    assert pdu_type & 0xF == wire.PDUTYPE_DATAPDU
    share_id, _, stream, uncompressed, type2, compressed, _ = struct.unpack_from("<IBBHBBH", payload, 6)
    assert share_id == wire.SHARE_ID and compressed == 0 and uncompressed == len(payload) - 14
    return ("data", type2, payload[18:])
