"""Every failure that crosses a wire: a stable code, a human message, and details.

The license server's socket protocol, the Clearinghouse's HTTP API and the client
libraries all speak these codes. A code is part of the documented protocol
(docs/protocol.md, docs/clearinghouse.md): never rename one.
"""
from __future__ import annotations

import enum


class Code(enum.Enum):
    # Request shape
    BAD_REQUEST = "BAD_REQUEST"
    BAD_JSON = "BAD_JSON"
    UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
    HELLO_REQUIRED = "HELLO_REQUIRED"
    ALREADY_HELLO = "ALREADY_HELLO"
    UNSUPPORTED_PROTOCOL = "UNSUPPORTED_PROTOCOL"
    LINE_TOO_LONG = "LINE_TOO_LONG"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_SLOW = "TOO_SLOW"
    BAD_CURSOR = "BAD_CURSOR"                          # a list's cursor this server did not give for that list
    NOT_PERMITTED = "NOT_PERMITTED"
    NOT_IN_GROUP = "NOT_IN_GROUP"
    UNKNOWN_TERMINAL_SERVER = "UNKNOWN_TERMINAL_SERVER"
    # Licensing decisions
    NO_LICENSE_AVAILABLE = "NO_LICENSE_AVAILABLE"
    MODE_MISMATCH = "MODE_MISMATCH"
    NOT_ACTIVATED = "NOT_ACTIVATED"
    MODE_UNSUPPORTED = "MODE_UNSUPPORTED"
    INVALID_LICENSE = "INVALID_LICENSE"
    NO_LICENSE_SERVER = "NO_LICENSE_SERVER"
    RENEWAL_FAILED = "RENEWAL_FAILED"
    REVOCATION_LIMIT = "REVOCATION_LIMIT"
    NOT_REVOCABLE = "NOT_REVOCABLE"
    LAB_CLOCK_DISABLED = "LAB_CLOCK_DISABLED"
    CLOCK_BACKWARDS = "CLOCK_BACKWARDS"
    UNKNOWN_LICENSE = "UNKNOWN_LICENSE"
    MODE_NOT_CONFIGURED = "MODE_NOT_CONFIGURED"        # a session host in Not Configured mode after its grace
    UPGRADE_PREVENTED = "UPGRADE_PREVENTED"            # Prevent License Upgrade: only newer CALs are free
    LS_VERSION_TOO_LOW = "LS_VERSION_TOO_LOW"          # the license server is older than the session host
    # Per Server / Per Seat products, Small Business Server
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    PRODUCT_EXISTS = "PRODUCT_EXISTS"
    NO_PER_SERVER_LICENSE = "NO_PER_SERVER_LICENSE"
    NOT_PER_SEAT = "NOT_PER_SEAT"
    ALREADY_PER_SEAT = "ALREADY_PER_SEAT"
    PER_SEAT_IS_FINAL = "PER_SEAT_IS_FINAL"
    CONFIRMATION_REQUIRED = "CONFIRMATION_REQUIRED"
    NOT_CONNECTED = "NOT_CONNECTED"
    NOT_SBS = "NOT_SBS"
    BAD_ADD_PACK = "BAD_ADD_PACK"
    ADD_PACK_USED = "ADD_PACK_USED"
    LICENSE_LIMIT_EXCEEDED = "LICENSE_LIMIT_EXCEEDED"
    # Purchases, key packs, activation
    INVALID_PURCHASE = "INVALID_PURCHASE"
    NO_SUCH_CAL_VERSION = "NO_SUCH_CAL_VERSION"        # e.g. 2012 R2: no separate CAL exists
    CAL_NEWER_THAN_SERVER = "CAL_NEWER_THAN_SERVER"    # installing CALs the license server cannot host
    UNKNOWN_PURCHASE = "UNKNOWN_PURCHASE"
    PURCHASE_EXISTS = "PURCHASE_EXISTS"
    PURCHASE_BOUND = "PURCHASE_BOUND"
    QUANTITY_EXCEEDED = "QUANTITY_EXCEEDED"
    ALREADY_RECOVERED = "ALREADY_RECOVERED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    TOO_LARGE = "TOO_LARGE"
    ALREADY_ACTIVATED = "ALREADY_ACTIVATED"
    MISTYPED_CODE = "MISTYPED_CODE"                    # a code typed in from the telephone fails its check
    CODE_FOR_ANOTHER_SERVER = "CODE_FOR_ANOTHER_SERVER"  # well formed, but issued for another server
    UNKNOWN_LICENSE_SERVER = "UNKNOWN_LICENSE_SERVER"
    UNKNOWN_KEY_PACK = "UNKNOWN_KEY_PACK"
    CONVERT_NOT_SUPPORTED = "CONVERT_NOT_SUPPORTED"    # converting CALs needs a 2012 or later license server
    ALREADY_MIGRATED = "ALREADY_MIGRATED"              # migrating a purchase onto the server that holds it
    SOURCE_UNREACHABLE = "SOURCE_UNREACHABLE"          # migrate: the source license server named is not answering
    NOT_ENOUGH_CALS = "NOT_ENOUGH_CALS"                # fewer unissued CALs than asked to convert
    BAD_CREDENTIALS = "BAD_CREDENTIALS"
    OPERATOR_REQUIRED = "OPERATOR_REQUIRED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    CLEARINGHOUSE_UNREACHABLE = "CLEARINGHOUSE_UNREACHABLE"
    SERVER_UNREACHABLE = "SERVER_UNREACHABLE"
    SERVER_TIMEOUT = "SERVER_TIMEOUT"
    CONNECTION_LOST = "CONNECTION_LOST"                # the connection closed before the answer came
    CLEARINGHOUSE_ERROR = "CLEARINGHOUSE_ERROR"
    NOT_FOUND = "NOT_FOUND"
    CONSOLE_DISABLED = "CONSOLE_DISABLED"
    # Server side
    STORAGE_ERROR = "STORAGE_ERROR"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    # Refusals to start (tsls prints them and exits 1; docs/reliability.md)
    PERMISSIONS_TOO_OPEN = "PERMISSIONS_TOO_OPEN"
    DAMAGED_DATABASE = "DAMAGED_DATABASE"
    NOT_A_TSLS_DATABASE = "NOT_A_TSLS_DATABASE"
    NEWER_SCHEMA = "NEWER_SCHEMA"
    EMPTY_DATABASE = "EMPTY_DATABASE"
    DISK_FULL = "DISK_FULL"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class TslsError(Exception):
    """A refusal with a stable code. Raised by the core, turned into a wire error by the shells,
    and raised again, typed, by the client libraries."""

    def __init__(self, code: Code, message: str, **details: object) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        body: dict = {"code": self.code.value, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def from_json(cls, body: object) -> "TslsError":
        if not isinstance(body, dict):
            return cls(Code.INTERNAL_ERROR, f"malformed error body: {body!r}")
        try:
            code = Code(body.get("code"))
        except ValueError:
            return cls(Code.INTERNAL_ERROR, f"unknown error code {body.get('code')!r}: {body.get('message')}")
        return cls(code, str(body.get("message", "")), **(body.get("details") or {}))
