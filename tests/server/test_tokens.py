"""The license a device stores and presents (tsls.server.tokens)."""
import hashlib
import hmac

import pytest

from tsls.errors import Code, TslsError
from tsls.server import tokens


def test_a_token_is_the_license_id_and_its_hmac_over_the_id_and_the_device_with_each_servers_secret():
    secrets = [bytes(range(32)), b"\x00" * 32, b"another secret of another server"]
    for n in range(50):
        secret, hwid = secrets[n % 3], f"{n:040x}"
        mac = hmac.new(secret, f"{n}|{hwid}".encode(), hashlib.sha256).hexdigest()[:32]
        assert tokens.sign(secret, n, hwid) == f"TSLS1.{n}.{mac}"
        assert tokens.verify(secret, f"TSLS1.{n}.{mac}", hwid) == n
        for wrong in (secrets[(n + 1) % 3], secret + b"x"):
            with pytest.raises(TslsError) as e:
                tokens.verify(wrong, f"TSLS1.{n}.{mac}", hwid)
            assert e.value.code is Code.INVALID_LICENSE
        with pytest.raises(TslsError):
            tokens.verify(secret, f"TSLS1.{n}.{mac}", hwid + "0")


def test_the_mac_is_hmac_sha256_for_secrets_of_every_length_and_hwids_that_are_not_ascii():
    # tokens keys SHA-256 itself (RFC 2104's padded key blocks): a key longer than a block is hashed first
    for size in (0, 1, 31, 32, 63, 64, 65, 100, 200):
        secret = bytes((7 * i + size) % 256 for i in range(size))
        for n, hwid in ((0, "0" * 40), (10 ** 17, "é-ü-€-𝄞"), (17, "x")):
            mac = hmac.new(secret, f"{n}|{hwid}".encode(), hashlib.sha256).hexdigest()[:32]
            assert tokens.sign(secret, n, hwid) == f"TSLS1.{n}.{mac}"
            assert tokens.verify(secret, f"TSLS1.{n}.{mac}", hwid) == n
