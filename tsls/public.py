"""What a client of tsls shares with the license server: the protocol version it speaks, the proof
a hello carries, the rules for a credential file, and how a simulated device's hardware ID is made.

Clients (clients/, the lab runner) import these from here, and the server uses the same ones, so
each is written once. The rest of tsls/server is the server's own.
"""
from __future__ import annotations

import hashlib
import hmac

from tsls import files
from tsls.errors import Code, TslsError

PROTOCOL_VERSION = 1        # the socket protocol of docs/protocol.md

PLATFORM_ID = 0x04010000    # WINNT_POST_52 + Microsoft, what FreeRDP sends [§6]


def proof(secret: str, nonce: str, role: str, name: str = "") -> str:
    """A hello's proof: HMAC-SHA256(secret, nonce | role | name) in hex. The secret never crosses the wire."""
    return hmac.new(secret.encode(), f"{nonce}|{role}|{name}".encode(), hashlib.sha256).hexdigest()


def write_secret(path: str, secret: str) -> None:
    """Replace the credential file ``path`` with ``secret``, readable and writable by its owner only."""
    files.write_private(path, secret, newline=True)


def read_secret(path: str) -> str:
    """The secret in a credential file; an unreadable file is BAD_CREDENTIALS, naming the file."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise TslsError(Code.BAD_CREDENTIALS, f"cannot read the credential file {path}: {e.strerror}") from None


def hardware_id(machine: str) -> str:
    """The 20-byte HWID an RDP client derives from its host name: LE32(PlatformId) + MD5(name), in
    hex. Every simulated device (tsls-ts, tsls-load, bench) is given this one, so a device is the
    same device on every path."""
    return (PLATFORM_ID.to_bytes(4, "little") + hashlib.md5(machine.encode()).digest()).hex()
