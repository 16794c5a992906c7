"""Postgres for session graphs: checkpoints (`PostgresSaver`), the thread log (`PostgresStore`) and the
one-writer locks (advisory locks), all from one ``postgresql://`` URL.

What lets several graph workers, on one host or many, serve the same threads: every worker opens
the same URL, and a turn holds the thread's advisory lock while it reads and writes (docs/deploy.md).
The tables are created once per database (``setup()``), by whichever worker comes first: the setup
runs under an advisory lock of its own, so workers starting together do not race on ``CREATE TABLE``.
Needs the ``serve`` extra (``langgraph-checkpoint-postgres``, ``psycopg``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from codi2_agent.locking import PostgresThreadLocks, describe_postgres

if TYPE_CHECKING:
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

__all__ = [
    "PostgresParts",
    "PostgresUnavailableError",
    "is_postgres_saver",
    "is_postgres_url",
    "open_postgres",
    "postgres_store_for",
]

_SETUP_LOCK = 0x636F646932_7365  # an advisory key of its own: b"codi2" b"se"(tup)
_SETUP_WAIT_S = 300.0  # how long a process waits for another to finish creating the tables
_set_up: set[str] = set()  # URLs whose tables this process has already checked
_set_up_guard = threading.Lock()


class PostgresUnavailableError(ConnectionError):
    """The Postgres database of the checkpoints cannot be reached (the URL, without its password,
    and the driver's reason are in the message)."""


def is_postgres_url(value: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` connection URL."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def is_postgres_saver(value: object) -> TypeGuard[PostgresSaver]:
    """True for a `PostgresSaver` (False, not an ImportError, without the serve extra)."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        return False
    return isinstance(value, PostgresSaver)


def _connect(url: str, *, connect_timeout: float = 10.0) -> Any:
    """A connection as the LangGraph Postgres savers and stores want it (autocommit, dict rows, no
    server-side prepared statements, so connection poolers such as PgBouncer work)."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        return psycopg.Connection.connect(
            url,
            autocommit=True,
            prepare_threshold=0,
            row_factory=dict_row,
            connect_timeout=max(1, round(connect_timeout)),
        )
    except psycopg.OperationalError as exc:
        raise PostgresUnavailableError(
            f"cannot connect to the checkpoint database {describe_postgres(url)}: {str(exc).strip()}"
        ) from exc


@dataclass
class PostgresParts:
    """A session graph's Postgres parts: checkpoints, thread log and one-writer locks."""

    url: str
    saver: PostgresSaver
    store: PostgresStore
    locks: PostgresThreadLocks

    def __repr__(self) -> str:
        return f"PostgresParts({describe_postgres(self.url)!r})"

    def close(self) -> None:
        """Close the connections (the checkpointer's, the store's and the idle lock connections)."""
        self.locks.close()
        self.store.conn.close()
        self.saver.conn.close()


def _setup_once(url: str, *parts: PostgresSaver | PostgresStore) -> None:
    """Create or migrate the tables of `parts`, once per process and URL, one process at a time."""
    with _set_up_guard:
        if url in _set_up:
            return
        with _connect(url) as guard:
            # Poll, never wait inside pg_advisory_lock: a waiting statement holds a snapshot, and the
            # holder's CREATE INDEX CONCURRENTLY waits for every snapshot to end — a deadlock through
            # two processes that Postgres cannot see (found by the load test with two workers).
            deadline = time.monotonic() + _SETUP_WAIT_S
            try_lock = "SELECT pg_try_advisory_lock(%s) AS got"
            while not guard.execute(try_lock, (_SETUP_LOCK,)).fetchone()["got"]:
                if time.monotonic() > deadline:
                    raise PostgresUnavailableError(
                        f"another process has been setting up the tables of {describe_postgres(url)} "
                        f"for over {_SETUP_WAIT_S:.0f} s"
                    )
                time.sleep(0.1)
            try:
                for part in parts:
                    part.setup()
            finally:
                guard.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        _set_up.add(url)


def open_postgres(url: str, *, setup: bool = True, connect_timeout: float = 10.0) -> PostgresParts:
    """Open checkpoints, thread log and thread locks on the database at `url`.

    Args:
        url: ``postgresql://user:password@host:port/dbname`` (any libpq connection URL).
        setup: create or migrate the LangGraph tables first (idempotent; once per process).
        connect_timeout: seconds each connection attempt may take.

    Raises:
        PostgresUnavailableError: the database cannot be reached.
    """
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    from ._checkpoint import session_serializer

    if not is_postgres_url(url):
        raise ValueError(f"not a postgresql:// URL: {describe_postgres(url)}")
    saver_conn = _connect(url, connect_timeout=connect_timeout)
    try:
        store_conn = _connect(url, connect_timeout=connect_timeout)
    except BaseException:
        saver_conn.close()
        raise
    saver = PostgresSaver(saver_conn, serde=session_serializer())
    store = PostgresStore(store_conn)
    parts = PostgresParts(url, saver, store, PostgresThreadLocks(url, connect_timeout=connect_timeout))
    if setup:
        try:
            _setup_once(url, saver, store)
        except BaseException:
            parts.close()
            raise
    return parts


def postgres_store_for(saver: PostgresSaver) -> PostgresStore:
    """A `PostgresStore` in the database of `saver` (a connection of its own, tables set up), for a
    saver made elsewhere; with a connection pool, pass ``store=`` instead."""
    from langgraph.store.postgres import PostgresStore
    from psycopg import Connection
    from psycopg.conninfo import make_conninfo

    conn = saver.conn
    if not isinstance(conn, Connection):
        raise ValueError(
            "pass store= (a PostgresStore) with a PostgresSaver on a connection pool: the session "
            "graph keeps each thread's media log and transcript in a LangGraph store"
        )
    url = make_conninfo(conn.info.dsn, password=conn.info.password)
    store = PostgresStore(_connect(url))
    _setup_once(url, store)
    return store
