"""The terminal-server simulator's RDP listener: a real RDP client (FreeRDP, mstsc) connects with
TLS security, goes through the connection sequence up to licensing, and gets its CAL from the
license server over MS-RDPELE. Then the connection is closed: no desktop session is offered.

    tsls-ts --name TS01 rdp --listen tcp:3389:interface=127.0.0.1

The wire format is in ``wire``, the cryptography in ``crypto``; this module is the state
machine between them, and ``Licensing`` is what it asks for a device's license (by default the
simulated terminal server, which asks the license server). docs/rdp.md describes the whole flow.
"""
from __future__ import annotations

import json
import os

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from clients.rdp import crypto, wire
from clients.rdp.wire import ProtocolError
from clients.tssim import Verdict
from tsls.core.model import ProductVersion
from tsls.core.terminal import AdmittedBy
from tsls.errors import Code

log = Logger(namespace="tsls.rdp")

IDLE_TIMEOUT = 30          # seconds a client may stay silent before licensing is over
MAX_LICENSE = 16 * 1024    # the largest license a client may present
MAX_BUFFERED = 2 * wire.TPKT_MAX   # unread input held while the license server is asked



# --- what the state machine asks for, and the answers ----------------------------------------------

@attrs.frozen
class Issue:
    """Send this license: a new one, or one that replaces what the client presented."""
    license: dict


@attrs.frozen
class Valid:
    """Licensing is complete and the client keeps what it has (or needs nothing): STATUS_VALID_CLIENT."""
    why: str


@attrs.frozen
class Refuse:
    """Licensing failed: an Error Alert with ST_TOTAL_ABORT, then the connection closes."""
    error: int          # an ERR_* code of MS-RDPBCGR 2.2.1.12.1.3
    code: str           # the stable code in logs (a tsls error code, or the RDP front's own)
    message: str


# tsls refusals as a client understands them; anything not listed is ERR_INVALID_CLIENT.
RDP_ERRORS = {Code.NO_LICENSE_SERVER: wire.ERR_NO_LICENSE_SERVER, Code.RENEWAL_FAILED: wire.ERR_NO_LICENSE_SERVER,
              Code.SERVER_UNREACHABLE: wire.ERR_NO_LICENSE_SERVER}


# What a client's license says: the license server's own record of it (whether a temporary
# license was validated, its status) stays with the license server.
CAL_FIELDS = ("license_id", "kind", "hwid", "machine", "user", "terminal_server", "product_version",
              "key_pack_id", "issued_at", "expires_at", "renewals", "token")


def client_license(license: dict) -> dict:
    return {k: license.get(k) for k in CAL_FIELDS}


def cal_bytes(license: dict) -> bytes:
    """What the client stores (pbLicenseInfo, saved raw as its .cal file): the license as the
    license server issued it, signed token included, as compact JSON."""
    return json.dumps(client_license(license), sort_keys=True, separators=(",", ":")).encode()


def parse_cal(data: bytes) -> dict:
    try:
        lic = json.loads(data)
    except ValueError:
        raise ProtocolError("BAD_LICENSE", "the presented license is not one tsls issued (not JSON)")
    if not isinstance(lic, dict) or not isinstance(lic.get("token"), str) or not isinstance(lic.get("expires_at"), str):
        raise ProtocolError("BAD_LICENSE", "the presented license is not one tsls issued (no token)")
    return lic


class LicenseServerLicensing:
    """Gets a device's license through a simulated terminal server (clients.tssim.TerminalServer):
    the same logon, discovery, grace period and reporting as ``tsls-ts logon``."""

    def __init__(self, terminal_server, state) -> None:
        self.ts = terminal_server
        self.state = state
        self._one_at_a_time = defer.DeferredLock()

    def license(self, hwid: str, machine: str, user: str, presented: dict | None) -> defer.Deferred:
        return self._one_at_a_time.run(lambda: defer.ensureDeferred(self._license(hwid, machine, user, presented)))

    async def _license(self, hwid, machine, user, presented):
        try:
            result = await self.ts.logon_result(machine, user, held=presented, hwid=hwid)
        finally:
            self.state.save()
        if result.verdict is Verdict.REFUSED:
            return Refuse(RDP_ERRORS.get(result.reason, wire.ERR_INVALID_CLIENT), result.reason.value, result.message)
        if result.admitted_by is AdmittedBy.GRACE:
            return Valid(result.message)
        lic = result.license
        if lic is None:
            return Valid(f"{result.outcome_name}: {result.message or 'no license to store'}")
        if presented is not None and cal_bytes(lic) == cal_bytes(presented):
            return Valid(f"{result.outcome_name}: the device's license is unchanged")
        return Issue(lic)


# --- the connection ----------------------------------------------------------------------------------

