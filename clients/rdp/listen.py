"""Starting the RDP listener: the simulator's keys, kept with its state, and the endpoint.

The terminal server has two keys of its own, made on first use in ``<state-dir>/rdp/``
(owner-only files): the RSA key its licensing certificate carries, and the key and self-signed
certificate of its TLS endpoint. Both survive restarts, as a real terminal server's do.
"""
from __future__ import annotations

import json
import os

from twisted.internet import defer, ssl

from clients.rdp import crypto
from clients.rdp.server import LicenseServerLicensing, RdpFrontFactory
from tsls.listener import server_endpoint
from tsls.certs import new_key, private_pem, self_signed_pem
from tsls.core.model import ProductVersion
from tsls.files import write_private

DEFAULT_LISTEN = "tcp:3389:interface=127.0.0.1"


def _load_or_make(path: str, make) -> bytes:
    if not os.path.exists(path):
        write_private(path, make().strip(), newline=True)
    with open(path, "rb") as f:
        return f.read()


def licensing_key(directory: str) -> crypto.RsaKey:
    from cryptography.hazmat.primitives import serialization

    pem = _load_or_make(os.path.join(directory, "licensing-key.pem"), lambda: private_pem(new_key()))
    return crypto.rsa_key(serialization.load_pem_private_key(pem, password=None))


def tls_options(directory: str, name: str):
    pem = _load_or_make(os.path.join(directory, "tls.pem"), lambda: self_signed_pem(name))
    return ssl.PrivateCertificate.loadPEM(pem).options()


def make_factory(terminal_server, state, state_dir: str) -> RdpFrontFactory:
    directory = os.path.join(state_dir, "rdp", terminal_server.name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return RdpFrontFactory(LicenseServerLicensing(terminal_server, state), licensing_key(directory),
                           tls_options(directory, terminal_server.name), ProductVersion.parse(terminal_server.version))


def listen(reactor, factory: RdpFrontFactory, endpoint: str = DEFAULT_LISTEN):
    """Fires with the listening port."""
    return server_endpoint(reactor, endpoint).listen(factory)


async def serve(reactor, terminal_server, state, state_dir: str, endpoint: str | None, connections: int | None,
                as_json: bool) -> None:
    """``tsls-ts rdp``: listen, print a line for each client, stop after ``connections`` if given."""
    factory = make_factory(terminal_server, state, state_dir)
    done = defer.Deferred()
    seen = []

    def report(summary):
        seen.append(summary)
        lic = summary.get("license") or {}
        row = {"machine": summary.get("machine"), "user": summary.get("user"), "outcome": summary["outcome"],
               "license_id": lic.get("license_id"), "kind": lic.get("kind"), "expires_at": lic.get("expires_at"),
               "code": summary.get("code"), "message": summary.get("message")}
        if as_json:
            print(json.dumps(row, sort_keys=True), flush=True)
        else:
            print(" ".join(f"{k}={v}" for k, v in row.items() if v is not None), flush=True)
        if connections and len(seen) >= connections and not done.called:
            done.callback(None)

    factory.observers.append(report)
    port = await listen(reactor, factory, endpoint or DEFAULT_LISTEN)
    address = port.getHost()
    if not as_json:
        print(f"terminal server {terminal_server.name} listening for RDP clients on {address.host}:{address.port}",
              flush=True)
    # The ready line (docs/rdp.md): one line of JSON once the port is bound, in text mode too.
    print(json.dumps({"event": "ready", "command": "tsls-ts rdp", "pid": os.getpid(),
                      "terminal_server": terminal_server.name,
                      "rdp": {"host": address.host, "port": address.port}}), flush=True)
    try:
        await done
    finally:
        await port.stopListening()
