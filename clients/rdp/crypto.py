"""The cryptography of RDP licensing [MS-RDPELE 5.1], and the server certificate that carries
the terminal server's licensing key [MS-RDPBCGR 2.2.1.4.3.1.1].

Everything here is a function of bytes: no sockets, no state. RSA is textbook RSA on
little-endian integers, as the protocol defines it (no padding), so Python's ``pow`` is the
whole implementation; RC4 is written out because current ``cryptography`` releases only keep it
in their "decrepit" module, behind OpenSSL's legacy provider.
"""
from __future__ import annotations

import hashlib
import struct

import attrs

PREMASTER_LENGTH = 48
RANDOM_LENGTH = 32
HWID_LENGTH = 20


def rc4(key: bytes, data: bytes) -> bytes:
    """RC4 with a fresh state: every licensing blob is encrypted from the start of the key stream."""
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    out = bytearray(len(data))
    i = j = 0
    for n, byte in enumerate(data):
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        out[n] = byte ^ s[(s[i] + s[j]) & 0xFF]
    return bytes(out)


def _salted_hash(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hashlib.md5(secret + hashlib.sha1(label + secret + first + second).digest()).digest()


def _three(secret: bytes, first: bytes, second: bytes) -> bytes:
    return b"".join(_salted_hash(secret, label, first, second) for label in (b"A", b"BB", b"CCC"))


@attrs.frozen(repr=False)
class LicensingKeys:
    """The two keys both ends derive from the premaster secret and the two randoms [MS-RDPELE 5.1.2].
    ``repr`` is withheld: these are secrets."""

    mac_salt: bytes
    encryption: bytes

    @classmethod
    def derive(cls, premaster: bytes, client_random: bytes, server_random: bytes) -> "LicensingKeys":
        master = _three(premaster, client_random, server_random)
        blob = _three(master, server_random, client_random)          # note: the randoms swap
        return cls(mac_salt=blob[:16], encryption=hashlib.md5(blob[16:32] + client_random + server_random).digest())

    def mac(self, data: bytes) -> bytes:
        """The 16-byte MAC over plaintext [MS-RDPELE 5.1.5]."""
        inner = hashlib.sha1(self.mac_salt + b"\x36" * 40 + struct.pack("<I", len(data)) + data).digest()
        return hashlib.md5(self.mac_salt + b"\x5c" * 48 + inner).digest()

    def encrypt(self, data: bytes) -> bytes:
        return rc4(self.encryption, data)

    decrypt = encrypt

    def __repr__(self) -> str:
        return "LicensingKeys(<secret>)"


# --- RSA ---------------------------------------------------------------------------------------

@attrs.frozen(repr=False)
class RsaKey:
    """A raw RSA key pair as integers."""

    n: int
    e: int
    d: int

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def _apply(self, data: bytes, exponent: int) -> bytes:
        value = int.from_bytes(data, "little")
        if value >= self.n:
            raise ValueError("the value is not smaller than the modulus")
        return pow(value, exponent, self.n).to_bytes(self.size, "little")

    def encrypt(self, plaintext: bytes) -> bytes:
        """Raw RSA with the public exponent, on little-endian bytes."""
        return self._apply(plaintext, self.e)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Raw RSA with the private exponent; the client pads its ciphertext with zeros to modulus + 8."""
        return self._apply(ciphertext[:self.size], self.d)

    sign = decrypt      # a proprietary certificate's signature is the private operation on a padded digest

    def __repr__(self) -> str:
        return f"RsaKey({self.n.bit_length()} bits)"


def premaster_secret(key: RsaKey, encrypted: bytes) -> bytes:
    return key.decrypt(encrypted)[:PREMASTER_LENGTH]


# The Terminal Services signing key, published in [MS-RDPBCGR 5.3.3.1.1] so that anyone can sign
# (and check) proprietary certificates. Little-endian, as the specification prints it.
_TSSK_MODULUS = bytes.fromhex(
    "3d3a5ebd72433ec94dbbc11e4aba5fcb3e882087eff5c1e2d7b76b9af2524595"
    "ce63656b583afeef7ce7bffe3df65c7d6c5e06091af561bb2093095f056dea87")
_TSSK_PRIVATE = bytes.fromhex(
    "87a71932da11875558001616256568f8243ee6fae9674994cf92cc3399e80860"
    "179a129f24ddb12499c73ab80a7b0ddd350779170b519bb3c7100113e73ff35f")
_TSSK_PUBLIC = bytes.fromhex("5b7b88c0")
TS_SIGNING_KEY = RsaKey(int.from_bytes(_TSSK_MODULUS, "little"), int.from_bytes(_TSSK_PUBLIC, "little"),
                        int.from_bytes(_TSSK_PRIVATE, "little"))


def _signature_block(signed: bytes) -> bytes:
    """MD5 of the signed fields, then 0x00, 45 x 0xFF, 0x01, and a zero top byte [MS-RDPBCGR 5.3.3.1.2]."""
    return hashlib.md5(signed).digest() + b"\x00" + b"\xff" * 45 + b"\x01" + b"\x00"


def proprietary_certificate(key: RsaKey) -> bytes:
    """A PROPRIETARYSERVERCERTIFICATE carrying ``key``'s public half, signed with the Terminal
    Services signing key [MS-RDPBCGR 2.2.1.4.3.1.1, 5.3.3.1]."""
    modulus = key.n.to_bytes(key.size, "little")
    public_key = (b"RSA1" + struct.pack("<III", key.size + 8, key.size * 8, key.size - 1)
                  + key.e.to_bytes(4, "little") + modulus + b"\x00" * 8)
    signed = struct.pack("<IIIHH", 1, 1, 1, 0x0006, len(public_key)) + public_key
    signature = TS_SIGNING_KEY.sign(_signature_block(signed)) + b"\x00" * 8
    return signed + struct.pack("<HH", 0x0008, len(signature)) + signature


def certificate_signature_valid(certificate: bytes) -> bool:
    """Check a proprietary certificate's signature as a strict client would."""
    key_length = struct.unpack_from("<H", certificate, 14)[0]
    signed, rest = certificate[:16 + key_length], certificate[16 + key_length:]
    signature = rest[4:4 + TS_SIGNING_KEY.size]
    return TS_SIGNING_KEY.encrypt(signature) == _signature_block(signed)


def rsa_key(private_key) -> RsaKey:
    """The integers of a ``cryptography`` RSA private key."""
    numbers = private_key.private_numbers()
    return RsaKey(numbers.public_numbers.n, numbers.public_numbers.e, numbers.d)


def generate_key(bits: int = 2048) -> RsaKey:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa_key(rsa.generate_private_key(public_exponent=65537, key_size=bits))
