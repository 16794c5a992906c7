"""Checkpointers for session graphs: SQLite by default, our types registered with the serializer.

`sqlite_checkpointer` opens the database in WAL mode with a busy timeout, so a notebook and a
script can read one thread's checkpoints at once and a writer waits instead of failing with
"database is locked". It refuses a damaged file with `CorruptCheckpointError` instead of letting
SQLite open it as an empty database (a thread would then silently start again from nothing). Any
other saver a user constructs (`InMemorySaver`, `SqliteSaver`, `PostgresSaver` for scale) works too:
`register_types` gives the graph a clone of it whose serializer lists our state types, so strict
deployments (``LANGGRAPH_STRICT_MSGPACK=true``) revive them instead of refusing them and LangGraph's
permissive default loads them without a "Deserializing unregistered type" warning.
"""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import maybe_add_typed_methods
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ._state import SERDE_ALLOWLIST

__all__ = [
    "CorruptCheckpointError",
    "allowlist",
    "register_types",
    "session_serializer",
    "sqlite_checkpointer",
    "sqlite_store",
]

_MAGIC = b"SQLite format 3\x00"
_HEADER = 100


class CorruptCheckpointError(sqlite3.DatabaseError):
    """A checkpoint database that exists but cannot be what it claims: not SQLite, truncated, damaged,
    or another application's database. `path` is the file, `reason` what was found."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"checkpoint database {path} is damaged: {reason}. Its threads cannot be read; restore the "
            "file from a backup, or move it (and any -wal file beside it) aside to start afresh"
        )
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, like other exceptions
        return (type(self), (self.path, self.reason))


def allowlist() -> list[tuple[str, str]]:
    """(module, name) of every custom type a session checkpoint holds."""
    return [(t.__module__, t.__qualname__) for t in SERDE_ALLOWLIST]


def session_serializer() -> JsonPlusSerializer:
    """A msgpack serializer that revives our state types and LangGraph's safe types, nothing else."""
    return JsonPlusSerializer(allowed_msgpack_modules=allowlist())


def register_types(checkpointer: BaseCheckpointSaver[Any]) -> BaseCheckpointSaver[Any]:
    """`checkpointer` (a shallow clone of it), reviving our state types without a warning.

    Works for any saver whose serializer is LangGraph's `JsonPlusSerializer`, bare or inside an
    `EncryptedSerializer` (InMemorySaver, SqliteSaver, PostgresSaver, ...):

    - an explicit allowlist (``LANGGRAPH_STRICT_MSGPACK=true``, or one the user passed) gets our
      types added, so they revive instead of being blocked;
    - LangGraph's permissive default (allow everything, log "Deserializing unregistered type" for
      each type not on a list) becomes an explicit list of LangGraph's safe types plus ours. Our
      graph's state holds nothing else, and a permissive serializer cannot be told which types
      are expected, so listing them is the only way to load without the warning.

    Any other serializer is returned as is.
    """
    serde = checkpointer.serde
    if isinstance(serde, EncryptedSerializer):
        inner = _with_our_types(serde.serde)
        registered: Any = serde if inner is serde.serde else EncryptedSerializer(serde.cipher, inner)
    else:
        registered = _with_our_types(serde)
    if registered is serde:
        return checkpointer
    clone = copy.copy(checkpointer)
    clone.serde = maybe_add_typed_methods(registered)
    return clone


def _with_our_types(serde: Any) -> Any:
    if not isinstance(serde, JsonPlusSerializer):
        return serde
    # LangGraph keeps the allowlist private; True is its permissive default (see its constructor).
    if getattr(serde, "_allowed_msgpack_modules", None) is True:
        explicit = copy.copy(serde)
        explicit._allowed_msgpack_modules = set()  # only LangGraph's safe types, then ours below
        return explicit.with_msgpack_allowlist(allowlist())
    return serde.with_msgpack_allowlist(allowlist())


