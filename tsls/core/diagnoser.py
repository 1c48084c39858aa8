"""The RD Licensing Diagnoser, for one session host: its licensing mode, its license servers in
order, each one's reachability, version, security group, activation and CALs, and its grace period
[§9, WMI:win32-terminalservicesetting GetTStoLSConnectivityStatus; DIAG]. The shell
(``tsls-ts diagnose``) probes each license server; this module only judges what it found.

Not Configured licensing mode: clients get in during the grace period; after it, RCM event 1069
and refusal [§7, ee891144; §9].
"""
from __future__ import annotations

import enum

import attrs

from tsls.core.model import CalType, ProductVersion, iso
from tsls.core.terminal import Grace, grace_days
from tsls.errors import Code, TslsError


class Connectivity(enum.IntEnum):
    """GetTStoLSConnectivityStatus's values [§9, WMI:win32-terminalservicesetting]."""

    UNKNOWN = 0
    VALID_WS08R2 = 1
    VALID_WS08 = 2
    BETA_RTM_MISMATCH = 3
    LOWER_VERSION = 4
    NOT_IN_TSCGROUP = 5
    NOT_CONNECTABLE = 6
    UNKNOWN_VALIDITY = 7
    BUT_ACCESS_DENIED = 8
    VALID_WS08R2_VDI = 9
    FEATURE_NOT_SUPPORTED = 10
    VALID_LS = 11


@attrs.frozen
class Probe:
    """What asking one license server found. ``refusal``: the code its hello (or question) was refused
    with, None when it answered; ``reachable`` False when it did not answer at all."""

    server: str
    reachable: bool
    refusal: str | None = None
    server_version: ProductVersion | None = None
    activated: bool = False
    security_group_policy: bool = False
    in_group: bool = False
    cals_installed: int = 0          # CALs of the host's mode that serve its version
    cals_available: int = 0
    other_type_installed: int = 0    # CALs of the other type (a mode mismatch when they are all there is)


@attrs.frozen
class ServerFinding:
    server: str
    status: Connectivity
    usable: bool                     # it can issue permanent CALs to this host now
    messages: tuple[str, ...]


@attrs.frozen
class Diagnosis:
    mode: CalType | None             # None: Not Configured
    findings: tuple[ServerFinding, ...]
    grace_active: bool
    grace_days_left: int | None
    ok: bool
    messages: tuple[str, ...]

    @property
    def status(self) -> Connectivity:
        """The connectivity status of the license server the host would use: the first usable one,
        else the first in its list."""
        usable = [f for f in self.findings if f.usable]
        first = (usable or list(self.findings) or [None])[0]
        return Connectivity.UNKNOWN if first is None else first.status


NOT_CONFIGURED = ("The licensing mode for the Remote Desktop Session Host server is not configured.")
NO_SERVERS_GRACE_OVER = ("The grace period for the Remote Desktop Session Host server has expired, but the RD Session "
                         "Host server has not been configured with any license servers. Connections to the RD Session "
                         "Host server will be denied unless a license server is configured for the RD Session Host "
                         "server.")
NO_LICENSES = ("Licenses are not available for this Remote Desktop Session Host server, and RD Licensing Diagnoser "
               "has identified licensing problems for the RD Session Host server.")


def not_available(server: str) -> str:
    return (f"License server {server} is not available. This could be caused by network connectivity problems, the "
            "Remote Desktop Licensing service is stopped on the license server, or RD Licensing isn't installed.")


def _mode_name(mode: CalType) -> str:
    return "Per Device" if mode is CalType.PER_DEVICE else "Per User"


def judge_server(probe: Probe, host: ProductVersion, mode: CalType | None) -> ServerFinding:
    if not probe.reachable:
        return ServerFinding(probe.server, Connectivity.NOT_CONNECTABLE, False, (not_available(probe.server),))
    if probe.refusal == Code.LS_VERSION_TOO_LOW.value:
        return ServerFinding(probe.server, Connectivity.LOWER_VERSION, False, (
            f"License server {probe.server} runs an earlier Windows version than the RD Session Host server "
            f"({host.label}): it cannot issue it CALs. Upgrade the license server.",))
    if probe.refusal == Code.NOT_IN_GROUP.value or (probe.security_group_policy and not probe.in_group):
        return ServerFinding(probe.server, Connectivity.NOT_IN_TSCGROUP, False, (
            f"The RD Session Host server is not a member of the Terminal Server Computers group on license server "
            f"{probe.server}, and the license server security group policy is on.",))
    if probe.refusal is not None:
        return ServerFinding(probe.server, Connectivity.UNKNOWN_VALIDITY, False, (
            f"License server {probe.server} refused the RD Session Host server: {probe.refusal}.",))
    messages = []
    if not probe.activated:
        messages.append(f"License server {probe.server} is not activated: it issues only temporary licenses "
                        "(TermServLicensing event 18).")
    if mode is not None:
        kind = _mode_name(mode)
        if probe.cals_installed == 0 and probe.other_type_installed:
            other = _mode_name(CalType.PER_USER if mode is CalType.PER_DEVICE else CalType.PER_DEVICE)
            messages.append(f"The licensing mode of the RD Session Host server ({kind}) does not match the CALs on "
                            f"license server {probe.server}: only {other} CALs are installed (events 21 and 1004).")
        elif probe.cals_installed == 0:
            messages.append(f"License server {probe.server} has no {kind} CALs for {host.label} or later installed.")
        elif mode is CalType.PER_DEVICE and probe.cals_available == 0:
            messages.append(f"License server {probe.server} has no {kind} CALs for {host.label} or later left: all "
                            f"{probe.cals_installed} are issued.")
    return ServerFinding(probe.server, Connectivity.VALID_LS, not messages, tuple(messages))


def diagnose(host: ProductVersion, mode: CalType | None, probes: tuple[Probe, ...], grace: Grace,
             now: int) -> Diagnosis:
    findings = tuple(judge_server(p, host, mode) for p in probes)
    active = grace.active(now)
    ends = grace.expires_at()
    left = None if not active else (-(-(ends - now) // 86400) if ends is not None else grace_days(host))
    messages: list[str] = []
    if mode is None:
        messages.append(NOT_CONFIGURED + (" Clients are admitted in the grace period." if active else
                                          " The grace period is over: every connection is refused (RCM event "
                                          "1069). Set the mode: Per Device or Per User."))
    if not probes:
        messages.append(NO_SERVERS_GRACE_OVER if not active else
                        "The RD Session Host server has no license server configured; the grace period is still on.")
    for f in findings:
        messages.extend(f.messages)
    ok = mode is not None and any(f.usable for f in findings)
    if mode is not None and probes and not ok:
        messages.append(NO_LICENSES)
    if active and ends is not None:
        messages.append(f"The grace period ends {iso(ends)}: {left} days left.")
    elif not active and ends is not None:
        messages.append(f"The grace period ended {iso(ends)}.")
    return Diagnosis(mode, findings, active, left, ok, tuple(messages))


def not_configured_admission(grace: Grace, now: int) -> int:
    """A session host whose licensing mode is Not Configured: a connection gets in during the grace
    period (returns the whole days left); after it, event 1069 and refusal [§7, ee891144]."""
    if grace.active(now):
        ends = grace.expires_at()
        return -(-(ends - now) // 86400) if ends is not None else grace_days(grace.version)
    raise TslsError(Code.MODE_NOT_CONFIGURED, "the licensing mode for the Remote Desktop Session Host server is not "
                    f"configured and its grace period ended {iso(grace.expires_at())} (event 1069): the "
                    "connection is refused")
