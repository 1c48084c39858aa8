"""Who may ask: challenge-response proofs for administrators and registered terminal servers.

A connection asks for a ``challenge`` (a fresh random nonce); its ``hello`` then carries
``proof = HMAC-SHA256(secret, nonce | role | name)`` in hex. The secret itself never crosses the
wire and is never logged. The administrator's secret is made at first start and written to a file
readable only by its owner; a terminal server's secret is made when an administrator registers it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from tsls import files
from tsls.errors import Code, TslsError


def new_secret() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def proof(secret: str, nonce: str, role: str, name: str = "") -> str:
    return hmac.new(secret.encode(), f"{nonce}|{role}|{name}".encode(), hashlib.sha256).hexdigest()


def check_proof(secret: str, nonce: str | None, role: str, name: str, given: object) -> None:
    if nonce is None:
        raise TslsError(Code.BAD_CREDENTIALS, f"a {role} must prove who it is: ask for a challenge first")
    # compare_digest takes str of ASCII only: compare bytes, so a non-ASCII proof is just a wrong one
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                             proof(secret, nonce, role, name).encode()):
        raise TslsError(Code.BAD_CREDENTIALS, f"the proof does not match the {role} credential")


def write_private(path: str, text: str) -> None:
    """Replace ``path`` with ``text``, readable and writable by its owner only (tsls.files)."""
    files.write_private(path, text, newline=True)


def read_secret(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise TslsError(Code.BAD_CREDENTIALS, f"cannot read the credential file {path}: {e.strerror}") from None
