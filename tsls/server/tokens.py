"""The license a device stores and presents: the license id, signed by this license server.

Windows clients keep a signed certificate [§1]; ours is ``TSLS1.<id>.<mac>``, an HMAC-SHA256 over
the id and the device's hardware ID, so a license cannot be forged, edited or moved to another
device. The secret lives in the server's database and is never logged.
"""
from __future__ import annotations

import hashlib
import hmac

from tsls.errors import Code, TslsError

PREFIX = "TSLS1"


def _mac(secret: bytes, license_id: int, hwid: str) -> str:
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= 16:
            _KEYED.clear()
        keyed = _KEYED[secret] = _keyed(secret)
    inner, outer = keyed
    inner = inner.copy()
    inner.update(f"{license_id}|{hwid}".encode())
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.hexdigest()[:32]


# HMAC-SHA256 (RFC 2104: SHA256(key ^ opad, SHA256(key ^ ipad, message))) with the hashes of each
# secret's two padded key blocks taken once, and copied for each token: every grant signs one, every
# upgrade signs one and verifies one. 0.7 µs a token, against 1.3 µs for a copy of hmac.new's keyed
# object (OpenSSL's HMAC context is costlier to copy and finish than two SHA-256 ones) and 1.6 µs for
# hmac.digest; the same digest (tests/server/test_tokens.py checks it against hmac).
_KEYED: dict = {}
_BLOCK = 64         # SHA-256's block size


def _keyed(secret: bytes):
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


def sign(secret: bytes, license_id: int, hwid: str) -> str:
    return f"{PREFIX}.{license_id}.{_mac(secret, license_id, hwid)}"


def verify(secret: bytes, token: str, hwid: str) -> int:
    """The license id a presented token stands for, or INVALID_LICENSE."""
    parts = token.split(".") if isinstance(token, str) else []
    # ASCII digits only ('²'.isdigit() is true, int('²') fails); bytes for compare_digest, which refuses non-ASCII str
    if len(parts) == 3 and parts[0] == PREFIX and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) < 19:
        license_id = int(parts[1])
        if hmac.compare_digest(parts[2].encode("utf-8", "surrogatepass"), _mac(secret, license_id, hwid).encode()):
            return license_id
    raise TslsError(Code.INVALID_LICENSE, "the device presented a license this server did not issue to it")
