"""Who may ask: challenge-response proofs for administrators and registered terminal servers.

A connection asks for a ``challenge`` (a fresh random nonce); its ``hello`` then carries
``proof = HMAC-SHA256(secret, nonce | role | name)`` in hex. The secret itself never crosses the
wire and is never logged. The administrator's secret is made at first start and written to a file
readable only by its owner; a terminal server's secret is made when an administrator registers it.
"""
from __future__ import annotations

import hmac
import secrets

from tsls.errors import Code, TslsError
from tsls.public import proof


def new_secret() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def check_proof(secret: str, nonce: str | None, role: str, name: str, given: object) -> None:
    if nonce is None:
        raise TslsError(Code.BAD_CREDENTIALS, f"a {role} must prove who it is: ask for a challenge first")
    # compare_digest takes str of ASCII only: compare bytes, so a non-ASCII proof is just a wrong one
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                             proof(secret, nonce, role, name).encode()):
        raise TslsError(Code.BAD_CREDENTIALS, f"the proof does not match the {role} credential")
