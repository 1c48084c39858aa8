"""Lists that end: keyset pages with an opaque cursor (docs/protocol.md, "Lists").

A list request that carries ``cursor`` (the empty string for the first page, then the
``next_cursor`` of the previous answer) is answered with one page::

    {"items": [...], "total": N, "next_cursor": "..." | null}

``total`` is how many rows match in all (at the time of that page's snapshot); ``next_cursor`` is
null on the last page. Pages follow a stable order (a unique key: license ID, event row ID, key pack
ID, terminal server name), and a cursor names the last key a page held, so rows written between
two pages never shift the next one (no OFFSET). A cursor is opaque to clients: base64 of the list's
name, its direction and that key; one given for another list, or not given by this server, is
refused with BAD_CURSOR.
"""
from __future__ import annotations

import base64
import binascii
import json
import re

from tsls.errors import Code, TslsError

MAX_PAGE = 100_000


def encode(which: str, key, newest_first: bool = False) -> str:
    text = json.dumps([which, 1 if newest_first else 0, key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(which: str, cursor: str, kind=int, newest_first: bool = False):
    """The key a cursor names, or None for the first page (the empty string)."""
    if cursor == "":
        return None
    try:
        name, direction, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        name = direction = key = None
    if name != which or direction != (1 if newest_first else 0) or type(key) is not kind:
        raise TslsError(Code.BAD_CURSOR, f"this cursor was not given by this server for {which}"
                        f"{' newest first' if newest_first else ''}; start again with cursor \"\"")
    return key


def page(which: str, items: list, key, cursor: str, limit: int, kind=int) -> dict:
    """One page of a short list already in memory (key packs, terminal servers), by ``key(item)``."""
    after = decode(which, cursor, kind)
    ordered = sorted(items, key=key)
    rest = ordered if after is None else [i for i in ordered if key(i) > after]
    chunk = rest[:limit]
    more = len(rest) > limit
    return {"items": chunk, "total": len(items), "next_cursor": encode(which, key(chunk[-1])) if more else None}


class Encoded(bytes):
    """An answer's ``result`` already encoded as JSON (by a reader thread): the protocol sends it as it
    is, so a page of 10,000 rows is not encoded in the reactor's thread while logons wait."""


def answer(which: str, rows: list, total: int, limit: int, key, newest_first: bool = False) -> Encoded:
    """A page read with ``limit + 1`` rows (the extra one only says there is more), encoded."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Encoded(json.dumps({"items": rows, "total": total,
                               "next_cursor": encode(which, key(rows[-1]), newest_first) if more else None},
                              separators=(",", ":")).encode())


def answer_joined(which: str, items: str, last_key, more: bool, total: int, newest_first: bool = False) -> Encoded:
    """Like ``answer``, for a page the database encoded and joined (its items' JSON, comma-separated):
    ASCII, as every answer is (``ascii_json``)."""
    cursor = json.dumps(encode(which, last_key, newest_first) if more else None)
    return Encoded(('{"items":[' + ascii_json(items) + f'],"total":{int(total)},"next_cursor":' + cursor
                    + "}").encode())


def joined_list(items: str) -> Encoded:
    """A list the database encoded and joined (a list without a cursor), as ``answer_joined`` does a page."""
    return Encoded(("[" + ascii_json(items) + "]").encode())


_NOT_ASCII = re.compile(r"[^ -~]+")


def ascii_json(text: str) -> str:
    """JSON text with what is not printable ASCII escaped as ``json.dumps`` escapes it by default
    (\\uXXXX, surrogate pairs beyond the BMP), for a page the database encoded: the databases leave
    such characters as they are. The JSON's own characters (and any control character, which the
    database escaped already) are printable ASCII, so only the inside of strings changes. No copy when
    the text is ASCII, as nearly every page is (``isascii`` is a flag CPython keeps)."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _NOT_ASCII.sub(lambda m: json.dumps(m.group())[1:-1], text)
