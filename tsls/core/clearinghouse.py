"""The Clearinghouse's rules: activation, purchases bound to license servers, recovery [§4].

Pure functions over frozen values; the Clearinghouse daemon stores what they return.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import re

import attrs

from tsls.core.activation import ActivationMethod
from tsls.core.model import CalType, Program, ProductVersion, Purchase, PurchaseRef, check_server_hosts, parse_quantity
from tsls.errors import Code, TslsError

PRODUCT_ID = re.compile(r"[0-9]{5}-[0-9]{3}-[0-9]{7}-[0-9]{5}")      # ASCII digits only (\d takes '²')
REQUIRED_CONTACT = ("first_name", "last_name", "company", "country_region")     # ActivateServerAutomatic [§4]
OPTIONAL_CONTACT = ("email", "org_unit", "address", "city", "state", "postal_code")


class Reason(enum.Enum):
    """ReactivateServerAutomatic reasons 0-4 [§4]."""

    REDEPLOYED = "redeployed"
    CERTIFICATE_CORRUPT = "certificate_corrupt"
    PRIVATE_KEY_COMPROMISED = "private_key_compromised"
    CERTIFICATE_EXPIRED = "certificate_expired"
    SERVER_UPGRADED = "server_upgraded"


class ServerStatus(enum.Enum):
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    RETIRED = "retired"          # replaced by a reactivation


def check_product_id(product_id: object) -> str:
    if not isinstance(product_id, str) or not PRODUCT_ID.fullmatch(product_id):
        raise TslsError(Code.BAD_REQUEST, "a product ID looks like 12345-123-1234567-12345")
    return product_id


def check_contact(contact: object, required=REQUIRED_CONTACT) -> dict:
    """Activation needs FirstName, LastName, Company and CountryRegion; reactivation and
    deactivation need FirstName and LastName [§4, WMI Win32_TSLicenseServer]."""
    if not isinstance(contact, dict):
        raise TslsError(Code.BAD_REQUEST, "contact must be an object")
    unknown = set(contact) - set(REQUIRED_CONTACT) - set(OPTIONAL_CONTACT)
    if unknown:
        raise TslsError(Code.BAD_REQUEST, f"unknown contact fields: {', '.join(sorted(unknown))}")
    for name, value in contact.items():
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            raise TslsError(Code.BAD_REQUEST, f"contact {name} must be 1 to 128 characters")
    missing = [name for name in required if name not in contact]
    if missing:
        raise TslsError(Code.BAD_REQUEST, f"activation needs the contact's {', '.join(missing)}")
    return dict(contact)


def certificate_digest(certificate: str) -> str:
    """What the Clearinghouse keeps of a server's certificate: never the certificate itself."""
    return hashlib.sha256(certificate.encode()).hexdigest()


@attrs.frozen
class Server:
    license_server_id: str
    product_id: str
    status: ServerStatus
    method: ActivationMethod
    contact: dict = attrs.field(repr=False)
    activated_at: int
    certificate_digest: str = attrs.field(repr=False, default="")


@attrs.frozen
class Sale:
    """A purchase as the Clearinghouse holds it: how many are installed, and on which server."""

    purchase: Purchase
    installed: int = 0
    bound_to: str | None = None

    @property
    def remaining(self) -> int:
        return self.purchase.quantity - self.installed


def purchase_key(ref: PurchaseRef, version: ProductVersion | None, cal_type: CalType | None) -> str:
    """What identifies a sale: a retail code alone; Open License and agreement numbers with the
    product version and CAL type, since one agreement buys many products."""
    if ref.program is Program.RETAIL:
        return ref.reference
    if version is None or cal_type is None:
        raise TslsError(Code.BAD_REQUEST, f"a {ref.program.value} purchase needs its product_version and cal_type")
    return f"{ref.reference}:{version.value}:{cal_type.value}"


def check_server(server: Server | None, license_server_id: str, product_id: str, certificate: object) -> Server:
    """The caller must be an activated license server, named by its ID and product ID together, and
    must hold the certificate its activation gave it [§4: the certificate proves its identity]."""
    if server is None or server.product_id != product_id:
        raise TslsError(Code.UNKNOWN_LICENSE_SERVER, "no license server with that license server ID and product ID")
    if not isinstance(certificate, str) or not hmac.compare_digest(certificate_digest(certificate),
                                                                   server.certificate_digest):
        raise TslsError(Code.BAD_CREDENTIALS, "the license server's certificate does not match its activation")
    if server.status is not ServerStatus.ACTIVATED:
        raise TslsError(Code.NOT_ACTIVATED, f"license server {license_server_id} is {server.status.value}")
    return server


def named_server(server: Server | None, license_server_id: str) -> Server:
    """A license server named on the telephone by its ID alone (the agent has no certificate to
    check): it must exist and be activated."""
    if server is None:
        raise TslsError(Code.UNKNOWN_LICENSE_SERVER, f"no license server {license_server_id}")
    if server.status is not ServerStatus.ACTIVATED:
        raise TslsError(Code.NOT_ACTIVATED, f"license server {license_server_id} is {server.status.value}")
    return server


