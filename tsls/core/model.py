"""The nouns of Terminal Server licensing, as enumerations and frozen attrs values.

Behaviour sources are cited as in ../shared/REFERENCE.md (section numbers in brackets).
"""
from __future__ import annotations

import datetime
import enum
import functools
import re

import attrs

from tsls.errors import Code, TslsError

DAY = 86400


@functools.lru_cache(maxsize=4096)
def iso(ts: int | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC date, the one format every output uses. Memoised:
    the dates of one batch of grants repeat, and strftime was a measured 7% of a grant (docs/performance.md)."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProductVersion(enum.Enum):
    """Windows Server versions a terminal server emulates and CALs are sold for [§3]."""

    W2000 = "2000"
    W2003 = "2003"
    W2008 = "2008"
    W2008R2 = "2008R2"
    W2012 = "2012"
    W2016 = "2016"
    W2019 = "2019"
    W2022 = "2022"

    @property
    def rank(self) -> int:
        """Order for "same or newer serves" [§3 version rules]. A 2008 TS CAL is
        functionally equal to a 2008 R2 RDS CAL [technet hh553159], so they share a rank."""
        return _RANK[self]

    @property
    def windows_version(self) -> tuple[int, int]:
        """(major, minor) of the Windows release, as an RDP ProductInfo dwVersion carries it."""
        return _WINDOWS_VERSION[self]

    def serves(self, terminal_server: "ProductVersion") -> bool:
        """A CAL of this version serves a terminal server of that version."""
        return self.rank >= terminal_server.rank

    @classmethod
    def parse(cls, text: object) -> "ProductVersion":
        return _parse_enum(cls, text, "product version")


_RANK = {
    ProductVersion.W2000: 0,
    ProductVersion.W2003: 1,
    ProductVersion.W2008: 2,
    ProductVersion.W2008R2: 2,
    ProductVersion.W2012: 3,
    ProductVersion.W2016: 4,
    ProductVersion.W2019: 5,
    ProductVersion.W2022: 6,
}
_WINDOWS_VERSION = {
    ProductVersion.W2000: (5, 0),
    ProductVersion.W2003: (5, 2),
    ProductVersion.W2008: (6, 0),
    ProductVersion.W2008R2: (6, 1),
    ProductVersion.W2012: (6, 2),
    ProductVersion.W2016: (10, 0),
    ProductVersion.W2019: (10, 0),
    ProductVersion.W2022: (10, 0),
}


class CalType(enum.Enum):
    """The two TS CAL types, which are also the two terminal server licensing modes [§1]."""

    PER_DEVICE = "per_device"
    PER_USER = "per_user"

    @classmethod
    def parse(cls, text: object) -> "CalType":
        if isinstance(text, str):
            text = text.replace("-", "_").lower()
        return _parse_enum(cls, text, "CAL type")


class Program(enum.Enum):
    """Licensing programs a key pack is bought through [§3 licensing programs]."""

    RETAIL = "retail"
    OPEN = "open"
    AGREEMENT = "agreement"

    @classmethod
    def parse(cls, text: object) -> "Program":
        return _parse_enum(cls, text, "licensing program")


class AgreementType(enum.Enum):
    """WMI InstallAgreementLicenseKeyPack AgreementType values 0-5 [§3]."""

    SELECT = "select"
    ENTERPRISE = "enterprise"
    CAMPUS = "campus"
    SCHOOL = "school"
    SERVICE_PROVIDER = "service_provider"
    OTHER = "other"

    @classmethod
    def parse(cls, text: object) -> "AgreementType":
        if isinstance(text, str):
            text = text.replace("-", "_").lower()
        return _parse_enum(cls, text, "agreement type")


class LicenseKind(enum.Enum):
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class LicenseStatus(enum.Enum):
    """Win32_TSIssuedLicense.LicenseStatus, less the states tsls never produces [§5]."""

    ACTIVE = "active"        # in force (a temporary or a permanent license)
    UPGRADED = "upgraded"    # a temporary license that was replaced by a permanent CAL
    EXPIRED = "expired"      # ran out; a permanent CAL's seat went back to its key pack
    REVOKED = "revoked"      # revoked by an administrator; its seat went back at once


def _parse_enum(cls, text, what):
    try:
        return cls(text)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise TslsError(Code.BAD_REQUEST, f"unknown {what} {text!r}; expected one of: {choices}") from None


# --- Purchase data -----------------------------------------------------------------------------

_RETAIL = re.compile(r"[A-Z0-9]{25}")
_OPEN_LICENSE = re.compile(r"[0-9]{8}")
_OPEN_AUTH = re.compile(r"[A-Z0-9]{15}")
_AGREEMENT = re.compile(r"[0-9]{7}")


def _invalid(message: str) -> TslsError:
    return TslsError(Code.INVALID_PURCHASE, message)


@attrs.frozen
class PurchaseRef:
    """What identifies a purchase: the numbers printed on the License Purchase Agreement.

    Formats follow the WMI install methods [§3]: a retail license code of 25 letters and digits;
    an Open License number of 8 digits with a 15-character authorization number; an agreement
    type with a 7-digit agreement number. Letters are taken as given: lower case is refused,
    never silently upper-cased.
    """

    program: Program
    retail_code: str | None = None
    license_number: str | None = None
    authorization_number: str | None = None
    agreement_type: AgreementType | None = None
    agreement_number: str | None = None

    def __attrs_post_init__(self) -> None:
        p = self.program
        fields = {
            Program.RETAIL: ("retail_code",),
            Program.OPEN: ("license_number", "authorization_number"),
            Program.AGREEMENT: ("agreement_type", "agreement_number"),
        }
        for name in ("retail_code", "license_number", "authorization_number", "agreement_type", "agreement_number"):
            given = getattr(self, name) is not None
            if given and name not in fields[p]:
                raise _invalid(f"{name} does not belong to a {p.value} purchase")
            if not given and name in fields[p]:
                raise _invalid(f"a {p.value} purchase needs {name}")
        if p is Program.RETAIL and not _RETAIL.fullmatch(self.retail_code):
            raise _invalid("a retail license code is 25 upper-case letters and digits, no hyphens")
        if p is Program.OPEN:
            if not _OPEN_LICENSE.fullmatch(self.license_number):
                raise _invalid("an Open License number is 8 digits")
            if not _OPEN_AUTH.fullmatch(self.authorization_number):
                raise _invalid("an Open License authorization number is 15 upper-case letters and digits")
        if p is Program.AGREEMENT and not _AGREEMENT.fullmatch(self.agreement_number):
            raise _invalid("an agreement number is 7 digits")

    @property
    def reference(self) -> str:
        """One stable string for the purchase, used as a key in both databases."""
        if self.program is Program.RETAIL:
            return f"retail:{self.retail_code}"
        if self.program is Program.OPEN:
            return f"open:{self.license_number}:{self.authorization_number}"
        return f"agreement:{self.agreement_type.value}:{self.agreement_number}"

    def to_json(self) -> dict:
        out: dict = {"program": self.program.value}
        for name in ("retail_code", "license_number", "authorization_number", "agreement_number"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.agreement_type is not None:
            out["agreement_type"] = self.agreement_type.value
        return out

    @classmethod
    def from_json(cls, body: dict) -> "PurchaseRef":
        if not isinstance(body, dict):
            raise _invalid("purchase data must be an object")
        program = Program.parse(body.get("program"))
        agreement = body.get("agreement_type")
        texts = {}
        for name in ("retail_code", "license_number", "authorization_number", "agreement_number"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                raise _invalid(f"{name} must be a string")
            texts[name] = value
        return cls(
            program=program,
            agreement_type=None if agreement is None else AgreementType.parse(agreement),
            **texts,
        )


def parse_quantity(value: object, what: str = "quantity") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 1_000_000:
        raise TslsError(Code.BAD_REQUEST, f"{what} must be a whole number from 1 to 1000000, not {value!r}")
    return value


@attrs.frozen
class Purchase:
    """CALs a lab operator 'sold' at the mock Clearinghouse."""

    ref: PurchaseRef
    product_version: ProductVersion
    cal_type: CalType
    quantity: int = attrs.field(validator=lambda _i, _a, v: parse_quantity(v))

    def to_json(self) -> dict:
        return {
            **self.ref.to_json(),
            "reference": self.ref.reference,
            "product_version": self.product_version.value,
            "cal_type": self.cal_type.value,
            "quantity": self.quantity,
        }

    @classmethod
    def from_json(cls, body: dict) -> "Purchase":
        ref = PurchaseRef.from_json(body)
        return cls(
            ref=ref,
            product_version=ProductVersion.parse(body.get("product_version")),
            cal_type=CalType.parse(body.get("cal_type")),
            quantity=parse_quantity(body.get("quantity")),
        )


# --- What the license server holds ---------------------------------------------------------------


@attrs.frozen
class KeyPack:
    """Win32_TSLicenseKeyPack: CALs of one version and type, installed from one purchase [§3]."""

    id: int
    key_pack_id: str            # the 35-character ID the Clearinghouse issued
    purchase: PurchaseRef
    product_version: ProductVersion
    cal_type: CalType
    total: int
    issued: int
    installed_at: int
    # Set when the Clearinghouse retired the key pack because its purchase was recovered onto
    # another license server: the CALs issued stay, no new one is issued from it.
    retired_at: int | None = None

    @property
    def available(self) -> int:
        return 0 if self.retired_at is not None else self.total - self.issued


@attrs.frozen
class License:
    """Win32_TSIssuedLicense: a license the server issued to one device [§5]."""

    id: int
    kind: LicenseKind
    status: LicenseStatus
    hwid: str
    machine: str
    user: str
    terminal_server: str
    product_version: ProductVersion
    key_pack: int | None          # KeyPack.id for a permanent CAL, None for a temporary license
    validated: bool               # the terminal server reported a successful logon with it [§1, KB287687]
    issued_at: int
    expires_at: int
    renewals: int = 0

    def live(self, now: int) -> bool:
        return self.status is LicenseStatus.ACTIVE and now < self.expires_at
