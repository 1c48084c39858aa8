"""The RDP front's state machine, driven by the Python mirror of a client over an in-memory
transport (TLS is the transport's business and is exercised by the xfreerdp tests)."""
import json
import struct
import types

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from clients.rdp import crypto, server, wire
from tests.clients.rdp import mirror
from tsls.core.model import ProductVersion
from tsls.errors import Code

KEY = crypto.generate_key(1024)
LICENSE = server.client_license({"license_id": 7, "kind": "permanent", "token": "TSLS1.7.abc",
                                 "expires_at": "2027-01-01T00:00:00Z", "machine": "lictest",
                                 "hwid": mirror.hwid("lictest").hex()})


class FakeLicensing:
    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    def license(self, hwid, machine, user, presented):
        self.asked.append(dict(hwid=hwid, machine=machine, user=user, presented=presented))
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)


class Driver:
    def __init__(self, licensing, protocols=wire.PROTOCOL_SSL | wire.PROTOCOL_HYBRID, version=ProductVersion.W2003):
        self.clock = Clock()
        self.factory = server.RdpFrontFactory(licensing, KEY, tls_options=None, version=version, clock=self.clock)
        self.summaries = []
        self.factory.observers.append(self.summaries.append)
        self.transport = StringTransport()
        self.transport.startTLS = lambda options: None
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        pdus = []
        while out:
            pdu, out = wire.next_tpkt(out)
            pdus.append(pdu)
        return pdus

    def close(self):
        self.proto.connectionLost(None)
        return self.summaries[-1]

    def to_licensing(self, user="test"):
        """The connection sequence up to the License Request; returns its body."""
        [confirm] = self.send(mirror.connection_request())
        assert confirm[1] == 0xD0
        [response] = self.send(mirror.connect_initial())
        assert wire.parse_x224_data(response)[:2] == b"\x7f\x66"
        assert self.send(mirror.erect_domain()) == []
        [attach] = self.send(mirror.attach_user())
        user_id = 1001 + int.from_bytes(wire.parse_x224_data(attach)[2:4], "big")
        assert user_id == 1007          # after the I/O channel and the three static channels
        for channel in (user_id, 1003, 1004, 1005, 1006):
            [joined] = self.send(mirror.channel_join(user_id, channel))
            assert wire.parse_x224_data(joined)[-2:] == channel.to_bytes(2, "big")
        self.user_id = user_id
        [request] = self.send(mirror.send_data(user_id, wire.SEC_INFO_PKT, mirror.client_info(user=user)))
        kind, body = mirror.parse_server_licensing(request)
        assert kind == wire.LICENSE_REQUEST
        return body

    def licensing(self, message: bytes):
        """The licensing messages the server answers with; what follows licensing goes to ``after``."""
        out = [mirror.server_pdu(pdu) for pdu in self.send(mirror.send_data(self.user_id, wire.SEC_LICENSE_PKT, message))]
        self.after = [pdu for pdu in out if pdu[0] != "licensing"]
        return [pdu[1:] for pdu in out if pdu[0] == "licensing"]


WINDOWS = {"2000": 0x00050000, "2003": 0x00050002, "2008": 0x00060000, "2008R2": 0x00060001, "2012": 0x00060002,
           "2012R2": 0x00060003, "2016": 0x000A0000, "2019": 0x000A0000, "2022": 0x000A0000, "2025": 0x000A0000}


@pytest.mark.parametrize("version", list(ProductVersion), ids=lambda v: v.value)
def test_every_version_licenses_a_client_and_names_its_windows_version(version):
    drv = Driver(FakeLicensing(server.Issue(LICENSE)), version=version)
    request = drv.to_licensing()
    assert struct.unpack_from("<I", request, 32)[0] == WINDOWS[version.value]       # ProductInfo after ServerRandom
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(request))
    [(kind, body)] = drv.licensing(client.on_platform_challenge(challenge))
    assert kind == wire.NEW_LICENSE
    assert json.loads(client.on_new_license(body)) == LICENSE


@pytest.mark.parametrize("version", list(ProductVersion), ids=lambda v: v.value)
def test_the_simulator_makes_an_rdp_front_for_every_version(tmp_path, version):
    from clients.rdp import listen
    ts = types.SimpleNamespace(name="TS01", version=version.value)
    factory = listen.make_factory(ts, state=None, state_dir=str(tmp_path))
    assert factory.product.version == WINDOWS[version.value]