def activate(current: Server | None, again: bool = False) -> Server | None:
    """A product ID is activated once. ``again`` (the operator, on the telephone route): the product
    ID's current activation is retired and a new one made, so a license server whose codes were
    lost or mistyped is never stuck (docs/activation.md). Returns the activation to retire."""
    if current is not None and not again:
        raise TslsError(Code.ALREADY_ACTIVATED, "this product ID is already activated as "
                        f"{current.license_server_id}; reactivate or deactivate it instead, or (the operator, "
                        "by telephone) activate it again: tsls-admin clearinghouse activate --again")
    return current


def install(sale: Sale | None, server: Server, quantity: object,
            server_version: ProductVersion | None = None) -> tuple[Sale, int]:
    """Bind the purchase to the server that installs it first and take ``quantity`` CALs from it
    (default: all that remain). Returns the new sale and how many CALs the key pack carries.
    ``server_version``, when the license server gives it: CALs newer than it are refused before
    anything is bound [§9, RDSCAL]."""
    if sale is None:
        raise TslsError(Code.UNKNOWN_PURCHASE, "no purchase with that license information was sold")
    if server_version is not None:
        check_server_hosts(server_version, sale.purchase.product_version)
    if sale.bound_to is not None and sale.bound_to != server.license_server_id:
        raise TslsError(Code.PURCHASE_BOUND, "this purchase is installed on another license server; "
                        "a rebuilt server gets its CALs back by recovery")
    wanted = sale.remaining if quantity is None else parse_quantity(quantity)
    if wanted > sale.remaining or sale.remaining == 0:
        raise TslsError(Code.QUANTITY_EXCEEDED, f"the purchase has {sale.purchase.quantity} CALs, {sale.installed} "
                        f"already installed, {sale.remaining} remaining; {wanted} were asked for",
                        quantity=sale.purchase.quantity, installed=sale.installed, remaining=sale.remaining)
    return attrs.evolve(sale, installed=sale.installed + wanted, bound_to=server.license_server_id), wanted


@attrs.frozen
class IssuedPack:
    """A key pack the Clearinghouse issued from a sale and has not retired."""

    key_pack_id: str
    license_server_id: str
    quantity: int
    cal_type: CalType | None = None      # set when converted: the other type than the sale's


@attrs.frozen
class Recovery:
    """What a recovery does: the sale's new binding, the key packs the caller gets back (``kept``,
    when it already holds the purchase), how many CALs a new key pack carries (0: none issued), and
    the key packs retired on the server the purchase moves away from."""

    sale: Sale
    kept: tuple[IssuedPack, ...] = ()
    issue: int = 0
    retired: tuple[IssuedPack, ...] = ()


def _installed_sale(sale: Sale | None, server_version: ProductVersion | None) -> Sale:
    """The sale a recovery or a migration moves: sold, installed, and of CALs ``server_version`` (if
    given) can host."""
    if sale is None:
        raise TslsError(Code.UNKNOWN_PURCHASE, "no purchase with that license information was sold")
    if server_version is not None:
        check_server_hosts(server_version, sale.purchase.product_version)
    if sale.installed == 0:
        raise TslsError(Code.NOT_FOUND, "this purchase was never installed: install it instead")
    return sale


def recover(sale: Sale | None, server: Server, live: tuple[IssuedPack, ...],
            server_version: ProductVersion | None = None) -> Recovery:
    """A rebuilt license server gets back every CAL of the purchase that was installed [§4]. A recovery
    moves the purchase, it never adds CALs: the caller that already holds the purchase gets the key
    packs it has; otherwise every key pack of the purchase still live elsewhere is retired (the old
    server learns it at its next contact) and one key pack of the installed quantity is issued.
    CALs newer than ``server_version`` are refused, as by ``install``."""
    sale = _installed_sale(sale, server_version)
    held = tuple(p for p in live if p.license_server_id == server.license_server_id)
    if sale.bound_to == server.license_server_id and sum(p.quantity for p in held) == sale.installed:
        return Recovery(sale, kept=held)
    return Recovery(attrs.evolve(sale, bound_to=server.license_server_id), issue=sale.installed, retired=live)


@attrs.frozen
class KeyPackRecord:
    """A key pack the Clearinghouse issued, as it keeps it: from which sale, to which server."""

    pack: IssuedPack
    sale_key: str
    retired_at: int | None = None


def claim_key_pack(record: KeyPackRecord | None, server: Server, sale: Sale | None,
                   server_version: ProductVersion | None = None) -> IssuedPack:
    """A license server installs a key pack by the 35-character ID the Clearinghouse read out on the
    telephone or web route [§9, MIGR; WMI InstallLicenseKeyPack]: only a key pack issued to that very
    server and not retired is handed over (again and again: installing it twice adds nothing, the
    license server holds it once). Anything else is refused, never installed as another pack."""
    if record is None or record.pack.license_server_id != server.license_server_id or sale is None:
        raise TslsError(Code.UNKNOWN_KEY_PACK, "the Clearinghouse issued no key pack with that ID to this license "
                        "server: check the ID read out, or ask the Clearinghouse for one (tsls-admin clearinghouse "
                        "issue)")
    if record.retired_at is not None:
        raise TslsError(Code.UNKNOWN_KEY_PACK, "that key pack was retired (its purchase moved to another license "
                        "server)")
    if server_version is not None:
        check_server_hosts(server_version, sale.purchase.product_version)
    return record.pack


