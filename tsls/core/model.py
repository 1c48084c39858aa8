"""The nouns of Terminal Server licensing, as enumerations and frozen attrs values.

Sources are cited by section of docs/behaviour.md, in brackets.
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
    """Windows Server versions: of a terminal server (RD Session Host), of a license server, and of
    the CALs sold for them [§3, §9]. Everything known about each is in one table, ``VERSIONS``."""

    W2000 = "2000"
    W2003 = "2003"
    W2008 = "2008"
    W2008R2 = "2008R2"
    W2012 = "2012"
    W2012R2 = "2012R2"
    W2016 = "2016"
    W2019 = "2019"
    W2022 = "2022"
    W2025 = "2025"

    # The CAL generation, which orders "same or newer" [§3, §9]: VERSIONS[v].generation, set on each
    # member below the table (a plain attribute: the rules compare it several times per logon).
    rank: int

    @property
    def info(self) -> "VersionInfo":
        return VERSIONS[self]

    @property
    def label(self) -> str:
        return VERSIONS[self].label

    @property
    def windows_version(self) -> tuple[int, int]:
        """(major, minor) of the Windows release, as an RDP ProductInfo dwVersion carries it."""
        return VERSIONS[self].windows

    @property
    def has_cal(self) -> bool:
        """Whether CALs of this version exist: there is no separate 2012 R2 CAL [§9, NOLS]."""
        return VERSIONS[self].cal

    def serves(self, terminal_server: "ProductVersion") -> bool:
        """A CAL of this version serves a terminal server of that version."""
        return cal_serves_host(self, terminal_server)

    @classmethod
    def parse(cls, text: object) -> "ProductVersion":
        if isinstance(text, str):
            text = text.replace(" ", "").replace("-", "").upper()
        return parse_enum(cls, text, "product version")

    @classmethod
    def newest(cls) -> "ProductVersion":
        return max(cls, key=lambda v: (v.rank, v.windows_version))


@attrs.frozen
class VersionInfo:
    """One row of the version table.

    generation: the CAL generation. A 2008 TS CAL is functionally equal to a 2008 R2 RDS CAL
      [§3, technet hh553159] and there is no separate 2012 R2 CAL, so 2012 R2 hosts and license
      servers take the 2012 generation [§9, RDSCAL; NOLS].
    windows: (major, minor) as the RDP ProductInfo dwVersion announces it [RDPELE 2.2.2.1.1].
    wmi_product_version_id: Win32_TSLicenseKeyPack.ProductVersionID (2 = 2008, 3 = 2008 R2,
      4 = 2012); None where Microsoft documents no number [§9, WMI:win32-tslicensekeypack].
    wmi_install_version: the ProductVersion argument of InstallOpen/InstallAgreementLicenseKeyPack
      (2 = 2008/2008 R2, 4 = 2012/2012 R2, 5 = 2016, 6 = 2019); no codes are documented for 2022
      or 2025 [§9, WMI:installagreementlicensekeypack].
    """

    label: str
    generation: int
    windows: tuple[int, int]
    cal: bool = True
    wmi_product_version_id: int | None = None
    wmi_install_version: int | None = None


V = ProductVersion
VERSIONS: dict[ProductVersion, VersionInfo] = {
    V.W2000: VersionInfo("Windows 2000 Server", 0, (5, 0)),
    V.W2003: VersionInfo("Windows Server 2003", 1, (5, 2)),
    V.W2008: VersionInfo("Windows Server 2008", 2, (6, 0), wmi_product_version_id=2, wmi_install_version=2),
    V.W2008R2: VersionInfo("Windows Server 2008 R2", 2, (6, 1), wmi_product_version_id=3, wmi_install_version=2),
    V.W2012: VersionInfo("Windows Server 2012", 3, (6, 2), wmi_product_version_id=4, wmi_install_version=4),
    V.W2012R2: VersionInfo("Windows Server 2012 R2", 3, (6, 3), cal=False, wmi_install_version=4),
    V.W2016: VersionInfo("Windows Server 2016", 4, (10, 0), wmi_install_version=5),
    V.W2019: VersionInfo("Windows Server 2019", 5, (10, 0), wmi_install_version=6),
    V.W2022: VersionInfo("Windows Server 2022", 6, (10, 0)),
    V.W2025: VersionInfo("Windows Server 2025", 7, (10, 0)),
}
del V
for _version, _info in VERSIONS.items():
    _version.rank = _info.generation
del _version, _info


# --- The compatibility rules [§9, RDSCAL; NOLS]; docs/versions.md has them as tables -------------------

def cal_serves_host(cal: ProductVersion, host: ProductVersion) -> bool:
    """A CAL serves a session host of its version or older, never a newer one: "You can't use RDS
    CALs for earlier versions to access later versions of Windows Server" [§9, RDSCAL]. So 2012 and
    2012 R2 hosts need 2012 or newer CALs; 2008 and 2008 R2 hosts take 2008, 2008 R2 or newer ones."""
    return cal.rank >= host.rank


def server_hosts_cal(server: ProductVersion, cal: ProductVersion) -> bool:
    """A license server hosts CALs of its version and all earlier ones, never newer: a 2008 R2
    license server only 2008 R2 and earlier, a 2012 R2 one up to 2012 [§9, RDSCAL; NOLS]."""
    return cal.rank <= server.rank


def server_serves_host(server: ProductVersion, host: ProductVersion) -> bool:
    """A license server must be the same version as the session host or newer: "A terminal server
    running Windows Server 2008 can only communicate with a license server running Windows Server
    2008" [§3, technet cc775148]; a 2003 terminal server does not talk to a Windows 2000 license
    server [§3, WP2003]. GetTStoLSConnectivityStatus reports the opposite as LOWER_VERSION [§9]."""
    return server.rank >= host.rank


def check_cal_version(version: ProductVersion) -> ProductVersion:
    if not version.has_cal:
        raise TslsError(Code.NO_SUCH_CAL_VERSION, f"there is no separate {version.label} CAL: "
                        f"{version.label} session hosts take CALs of the same generation or newer, "
                        "e.g. 2012 (docs/versions.md)", product_version=version.value)
    return version


def check_server_hosts(server: ProductVersion, cal: ProductVersion) -> None:
    """Installing CALs newer than the license server is refused, naming both versions."""
    if not server_hosts_cal(server, cal):
        raise TslsError(Code.CAL_NEWER_THAN_SERVER,
                        f"a {server.label} license server cannot host {cal.label} CALs: a license server hosts "
                        f"CALs of its own version and earlier; upgrade the license server first",
                        server_version=server.value, cal_version=cal.value)


class CalType(enum.Enum):
    """The two TS CAL types, which are also the two terminal server licensing modes [§1]."""

    PER_DEVICE = "per_device"
    PER_USER = "per_user"

    @classmethod
    def parse(cls, text: object) -> "CalType":
        return parse_enum(cls, text, "CAL type", loose=True)


class Program(enum.Enum):
    """Licensing programs a key pack is bought through [§3 licensing programs]."""

    RETAIL = "retail"
    OPEN = "open"
    AGREEMENT = "agreement"

    @classmethod
    def parse(cls, text: object) -> "Program":
        return parse_enum(cls, text, "licensing program")


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
        return parse_enum(cls, text, "agreement type", loose=True)


class LicenseKind(enum.Enum):
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class LicenseStatus(enum.Enum):
    """Win32_TSIssuedLicense.LicenseStatus, less the states tsls never produces [§5]."""

    ACTIVE = "active"        # in force (a temporary or a permanent license)
    UPGRADED = "upgraded"    # a temporary license that was replaced by a permanent CAL
    EXPIRED = "expired"      # ran out; a permanent CAL's seat went back to its key pack
    REVOKED = "revoked"      # revoked by an administrator; its seat went back at once


def parse_enum(cls, text, what, loose: bool = False):
    """The member of enumeration ``cls`` whose value is ``text``, or BAD_REQUEST listing the choices.
    ``loose``: any case, and - for _ (per-device is per_device)."""
    if loose and isinstance(text, str):
        text = text.replace("-", "_").lower()
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


def whole_number(value: object, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is a whole number (true and false are not) from ``low`` to ``high``; otherwise
    BAD_REQUEST. The one check every count, quantity and numeric field goes through."""
    if (isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low)
            or (high is not None and value > high)):
        span = "" if low is None else f" from {low} to {high}"
        raise TslsError(Code.BAD_REQUEST, f"{what} must be a whole number{span}")
    return value