def test_a_new_client_gets_a_new_license():
    licensing = FakeLicensing(server.Issue(LICENSE))
    drv = Driver(licensing)
    client = mirror.LicensingClient()
    [(kind, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert kind == wire.PLATFORM_CHALLENGE and licensing.asked == []   # nothing asked before the challenge is met
    [(kind, body)] = drv.licensing(client.on_platform_challenge(challenge))
    assert kind == wire.NEW_LICENSE
    assert json.loads(client.on_new_license(body)) == LICENSE
    assert licensing.asked == [dict(hwid=mirror.hwid("lictest").hex(), machine="lictest", user="test", presented=None)]
    assert drv.after == [("demand_active", [1, 2, 3, 8, 13, 20])] and not drv.transport.disconnecting
    finish_like_a_server(drv)
    summary = drv.close()
    assert summary["outcome"] == "new_license" and summary["license"] == LICENSE


def finish_like_a_server(drv):
    """After licensing: the client's Confirm Active and finalization PDUs; at its Font List the server
    finishes finalization, then ends the session: Set Error Info, Disconnect Provider Ultimatum."""
    for pdu in (mirror.confirm_active(drv.user_id), mirror.client_data(drv.user_id, 0x1F, struct.pack("<HH", 1, 1002)),
                mirror.client_data(drv.user_id, 0x14, struct.pack("<HHI", 4, 0, 0)),
                mirror.client_data(drv.user_id, 0x14, struct.pack("<HHI", 1, 0, 0))):
        assert drv.send(pdu) == [] and not drv.transport.disconnecting
    out = [mirror.server_pdu(pdu) for pdu in drv.send(mirror.client_data(drv.user_id, 0x27, struct.pack("<HHHH", 0, 0, 3, 50)))]
    assert out == [("data", 0x1F, struct.pack("<HH", 1, 1002)),
                   ("data", 0x14, struct.pack("<HHI", wire.CTRLACTION_COOPERATE, 0, 0)),
                   ("data", 0x14, struct.pack("<HHI", wire.CTRLACTION_GRANTED_CONTROL, drv.user_id, 1002)),
                   ("data", 0x28, struct.pack("<HHHH", 0, 0, 3, 4)),
                   ("data", 0x2F, struct.pack("<I", wire.ERRINFO_RPC_INITIATED_DISCONNECT)),
                   ("ultimatum", wire.RN_PROVIDER_INITIATED)]
    assert drv.transport.disconnecting


def test_a_client_that_leaves_during_finalization_keeps_its_outcome():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    drv.licensing(client.on_platform_challenge(challenge))
    assert drv.send(mirror.confirm_active(drv.user_id)) == []
    assert drv.send(mirror.disconnect_ultimatum()) == [] and drv.transport.disconnecting
    assert drv.close()["outcome"] == "new_license"


def test_the_disconnect_ultimatum_encodes_its_reason():
    """T.125's 6-bit choice then 3-bit reason; FreeRDP reads the low two bits: 1 provider-initiated, 3 user-requested."""
    assert wire.disconnect_ultimatum(wire.RN_USER_REQUESTED) == mirror.disconnect_ultimatum()      # 21 80
    for reason in range(5):
        pdu, rest = wire.next_tpkt(wire.disconnect_ultimatum(reason))
        assert rest == b"" and mirror.server_pdu(pdu) == ("ultimatum", reason)
    data = wire.parse_x224_data(wire.next_tpkt(wire.disconnect_ultimatum(wire.RN_PROVIDER_INITIATED))[0])
    assert ((data[0] & 1) << 1) | (data[1] >> 7) == 1


def test_the_license_request_carries_a_signed_certificate_with_our_key():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    client = mirror.LicensingClient()
    client.on_license_request(drv.to_licensing())
    assert client.server_key.n == KEY.n
    assert crypto.certificate_signature_valid(client.certificate)


def test_an_unchanged_license_is_a_valid_client():
    licensing = FakeLicensing(server.Valid("existing"))
    drv = Driver(licensing)
    client = mirror.LicensingClient(cal=server.cal_bytes(LICENSE))
    [(kind, body)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert kind == wire.ERROR_ALERT
    assert wire.parse_error_alert(body) == wire.ErrorAlert(wire.STATUS_VALID_CLIENT, wire.ST_NO_TRANSITION)
    assert licensing.asked[0]["presented"] == LICENSE
    assert drv.close()["outcome"] == "valid_client"


def test_a_renewed_license_is_an_upgrade_after_the_challenge():
    renewed = {**LICENSE, "expires_at": "2027-03-01T00:00:00Z"}
    drv = Driver(FakeLicensing(server.Issue(renewed)))
    client = mirror.LicensingClient(cal=server.cal_bytes(LICENSE))
    [(kind, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert kind == wire.PLATFORM_CHALLENGE
    [(kind, body)] = drv.licensing(client.on_platform_challenge(challenge))
    assert kind == wire.UPGRADE_LICENSE
    assert json.loads(client.on_new_license(body)) == renewed
    assert drv.close()["outcome"] == "upgrade_license"


def _alert(replies):
    [(kind, body)] = replies
    assert kind == wire.ERROR_ALERT
    return wire.parse_error_alert(body)


def test_a_wrong_hwid_mac_is_refused():
    licensing = FakeLicensing(server.Valid("x"))
    drv = Driver(licensing)
    client = mirror.LicensingClient(cal=server.cal_bytes(LICENSE))
    message = bytearray(client.on_license_request(drv.to_licensing()))
    message[-1] ^= 0xFF
    assert _alert(drv.licensing(bytes(message))) == wire.ErrorAlert(wire.ERR_INVALID_MAC, wire.ST_TOTAL_ABORT)
    assert licensing.asked == [] and drv.close()["code"] == "INVALID_MAC"


def test_a_license_tsls_cannot_read_is_replaced_by_a_new_one():
    licensing = FakeLicensing(server.Issue(LICENSE))
    drv = Driver(licensing)
    client = mirror.LicensingClient(cal=b"\x30\x82 an X.509 license from a real Windows server")
    [(kind, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert kind == wire.PLATFORM_CHALLENGE
    assert [a["presented"] for a in licensing.asked] == [None]       # asked as a device with no license
    [(kind, body)] = drv.licensing(client.on_platform_challenge(challenge))
    assert kind == wire.UPGRADE_LICENSE
    assert json.loads(client.on_new_license(body)) == LICENSE
    assert drv.close()["outcome"] == "upgrade_license"


def test_a_challenge_response_with_a_wrong_mac_is_refused():
    licensing = FakeLicensing(server.Issue(LICENSE))
    drv = Driver(licensing)
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    response = bytearray(client.on_platform_challenge(challenge))
    response[-1] ^= 0x01
    assert _alert(drv.licensing(bytes(response))) == wire.ErrorAlert(wire.ERR_INVALID_MAC, wire.ST_TOTAL_ABORT)
    assert licensing.asked == [] and drv.close()["code"] == "INVALID_MAC"


def test_a_response_to_another_challenge_is_refused():
    licensing = FakeLicensing(server.Issue(LICENSE))
    drv = Driver(licensing)
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    other = wire.platform_challenge(client.keys.encrypt(b"another one"), client.keys.mac(b"another one"))
    assert _alert(drv.licensing(client.on_platform_challenge(wire.split_licensing(other)[1]))).code == wire.ERR_INVALID_CLIENT
    assert licensing.asked == [] and drv.close()["code"] == "BAD_CHALLENGE"


@pytest.mark.parametrize("code,error", [("NO_LICENSE_SERVER", wire.ERR_NO_LICENSE_SERVER),
                                        ("NO_LICENSE_AVAILABLE", wire.ERR_INVALID_CLIENT)])
def test_refusals_are_error_alerts_that_abort(code, error):
    drv = Driver(FakeLicensing(server.Refuse(server.RDP_ERRORS.get(Code(code), wire.ERR_INVALID_CLIENT), code, "no")))
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert _alert(drv.licensing(client.on_platform_challenge(challenge))) == wire.ErrorAlert(error, wire.ST_TOTAL_ABORT)
    assert drv.close()["code"] == code


def test_a_failing_backend_aborts_licensing_and_nothing_else():
    drv = Driver(FakeLicensing(RuntimeError("boom")))
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    assert _alert(drv.licensing(client.on_platform_challenge(challenge))).state == wire.ST_TOTAL_ABORT
    assert drv.close()["code"] == "INTERNAL_ERROR"


def test_a_client_without_tls_is_told_so():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    [failure] = drv.send(mirror.connection_request(protocols=wire.PROTOCOL_RDP))
    assert failure[7] == 0x03 and failure[-4:] == b"\x01\x00\x00\x00"     # SSL_REQUIRED_BY_SERVER
    assert drv.close()["code"] == "TLS_REQUIRED"


def test_malformed_licensing_input_gets_an_alert_and_a_close():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    drv.to_licensing()
    alert = _alert(drv.licensing(mirror.licensing(wire.NEW_LICENSE_REQUEST, b"\x01\x00")))
    assert alert == wire.ErrorAlert(wire.ERR_INVALID_MESSAGE_LEN, wire.ST_TOTAL_ABORT)
    assert drv.transport.disconnecting and drv.close()["code"] == "TRUNCATED"


def test_out_of_sequence_messages_are_refused():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    drv.to_licensing()
    _alert(drv.licensing(mirror.licensing(wire.PLATFORM_CHALLENGE_RESPONSE, bytes(60))))
    assert drv.close()["code"] == "UNEXPECTED_PDU"


def test_garbage_before_licensing_closes_without_a_traceback():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    assert drv.send(b"GET / HTTP/1.1\r\n\r\n") == []
    assert drv.transport.disconnecting and drv.close()["code"] == "NOT_TPKT"


def test_a_silent_client_times_out():
    drv = Driver(FakeLicensing(server.Issue(LICENSE)))
    drv.to_licensing()
    drv.clock.advance(server.IDLE_TIMEOUT - 1)
    assert not drv.transport.disconnecting
    drv.clock.advance(1)
    assert drv.transport.disconnecting and drv.close()["code"] == "IDLE_TIMEOUT"


@pytest.mark.parametrize("grace_over,expected", [(True, "refused"), (False, "valid")])
@pytest_twisted.inlineCallbacks
def test_no_license_server_after_the_grace_period(tmp_path, grace_over, expected):
    """The simulated terminal server's own rules decide when no license server answers (none listens
    on the endpoint it is given); its time is a task.Clock."""
    from clients.tssim import ClientKeepsLicense, TerminalServer, TerminalServerState
    from twisted.internet import reactor

    clock = Clock()
    clock.advance(1_800_000_000)
    state = TerminalServerState(str(tmp_path / "ts.json"), clock=clock)
    if grace_over:
        state.data["TS01"] = {"grace_started_at": 1_800_000_000 - 200 * 86400}
    ts = TerminalServer(reactor, "TS01", "2003", "per_device", [f"unix:{tmp_path}/no-license-server.sock"],
                        ClientKeepsLicense(), state)
    licensing = server.LicenseServerLicensing(ts, state)
    answer = yield licensing.license(mirror.hwid("pc").hex(), "pc", "u", None)
    if expected == "refused":
        assert answer == server.Refuse(wire.ERR_NO_LICENSE_SERVER, "NO_LICENSE_SERVER", answer.message)
    else:
        assert isinstance(answer, server.Valid) and "grace period" in answer.why


def test_the_simulators_keys_are_made_once_and_kept_private(tmp_path):
    from clients.rdp import listen
    first = listen.licensing_key(str(tmp_path))
    assert listen.licensing_key(str(tmp_path)) == first and first.size == 256
    listen.tls_options(str(tmp_path), "TS01")
    for name in ("licensing-key.pem", "tls.pem"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0


def test_a_client_flooding_while_the_license_server_is_asked_is_cut_off():
    licensing = FakeLicensing(None)
    licensing.license = lambda *a: defer.Deferred()          # the license server takes its time
    drv = Driver(licensing)
    client = mirror.LicensingClient()
    [(_, challenge)] = drv.licensing(client.on_license_request(drv.to_licensing()))
    drv.licensing(client.on_platform_challenge(challenge))
    assert drv.proto.busy and not drv.transport.disconnecting
    flood = mirror.send_data(drv.user_id, wire.SEC_LICENSE_PKT, bytes(60000))
    for _ in range(3):
        drv.send(flood)
    assert drv.transport.disconnecting and drv.close()["code"] == "TOO_LARGE"
