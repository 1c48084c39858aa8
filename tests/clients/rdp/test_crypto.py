"""MS-RDPELE 5.1 cryptography, on published vectors and on an exchange captured from FreeRDP."""
import hashlib
import struct

import pytest
from hypothesis import given, strategies as st

from clients.rdp import crypto

KEY = crypto.generate_key(1024)

# RC4 vectors published with the cipher (the Wikipedia / RFC 6229-era set).
RC4_VECTORS = [(b"Key", b"Plaintext", "bbf316e8d940af0ad3"),
               (b"Wiki", b"pedia", "1021bf0420"),
               (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5")]


@pytest.mark.parametrize("key,plain,cipher", RC4_VECTORS)
def test_rc4_known_vectors(key, plain, cipher):
    assert crypto.rc4(key, plain).hex() == cipher
    assert crypto.rc4(key, bytes.fromhex(cipher)) == plain


def test_rc4_restarts_for_every_blob():
    keys = crypto.LicensingKeys(mac_salt=bytes(16), encryption=b"k" * 16)
    assert keys.encrypt(b"same") == keys.encrypt(b"same")


# One licensing exchange between tsls and FreeRDP 2.11.7 (xfreerdp /client-hostname:lictest):
# the randoms and the premaster secret the server recovered, the challenge it sent, and what the
# client's own C code answered. Keys derived here must read the client's answer and match its MAC.
CAPTURE = dict(
    premaster="0b37ec63ed36ec55c0e0d64dc0bc530b7a688251a3790058d2fc9a9a8455b6cc902e2b179e12102865c0956024cc5593",
    client_random="94b71604902a9e4e9c9a09b1f36f183ae8a36f04b31c9309fd3c29bf21fe9628",
    server_random="47462c7132403783dc9d5ceada2a0341538b8018e51f5d06ac98682b8ea9e235",
    challenge="902c992c13351968620ca2b8bf62bfb3",
    encrypted_response="442e941ffb551dc4e24b39a3ec5043861e50eb2b4464ee81",
    encrypted_hwid="442f95e48fb4ea0889473da45dba732cb0e68a86",
    mac="01793bc5049481c37369b6e1bd956b92",
)


def test_keys_agree_with_freerdp():
    c = {k: bytes.fromhex(v) for k, v in CAPTURE.items()}
    keys = crypto.LicensingKeys.derive(c["premaster"], c["client_random"], c["server_random"])
    hwid = keys.decrypt(c["encrypted_hwid"])
    assert hwid == struct.pack("<I", 0x04010000) + hashlib.md5(b"lictest").digest()
    response = keys.decrypt(c["encrypted_response"])
    assert response == struct.pack("<HHHH", 0x0100, 0xFF00, 3, 16) + c["challenge"]
    assert keys.mac(response + hwid) == c["mac"]


def test_swapping_the_randoms_gives_other_keys():
    c = {k: bytes.fromhex(v) for k, v in CAPTURE.items()}
    right = crypto.LicensingKeys.derive(c["premaster"], c["client_random"], c["server_random"])
    wrong = crypto.LicensingKeys.derive(c["premaster"], c["server_random"], c["client_random"])
    assert right.encryption != wrong.encryption and right.mac_salt != wrong.mac_salt


def test_keys_do_not_show_in_repr():
    keys = crypto.LicensingKeys(mac_salt=b"\x01" * 16, encryption=b"\x02" * 16)
    assert "01" not in repr(keys) and "02" not in repr(keys)
    key = crypto.RsaKey(n=3233, e=17, d=2753)
    assert "2753" not in repr(key)


@given(st.binary(min_size=48, max_size=48))
def test_raw_rsa_round_trip_little_endian(premaster):
    encrypted = KEY.encrypt(premaster) + bytes(8)        # as the client sends it: modulus + 8 bytes
    assert crypto.premaster_secret(KEY, encrypted) == premaster


def test_a_value_not_below_the_modulus_is_refused():
    with pytest.raises(ValueError):
        KEY.decrypt(b"\xff" * KEY.size)


def test_the_terminal_services_signing_key_is_a_key_pair():
    block = bytes(range(63)) + b"\x00"
    assert crypto.TS_SIGNING_KEY.encrypt(crypto.TS_SIGNING_KEY.sign(block)) == block


def test_proprietary_certificate_layout_and_signature():
    cert = crypto.proprietary_certificate(KEY)
    version, sig_alg, key_alg, blob_type, blob_len = struct.unpack_from("<IIIHH", cert)
    assert (version, sig_alg, key_alg, blob_type) == (1, 1, 1, 6)
    public = cert[16:16 + blob_len]
    magic, keylen, bitlen, datalen = struct.unpack_from("<4sIII", public)
    assert (magic, keylen, bitlen, datalen) == (b"RSA1", KEY.size + 8, KEY.size * 8, KEY.size - 1)
    assert int.from_bytes(public[20:20 + KEY.size], "little") == KEY.n and public[-8:] == bytes(8)
    sig_type, sig_len = struct.unpack_from("<HH", cert, 16 + blob_len)
    assert (sig_type, sig_len) == (8, 72)          # FreeRDP refuses any other length
    assert len(cert) == 16 + blob_len + 4 + 72
    assert crypto.certificate_signature_valid(cert)
    tampered = cert[:30] + bytes([cert[30] ^ 1]) + cert[31:]
    assert not crypto.certificate_signature_valid(tampered)
