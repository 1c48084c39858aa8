"""A seeded mutation fuzzer of the documented requests (docs/protocol.md, docs/legacy.md), against the real
daemon on loopback: each input is a documented request, mutated at the JSON level (a field dropped, added,
or given a hostile value: 2^63, a lone surrogate, non-ASCII digits, deep nesting, the wrong type...) or at the
byte level (truncated, a byte flipped, bytes inserted), sent pipelined in batches on raw sockets that then
half-close. After every batch: every line got exactly one answer, in order (no answer lost), none is
INTERNAL_ERROR, nothing was logged as a failure, and the daemon answers a fresh logon; at the end
`tsls check` finds the ledger clean.

    ./dev test tests/server/test_fuzz.py                            # CI: 3,000 inputs
    TSLS_FUZZ=20000 TSLS_FUZZ_SEED=7 ./dev test tests/server/test_fuzz.py -s   # a long run, another seed

A failing batch is printed with its seed, so it can be replayed."""
import json
import os
import random
import subprocess
import sys

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher

from tests.harness import Daemon, activate_and_install, logon, with_timeout
from tests.server.test_hostile_classes import HELLO, port_of, talk
from tsls.errors import Code, TslsError
from tsls.labclock import LabClock

INPUTS = int(os.environ.get("TSLS_FUZZ", "3000"))
SEED = int(os.environ.get("TSLS_FUZZ_SEED", "11"))
BATCH = 50

HW = "00000104c4ca4238a0b923820dcc509a6f75849b"
RETAIL = {"program": "retail", "retail_code": "R" * 25}
CONTACT = {"first_name": "A", "last_name": "B", "company": "C", "country_region": "United States"}

# The documented requests, by role: op and a well-formed set of fields.
TERMINAL_SERVER = [
    ("logon", {"hwid": HW, "machine": "PC1", "user": "alice", "license": None}),
    ("logon", {"hwid": HW, "machine": "PC1", "user": "alice", "license": "TOKEN"}),
    ("logon_succeeded", {"hwid": HW, "license": "TOKEN"}),
    ("product_connect", {"product": "SQL Server 7.0", "hwid": HW}),
    ("product_disconnect", {"connection_id": 1}),
    ("switch_to_per_seat", {"product": "SQL Server 7.0", "confirm": True}),
    ("hello", {k: v for k, v in HELLO.items() if k != "op"}),
    ("challenge", {}),
]
ADMIN = [
    ("register_terminal_server", {"name": "TS02"}),
    ("group_add", {"name": "TS02"}),
    ("group_remove", {"name": "TS02"}),
    ("set_policy", {"security_group": False}),
    ("list_terminal_servers", {}),
    ("status", {}),
    ("activate", {"method": "automatic", "contact": CONTACT}),
    ("activate", {"method": "telephone", "license_server_id": "A" * 35, "certificate": "C" * 35}),
    ("reactivate", {"reason": "redeployed", "contact": CONTACT}),
    ("install_key_pack", {"purchase": {**RETAIL, "product_version": "2003", "cal_type": "per_device", "quantity": 5}}),
    ("recover", {"purchase": RETAIL}),
    ("list_key_packs", {}),
    ("list_licenses", {"hwid": HW, "kind": "permanent", "status": "active", "limit": 10}),
    ("revoke", {"license_id": 1}),
    ("revoke", {"user": "alice"}),
    ("set_clock", {"to": "+1d"}),
    ("list_events", {"event_id": 1101, "terminal_server": "TS01", "since": "2026-01-01T00:00:00Z", "limit": 5}),
    ("usage_report", {"start": 0, "end": 1_900_000_000}),
    ("add_product", {"name": "SQL Server 7.0", "server": "SQLSRV01", "per_server_licenses": 3}),
    ("add_product_licenses", {"product": "BackOffice", "seats": 2}),
    ("product_connect", {"product": "SQL Server 7.0", "hwid": HW, "administrator": True}),
    ("switch_to_per_server", {"product": "SQL Server 7.0"}),
    ("list_products", {}),
    ("list_seat_clients", {}),
    ("product_history", {}),
    ("sbs_status", {}),
    ("sbs_apply_add_pack", {"pack": "X" * 20, "used": {"before": 0, "after": 1}}),
]
OPS = sorted({op for op, _ in TERMINAL_SERVER + ADMIN} | {"frobnicate", "follow_events", "deactivate", "sbs_setup"})

