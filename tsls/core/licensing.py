"""What happens when a device logs on: the license server's rules, top to bottom.

The shell reads the world (the device's licenses, the key packs, whether the server is
activated), calls one function here with ``now``, and writes back exactly the changes the
returned ``Decision`` lists, in one transaction. Refusals are raised as ``TslsError``.
Sources are sections of docs/behaviour.md, cited in brackets.
"""
from __future__ import annotations

import enum
import random

import attrs

from tsls.core.model import (
    DAY,
    CalType,
    KeyPack,
    License,
    LicenseKind,
    LicenseStatus,
    ProductVersion,
    iso,
    server_serves_host,
)
from tsls.errors import Code, TslsError

TEMPORARY_DAYS = 90           # [§2, KB813052]
CAL_DAYS = (52, 89)           # a permanent CAL lives a random 52-89 days [§1, RDSblog08]
RENEWAL_WINDOW = 7 * DAY      # renewed on a logon within 7 days of expiry [§1, MSQA]


@attrs.frozen
class TerminalServer:
    """A terminal server as it introduced itself in its hello."""

    name: str
    version: ProductVersion
    mode: CalType
    authenticated: bool = False     # proved its identity with a registered secret


def check_terminal_server(ts: TerminalServer, server_version: ProductVersion | None = None) -> None:
    """User CALs cannot be issued to Windows 2000 terminal servers [§1, KB822134]. A license server
    older than the session host does not serve it [§3, cc775148; §9: LOWER_VERSION]."""
    if ts.version is ProductVersion.W2000 and ts.mode is CalType.PER_USER:
        raise TslsError(Code.MODE_UNSUPPORTED, "a Windows 2000 terminal server has no Per User licensing mode")
    if server_version is not None and not server_serves_host(server_version, ts.version):
        raise TslsError(Code.LS_VERSION_TOO_LOW,
                        f"this {server_version.label} license server cannot serve a {ts.version.label} session "
                        "host: a license server must be the same version as the session host or newer",
                        server_version=server_version.value, host_version=ts.version.value)


def check_security_group(enabled: bool, ts: TerminalServer, member: bool) -> None:
    """With the license server security group policy on, only terminal servers in the "Terminal
    Server Computers" group get licenses; the group is empty by default [§5, cc758063; ee891342]."""
    if enabled and not member:
        raise TslsError(Code.NOT_IN_GROUP, f'A license could not be issued to "{ts.name}" because it is not a '
                        "member of the Terminal Server Computers group")


@attrs.frozen
class Logon:
    hwid: str
    machine: str
    user: str
    presented: int | None = None     # the id of the license the device presents, if any
    new_id: int = 0                  # the id a license issued at this logon gets, when the shell knows it (0: not)


@attrs.frozen
class World:
    """What the rules need to know, as read by the shell in the same transaction."""

    activated: bool
    packs: tuple[KeyPack, ...]
    held: tuple[License, ...]        # every license this device was ever issued
    seed: str = "0"                  # the lab's seed for CAL lifetimes
    prevent_upgrade: bool = False    # the Prevent License Upgrade policy [§3]


class Outcome(enum.Enum):
    TEMPORARY_ISSUED = "temporary_issued"   # first logon: a new 90-day temporary license
    TEMPORARY = "temporary"                 # the device keeps its temporary license
    UPGRADED = "upgraded"                   # a permanent CAL was issued, the pool went down by one
    EXISTING = "existing"                   # the device's permanent CAL, unchanged
    RENEWED = "renewed"                     # the device's permanent CAL, with a new expiry date
    PER_USER = "per_user"                   # Per User logon: allowed and logged, nothing counted
    VALIDATED = "validated"                 # the terminal server reported a successful logon
    EXPIRED = "expired"                     # swept: ran out
    REVOKED = "revoked"                     # an administrator revoked it


@attrs.frozen
class Change:
    """One license row to write and what it does to its key pack's Issued. A new license (a row to
    insert) has id 0, or the id the shell said the next license gets (``Logon.new_id``)."""

    license: License
    pack_delta: int = 0
    was: License | None = None      # for an update, the license as read: the store writes only what differs