def convert_key_pack(record: KeyPackRecord | None, server: Server, count: int) -> tuple[IssuedPack, int]:
    """ConvertLicenses at the Clearinghouse [§9]: ``count`` CALs taken from a live key pack of this
    server go into a new key pack of the other type; the purchase's installed count is unchanged.
    Returns the old pack and the CALs left in it (the license server checked that they are unissued)."""
    if record is None or record.pack.license_server_id != server.license_server_id or record.retired_at is not None:
        raise TslsError(Code.UNKNOWN_KEY_PACK, "the Clearinghouse has no live key pack with that ID on this server")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= record.pack.quantity:
        raise TslsError(Code.NOT_ENOUGH_CALS, f"key pack {record.pack.key_pack_id} holds {record.pack.quantity} CALs; "
                        f"{count!r} cannot be converted", available=record.pack.quantity)
    return record.pack, record.pack.quantity - count


class MigrationReason(enum.Enum):
    """The Manage RDS CALs wizard's two reasons to migrate CALs from another license server [§9, MIGR]."""

    REPLACED = "replaced"            # the source license server is being replaced (named, or its OS and ID)
    NOT_WORKING = "not_working"      # the source license server no longer works


def migrate(sale: Sale | None, target: Server, live: tuple[IssuedPack, ...], reason: MigrationReason,
            source_id: str | None, server_version: ProductVersion | None = None) -> Recovery:
    """Migrate a purchase's CALs from the license server that holds them to ``target`` [§9, MIGR]. Like a
    recovery it moves the binding and never adds CALs: every live key pack of the purchase elsewhere is
    retired (the move on record) and one key pack of the installed quantity issued to the target. With
    reason REPLACED the source is named: the purchase must be bound to it (PURCHASE_BOUND otherwise)."""
    sale = _installed_sale(sale, server_version)
    if sale.bound_to == target.license_server_id:
        raise TslsError(Code.ALREADY_MIGRATED, "this purchase is already on this license server")
    if reason is MigrationReason.REPLACED:
        if not source_id:
            raise TslsError(Code.BAD_REQUEST, "migrating from a license server being replaced names it: its license "
                            "server ID")
        if sale.bound_to != source_id:
            raise TslsError(Code.PURCHASE_BOUND, f"this purchase is not on license server {source_id}")
    return Recovery(attrs.evolve(sale, bound_to=target.license_server_id), issue=sale.installed, retired=live)


def purchase_request(ref: PurchaseRef, product_version: ProductVersion | None = None, cal_type: CalType | None = None,
                     quantity: int | None = None) -> dict:
    """A purchase as a license server names it to the Clearinghouse (installation, recovery)."""
    body = ref.to_json()
    if product_version is not None:
        body["product_version"] = product_version.value
    if cal_type is not None:
        body["cal_type"] = cal_type.value
    if quantity is not None:
        body["quantity"] = quantity
    return body


KEY_PACK_ID = re.compile(r"[A-Z0-9]{35}")


@attrs.frozen
class IssuedKeyPack:
    """A key pack as the Clearinghouse issues it to a license server: the one wire shape both sides
    use (docs/clearinghouse.md)."""

    key_pack_id: str
    purchase: PurchaseRef
    product_version: ProductVersion
    cal_type: CalType
    quantity: int

    def to_json(self) -> dict:
        return {"key_pack_id": self.key_pack_id, "reference": self.purchase.reference,
                "purchase": self.purchase.to_json(), "product_version": self.product_version.value,
                "cal_type": self.cal_type.value, "quantity": self.quantity}

    @classmethod
    def from_json(cls, body: object) -> "IssuedKeyPack":
        """Read a key pack the Clearinghouse answered with; a malformed one is CLEARINGHOUSE_ERROR."""
        try:
            if not isinstance(body, dict):
                raise TslsError(Code.BAD_REQUEST, "a key pack is an object")
            key_pack_id = body.get("key_pack_id")
            if not isinstance(key_pack_id, str) or not KEY_PACK_ID.fullmatch(key_pack_id):
                raise TslsError(Code.BAD_REQUEST, "a key pack ID is 35 upper-case letters and digits")
            return cls(key_pack_id, PurchaseRef.from_json(body.get("purchase")),
                       ProductVersion.parse(body.get("product_version")), CalType.parse(body.get("cal_type")),
                       parse_quantity(body.get("quantity")))
        except TslsError as e:
            raise TslsError(Code.CLEARINGHOUSE_ERROR, f"the Clearinghouse answered with a malformed key pack: "
                            f"{e.message}") from None
