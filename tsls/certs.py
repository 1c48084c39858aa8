"""Lab TLS certificates: a lab CA and a server certificate for 127.0.0.1 and localhost.

    tsls make-certs --dir tsls-data/tls
    tsls lab --listen ssl:4870:interface=127.0.0.1:privateKey=tsls-data/tls/server.pem
    tsls-admin --server tls:127.0.0.1:4870:trustRoots=tsls-data/tls/ca status
"""
from __future__ import annotations

import datetime
import ipaddress
import os

from tsls.server.auth import write_private


def make_certs(directory: str, days: int = 825) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    os.makedirs(os.path.join(directory, "ca"), exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsls lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("tsls lab CA")).issuer_name(name("tsls lab CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = key()
    server = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    server_pem = server_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()) + server.public_bytes(pem)
    paths = {"server": os.path.join(directory, "server.pem"), "ca": os.path.join(directory, "ca", "ca.pem")}
    write_private(paths["server"], server_pem.decode().strip())
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(pem))
    return paths