@attrs.frozen
class Decision:
    outcome: Outcome
    license: License | None                 # what the device gets back (None for Per User)
    reason: Code | None = None              # why the device got no permanent CAL, if it did not
    changes: tuple[Change, ...] = ()
    message: str = ""

    def with_license(self, lic: License | None) -> "Decision":
        """``attrs.evolve(self, license=lic)``, built directly: every grant's decision gets its
        license's id once the store has written it."""
        return Decision(self.outcome, lic, self.reason, self.changes, self.message)


def cal_lifetime(seed: str, hwid: str, version: ProductVersion, renewals: int) -> int:
    """Seconds a permanent CAL lives: a random 52-89 days, drawn from the lab's seed, so a run
    replays exactly (and a restart does not change what the next draw is)."""
    days = random.Random(f"{seed}|{hwid}|{version.value}|{renewals}").randint(*CAL_DAYS)
    return days * DAY


def device_logon(ts: TerminalServer, logon: Logon, world: World, now: int) -> Decision:
    """A logon through a terminal server. Per Device mode, or Per User mode whose CALs are not
    installed, ends up in the temporary/permanent Per Device flow [§1, §2]."""
    _check_presented(logon, world.held)
    if ts.mode is _PER_USER:
        if _mode_mismatch(CalType.PER_USER, world.packs):
            return _per_device(ts, logon, world, now, why=(Code.MODE_MISMATCH, _mismatch_message(ts.mode)))
        return Decision(Outcome.PER_USER, None, message=f"Per User logon of {logon.user!r} recorded")
    return _per_device(ts, logon, world, now, why=_why_no_permanent(ts, world))


# The members every first logon names, read once: in Python 3.11 a member read from its Enum class is a
# Python-level lookup (60 ns), a module's global is a dict's.
_PER_USER, _TEMPORARY, _ACTIVE = CalType.PER_USER, LicenseKind.TEMPORARY, LicenseStatus.ACTIVE
_TEMPORARY_ISSUED = Outcome.TEMPORARY_ISSUED


def _per_device(ts, logon, world, now, why) -> Decision:
    held = [lic for lic in world.held if lic.hwid == logon.hwid] if world.held else None
    if held:
        cal = _best_cal(held, ts.version, now)
        if cal is not None:
            return _keep_or_renew(cal, world.seed, now)
        if why is None:
            lapsed = _reclaim_lapsed(held, world, ts.version, now)
            if lapsed is not None:
                return lapsed
        temporary = next((lic for lic in held if lic.kind is LicenseKind.TEMPORARY and lic.product_version is ts.version),
                         None)
    else:
        temporary = None        # the device holds nothing: no CAL to keep, renew or reclaim
    if temporary is None:
        # First logon: a temporary license, whatever the pool holds [§1, KB287687; cc727934].
        new = License(logon.new_id, _TEMPORARY, _ACTIVE, logon.hwid, logon.machine, logon.user, ts.name,
                      ts.version, None, False, now, now + TEMPORARY_DAYS * DAY)     # (positional: every first logon's path)
        return Decision(_TEMPORARY_ISSUED, new, _code(why), (Change(new),), _text(why, "temporary license issued"))

    # Upgrade once the logon with the temporary license was reported successful, or once it has
    # run out: after that a device gets in only with a permanent CAL [§2, KB813052].
    if why is None and (temporary.validated or not temporary.live(now)):
        pack = _choose_pack(world.packs, ts.version, world.prevent_upgrade)
        lifetime = cal_lifetime(world.seed, logon.hwid, pack.product_version, 0)
        cal = License(logon.new_id, LicenseKind.PERMANENT, LicenseStatus.ACTIVE, logon.hwid, logon.machine, logon.user, ts.name,
                      pack.product_version, pack.id, True, now, now + lifetime)  # (positional: on every upgrade's path)
        changes = [Change(cal, pack_delta=+1)]
        if temporary.status is LicenseStatus.ACTIVE:
            changes.append(Change(temporary.with_status(LicenseStatus.UPGRADED), was=temporary))
        return Decision(Outcome.UPGRADED, cal, None, tuple(changes), f"permanent CAL issued from key pack {pack.key_pack_id}")

    if temporary.live(now):
        return Decision(Outcome.TEMPORARY, temporary, _code(why), (), _text(why, "temporary license still valid"))

    code, message = why or (Code.NO_LICENSE_AVAILABLE, "no permanent CAL")
    raise TslsError(code, f"the device's temporary license has expired and it cannot get a permanent CAL: {message}",
                    hwid=logon.hwid)


