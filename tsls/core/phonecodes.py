"""Codes read out on the telephone: the license server ID, the certificate code and the license key
pack ID, each 35 characters in 7 groups of 5 [§9, MIGR; WMI:win32-tslicenseserver ActivateServer;
WMI:win32-tslicensekeypack InstallLicenseKeyPack].

Microsoft does not publish how its codes are checked, so this encoding is tsls's own, made so that
what is typed in from a phone call is checked where it is typed:

- The alphabet has 32 characters: A-Z and 2-9 without I and O (0/O and 1/I are not told apart on a
  line). A character outside it is refused, naming its position.
- Each group is 4 characters and a check character chosen so that sum((2i+1)*v_i) + 9*c + 5*g is 0
  mod 32 (v_i the group's values, c the check's, g the group's number). Every weight is odd, so any
  single mistyped character changes the sum and is refused, naming its group; swapping two whole
  groups changes the 5*g term.
- Of the 28 characters left, 20 are random (100 bits) and the last 8 bind the code to what it was
  issued for (SHA-256 of kind, anchor and the random part): a license server ID to its product ID, a
  certificate code to its license server ID, a key pack ID to the license server it was issued to.
  A code read out for another server is refused as such, never taken for something else.
"""
from __future__ import annotations

import enum
import hashlib
import secrets

from tsls.errors import Code, TslsError

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
GROUPS, GROUP = 7, 5
LENGTH = GROUPS * GROUP            # 35
RANDOM, BINDING = 20, 8


class Kind(enum.Enum):
    LICENSE_SERVER_ID = "license server ID"              # anchor: the product ID
    CERTIFICATE = "certificate code"                     # anchor: the license server ID
    KEY_PACK = "license key pack ID"                     # anchor: the license server ID


def _check_char(group: int, data: str) -> str:
    total = sum((2 * i + 1) * _VALUE[ch] for i, ch in enumerate(data)) + 5 * group
    return ALPHABET[(-25 * total) % 32]         # 25 is the inverse of 9 mod 32


def _binding(kind: Kind, anchor: str, random_part: str) -> str:
    digest = hashlib.sha256(f"tsls|{kind.name}|{anchor}|{random_part}".encode()).digest()
    return "".join(ALPHABET[b % 32] for b in digest[:BINDING])


def make(kind: Kind, anchor: str, random_part: str | None = None) -> str:
    """A new code for ``anchor``, 35 characters without hyphens (``grouped`` adds them)."""
    random_part = random_part or "".join(secrets.choice(ALPHABET) for _ in range(RANDOM))
    data = random_part + _binding(kind, anchor, random_part)
    return "".join(data[g * 4:g * 4 + 4] + _check_char(g, data[g * 4:g * 4 + 4]) for g in range(GROUPS))


def grouped(code: str) -> str:
    return "-".join(code[i:i + GROUP] for i in range(0, len(code), GROUP))


def check(kind: Kind, anchor: str, typed: object) -> str:
    """The code as typed (spaces and hyphens between groups allowed, any case), checked; returns it
    without separators. Refused with MISTYPED_CODE (details: group, or position) or, for a code that
    is well formed but was issued for another anchor, CODE_FOR_ANOTHER_SERVER."""
    what = kind.value
    if not isinstance(typed, str):
        raise TslsError(Code.MISTYPED_CODE, f"a {what} is 35 characters in 7 groups of 5")
    code = typed.replace("-", "").replace(" ", "").upper()
    if len(code) != LENGTH:
        raise TslsError(Code.MISTYPED_CODE, f"a {what} is 35 characters in 7 groups of 5; {len(code)} were typed",
                        typed_length=len(code))
    for position, ch in enumerate(code, 1):
        if ch not in _VALUE:
            raise TslsError(Code.MISTYPED_CODE, f"character {position} of the {what} ({ch!r}, in group "
                            f"{(position - 1) // GROUP + 1}) is never used: the codes have A-Z and 2-9 without "
                            "I and O; read that group again", position=position, group=(position - 1) // GROUP + 1)
    for g in range(GROUPS):
        part = code[g * GROUP:(g + 1) * GROUP]
        if _check_char(g, part[:4]) != part[4]:
            raise TslsError(Code.MISTYPED_CODE, f"group {g + 1} of the {what} ({part}) is mistyped: read that group "
                            "again", group=g + 1)
    data = "".join(code[g * GROUP:g * GROUP + 4] for g in range(GROUPS))
    if _binding(kind, anchor, data[:RANDOM]) != data[RANDOM:]:
        raise TslsError(Code.CODE_FOR_ANOTHER_SERVER, f"this {what} was not issued for {anchor} (or it is mistyped "
                        "in more than one place): ask the Clearinghouse for the codes of this server")
    return code