HOSTILE = [None, True, False, 0, -1, 1, 2 ** 63 - 1, 2 ** 63, -2 ** 63 - 1, 10 ** 40, 0.5, 1e308, -0.0,
           "", " ", "x" * 300, "\ud800", "a\udfffb", "é", "²", "١٢", "TSLS1.².00", "TSLS1.1." + "é" * 32,
           "9999-12-31T23:59:59-05:00", "+999999w", "+1d", "2026-11-23T10:00:00Z", "\x00", "\u202e", "💥" * 40,
           [], {}, [1, "a"], {"a": {"b": [None]}}, "per_device", "per_user", "2003", "automatic", "telephone"]


def deep(n):
    value = "x"
    for _ in range(n):
        value = [value]
    return value


class Fuzzer:
    def __init__(self, seed, token):
        self.rng = random.Random(seed)
        self.token = token

    def value(self, current):
        r = self.rng.random()
        if r < 0.6:
            v = self.rng.choice(HOSTILE)
        elif r < 0.7:
            v = deep(self.rng.choice([15, 16, 17, 40, 900]))
        elif r < 0.8:
            v = self.token
        elif r < 0.9 and isinstance(current, str) and current:
            i = self.rng.randrange(len(current))
            v = current[:i] + self.rng.choice(["é", "\ud800", "0", "", "²", "%s"]) + current[i + 1:]
        else:
            v = self.rng.randint(-2 ** 64, 2 ** 64)
        return v

    def request(self, corpus, rid):
        op, fields = self.rng.choice(corpus)
        request = {"id": rid, "op": op, **{k: (self.token if v == "TOKEN" else v) for k, v in fields.items()}}
        for _ in range(self.rng.choice([0, 1, 1, 2, 3])):
            what = self.rng.random()
            keys = [k for k in request if k != "id"]
            if what < 0.45 and keys:
                k = self.rng.choice(keys)
                request[k] = self.value(request[k])
            elif what < 0.6 and keys:
                del request[self.rng.choice(keys)]
            elif what < 0.7:
                request[self.rng.choice(["extra", "\ud800", "é", "op2", "id2"])] = self.value(None)
            elif what < 0.8:
                request["op"] = self.rng.choice(OPS + [None, 7, ["logon"], {"op": "logon"}, "LOGON", "hello\x00"])
            elif what < 0.9:
                request["id"] = self.rng.choice([None, True, 2 ** 63, -2 ** 63, "", "\ud800", [1], {"a": 1}, 1.5,
                                                 f"s{rid}", -rid])
            else:
                request.pop("id", None)
        line = json.dumps(request, ensure_ascii=self.rng.random() < 0.7).encode("utf-8", "surrogatepass")
        if self.rng.random() < 0.15:
            line = self.bytes(line)
        return line.replace(b"\n", b"")

    def bytes(self, line):
        what = self.rng.random()
        if what < 0.3:
            return line[:self.rng.randrange(len(line) + 1)]
        i = self.rng.randrange(len(line) + 1)
        if what < 0.6:
            return line[:i] + bytes([self.rng.randrange(256)]) + line[i + 1:]
        if what < 0.8:
            return line[:i] + self.rng.randbytes(self.rng.randrange(1, 8)) + line[i:]
        if what < 0.9:
            return line[:i] + b"[" * 5000 + line[i:]
        return self.rng.choice([b"1", b"\r", b"null", b"[]", b"\"x\"", b"{}", b"\xff\xfe", b"{\"id\":1}"])