def report_logon(license_id: int, hwid: str, world: World, now: int) -> Decision:
    """The terminal server reports that a logon with this license succeeded; a temporary license
    is then 'validated' and may be upgraded at the next logon [§1, KB287687]."""
    lic = next((lic for lic in world.held if lic.id == license_id), None)
    if lic is None or lic.hwid != hwid:
        raise TslsError(Code.UNKNOWN_LICENSE, f"no license {license_id} was issued to this device", license_id=license_id)
    if lic.kind is LicenseKind.PERMANENT or lic.validated:
        return Decision(Outcome.VALIDATED, lic, message="nothing to validate")
    validated = attrs.evolve(lic, validated=True)
    return Decision(Outcome.VALIDATED, validated, changes=(Change(validated, was=lic),), message="temporary license validated")


def expire(lic: License, now: int) -> Decision | None:
    """A license whose time is up: a permanent CAL's seat goes back to its key pack [§1]."""
    if lic.status is not LicenseStatus.ACTIVE or now < lic.expires_at:
        return None
    gone = lic.with_status(LicenseStatus.EXPIRED)
    delta = -1 if lic.kind is LicenseKind.PERMANENT else 0
    return Decision(Outcome.EXPIRED, gone, changes=(Change(gone, pack_delta=delta, was=lic),), message="license expired")


# A license server without a CAL of the kind asked for refers the request to another license server it
# knows, as 2008 license servers do (and a Windows 2000 one passed it to the enterprise license server)
# [§9, FAQ08; DEMYST; §5, KB Q232520].
REFERRED = frozenset({Code.NO_LICENSE_AVAILABLE, Code.MODE_MISMATCH, Code.UPGRADE_PREVENTED})


def refer(reason: Code | None, known: tuple[str, ...]) -> tuple[str, ...]:
    """The license servers to refer a request to: those it knows, when it could not give a permanent CAL
    for want of one (not when it is unactivated: another server would not know the device either)."""
    if not known:       # most license servers know no other (every grant asks: no lookup then)
        return ()
    return tuple(known) if reason in REFERRED else ()


REVOCABLE_PERCENT = 20      # at most 20% of a version's installed Per Device CALs, or one [§5, RDSblog08]


