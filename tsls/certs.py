"""Lab TLS certificates: a lab CA and a server certificate for 127.0.0.1 and localhost.

    tsls make-certs --dir tsls-data/tls
    tsls lab --listen ssl:4870:interface=127.0.0.1:privateKey=tsls-data/tls/server.pem
    tsls-admin --server tls:127.0.0.1:4870:trustRoots=tsls-data/tls/ca status
"""
from __future__ import annotations

import datetime
import ipaddress
import os

from tsls.files import write_private


def new_key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key) -> str:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def self_signed_pem(common_name: str, days: int = 825) -> str:
    """A new key and a self-signed certificate for it, in one PEM (as the RDP front's TLS endpoint uses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    return private_pem(key) + cert.public_bytes(serialization.Encoding.PEM).decode()


def make_certs(directory: str, days: int = 825) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    os.makedirs(os.path.join(directory, "ca"), mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsls lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = new_key()
    ca = (x509.CertificateBuilder().subject_name(name("tsls lab CA")).issuer_name(name("tsls lab CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = new_key()
    server = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    server_pem = private_pem(server_key) + server.public_bytes(pem).decode()
    paths = {"server": os.path.join(directory, "server.pem"), "ca": os.path.join(directory, "ca", "ca.pem")}
    write_private(paths["server"], server_pem.strip(), newline=True)
    write_private(paths["ca"], ca.public_bytes(pem))
    return paths