def parse_quantity(value: object, what: str = "quantity") -> int:
    return whole_number(value, what, 1, 1_000_000)


@attrs.frozen
class Purchase:
    """CALs a lab operator 'sold' at the mock Clearinghouse."""

    ref: PurchaseRef
    product_version: ProductVersion
    cal_type: CalType
    quantity: int = attrs.field(validator=lambda _i, _a, v: parse_quantity(v))

    def __attrs_post_init__(self) -> None:
        check_cal_version(self.product_version)

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

    def with_status(self, status: LicenseStatus) -> "License":
        """``attrs.evolve(self, status=status)``, built directly (1.2 µs against 2.6 µs): every upgrade,
        expiry and revocation changes a license's status."""
        return License(self.id, self.kind, status, self.hwid, self.machine, self.user, self.terminal_server,
                       self.product_version, self.key_pack, self.validated, self.issued_at, self.expires_at,
                       self.renewals)

    def with_id(self, license_id: int) -> "License":
        """The license as written, with the id the store gave it: built directly from the values the
        core decided (every grant's new license gets its id so)."""
        return License(license_id, self.kind, self.status, self.hwid, self.machine, self.user, self.terminal_server,
                       self.product_version, self.key_pack, self.validated, self.issued_at, self.expires_at,
                       self.renewals)
