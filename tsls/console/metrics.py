"""/metrics: the license server's numbers in Prometheus' text format, made by prometheus-client.

Two kinds of numbers: what the daemon counts as requests are answered (requests by operation,
outcome and refusal reason; grant latency; Clearinghouse calls), kept in memory since start, and
what the ledger holds (key packs, licenses, revocations left, activation), read from a read-only
snapshot at each scrape (tsls.server.readstore) in the console's reader threads. No device, user,
machine or license id is ever a label: every label's values come from a small fixed set.
"""
from __future__ import annotations

import bisect
import time

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.python.failure import Failure

from tsls.core.licensing import revocation_room
from tsls.core.model import CalType
from tsls.errors import TslsError

disable_created_metrics()          # no *_created series: they double the page and say little here
EXPIRING_SOON = 7 * 86400          # "expiring soon": within a week of lab time
GRANT_OPS = ("logon",)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """One per daemon, with its own registry (tests run several daemons in one process).

    The per-request counts are plain dicts and a bucket list, bumped in the reactor's thread by
    ``observe`` (about 1 µs, where prometheus-client's locked counters took 5 µs, 5% of a grant's
    CPU), and turned into metric families at each scrape (``_Requests``)."""

    def __init__(self, reads, clock, operations=()) -> None:
        """``operations``: the protocol's operation names; any other name is counted as "other", so a
        client cannot mint label values of its own choosing."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.clearinghouse = Counter("tsls_clearinghouse_calls", "Calls to the Clearinghouse, by operation and "
                                     "outcome (ok or the error code)", ("operation", "outcome"), registry=self.registry)
        self.operations = frozenset(operations) | {"hello", "challenge"}
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)     # per bucket, not cumulative; the last is +Inf
        self.latency_sum = 0.0
        self.registry.register(_Requests(self))
        self.registry.register(_Ledger(reads, clock))

    def observe(self, op: object, result: object, started: float) -> None:
        """A request was answered with ``result`` (its value, or a Failure): the protocol's hook."""
        if isinstance(result, Failure):
            error = result.value
            label, reason = "refused", error.code.value if isinstance(error, TslsError) else "INTERNAL_ERROR"
        elif op in GRANT_OPS and isinstance(result, dict):
            label, reason = str(result.get("outcome")), str(result.get("reason") or "")
            seconds = time.perf_counter() - started
            self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
        else:
            label, reason = "ok", ""
        key = (op if isinstance(op, str) and op in self.operations else "other", label, reason)
        counts = self.requests
        counts[key] = counts.get(key, 0) + 1

    def clearinghouse_call(self, operation: str, result) -> None:
        if isinstance(result, Failure):
            outcome = result.value.code.value if isinstance(result.value, TslsError) else "INTERNAL_ERROR"
        else:
            outcome = "ok"
        self.clearinghouse.labels(operation, outcome).inc()

    def scrape(self) -> bytes:
        """The text exposition; reads the ledger, so call it off the reactor's thread."""
        return generate_latest(self.registry)


class _Requests:
    """A collector: the request counts and the grant latency histogram, as they stand."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.metrics
        counts = dict(m.requests)           # a copy made in one step: the reactor's thread goes on counting
        latency, total = list(m.latency), m.latency_sum
        requests = CounterMetricFamily("tsls_requests", "Requests answered, by operation, outcome and refusal reason",
                                       labels=("operation", "outcome", "reason"))
        for key, n in sorted(counts.items()):
            requests.add_metric(key, n)
        yield requests
        buckets, running = [], 0
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), latency):
            running += n
            buckets.append((bound, running))
        yield HistogramMetricFamily("tsls_grant_seconds", "Time from a logon request's arrival to its answer "
                                    "(committed), for logons answered with a license", buckets=buckets, sum_value=total)


class _Ledger:
    """A collector: reads the ledger at each scrape. A read that took over SLOW_READ seconds (a very
    large ledger) is reused for REUSE_FOR times as long, so scraping every second keeps the reader
    threads busy a tenth of the time at most instead of all of it."""

    SLOW_READ = 0.1
    REUSE_FOR = 10

    def __init__(self, reads, clock) -> None:
        self.reads = reads
        self.clock = clock
        self._kept: tuple[float, list] | None = None        # (reuse until, the families)

    def describe(self):
        return []

    def collect(self):
        if self._kept is not None and time.monotonic() < self._kept[0]:
            return iter(self._kept[1])
        started = time.monotonic()
        families = list(self._read())
        took = time.monotonic() - started
        self._kept = (started + took * (1 + self.REUSE_FOR), families) if took > self.SLOW_READ else None
        return iter(families)

    def _read(self):
        now = int(self.clock.seconds())
        with self.reads.snapshot() as snap:
            packs = snap.key_packs()
            counts = snap.license_counts()
            expiring = snap.expiring(now, now + EXPIRING_SOON)
            revoked = snap.revoked_holding(now)
            state = snap.activation().status.value
        cals = {name: GaugeMetricFamily(f"tsls_cals_{name}", f"CALs {name} in installed key packs, by version and CAL type",
                                        labels=("version", "cal_type")) for name in ("installed", "issued", "available")}
        sums: dict = {}
        for p in packs:
            row = sums.setdefault((p.product_version.value, p.cal_type.value), [0, 0, 0])
            row[0] += p.total
            row[1] += p.issued
            row[2] += p.available
        for (version, cal_type), values in sorted(sums.items()):
            for family, value in zip(cals.values(), values):
                family.add_metric((version, cal_type), value)
        yield from cals.values()
        licenses = GaugeMetricFamily("tsls_licenses", "Issued licenses in the ledger, by kind, status and version",
                                     labels=("kind", "status", "version"))
        for (kind, status, version), n in sorted(counts.items()):
            licenses.add_metric((kind, status, version), n)
        yield licenses
        soon = GaugeMetricFamily("tsls_licenses_expiring_soon", f"Active licenses that expire within "
                                 f"{EXPIRING_SOON // 86400} days of lab time", labels=("kind", "version"))
        for (kind, version), n in sorted(expiring.items()):
            soon.add_metric((kind, version), n)
        yield soon
        left = GaugeMetricFamily("tsls_revocations_left", "Per Device CALs that may still be revoked now, by version",
                                 labels=("version",))
        for version in sorted({p.product_version for p in packs if p.cal_type is CalType.PER_DEVICE},
                              key=lambda v: v.rank):
            left.add_metric((version.value,), revocation_room(packs, revoked, version, now).left)
        yield left
        activation = GaugeMetricFamily("tsls_activation_state", "1 for the license server's activation state",
                                       labels=("state",))
        for name in ("activated", "not_activated", "deactivated"):
            activation.add_metric((name,), 1 if name == state else 0)
        yield activation
