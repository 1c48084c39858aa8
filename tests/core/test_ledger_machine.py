"""A stateful property test of the licensing rules: hypothesis drives logons, reported logons,
clock moves, expiry sweeps, revocations and key pack installs in any order, the core decides, the
real ledger applies (tests/core/ledger.py), and after every step the ledger's invariants hold:

- every key pack: 0 <= Issued <= Total, and Issued is the number of its live permanent CALs;
- a device holds at most one live CAL per version, and one temporary license per version, ever;
- a live permanent CAL serves its device's version and came from a pack of its CAL type;
- nothing refused changed the ledger.

TSLS_MACHINE_EXAMPLES runs more examples (default 40)."""
import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.core.ledger import NOW, Ledger
from tsls.core.licensing import TerminalServer, revoke
from tsls.core.model import DAY, CalType, KeyPack, LicenseKind, LicenseStatus, Program, ProductVersion, PurchaseRef
from tsls.errors import TslsError

VERSIONS = (ProductVersion.W2003, ProductVersion.W2008, ProductVersion.W2012)
DEVICES = tuple(f"pc{i}" for i in range(6))
TERMINAL_SERVERS = tuple(TerminalServer(f"TS{v.value}{m.value}", v, m) for v in VERSIONS for m in CalType)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ledger = Ledger()
        self.now = NOW
        self.packs = 0
        self.temporaries_seen: dict[tuple[str, ProductVersion], set[int]] = {}

    def _snapshot(self):
        return self.ledger.packs, self.ledger.licenses

    def _try(self, step):
        """Run a step as the writer runs a batch: expiries due are swept first; then a refusal must
        leave the ledger as it was."""
        self.ledger.sweep(self.now)
        before = self._snapshot()
        try:
            return step()
        except TslsError:
            assert self._snapshot() == before, "a refused step changed the ledger"
            return None

    @rule(version=st.sampled_from(VERSIONS), cal_type=st.sampled_from(CalType), total=st.integers(1, 4))
    def install(self, version, cal_type, total):
        self.packs += 1
        ref = PurchaseRef(Program.RETAIL, retail_code=f"{self.packs:025d}")
        self.ledger.install(KeyPack(0, f"KP{self.packs:033d}", ref, version, cal_type, total, 0, self.now))

    @rule(device=st.sampled_from(DEVICES), ts=st.sampled_from(TERMINAL_SERVERS), present=st.booleans(),
          report=st.booleans())
    def logon(self, device, ts, present, report):
        """A logon through a terminal server, which (``report``) then reports that it succeeded."""
        held = [lic for lic in self.ledger.licenses.values() if lic.hwid == device]
        presented = max((lic.id for lic in held), default=None) if present else None
        decision = self._try(lambda: self.ledger.logon(device, ts, self.now, presented, machine=device, user=device))
        event(f"logon: {'refused' if decision is None else decision.outcome.value}")
        if report and decision is not None and decision.license is not None:
            self._try(lambda: self.ledger.report(decision, self.now))

    @rule(device=st.sampled_from(DEVICES), ts=st.sampled_from(TERMINAL_SERVERS))
    def comes_back(self, device, ts):
        """The usual life of a device: it logs on, the logon is reported, and it comes back."""
        self.logon(device, ts, present=True, report=True)
        self.logon(device, ts, present=True, report=True)

    @rule(days=st.integers(1, 100))
    def clock_moves(self, days):
        self.now += days * DAY

    @rule()
    def sweep(self):
        """The periodic sweep, with nobody logging on."""
        self.ledger.sweep(self.now)

    @rule(pick=st.integers(0, 50))
    def revoke(self, pick):
        licenses = sorted(self.ledger.licenses.values(), key=lambda lic: lic.id)
        if not licenses:
            return
        lic = licenses[pick % len(licenses)]
        revoked = tuple(x for x in licenses if x.status is LicenseStatus.REVOKED)
        packs = tuple(self.ledger.packs.values())
        decision = self._try(lambda: self.ledger.apply(revoke(lic, packs, revoked, self.now)))
        event(f"revoke: {'refused' if decision is None else 'revoked'}")

    @invariant()
    def the_ledger_checks_clean(self):
        assert self.ledger.problems() == []

    @invariant()
    def live_cals_serve_their_version_from_a_pack_of_their_type(self):
        packs = self.ledger.packs
        for lic in self.ledger.licenses.values():
            if lic.kind is LicenseKind.PERMANENT and lic.status is LicenseStatus.ACTIVE:
                pack = packs[lic.key_pack]
                assert pack.product_version.serves(lic.product_version)
                assert pack.cal_type is CalType.PER_DEVICE

    @invariant()
    def one_temporary_license_per_device_and_version_ever(self):
        for lic in self.ledger.licenses.values():
            if lic.kind is LicenseKind.TEMPORARY:
                seen = self.temporaries_seen.setdefault((lic.hwid, lic.product_version), set())
                seen.add(lic.id)
                assert len(seen) == 1


LedgerMachine.TestCase.settings = settings(max_examples=int(os.environ.get("TSLS_MACHINE_EXAMPLES", "40")),
                                           stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_the_ledger_holds_under_any_sequence = LedgerMachine.TestCase