class RdpFront(Protocol, TimeoutMixin):
    """One client connection, from X.224 to the end of licensing."""

    def __init__(self, factory: "RdpFrontFactory") -> None:
        self.factory = factory
        self.callLater = factory.clock.callLater        # TimeoutMixin's timer
        self.buffer = b""
        self.step = self._on_connection_request
        self.requested_protocols = 0
        self.client_name = ""
        self.channels: list[int] = []
        self.user_id = 0
        self.user = ""
        self.keys: crypto.LicensingKeys | None = None
        self.server_random = b""
        self.challenge = b""
        self.pending: Issue | None = None
        self.presented: dict | None = None
        self.replacing = False          # the client presented a license tsls cannot read
        self.machine = ""
        self.busy = False

    # framing

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_TIMEOUT)
        self.summary = {"peer": str(self.transport.getPeer()), "outcome": None}
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.received += len(data)
        self.buffer += data
        try:
            if len(self.buffer) > MAX_BUFFERED:
                raise ProtocolError("TOO_LARGE", f"{len(self.buffer)} bytes sent ahead of the protocol")
            while not self.busy:
                pdu, self.buffer = wire.next_tpkt(self.buffer)
                if pdu is None:
                    return
                self.step(pdu)
        except ProtocolError as e:
            self._protocol_error(e)

    def _protocol_error(self, e: ProtocolError) -> None:
        log.warn("RDP client {peer} refused: {code}: {message}", peer=self.summary["peer"], code=e.code,
                 message=e.message)
        if self.step == self._on_licensing:
            self._send_licensing(wire.error_alert(wire.ERR_INVALID_MESSAGE_LEN, wire.ST_TOTAL_ABORT))
        self._finish("protocol_error", code=e.code, message=e.message)

    def timeoutConnection(self) -> None:
        self._finish("timeout", code="IDLE_TIMEOUT", message=f"no data for {IDLE_TIMEOUT} s")

    def connectionLost(self, reason=None) -> None:
        self.setTimeout(None)
        if self.summary["outcome"] is None and not self.received:
            return          # a probe of the port (connected, sent nothing, closed): not a client
        if self.summary["outcome"] is None:
            self.summary.update(outcome="client_closed")
        self.factory.finished(self.summary)

    def _finish(self, outcome: str, **details) -> None:
        if self.summary["outcome"] is None:
            self.summary.update(outcome=outcome, **details)
        self.step = self._ignore
        self.transport.loseConnection()

    def _licensed(self, outcome: str, **details) -> None:
        """Licensing is over with a license (or the client's own still valid): go on as a server does,
        through the capabilities exchange and finalization, so the client's connection becomes active;
        then end it as a server ends a session (_on_activation)."""
        self.summary.update(outcome=outcome, **details)
        self.transport.write(wire.demand_active(self.user_id))
        self.step = self._on_activation

    def _on_activation(self, pdu: bytes) -> None:
        domain = wire.parse_domain_pdu(wire.parse_x224_data(pdu))
        if domain.kind == wire.DISCONNECT_ULTIMATUM:
            self._finish("client_closed")
            return
        if domain.kind != wire.SEND_DATA_REQUEST:
            return
        header = wire.parse_share_control(domain.data)
        if header.pdu_type == wire.PDUTYPE_DATAPDU and header.pdu_type2 == wire.PDUTYPE2_FONTLIST:
            for answer in wire.finalization(self.user_id):      # the client's connection is now active
                self.transport.write(answer)
            self._end_session()
        # Confirm Active, Synchronize, Control, Persistent Key List: nothing to answer

    def _end_session(self) -> None:
        """No desktop follows: end the session as a server does [MS-RDPBCGR 1.3.1.4.2], a Set Error Info
        PDU saying why, then an MCS Disconnect Provider Ultimatum, so the client reports a disconnect by
        the server (xfreerdp: exit 1, or 0 with /auth-only) rather than a broken transport."""
        self.transport.write(wire.set_error_info(self.user_id, self.factory.end_reason))
        self.transport.write(wire.disconnect_ultimatum(wire.RN_PROVIDER_INITIATED))
        self._finish(self.summary["outcome"])

    def _ignore(self, pdu: bytes) -> None:
        pass

    # the connection sequence [MS-RDPBCGR 1.3.1.1]

    def _on_connection_request(self, pdu: bytes) -> None:
        request = wire.parse_connection_request(pdu)
        self.requested_protocols = request.requested_protocols
        if not request.requested_protocols & wire.PROTOCOL_SSL:
            self.transport.write(wire.negotiation_failure(wire.SSL_REQUIRED_BY_SERVER))
            self._finish("refused", code="TLS_REQUIRED", message="the client did not offer TLS security")
            return
        self.transport.write(wire.connection_confirm(wire.PROTOCOL_SSL))
        self.transport.startTLS(self.factory.tls_options)
        self.step = self._on_connect_initial

    def _on_connect_initial(self, pdu: bytes) -> None:
        client = wire.parse_connect_initial(wire.parse_x224_data(pdu))
        self.client_name = client.client_name
        self.channels = [wire.MCS_GLOBAL_CHANNEL + 1 + i for i in range(len(client.channels))]
        self.user_id = wire.MCS_GLOBAL_CHANNEL + 1 + len(self.channels)
        self.transport.write(wire.connect_response(wire.server_data_blocks(self.requested_protocols, self.channels)))
        self.step = self._on_domain

    def _on_domain(self, pdu: bytes) -> None:
        domain = wire.parse_domain_pdu(wire.parse_x224_data(pdu))
        if domain.kind == wire.ATTACH_USER:
            self.transport.write(wire.attach_user_confirm(self.user_id))
        elif domain.kind == wire.CHANNEL_JOIN:
            self.transport.write(wire.channel_join_confirm(self.user_id, domain.channel))
        elif domain.kind == wire.SEND_DATA_REQUEST:
            flags, data = wire.split_security_header(domain.data)
            if not flags & wire.SEC_INFO_PKT:
                raise ProtocolError("UNEXPECTED_PDU", f"expected the Client Info PDU, got security flags 0x{flags:04x}")
            self.user = wire.parse_client_info(data).user
            self._send_license_request()
        elif domain.kind == wire.DISCONNECT_ULTIMATUM:
            self._finish("client_closed")

    # licensing [MS-RDPELE 1.3.3]

    def _send_licensing(self, message: bytes) -> None:
        self.transport.write(wire.licensing_pdu(self.user_id, message))

    def _send_license_request(self) -> None:
        self.server_random = os.urandom(crypto.RANDOM_LENGTH)
        self._send_licensing(wire.license_request(self.server_random, self.factory.product, self.factory.certificate))
        self.step = self._on_licensing

    def _on_licensing(self, pdu: bytes) -> None:
        domain = wire.parse_domain_pdu(wire.parse_x224_data(pdu))
        if domain.kind == wire.DISCONNECT_ULTIMATUM:
            self._finish("client_closed")
            return
        if domain.kind != wire.SEND_DATA_REQUEST:
            raise ProtocolError("UNEXPECTED_PDU", f"MCS PDU {domain.kind} during licensing")
        flags, data = wire.split_security_header(domain.data)
        if not flags & wire.SEC_LICENSE_PKT:
            raise ProtocolError("UNEXPECTED_PDU", f"expected a licensing PDU, got security flags 0x{flags:04x}")
        kind, body = wire.split_licensing(data)
        if kind == wire.NEW_LICENSE_REQUEST and self.keys is None:
            self._on_new_license_request(wire.parse_new_license_request(body))
        elif kind == wire.LICENSE_INFO and self.keys is None:
            self._on_license_info(wire.parse_license_info(body))
        elif kind == wire.PLATFORM_CHALLENGE_RESPONSE and self.challenge:
            self._on_challenge_response(wire.parse_challenge_response(body))
        elif kind == wire.ERROR_ALERT:
            alert = wire.parse_error_alert(body)
            self._finish("client_error", code=f"ERROR_ALERT_{alert.code}", message="the client ended licensing")
        else:
            raise ProtocolError("UNEXPECTED_PDU", f"licensing message 0x{kind:02x} out of sequence")

    def _derive(self, client_random: bytes, encrypted_premaster: bytes) -> None:
        try:
            premaster = crypto.premaster_secret(self.factory.key, encrypted_premaster)
        except ValueError as e:
            raise ProtocolError("BAD_PREMASTER", str(e))
        self.keys = crypto.LicensingKeys.derive(premaster, client_random, self.server_random)

    def _on_new_license_request(self, request: wire.NewLicenseRequest) -> None:
        self._derive(request.client_random, request.encrypted_premaster)
        self.machine = request.machine
        self.user = request.user or self.user
        self._send_challenge()

    def _on_license_info(self, info: wire.LicenseInfo) -> None:
        self._derive(info.client_random, info.encrypted_premaster)
        hwid = self.keys.decrypt(info.encrypted_hwid)
        if self.keys.mac(hwid) != info.mac:
            self._refuse(Refuse(wire.ERR_INVALID_MAC, "INVALID_MAC", "the MAC over the client's hardware ID is wrong"))
            return
        if len(info.license) > MAX_LICENSE:
            raise ProtocolError("TOO_LARGE", f"a presented license of {len(info.license)} bytes")
        try:
            self.presented = parse_cal(info.license)
        except ProtocolError as e:
            # A license the terminal server cannot read (another vendor's, a damaged store) counts as none: the
            # device is licensed afresh, as `tsls-ts` does with a license its license server cannot read
            # [§9, FAQ08]. The new license replaces it after the challenge, as an upgrade would.
            log.info("RDP client {peer} presented a license tsls cannot read ({why}); licensing it afresh",
                     peer=self.summary["peer"], why=e.message)
            self.presented, self.replacing = None, True
        self.machine = (self.presented or {}).get("machine") or self.client_name
        self._ask(hwid)

    def _send_challenge(self) -> None:
        self.challenge = os.urandom(16)
        self._send_licensing(wire.platform_challenge(self.keys.encrypt(self.challenge), self.keys.mac(self.challenge)))

    def _on_challenge_response(self, response: wire.ChallengeResponse) -> None:
        data = self.keys.decrypt(response.encrypted_response)
        hwid = self.keys.decrypt(response.encrypted_hwid)
        if self.keys.mac(data + hwid) != response.mac:
            self._refuse(Refuse(wire.ERR_INVALID_MAC, "INVALID_MAC", "the MAC over the challenge response is wrong"))
            return
        if wire.parse_challenge_response_data(data) != self.challenge:
            self._refuse(Refuse(wire.ERR_INVALID_CLIENT, "BAD_CHALLENGE", "the client did not answer our challenge"))
            return
        self.challenge = b""
        if self.pending is not None:          # an upgrade decided at License Info
            self._send_license(wire.UPGRADE_LICENSE, self.pending)
        else:
            self._ask(hwid)

    def _ask(self, hwid: bytes) -> None:
        """Ask for the device's license; while the answer is awaited, nothing more is read."""
        if len(hwid) != crypto.HWID_LENGTH:
            self._refuse(Refuse(wire.ERR_INVALID_CLIENT, "BAD_HWID", f"a hardware ID of {len(hwid)} bytes"))
            return
        self.summary.update(hwid=hwid.hex(), machine=self.machine, user=self.user)
        self.busy = True
        d = self.factory.licensing.license(hwid.hex(), self.machine, self.user, self.presented)
        d.addCallbacks(self._answer, self._backend_failed)
        d.addErrback(lambda f: log.failure("RDP licensing answer failed", f))

    def _backend_failed(self, failure) -> None:
        log.failure("licensing the RDP client {peer} failed", failure, peer=self.summary["peer"])
        self._refuse(Refuse(wire.ERR_NO_LICENSE_SERVER, "INTERNAL_ERROR", failure.getErrorMessage()))

    def _answer(self, answer) -> None:
        self.busy = False
        if not self.transport.connected:
            return
        if isinstance(answer, Refuse):
            self._refuse(answer)
        elif isinstance(answer, Valid):
            self._send_licensing(wire.error_alert(wire.STATUS_VALID_CLIENT, wire.ST_NO_TRANSITION))
            self._licensed("valid_client", message=answer.why)
        elif self.presented is not None or self.replacing:
            self.pending = answer       # an upgrade is sent once the client has met a challenge
            self._send_challenge()
        else:
            self._send_license(wire.NEW_LICENSE, answer)
        self.dataReceived(b"")          # whatever arrived meanwhile

    def _send_license(self, kind: int, issue: Issue) -> None:
        info = wire.new_license_info(self.factory.product, cal_bytes(issue.license))
        self._send_licensing(wire.new_license(kind, self.keys.encrypt(info), self.keys.mac(info)))
        self._licensed("new_license" if kind == wire.NEW_LICENSE else "upgrade_license",
                     license=client_license(issue.license))

    def _refuse(self, refusal: Refuse) -> None:
        self._send_licensing(wire.error_alert(refusal.error, wire.ST_TOTAL_ABORT))
        self._finish("refused", code=refusal.code, message=refusal.message, error=refusal.error)


def product_info_version(version: ProductVersion) -> int:
    """The Windows version a terminal server reports in ProductInfo.dwVersion: major << 16 | minor."""
    major, minor = version.windows_version
    return major << 16 | minor


class RdpFrontFactory(Factory):
    def __init__(self, licensing, key: crypto.RsaKey, tls_options, version: ProductVersion = ProductVersion.W2003,
                 clock=None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.licensing = licensing
        self.key = key
        self.certificate = crypto.proprietary_certificate(key)
        self.tls_options = tls_options
        self.product = wire.ProductInfo(product_info_version(version))
        self.observers: list = []
        self.end_reason = wire.ERRINFO_RPC_INITIATED_DISCONNECT     # the Set Error Info code after licensing

    def buildProtocol(self, addr):
        return RdpFront(self)

    def finished(self, summary: dict) -> None:
        lic = summary.get("license") or {}
        log.info("RDP client {machine} ({peer}): {outcome} {code}{license}",
                 machine=summary.get("machine") or "-", peer=summary["peer"], outcome=summary["outcome"],
                 code=summary.get("code") or "", license=f" license {lic.get('license_id')} ({lic.get('kind')})"
                 if lic else "")
        for observer in list(self.observers):
            observer(summary)
