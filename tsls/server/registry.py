"""Who may ask: terminal servers' registrations, the Terminal Server Computers group, the
license server security group policy, and the proof a hello carries (tsls/server/auth.py)."""
from __future__ import annotations

import attrs
from twisted.internet import defer

from tsls.core.events import Event, EventId
from tsls.errors import Code, TslsError
from tsls.jsonshapes import iso
from tsls.server import auth
from tsls.server.storage import Identity, Registration


class Registry:
    def __init__(self, writer, identity: Identity) -> None:
        self.writer = writer
        self.identity = identity

    def authenticate(self, role: str, name: str, nonce: str | None, proof: object) -> defer.Deferred:
        """Check a hello: an administrator always proves itself; a terminal server must when its name
        is registered. Fires with whether the terminal server proved its identity."""
        if role == "admin":
            auth.check_proof(self.identity.admin_secret, nonce, "admin", "", proof)
            return defer.succeed(True)

        def job(store, now):
            registered = store.registration(name)
            if registered is None:
                if proof is not None:
                    raise TslsError(Code.UNKNOWN_TERMINAL_SERVER, f"no terminal server {name!r} is registered")
                return False
            auth.check_proof(registered.secret, nonce, "terminal_server", name, proof)
            return True
        return self.writer.submit(job)

    def register_terminal_server(self, name: str) -> defer.Deferred:
        def job(store, now):
            secret = auth.new_secret()
            previous = store.registration(name)
            store.save_registration(Registration(name, secret, now, previous is not None and previous.in_group))
            return {"name": name, "secret": secret,
                    "note": "give this secret to the terminal server; it is not shown again"}
        return self.writer.submit(job)

    def set_group_membership(self, name: str, member: bool) -> defer.Deferred:
        def job(store, now):
            registered = store.registration(name)
            if registered is None:
                raise TslsError(Code.UNKNOWN_TERMINAL_SERVER, f"register {name!r} first: only terminal servers that "
                                "prove who they are can be in the Terminal Server Computers group")
            store.save_registration(attrs.evolve(registered, in_group=member))
            what = "added to" if member else "removed from"
            store.add_events([Event(now, EventId.POLICY_CHANGED, f"{name} {what} the Terminal Server Computers group",
                                    terminal_server=name)])
            return self._terminal_servers(store)
        return self.writer.submit(job)

    def set_security_group_policy(self, enabled: bool | None, prevent_upgrade: bool | None = None) -> defer.Deferred:
        """Either policy or both: the license server security group policy, and the Prevent License
        Upgrade policy (a session host is not given a CAL newer than itself) [§3, §5]."""
        if enabled is None and prevent_upgrade is None:
            raise TslsError(Code.BAD_REQUEST, "set_policy needs security_group or prevent_upgrade")

        def job(store, now):
            if enabled is not None:
                store.set_security_group_policy(enabled)
                store.add_events([Event(now, EventId.POLICY_CHANGED, "license server security group policy "
                                        + ("enabled" if enabled else "disabled"))])
            if prevent_upgrade is not None:
                store.set_prevent_upgrade_policy(prevent_upgrade)
                store.add_events([Event(now, EventId.POLICY_CHANGED, "Prevent License Upgrade policy "
                                        + ("enabled" if prevent_upgrade else "disabled"))])
            return self._terminal_servers(store)
        return self.writer.submit(job)

    def terminal_servers(self) -> defer.Deferred:
        return self.writer.submit(lambda store, now: self._terminal_servers(store))

    @staticmethod
    def _terminal_servers(store) -> dict:
        return {
            "security_group_policy": store.security_group_policy(),
            "prevent_upgrade_policy": store.prevent_upgrade_policy(),
            "terminal_servers": [{"name": r.name, "group": r.in_group, "registered_at": iso(r.registered_at)}
                                 for r in store.registrations()],
        }