def expected(line):
    """Whether the server answers this line (it ignores blank ones) and the id it can echo, if any."""
    stripped = line.rstrip(b"\r")
    if not stripped.strip():
        return False, None
    try:
        request = json.loads(stripped)
    except (ValueError, RecursionError):
        return True, None
    rid = request.get("id") if isinstance(request, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        return True, None
    if isinstance(rid, int) and not -2 ** 63 <= rid < 2 ** 63:
        return True, None
    if isinstance(rid, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in rid):
        return True, None
    return True, rid


@pytest_twisted.inlineCallbacks
def test_mutated_documented_requests_never_hurt_the_daemon(tmp_path):
    daemon = Daemon(tmp_path, lab_clock=LabClock(reactor))
    yield daemon.start()
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)
    globalLogPublisher.addObserver(observe)
    try:
        admin = yield daemon.admin()
        yield activate_and_install(admin)
        yield admin.request("add_product", name="SQL Server 7.0", server="SQLSRV01", per_server_licenses=3)
        ts = yield daemon.terminal_server()
        token = (yield logon(ts, "pc1"))["license"]["token"]
        secret = daemon.service.server.identity.admin_secret
        port = port_of(daemon)
        rid, sent, answered = 0, 0, 0
        for batch in range((INPUTS + BATCH - 1) // BATCH):
            seed = SEED * 1_000_003 + batch
            fuzzer = Fuzzer(seed, token)
            as_admin = batch % 2 == 1
            lines = []
            for _ in range(min(BATCH, INPUTS - sent)):
                rid += 1
                lines.append(fuzzer.request(ADMIN + TERMINAL_SERVER[-2:] if as_admin else TERMINAL_SERVER, rid))
            sent += len(lines)
            prefix = b"" if as_admin else json.dumps({"id": 0, **HELLO, "name": "FUZZ-TS"}).encode() + b"\n"
            answers = yield with_timeout(threads.deferToThread(
                talk, port, prefix + b"\n".join(lines) + b"\n", admin_secret=secret if as_admin else None))
            answers = [a for a in answers if "event" not in a]
            if not as_admin:
                assert answers[0]["id"] == 0 and answers[0].get("error", {}).get("code") != "INTERNAL_ERROR"
                answers = answers[1:]
            wanted = [(line, rid) for line in lines for answers_it, rid in [expected(line)] if answers_it]
            context = f"batch {batch} (TSLS_FUZZ_SEED={SEED}, seed {seed})"
            assert len(answers) == len(wanted), f"answers lost in {context}: {lines!r}"[:5000]
            for answer, (line, want) in zip(answers, wanted):
                assert answer.get("error", {}).get("code") != "INTERNAL_ERROR", f"{answer} for {line[:2000]!r} in {context}"
                assert answer["id"] in (want, None), f"out of order: {answer} for {line[:2000]!r} in {context}"
            answered += len(answers)
            assert not failures, f"{failures[0]['log_failure'].getTraceback()} in {context}"
            canary = yield daemon.terminal_server(f"CANARY{batch % 7}")
            try:        # the daemon is up: a fresh connection's logon is answered (a refusal is an answer too:
                        # the fuzzer may have turned the security group policy on)
                yield canary.request("logon", hwid=f"canary{batch}", machine="c", user="c")
            except TslsError as e:
                assert e.code not in (Code.INTERNAL_ERROR, Code.STORAGE_ERROR, Code.SHUTTING_DOWN), f"{e} after {context}"
            yield canary.close()
        print(f"\nfuzz: {sent} inputs in {batch + 1} batches, {answered} answers, 0 INTERNAL_ERROR (seed {SEED})")
    finally:
        globalLogPublisher.removeObserver(observe)
        yield daemon.stop()
    check = yield threads.deferToThread(subprocess.run, [sys.executable, "-m", "tsls.cli", "check", "--db", daemon.path],
                                        capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
