"""The client library's framing and the CSV it writes, without a daemon: answers split anywhere across
chunks, many in one chunk, a page of megabytes in many chunks, and a line past MAX_LENGTH."""
import io

import orjson
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from clients.connection import LicenseConnection
from clients.output import RowStream, write_csv
from tsls.errors import Code


def _connected():
    conn = LicenseConnection()
    conn.makeConnection(StringTransport())
    return conn


def _answer(rid, result) -> bytes:
    return orjson.dumps({"id": rid, "ok": True, "result": result}) + b"\n"


def test_answers_split_at_every_byte_and_packed_together_each_arrive_once_in_order():
    conn = _connected()
    waiting = [conn.request("status") for _ in range(3)]
    got = []
    for d in waiting:
        d.addCallback(got.append)
    stream = _answer(1, {"n": 1}) + _answer(2, {"n": "two\u00e9"}) + _answer(3, {"n": [3]})
    for i in range(len(stream)):            # one byte at a time
        conn.dataReceived(stream[i:i + 1])
    assert got == [{"n": 1}, {"n": "two\u00e9"}, {"n": [3]}]
    more = [conn.request("status") for _ in range(3)]
    for d in more:
        d.addCallback(got.append)
    stream = _answer(4, 4) + _answer(5, 5) + _answer(6, 6)
    conn.dataReceived(stream[:7])
    conn.dataReceived(stream[7:-3])         # ends one line, the next whole, and part of the last
    assert got[3:] == [4, 5]
    conn.dataReceived(stream[-3:])
    assert got[3:] == [4, 5, 6]


def test_a_page_of_megabytes_in_small_chunks_is_one_answer():
    conn = _connected()
    got = []
    conn.request("list_licenses").addCallback(got.append)
    page = {"items": [{"license_id": i, "hwid": "%040x" % i} for i in range(50_000)], "total": 50_000,
            "next_cursor": None}
    line = _answer(1, page)
    assert len(line) > 3_000_000
    for at in range(0, len(line), 65536):
        conn.dataReceived(line[at:at + 65536])
    assert got == [page]
    assert not conn.transport.disconnecting


def test_a_line_past_max_length_closes_the_connection_and_fails_what_waits():
    conn = _connected()
    conn.MAX_LENGTH = 1000
    failed = []
    conn.request("status").addErrback(failed.append)
    conn.dataReceived(b'{"id":1,"ok":true,"result":"' + b"x" * 600)
    assert not conn.transport.disconnecting
    conn.dataReceived(b"x" * 600)
    assert conn.transport.disconnecting
    conn.connectionLost(Failure(ConnectionDone()))     # what the transport reports once it has closed
    assert failed and failed[0].value.code is Code.CONNECTION_LOST
    whole = _connected()
    whole.MAX_LENGTH = 1000
    whole.dataReceived(b"y" * 1500 + b"\n")     # a whole line too long in one chunk
    assert whole.transport.disconnecting


COLUMNS = [("license_id", "ID"), ("user", "USER"), ("key_pack_id", "PACK"), ("validated", "VALID")]


def test_csv_rows_have_the_columns_in_order_none_empty_and_missing_keys_empty():
    out = io.StringIO()
    stream = RowStream(COLUMNS, "csv", out)
    stream.write([{"license_id": 1, "user": "a,b", "key_pack_id": None, "validated": True, "extra": 9}])
    stream.write([{"license_id": 2, "user": 'say "hi"', "validated": False}])       # no key_pack_id at all
    stream.close()
    assert out.getvalue().splitlines() == ["license_id,user,key_pack_id,validated", '1,"a,b",,True',
                                           '2,"say ""hi""",,False']
    again = io.StringIO()
    write_csv([{"license_id": 1, "user": "a,b", "key_pack_id": None, "validated": True}], COLUMNS, again)
    assert again.getvalue().splitlines()[1] == '1,"a,b",,True'


def test_json_export_is_one_array_of_sorted_objects_across_pages_and_says_empty_when_empty():
    import json
    out = io.StringIO()
    stream = RowStream(COLUMNS, "json", out)
    pages = [[{"user": "é", "license_id": 1, "wmi": {"b": 1, "a": 2}}], [], [{"license_id": 2}, {"license_id": 3}]]
    for page in pages:
        stream.write(page)
    stream.close()
    rows = [row for page in pages for row in page]
    assert out.getvalue() == "[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in rows) + "\n]\n"
    assert json.loads(out.getvalue()) == rows
    empty = io.StringIO()
    stream = RowStream(COLUMNS, "json", empty)
    stream.write([])
    stream.close()
    assert json.loads(empty.getvalue()) == []
