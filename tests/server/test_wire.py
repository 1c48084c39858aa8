"""The protocol's fast paths (orjson parsing and encoding, answers without Deferreds) say exactly what
the standard library's path says: every line is parsed to the same request or refused with the same
code and message as by ``_parse_std`` (json.loads and the ``_unfit`` walk), every answer is the bytes
``json.dumps(..., separators=(",", ":"))`` writes, and answers keep their order and their counts in
the metrics hook whether a handler answers at once or later. In memory: no sockets."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.server.test_limits import HELLO, Server, connect, replies
from tsls.errors import Code, TslsError
from tsls.server.protocol import MAX_DEPTH, LicenseFactory, _line_of, _parse, _parse_std, _reply


def same(a, b) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def outcome(parsed):
    rid, request, error = parsed
    return rid, request, None if error is None else (error.code, error.message)


def check(line: bytes):
    fast, slow = outcome(_parse(line)), outcome(_parse_std(line))
    assert same(fast, slow), (line, fast, slow)
    return fast


def nested(depth: int) -> bytes:
    return b'{"id":1,"op":"logon","hwid":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# Lines orjson refuses that the standard library takes, or the other way round, or that it takes differently.
REFUSED = [
    (b'{"id":1,"op":"logon","hwid":"a\\ud800b"}', Code.BAD_REQUEST, "lone surrogate"),       # lone surrogate escapes
    (b'{"id":1,"op":"logon","hwid":"\\udc80"}', Code.BAD_REQUEST, "lone surrogate"),
    (b'{"id":1,"op":"logon","\\ud800":1}', Code.BAD_REQUEST, "lone surrogate"),
    (b'{"id":1,"op":"logon","hwid":["\\ud800"]}', Code.BAD_REQUEST, "lone surrogate"),
    (b'{"id":"\\ud800","op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'{"id":1,"op":"logon","hwid":"\xed\xa0\x80"}', Code.BAD_REQUEST, "lone surrogate"),    # a surrogate in UTF-8
    (b'{"id":1,"op":"revoke","license_id":9223372036854775808}', Code.BAD_REQUEST, "64 bits"),  # 2**63: orjson's u64
    (b'{"id":1,"op":"revoke","license_id":18446744073709551615}', Code.BAD_REQUEST, "64 bits"),  # 2**64-1
    (b'{"id":1,"op":"revoke","license_id":18446744073709551616}', Code.BAD_REQUEST, "64 bits"),  # orjson: a float
    (b'{"id":1,"op":"revoke","license_id":-9223372036854775809}', Code.BAD_REQUEST, "64 bits"),
    (b'{"id":1,"op":"revoke","license_id":1000000000000000000000000000000}', Code.BAD_REQUEST, "64 bits"),
    (b'{"id":1,"op":"revoke","x":[1,{"y":9223372036854775808}]}', Code.BAD_REQUEST, "64 bits"),
    (b'{"id":9223372036854775808,"op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'{"id":1,"op":"revoke","license_id":1e400}', Code.BAD_REQUEST, "not finite"),
    (b'{"id":1,"op":"revoke","license_id":-1e400}', Code.BAD_REQUEST, "not finite"),
    (b'{"id":1,"op":"revoke","license_id":NaN}', Code.BAD_REQUEST, "not finite"),
    (b'{"id":1,"op":"revoke","license_id":Infinity}', Code.BAD_REQUEST, "not finite"),
    (b'{"id":1,"op":"revoke","license_id":-Infinity}', Code.BAD_REQUEST, "not finite"),
    (b'{"id":1,"op":"logon","hwid":"\xff"}', Code.BAD_JSON, "not a JSON object"),              # not UTF-8
    (b'{"id":1,"op":"logon","hwid":"\xc0\xaf"}', Code.BAD_JSON, "not a JSON object"),          # overlong
    (b'{"id":1,"op":"logon","hwid":"\xf4\x90\x80\x80"}', Code.BAD_JSON, "not a JSON object"),  # past U+10FFFF
    (b'{"id":1,"op":"logon","hwid":"\x01"}', Code.BAD_JSON, "not a JSON object"),              # a control character
    (nested(MAX_DEPTH + 1), Code.BAD_REQUEST, "nest"),           # one level past what docs/protocol.md allows
    (nested(900), Code.BAD_REQUEST, "nest"),
    (nested(1025), Code.BAD_JSON, "nest"),
    (nested(5000), Code.BAD_JSON, "nest"),
    (b'{"id":true,"op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'{"id":1.0,"op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'{"id":null,"op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'{"op":"logon"}', Code.BAD_REQUEST, "every request needs an 'id'"),
    (b'[1]', Code.BAD_REQUEST, "a request is a JSON object"),
    (b'"x"', Code.BAD_REQUEST, "a request is a JSON object"),
    (b'{"id":1}{"id":2}', Code.BAD_JSON, "not a JSON object"),
    (b'{"id":1,}', Code.BAD_JSON, "not a JSON object"),
    (b'\x00', Code.BAD_JSON, "not a JSON object"),
]


@pytest.mark.parametrize("line,code,words", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_lines_orjson_refuses_or_reads_otherwise_get_the_code_and_message_they_always_had(line, code, words):
    rid, request, error = check(line)
    assert request is None and error[0] is code and words in error[1]


TAKEN = [
    b'\xef\xbb\xbf{"id":1,"op":"logon"}',                               # a BOM: the standard library takes it
    '{"id":1,"op":"logon"}'.encode("utf-16"),                           # so it does UTF-16 (it guesses the encoding)
    '{"id":1,"op":"logon"}'.encode("utf-32"),
    b'{"id":1,"op":"logon","hwid":"\\ud83d\\ude00 \xc3\xa9"}',          # a surrogate pair; non-ASCII text
    b'{"id":1,"op":"logon","x":1.5,"y":-0.0,"z":1e16}',                 # floats (the standard library's)
    b'{"id":1,"op":"logon","x":9223372036854775807,"y":-9223372036854775808}',
    b'{"id":1,"op":"logon","hwid":"a","hwid":"b"}',                     # a key twice: the last one
    b' \t{"id":"x","op":"logon","n":[1,[2,{"a":null}]],"t":true,"f":false}\r\t ',
    nested(MAX_DEPTH),                                                  # the deepest docs/protocol.md allows
]


@pytest.mark.parametrize("line", TAKEN, ids=[str(i) for i in range(len(TAKEN))])
def test_lines_both_parsers_take_are_the_same_request(line):
    rid, request, error = check(line)
    assert error is None and request["id"] == rid


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
requests = st.fixed_dictionaries({"id": st.one_of(st.integers(-2**65, 2**65), st.text(max_size=5), json_values),
                                  "op": st.sampled_from(["logon", "hello", None])},
                                 optional={"hwid": json_values, "machine": json_values, "user": json_values})


def mutate(data: bytes, where: int, what: bytes) -> bytes:
    where %= len(data) + 1
    return data[:where] + what + data[where + len(what):]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests, ascii=st.booleans(), where=st.integers(0, 400),
       what=st.one_of(st.just(b""), st.binary(max_size=3),
                      st.sampled_from([b"\\ud800", b"\\udc00", b"\xed\xa0\x80", b"\xff", b"NaN", b"1e400", b"[[",
                                       b"18446744073709551616", b"9223372036854775808", b"\xef\xbb\xbf", b"\x00"])))
def test_any_line_is_read_alike_by_both_parsers(request, ascii, where, what):
    line = json.dumps(request, ensure_ascii=ascii).encode("utf-8", "surrogatepass")
    check(line)
    check(mutate(line, where, what))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=60))
def test_any_bytes_are_read_alike_by_both_parsers(data):
    check(data.replace(b"\n", b""))


# --- answers ------------------------------------------------------------------------------------------------

ANSWERS = [
    {"outcome": "temporary_issued", "license": {"license_id": 1, "hwid": "h", "key_pack_id": None, "validated": False}},
    {"user": "Jürgen", "machine": "PC-ß", "emoji": "\U0001f600", "nul": "\x00\x1f\x7f\n\t\"\\"},       # \u escapes, as ever
    {"big": 2 ** 64, "small": -2 ** 70},                                                       # orjson will not
    {1: "a key that is a number", None: "null"},                                               # json.dumps turns to text
    [1, (2, 3), [], {}, "", True, False, None],
    {"lab_clock_offset": 3600.0, "rate": 0.5, "n": 1e16},
    "text",
    None,
]


@pytest.mark.parametrize("value", ANSWERS, ids=[str(i) for i in range(len(ANSWERS))])
def test_answers_are_the_bytes_json_dumps_writes(value):
    assert _line_of(value) == json.dumps(value, separators=(",", ":")).encode() + b"\n"


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=12)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=12))
def test_any_answer_is_the_bytes_json_dumps_writes(value):
    assert _line_of(value) == json.dumps(value, separators=(",", ":")).encode() + b"\n"


def test_replies_and_errors_keep_their_layout():
    assert _reply(7, {"a": "é"}) == b'{"id":7,"ok":true,"result":{"a":"\\u00e9"}}\n'
    error = TslsError(Code.NO_LICENSE_AVAILABLE, "none left", referral=["LS2"])
    assert _reply("x", error=error) == (b'{"id":"x","ok":false,"error":{"code":"NO_LICENSE_AVAILABLE",'
                                        b'"message":"none left","details":{"referral":["LS2"]}}}\n')
    assert _reply(None, error=TslsError(Code.BAD_JSON, "no")) == b'{"id":null,"ok":false,"error":{"code":"BAD_JSON","message":"no"}}\n'


def test_an_answer_that_cannot_be_written_is_an_internal_error_as_before():
    class Thing:
        pass

    server = Server()
    server.logon = lambda *args: defer.succeed({"thing": Thing()})
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n')
    assert [(r["id"], r["ok"]) for r in replies(transport)] == [(0, True), (1, False)]
    assert replies(transport)[1]["error"]["code"] == "INTERNAL_ERROR"


# --- answers now or later: order and metrics ------------------------------------------------------------------

def observed(factory):
    seen = []
    factory.observe = lambda op, result, started: seen.append(
        (op, "ok" if not isinstance(result, Failure) else
         result.value.code.value if isinstance(result.value, TslsError) else "INTERNAL_ERROR"))
    return seen


def test_answers_given_at_once_wait_behind_those_given_later_and_every_one_is_counted_once():
    server = Server()
    factory = LicenseFactory(server, clock=Clock())
    seen = observed(factory)
    protocol, transport = connect(factory)
    protocol.dataReceived(HELLO +
                          b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n'       # later
                          b'{"id":2,"op":"logon","hwid":"","machine":"m","user":"u"}\n'        # refused at once
                          b'{"id":3,"op":"licensing_info"}\n'                                  # a handler that raises
                          b'{"id":4,"op":"frobnicate"}\n'                                      # unknown, at once
                          b'{"id":5,"op":"logon","hwid":"h2","machine":"m","user":"u"}\n')     # later
    assert [r["id"] for r in replies(transport)] == [0]          # 2, 3 and 4 wait for 1
    assert seen[0] == ("hello", "ok") and ("logon", "BAD_REQUEST") in seen and ("frobnicate", "UNKNOWN_OPERATION") in seen
    server.waiting[1].errback(TslsError(Code.NO_LICENSE_AVAILABLE, "none"))
    assert [r["id"] for r in replies(transport)] == [0]
    server.waiting[0].callback({"outcome": "temporary_issued"})
    answers = replies(transport)
    assert [r["id"] for r in answers] == [0, 1, 2, 3, 4, 5]
    assert [r["result"] if r["ok"] else r["error"]["code"] for r in answers[1:]] == [
        {"outcome": "temporary_issued"}, "BAD_REQUEST", "INTERNAL_ERROR", "UNKNOWN_OPERATION", "NO_LICENSE_AVAILABLE"]
    assert sorted(seen) == sorted([("hello", "ok"), ("logon", "ok"), ("logon", "BAD_REQUEST"),
                                   ("licensing_info", "INTERNAL_ERROR"), ("frobnicate", "UNKNOWN_OPERATION"),
                                   ("logon", "NO_LICENSE_AVAILABLE")])
    assert len(protocol._answers) == 0


def test_a_handler_answering_at_once_is_written_at_once_without_a_deferred(monkeypatch):
    made = []
    real = defer.Deferred.__init__
    monkeypatch.setattr(defer.Deferred, "__init__", lambda self, *a: made.append(1) or real(self, *a))
    server = Server()
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.role = "terminal_server"          # as after a hello
    protocol.dataReceived(b'{"id":1,"op":"challenge"}\n{"id":2,"op":"logon"}\n')
    assert [(r["id"], r["ok"]) for r in replies(transport)] == [(1, True), (2, False)]
    assert made == []


def test_requests_behind_a_hello_run_after_its_answer_in_order():
    server = Server()
    pending = defer.Deferred()
    server.authenticate = lambda *args: pending
    factory = LicenseFactory(server, clock=Clock())
    seen = observed(factory)
    protocol, transport = connect(factory)
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n{"id":2,"op":"bad"}\n')
    assert replies(transport) == [] and server.waiting == []
    pending.callback(False)
    assert [r["id"] for r in replies(transport)] == [0]
    assert len(server.waiting) == 1
    server.waiting[0].callback({"outcome": "temporary_issued"})
    assert [(r["id"], r["ok"]) for r in replies(transport)] == [(0, True), (1, True), (2, False)]
    assert sorted(seen) == [("bad", "UNKNOWN_OPERATION"), ("hello", "ok"), ("logon", "ok")]


def test_a_metrics_hook_that_fails_gives_an_internal_error_not_a_stuck_connection():
    server = Server()
    factory = LicenseFactory(server, clock=Clock())

    def observe(op, result, started):
        if op == "logon":
            raise RuntimeError("broken hook")
    factory.observe = observe
    protocol, transport = connect(factory)
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n'
                          b'{"id":2,"op":"logon","hwid":"","machine":"m","user":"u"}\n')
    server.waiting[0].callback({"outcome": "temporary_issued"})
    assert [(r["id"], r["ok"] or r["error"]["code"]) for r in replies(transport)] == [
        (0, True), (1, "INTERNAL_ERROR"), (2, "INTERNAL_ERROR")]


@pytest.mark.parametrize("fields,message", [
    ({}, "missing field 'hwid'"),
    ({"hwid": "h"}, "missing field 'machine'"),
    ({"hwid": "h", "machine": "m"}, "missing field 'user'"),
    ({"hwid": "", "machine": "m", "user": "u"}, "field 'hwid' must be 1 to 128 characters"),
    ({"hwid": "h" * 129, "machine": "m", "user": "u"}, "field 'hwid' must be 1 to 128 characters"),
    ({"hwid": 5, "machine": "m", "user": "u"}, "field 'hwid' must be a str"),
    ({"hwid": "h", "machine": ["m"], "user": "u"}, "field 'machine' must be a str"),
    ({"hwid": "h", "machine": "m" * 257, "user": "u"}, "field 'machine' must be 1 to 256 characters"),
    ({"hwid": "h", "machine": "m", "user": True}, "field 'user' must be a str"),
    ({"hwid": "h", "machine": "m", "user": "u", "license": ""}, "field 'license' must be 1 to 512 characters"),
    ({"hwid": "h", "machine": "m", "user": "u", "license": "t" * 513}, "field 'license' must be 1 to 512 characters"),
    ({"hwid": "h", "machine": "m", "user": "u", "license": 7}, "field 'license' must be a str"),
    ({"hwid": 1, "machine": 2, "user": 3, "license": 4}, "field 'hwid' must be a str"),
])
def test_a_logon_with_a_bad_field_is_refused_as_before(fields, message):
    server = Server()
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO + json.dumps({"id": 1, "op": "logon", **fields}).encode() + b"\n")
    answer = replies(transport)[1]
    assert answer["error"] == {"code": "BAD_REQUEST", "message": message} and server.waiting == []


def test_a_plain_logon_reaches_the_ledger_with_its_fields():
    server = Server()
    calls = []
    server.logon = lambda *args: calls.append(args[1:5]) or defer.succeed({})
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n'
                          b'{"id":2,"op":"logon","hwid":"h","machine":"m","user":"u","license":null}\n'
                          b'{"id":3,"op":"logon","hwid":"' + b"h" * 128 + b'","machine":"m","user":"u","license":"t"}\n')
    assert calls == [("h", "m", "u", None), ("h", "m", "u", None), ("h" * 128, "m", "u", "t")]


def test_a_logon_is_answered_through_its_slot_in_request_order_without_a_deferred():
    server = Server()
    told = []
    server.logon = lambda *args: told.append(args[-1])      # the slot to tell; nothing returned
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n'
                          b'{"id":2,"op":"challenge"}\n'
                          b'{"id":3,"op":"logon","hwid":"h2","machine":"m","user":"u"}\n')
    assert [r["id"] for r in replies(transport)] == [0]      # the challenge waits behind the first logon
    told[1].errback(TslsError(Code.INVALID_LICENSE, "no"))
    told[0].callback({"outcome": "temporary_issued"})
    answers = replies(transport)
    assert [r["id"] for r in answers] == [0, 1, 2, 3]
    assert answers[1]["result"] == {"outcome": "temporary_issued"} and "nonce" in answers[2]["result"]
    assert answers[3]["error"]["code"] == "INVALID_LICENSE"


def test_a_logon_whose_ledger_fails_is_answered_internal_error():
    server = Server()

    def fails(*args):
        raise RuntimeError("a bug")
    server.logon = fails
    protocol, transport = connect(LicenseFactory(server, clock=Clock()))
    protocol.dataReceived(HELLO + b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}\n')
    assert replies(transport)[1]["error"]["code"] == "INTERNAL_ERROR"


# --- the idle timer and the reading state, now reset and updated once per batch of lines --------------------

def test_every_complete_request_restarts_the_idle_timer_and_a_blank_line_too():
    clock = Clock()
    protocol, transport = connect(LicenseFactory(Server(), clock=clock, idle_timeout=300))
    for data in (HELLO, b'{"id":1,"op":"challenge"}\n{"id":2,"op":"challenge"}\n', b"\n", b'{"id":3,"op":"x"}\n'):
        clock.advance(299)
        protocol.dataReceived(data)
        assert not transport.disconnecting
    clock.advance(299)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and replies(transport)[-1]["error"]["code"] == "IDLE_TIMEOUT"


def test_a_half_closed_last_request_without_its_newline_restarts_the_timer_and_the_close_waits_for_its_answer():
    clock = Clock()
    server = Server()
    protocol, transport = connect(LicenseFactory(server, clock=clock, idle_timeout=300))
    protocol.dataReceived(HELLO)
    clock.advance(299)
    protocol.dataReceived(b'{"id":1,"op":"logon","hwid":"h","machine":"m","user":"u"}')
    protocol.readConnectionLost()
    clock.advance(299)
    assert not transport.disconnecting and len(server.waiting) == 1
    server.waiting[0].callback({"outcome": "existing"})
    assert transport.disconnecting and [r["id"] for r in replies(transport)] == [0, 1]


def test_lines_held_back_by_the_in_flight_bound_are_taken_as_answers_leave():
    from tests.server.test_limits import turns
    from tsls.server.protocol import MAX_IN_FLIGHT

    clock, server = Clock(), Server()
    protocol, transport = connect(LicenseFactory(server, clock=clock))
    protocol.dataReceived(HELLO)
    protocol.dataReceived(b"".join(b'{"id":%d,"op":"logon","hwid":"h","machine":"m","user":"u"}\n' % i
                                   for i in range(1, MAX_IN_FLIGHT + 11)))
    turns(clock)
    assert len(server.waiting) == MAX_IN_FLIGHT and transport.producerState == "paused"
    for n in range(10):
        server.waiting[n].callback({"outcome": "existing"})
        turns(clock)
        assert len(server.waiting) == MAX_IN_FLIGHT + n + 1      # each answer gone lets one more line in
        assert transport.producerState == "paused"             # still at the bound, or lines waiting
    server.waiting[10].callback({"outcome": "existing"})
    turns(clock)
    assert transport.producerState == "producing"               # nothing left in the buffer: reading again
    assert [r["id"] for r in replies(transport)] == list(range(12))


# --- the daemon's process: the collector tuned once started --------------------------------------------------

def test_tune_gc_freezes_what_start_up_built_and_collects_the_young_less_often():
    import subprocess
    import sys

    # in a process of its own: frozen objects are never collected, which the test process must not suffer
    script = ("import gc\nfrom tsls.server.service import GC_THRESHOLD, tune_gc\nbefore = gc.get_freeze_count()\n"
              "tune_gc()\nprint(before, gc.get_freeze_count() > 10_000, gc.get_threshold() == GC_THRESHOLD)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0", "True", "True"]


def test_a_grant_told_by_the_writer_is_the_bytes_json_dumps_writes_with_or_without_metrics(tmp_path):
    # Without metrics, a logon's answer goes into its slot by _Logon.callback's own path, not _answered/_fill
    from tsls.clearinghouse.testing import FakeClearinghouse
    from tsls.server.app import LicenseServer, load_identity
    from tsls.server.store import LicenseStore
    from tsls.server.writer import BatchWriter
    from tests.server.test_limits import turns

    store = LicenseStore.open(str(tmp_path / "ls.sqlite"))
    clock = Clock()
    clock.advance(1_800_000_000)
    server = LicenseServer(BatchWriter(None, clock, store, threaded=False), FakeClearinghouse(), load_identity(store, "1"))
    names = ["PC-1", "Jürgen's PC", "del\x7f", "\U0001f600", 'quote"back\\slash']
    for observe in (None, []):
        factory = LicenseFactory(server, clock=clock)
        if observe is not None:
            factory.observe = lambda op, result, started: observe.append((op, result["outcome"]))
        protocol, transport = connect(factory)
        sent = [(n if n % 2 else f"r{n}", name) for n, name in enumerate(names)]
        protocol.dataReceived(HELLO + b"".join(json.dumps({"id": rid, "op": "logon", "hwid": f"{observe is None}{n}",
                                                           "machine": name, "user": name}).encode() + b"\n"
                                               for n, (rid, name) in enumerate(sent)))
        turns(clock)
        lines = transport.value().splitlines(keepends=True)[1:]
        assert len(lines) == len(names)
        for line, (rid, name) in zip(lines, sent):
            answer = json.loads(line)
            assert line == json.dumps(answer, separators=(",", ":")).encode() + b"\n"
            assert answer["id"] == rid and answer["result"]["license"]["machine"] == name
            assert answer["result"]["outcome"] == "temporary_issued"
        if observe is not None:
            assert observe == [("logon", "temporary_issued")] * len(names)
        protocol.connectionLost(None)
    store.close()
