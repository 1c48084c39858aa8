"""The core's decisions applied by the ledger that ships (tsls.server.store on a real SQLite file),
for scenario tests and the state machine: no second, hand-written ledger to drift from it."""
import shutil
import tempfile
import weakref

from tsls.core.activation import Activation, ActivationStatus
from tsls.core.licensing import Logon, TerminalServer, device_logon, report_logon
from tsls.core.model import CalType, ProductVersion
from tsls.server.check import ledger_problems
from tsls.server.storage import LicenseFilter
from tsls.server.store import LicenseStore

NOW = 1_800_000_000
TS2003 = TerminalServer("TS01", ProductVersion.W2003, CalType.PER_DEVICE)
SEED = "7"


class Ledger:
    def __init__(self, packs=(), activated=True):
        directory = tempfile.mkdtemp(prefix="tsls-ledger-")
        self.store = LicenseStore.open(f"{directory}/ls.sqlite")
        self.store.db.execute("PRAGMA synchronous=OFF")       # a test's throwaway file: no fsync per step
        weakref.finalize(self, _remove, self.store, directory)
        self.activated = activated
        if activated:
            with self.store.transaction():
                self.store.save_activation(Activation(ActivationStatus.ACTIVATED, "L" * 35))
        for p in packs:
            assert p.issued == 0, "a pack starts empty: issue its CALs with fill()"
            self.install(p)

    def install(self, p):
        with self.store.transaction():
            return self.store.add_key_pack(p.key_pack_id, p.purchase, p.product_version, p.cal_type, p.total,
                                           p.installed_at)

    @property
    def packs(self):
        return {p.id: p for p in self.store.key_packs()}

    @property
    def licenses(self):
        return {lic.id: lic for lic in self.store.licenses(LicenseFilter(), limit=10**9)}

    def problems(self):
        """The ledger's invariants, as `tsls check` reads them: an empty list when all hold."""
        return ledger_problems(self.store.db.execute)

    def world(self, hwid):
        return self.store.world(hwid, self.activated, SEED)

    def apply(self, decision):
        with self.store.transaction():
            return self.store.apply(decision)

    def sweep(self, now):
        """Expire what is due, as the writer does before every batch (tsls.server.store's own sweep)."""
        with self.store.transaction():
            return self.store.sweep(now)

    def logon(self, hwid="h1", ts=TS2003, now=NOW, presented=None, machine="PC1", user="alice"):
        return self.apply(device_logon(ts, Logon(hwid, machine, user, presented), self.world(hwid), now))

    def report(self, decision, now=NOW):
        lic = decision.license
        return self.apply(report_logon(lic.id, lic.hwid, self.world(lic.hwid), now))

    def fill(self, n, ts=TS2003, now=NOW - 1):
        """Give n other devices a permanent CAL each, the way devices get them."""
        for i in range(n):
            self.report(self.logon(f"filler{i}", ts, now))
            self.logon(f"filler{i}", ts, now)


def _remove(store, directory):
    store.close()
    shutil.rmtree(directory, ignore_errors=True)