def revocation_limit(packs, version: ProductVersion) -> tuple[int, int]:
    """(installed Per Device CALs of this version, how many may be in the revoked state at once)."""
    installed = sum(p.total for p in packs if p.cal_type is CalType.PER_DEVICE and p.product_version is version)
    return installed, max(installed * REVOCABLE_PERCENT // 100, 1)


@attrs.frozen
class RevocationRoom:
    """How many more Per Device CALs of a version may be revoked now, and when the next frees up."""

    version: ProductVersion
    installed: int
    limit: int
    holding: int                  # revoked CALs that still count (until they would have expired)
    next_at: int | None           # when the earliest of those stops counting; None if none holds

    @property
    def left(self) -> int:
        return max(self.limit - self.holding, 0)


def revocation_room(packs, revoked, version: ProductVersion, now: int) -> RevocationRoom:
    """The room ``revoke`` checks, for showing before asking (the console's confirmation, metrics)."""
    installed, limit = revocation_limit(packs, version)
    holding = [r.expires_at for r in revoked if r.product_version is version and r.expires_at > now]
    return RevocationRoom(version, installed, limit, len(holding), min(holding, default=None))


def revoke(lic: License | None, packs, revoked, now: int) -> Decision:
    """An administrator revokes a Per Device CAL: its seat is free at once [§5, RDSblog08].
    ``revoked`` are the licenses already revoked; one stays in the revoked state until the time it
    would have expired, so the next revocation is allowed when the earliest of those passes."""
    if lic is None:
        raise TslsError(Code.UNKNOWN_LICENSE, "no such license")
    if lic.kind is LicenseKind.TEMPORARY:
        raise TslsError(Code.NOT_REVOCABLE, "a temporary license cannot be revoked; only permanent Per Device CALs can")
    if not lic.live(now):
        raise TslsError(Code.NOT_REVOCABLE, f"license {lic.id} is {lic.status.value}, not in force", license_id=lic.id)
    installed, limit = revocation_limit(packs, lic.product_version)
    holding = [r for r in revoked if r.product_version is lic.product_version and r.expires_at > now]
    if len(holding) >= limit:
        next_at = min(r.expires_at for r in holding)
        raise TslsError(
            Code.REVOCATION_LIMIT,
            f"the revocation limit for Windows Server {lic.product_version.value} Per Device CALs is reached: "
            f"{len(holding)} of the installed {installed} are already revoked; the next revocation is allowed "
            f"after {iso(next_at)}",
            revoked=len(holding), installed=installed, limit=limit, next_allowed_at=iso(next_at))
    gone = lic.with_status(LicenseStatus.REVOKED)
    return Decision(Outcome.REVOKED, gone, changes=(Change(gone, pack_delta=-1, was=lic),),
                    message=f"CAL {lic.id} revoked; {limit - len(holding) - 1} more may be revoked now")



def revoke_user(user: str) -> Decision:
    """Per User CALs cannot be revoked, only Per Device CALs [§9, RDSCAL]."""
    raise TslsError(Code.NOT_REVOCABLE, f"Per User CALs cannot be revoked (user {user!r}); only Per Device CALs can")

# --- the pieces -----------------------------------------------------------------------------------

def _check_presented(logon: Logon, held) -> None:
    if logon.presented is None:
        return
    if not any(lic.id == logon.presented and lic.hwid == logon.hwid for lic in held):
        raise TslsError(Code.INVALID_LICENSE, "the device presented a license this server did not issue to it",
                        license_id=logon.presented)


def _best_cal(held, version: ProductVersion, now: int) -> License | None:
    """The device's live permanent CAL that serves this terminal server, the oldest version first."""
    cals = [lic for lic in held if lic.kind is LicenseKind.PERMANENT and lic.live(now) and lic.product_version.serves(version)]
    return min(cals, key=lambda lic: (lic.product_version.rank, lic.id), default=None)


def _keep_or_renew(cal: License, seed: str, now: int) -> Decision:
    if cal.expires_at - now > RENEWAL_WINDOW:
        return Decision(Outcome.EXISTING, cal, message="the device's CAL")
    renewals = cal.renewals + 1
    renewed = attrs.evolve(cal, renewals=renewals, expires_at=now + cal_lifetime(seed, cal.hwid, cal.product_version, renewals))
    return Decision(Outcome.RENEWED, renewed, changes=(Change(renewed, was=cal),), message="CAL renewed")


def _reclaim_lapsed(held, world: World, version: ProductVersion, now: int) -> Decision | None:
    """A device whose CAL ran out comes back: it gets that same CAL again, renewed, if a seat of
    its version is free (preferring its old key pack). The seat it gave back is taken again."""
    lapsed = [lic for lic in held if lic.kind is LicenseKind.PERMANENT and lic.status is LicenseStatus.EXPIRED
              and lic.product_version.serves(version)
              and not (world.prevent_upgrade and lic.product_version.rank != version.rank)]
    if not lapsed:
        return None
    old = max(lapsed, key=lambda lic: lic.expires_at)
    free = [p for p in world.packs if p.cal_type is CalType.PER_DEVICE and p.product_version is old.product_version
            and p.available > 0]
    if not free:
        return None
    pack = min(free, key=lambda p: (p.id != old.key_pack, p.id))
    renewals = old.renewals + 1
    renewed = attrs.evolve(old, status=LicenseStatus.ACTIVE, key_pack=pack.id, renewals=renewals,
                           expires_at=now + cal_lifetime(world.seed, old.hwid, old.product_version, renewals))
    return Decision(Outcome.RENEWED, renewed, changes=(Change(renewed, pack_delta=+1, was=old),),
                    message=f"expired CAL {old.id} renewed from key pack {pack.key_pack_id}")


def _serving(packs, cal_type: CalType, version: ProductVersion, prevent_upgrade: bool = False):
    """Key packs whose CALs serve this version: the same or newer; with the Prevent License Upgrade
    policy on, the same version only (a 2008 R2 host still takes 2008 CALs: one generation) [§3]."""
    return [p for p in packs if p.cal_type is cal_type and p.product_version.serves(version)
            and not (prevent_upgrade and p.product_version.rank != version.rank)]


def _choose_pack(packs, version: ProductVersion, prevent_upgrade: bool = False) -> KeyPack:
    """The most appropriate CAL: the lowest version that serves, then the oldest pack [§3]."""
    free = [p for p in _serving(packs, CalType.PER_DEVICE, version, prevent_upgrade) if p.available > 0]
    return min(free, key=lambda p: (p.product_version.rank, p.id))


def _mode_mismatch(mode: CalType, packs) -> bool:
    """Only CALs of the other type are installed [§2, KB822134]."""
    return bool(packs) and all(p.cal_type is not mode for p in packs)


def _mismatch_message(mode: CalType) -> str:
    """``mode``: the terminal server's licensing mode."""
    other = "Per User" if mode is CalType.PER_DEVICE else "Per Device"
    mode = "Per Device" if mode is CalType.PER_DEVICE else "Per User"
    return f"the terminal server is in {mode} mode but only {other} CALs are installed"


def _why_no_permanent(ts: TerminalServer, world: World) -> tuple[Code, str] | None:
    """Why a Per Device logon cannot get a permanent CAL now, or None if it can. It depends only on
    the key packs, the activation, the policy and the terminal server's version, and the shell hands
    every logon the same tuple of key packs until one changes: the answer is kept for that tuple."""
    packs = world.packs
    key = (id(packs), ts.version._value_, world.activated, world.prevent_upgrade)
    hit = _WHY.get(key)
    if hit is not None and hit[0] is packs:     # the tuple held here, so its id is not another's
        return hit[1]
    why = _why_no_permanent_now(ts.version, world)
    if len(_WHY) >= 256:
        _WHY.clear()
    _WHY[key] = (packs, why)
    return why


_WHY: dict = {}


def _why_no_permanent_now(version: ProductVersion, world: World) -> tuple[Code, str] | None:
    if not world.activated:
        return Code.NOT_ACTIVATED, "the license server is not activated, so it issues only temporary licenses"
    if _mode_mismatch(CalType.PER_DEVICE, world.packs):
        return Code.MODE_MISMATCH, _mismatch_message(CalType.PER_DEVICE)
    serving = _serving(world.packs, CalType.PER_DEVICE, version, world.prevent_upgrade)
    if world.prevent_upgrade and not any(p.available for p in serving) and any(
            p.available for p in _serving(world.packs, CalType.PER_DEVICE, version)):
        return Code.UPGRADE_PREVENTED, (f"the Prevent License Upgrade policy is on and no Per Device CAL for Windows "
                                        f"Server {version.value} is free: a newer CAL is not given")
    if not serving:
        return Code.NO_LICENSE_AVAILABLE, f"no Per Device CALs for Windows Server {version.value} or newer are installed"
    if all(p.available == 0 for p in serving):
        return Code.NO_LICENSE_AVAILABLE, f"all Per Device CALs for Windows Server {version.value} or newer are issued"
    return None


def _code(why):
    return None if why is None else why[0]


def _text(why, default: str) -> str:
    return default if why is None else f"{default}: {why[1]}"