def sqlite_store(path: str | Path, *, busy_timeout_s: float = 30.0) -> Any:
    """A LangGraph `SqliteStore` on `path` (the checkpoint database: one file per session) in WAL mode."""
    from langgraph.store.sqlite import SqliteStore

    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout_s, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    conn.execute("PRAGMA synchronous=NORMAL")
    store = SqliteStore(conn)
    store.setup()
    return store


def sqlite_checkpointer(
    path: str | Path, *, busy_timeout_s: float = 30.0, quick_check: bool = True
) -> BaseCheckpointSaver[Any]:
    """A `SqliteSaver` on `path` (created if missing) in WAL mode with a busy timeout.

    An existing file is checked before SQLite touches it (SQLite would open a 0-byte or headerless
    file as a new, empty database and could discard a write-ahead log that still held the data):

    - a missing or 0-byte file is a new database, unless a non-empty ``-wal`` file lies beside it
      (then the main file was lost or truncated);
    - otherwise the 100-byte SQLite header must be valid and the file as long as the header says;
    - ``PRAGMA quick_check`` then walks every page (about 10 ms for 1,000 checkpoints in 28 MB;
      ``quick_check=False`` skips it, leaving damage in later pages to surface when they are read);
    - a database that holds tables but not LangGraph's ``checkpoints`` belongs to something else.

    Raises:
        CorruptCheckpointError: any of the above, naming the file and what was wrong with it.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_file(path)
    # check_same_thread=False: SqliteSaver serialises access with its own lock (async tools run the
    # graph in worker threads).
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        _check_contents(conn, path, quick_check=quick_check)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
        saver = SqliteSaver(conn, serde=session_serializer())
        saver.setup()
    except sqlite3.DatabaseError as e:
        conn.close()
        if isinstance(e, CorruptCheckpointError):
            raise
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise  # busy, not damaged
        raise CorruptCheckpointError(path, f"SQLite cannot read it ({e})") from e
    return saver


def _check_file(path: Path) -> None:
    """Refuse a file that cannot be a whole SQLite database, reading only its size and header."""
    wal = Path(f"{path}-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    if not path.exists() or path.stat().st_size == 0:
        if wal_bytes:
            state = "missing" if not path.exists() else "0 bytes long"
            raise CorruptCheckpointError(
                path,
                f"the database file is {state} but its write-ahead log {wal.name} holds {wal_bytes} bytes "
                "(the main file was deleted or truncated)",
            )
        return  # a new database
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(_HEADER)
    if len(header) < _HEADER or not header.startswith(_MAGIC):
        raise CorruptCheckpointError(path, "not a SQLite database (its first bytes are not a SQLite header)")
    raw_page = int.from_bytes(header[16:18], "big")
    page = 65536 if raw_page == 1 else raw_page
    if page < 512 or page > 65536 or page & (page - 1):
        raise CorruptCheckpointError(path, f"the header's page size ({raw_page}) is invalid")
    if header[18] not in (1, 2) or header[19] not in (1, 2) or header[21:24] != b"\x40\x20\x20":
        raise CorruptCheckpointError(path, "the header's format fields are invalid")
    if wal_bytes:
        return  # pages may still be on their way from the log: SQLite and quick_check judge the rest
    if size % page:
        raise CorruptCheckpointError(
            path, f"truncated: {size} bytes is not a whole number of {page}-byte pages"
        )
    pages, counter, valid_for = (int.from_bytes(header[a : a + 4], "big") for a in (28, 24, 92))
    if counter == valid_for and pages * page > size:  # the header's page count is current
        raise CorruptCheckpointError(
            path, f"truncated: the header records {pages} pages ({pages * page} bytes), the file has {size}"
        )


def _check_contents(conn: sqlite3.Connection, path: Path, *, quick_check: bool) -> None:
    if quick_check:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise CorruptCheckpointError(path, "PRAGMA quick_check found: " + "; ".join(problems))
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "checkpoints" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise CorruptCheckpointError(
            path,
            f"a SQLite database with tables ({shown}) but not LangGraph's checkpoints (another "
            "application's database)",
        )
