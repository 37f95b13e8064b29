"""What an SQLite error on the alarms file means to the store (:func:`_error_kind`: locked,
read-only, full, damaged, …) and what the operator is told to do about it (:data:`_ADVICE`).

What does not live here: the errors the store raises to its callers (:mod:`atomwatch.alarm`) and
how the writer reports an outage (:mod:`.alarm_writer`).
"""

from __future__ import annotations

import sqlite3

from . import alarm_schema as schema


def _error_kind(e: BaseException) -> str:
    """What an SQLite error means for the store: locked, read-only, full, damaged, unopenable, …"""
    code = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF
    if isinstance(e, schema.SchemaError):
        return "newer"
    return {
        sqlite3.SQLITE_BUSY: "locked",
        sqlite3.SQLITE_LOCKED: "locked",
        sqlite3.SQLITE_READONLY: "read-only",
        sqlite3.SQLITE_FULL: "full",
        sqlite3.SQLITE_CORRUPT: "damaged",
        sqlite3.SQLITE_NOTADB: "damaged",
        sqlite3.SQLITE_CANTOPEN: "cannot open",
        sqlite3.SQLITE_IOERR: "I/O error",
        sqlite3.SQLITE_PERM: "read-only",
    }.get(code, "error")


_ADVICE = {
    "locked": "another process holds its write lock",
    "read-only": "the file or its folder cannot be written: make it writable",
    "full": "the disk is full: free space",
    "damaged": "the file is damaged: stop the controller, move the file aside and start again",
    "cannot open": "cannot open or create it: check the folder exists and is writable",
    "I/O error": "the disk reports I/O errors",
}
