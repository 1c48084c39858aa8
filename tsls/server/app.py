"""The license server's operations, one object per concern, behind one facade for the protocol.

Each operation runs as a writer job (tsls/server/writer.py): it reads the world through the
storage seam (tsls/server/storage.py), asks the core for a decision, writes the decision, and
shapes the answer. The parts:

- ``Registry`` (registry.py): terminal-server registrations, the security group policy, hellos;
- ``Activations`` (activation.py): activation and key packs, with the Clearinghouse;
- ``Ledger`` (ledger.py): logons, reports, license queries, revocation;
- ``Records`` (records.py): status, the event log and its followers, usage reports, the lab clock;
- ``ProductLicensing`` (products.py): Per Server / Per Seat products and Small Business Server.
"""
from __future__ import annotations

import secrets

import attrs

from tsls.core.model import ProductVersion, check_server_hosts
from tsls.server import auth
from tsls.server.activation import Activations
from tsls.server.ledger import Ledger
from tsls.server.products import ProductLicensing
from tsls.server.reads import Reads
from tsls.server.records import Records, event_json
from tsls.server.registry import Registry
from tsls.server.storage import Identity

__all__ = ["Identity", "LicenseServer", "event_json", "load_identity", "new_product_id"]


class LicenseServer:
    """The facade the protocol (tsls/server/protocol.py) talks to: each operation is the method of
    the part that owns it."""

    def __init__(self, writer, clearinghouse, identity: Identity, lab_clock=None, reads: Reads | None = None) -> None:
        """``reads``: where the administrator's lists and status are read (tsls.server.reads); by
        default they run as writer jobs on the writer's connection."""
        self.writer = writer
        self.reads = reads or Reads(None, writer)
        self.identity = identity
        self.registry = Registry(writer, identity)
        self.activation = Activations(writer, clearinghouse, identity)
        self.ledger = Ledger(writer, identity)
        self.records = Records(writer, identity, lab_clock)
        self.products = ProductLicensing(writer)
        self.ledger.reads = self.records.reads = self.reads
        self.followers = self.records.followers
        self.console = None             # the web console (tsls.console), when the daemon serves one

        self.authenticate = self.registry.authenticate
        self.register_terminal_server = self.registry.register_terminal_server
        self.set_group_membership = self.registry.set_group_membership
        self.set_security_group_policy = self.registry.set_security_group_policy
        self.terminal_servers = self.registry.terminal_servers

        self.activate = self.activation.activate
        self.reactivate = self.activation.reactivate
        self.deactivate = self.activation.deactivate
        self.install_key_pack = self.activation.install_key_pack
        self.install_key_pack_id = self.activation.install_key_pack_id
        self.convert = self.activation.convert
        self.rebuild = self.activation.rebuild
        self.migrate = self.activation.migrate
        self.uninstall_key_packs = self.activation.uninstall_key_packs
        self.source_uninstall_failed = self.activation.source_uninstall_failed
        self.recover = self.activation.recover
        self.key_packs = self.activation.key_packs
        self.check_in = self.activation.check_in

        self.logon = self.ledger.logon
        self.report_logon = self.ledger.report_logon
        self.licensing_info = self.ledger.licensing_info
        self.licenses = self.ledger.licenses
        self.licenses_page = self.ledger.licenses_page
        self.revoke = self.ledger.revoke
        self.revoke_user = self.ledger.revoke_user

        self.status = self.records.status
        self.set_clock = self.records.set_clock
        self.list_events = self.records.list_events
        self.events_page = self.records.events_page
        self.usage_report = self.records.usage_report
        self.cal_usage_report = self.records.cal_usage_report
        self.set_role = self.records.set_role


def new_product_id() -> str:
    digits = "".join(secrets.choice("0123456789") for _ in range(20))
    return f"{digits[:5]}-{digits[5:8]}-{digits[8:15]}-{digits[15:]}"


def load_identity(store, seed: str | None, version: ProductVersion | None = None) -> Identity:
    """The server's identity, made at first start; ``seed`` (when given) replaces the stored one.
    A database from before the administrator's credential existed gets one now. ``version``: the
    license server's own Windows version (kept; the newest by default); a later start may change it
    (an in-place upgrade) but not below a CAL it hosts (docs/versions.md)."""
    with store.transaction():
        identity = store.identity() or Identity(new_product_id(), "", secrets.token_bytes(32))
        if not identity.admin_secret:
            identity = attrs.evolve(identity, admin_secret=auth.new_secret())
        if seed is not None or not identity.seed:
            identity = attrs.evolve(identity, seed=str(secrets.randbelow(2**32)) if seed is None else seed)
        if version is not None:
            for pack in store.key_packs():
                check_server_hosts(version, pack.product_version)
            identity = attrs.evolve(identity, version=version)
        store.save_identity(identity)
        return identity
