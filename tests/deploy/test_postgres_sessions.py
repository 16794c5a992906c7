"""Sessions over Postgres: checkpoints and the thread log in Postgres, the one-writer rule as a
Postgres advisory lock, across real processes — a second writer waits or gets `ThreadBusyError`,
two processes on one thread take turns, and a worker killed mid-turn leaves whole turns only."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from codi2_agent import Session
from codi2_agent.graphs import thread_key
from codi2_agent.graphs._postgres import PostgresUnavailableError
from codi2_agent.locking import PostgresThreadLocks, ThreadBusyError, advisory_key

from .conftest import STEPS

# A writer process: opens the thread over Postgres, runs `turns` turns, then (``hang``) starts one
# more whose generate step announces itself and blocks — where the test kills it.
_WRITER = """
import json, sys, time
from codi2_agent import Session
from codi2_agent.model import CoDi2Model
model_dir, root, url, name, turns, durability, hang = sys.argv[1:8]
s = Session(CoDi2Model.from_pretrained(model_dir), thread="shared", root=root, checkpointer=url,
            use_memory=False, num_inference_steps={steps}, progress=False, durability=durability,
            lock_timeout=120)
print("ready", flush=True)
for i in range(int(turns)):
    r = s.say(f"draw a small red star in the snow ({{name}} {{i}})", output="image")
    print(json.dumps({{"turn": r.turn, "request": r.request}}), flush=True)
if hang == "hang":
    generate = s.backend.generate
    def blocked(*args, **kwargs):
        print("generating", flush=True)
        time.sleep(600)
    s.backend.generate = blocked
    s.say("make it blue (never answered)")
s.close()
"""


def _writer(tmp_path: Path, model_dir: Path, url: str, name: str, turns: int, *, durability: str = "exit",
            hang: bool = False) -> subprocess.Popen[str]:  # fmt: skip
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(_WRITER.format(steps=STEPS))
    args = [
        str(model_dir),
        str(tmp_path / "shared"),
        url,
        name,
        str(turns),
        durability,
        "hang" if hang else "-",
    ]
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read_line(proc: subprocess.Popen[str], expected: str, timeout: float = 120.0) -> str:
    """The next stdout line of `proc` that starts with `expected` (bounded in time)."""
    if proc.pid not in _LINES:
        _LINES[proc.pid] = _line_queue(proc)  # one reader thread per process
    lines = _LINES[proc.pid]
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(
                f"writer exited ({proc.wait(timeout=30)}) before {expected!r}: {err[-2000:]}"
            )
        if line.startswith(expected):
            return line
    proc.kill()
    raise AssertionError(f"writer printed no {expected!r} line within {timeout:g} s")


_LINES: dict[int, queue.Queue[str | None]] = {}


def _line_queue(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """`proc`'s stdout lines, read by a thread (None once it closes), so waits can time out."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _session(model: Any, root: Path, url: str, **options: Any) -> Session:
    return Session(model, thread="shared", root=root, checkpointer=url, use_memory=False,
                   num_inference_steps=STEPS, progress=False, **options)  # fmt: skip


def test_a_thread_lives_in_postgres_per_tenant(tiny_model: Any, shared_root: Path, postgres_url: str) -> None:
    s = _session(tiny_model, shared_root, postgres_url, tenant="alice")
    try:
        first = s.say("draw a small red star in the snow")
        s.say("make it blue")
        assert s.where()["checkpoints"] == "PostgresSaver"
        assert not (shared_root / "checkpoints.sqlite").exists()  # nothing of the thread on disk
        assert not (shared_root / "locks").exists()  # the lock is Postgres's, not a file's
    finally:
        s.close()
    again = _session(tiny_model, shared_root, postgres_url, tenant="alice")
    bob = _session(tiny_model, shared_root, postgres_url, tenant="bob")
    try:
        assert [(t.turn, t.request) for t in again.history()] == [
            (1, "draw a small red star in the snow"),
            (2, "make it blue"),
        ]
        assert again.history()[0].refs == first.refs and again.media_log()[0].id == first.refs[0].id
        assert bob.history() == [] and bob.threads() == []  # bob's "shared" is another thread
        assert again.threads() == ["shared"]
        with psycopg.connect(postgres_url) as conn:
            threads = {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
            log_rows = conn.execute(
                "SELECT count(*) FROM store WHERE prefix LIKE 'codi2.threads.%'"
            ).fetchone()
        assert threads == {thread_key("alice", "shared")}
        assert log_rows is not None and log_rows[0] >= 4  # two turns and their media, in the store
    finally:
        again.close()
        bob.close()


def test_a_busy_thread_is_a_named_error(tiny_model: Any, shared_root: Path, postgres_url: str) -> None:
    s = _session(tiny_model, shared_root, postgres_url, lock_timeout=0.3)
    locks = PostgresThreadLocks(postgres_url)
    try:
        with locks.hold(s.key, timeout=1):
            started = time.monotonic()
            with pytest.raises(ThreadBusyError, match="'shared' is busy"):
                s.say("draw a small red star in the snow")
            assert 0.25 <= time.monotonic() - started < 5  # it waited its lock_timeout, not forever
            with pytest.raises(ThreadBusyError):
                s.rewind(0)
            with pytest.raises(ThreadBusyError), locks.hold(s.key, timeout=0.1):
                pass  # a second holder in this very process is refused too
            assert s.open_thread("other").say("draw a small red star in the snow").turn == 1
        assert s.say("draw a small red star in the snow").turn == 1  # free again
    finally:
        locks.close()
        s.close()


def test_a_dead_writer_releases_its_lock(shared_root: Path, postgres_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time, psycopg\n"
            "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
            "conn.execute('SELECT pg_advisory_lock(%s)', (int(sys.argv[2]),))\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n"
        ), postgres_url, str(advisory_key("t"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    locks = PostgresThreadLocks(postgres_url)
    try:
        _read_line(holder, "held", timeout=30)
        with pytest.raises(ThreadBusyError), locks.hold("t", timeout=0.2):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with locks.hold("t", timeout=10):  # Postgres ended the dead writer's session and its lock
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
        locks.close()


def test_two_processes_on_one_thread_take_turns(
    tiny_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    procs = {n: _writer(tmp_path, tiny_model_dir, postgres_url, n, 4) for n in ("left", "right")}
    results: dict[str, list[dict[str, Any]]] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # Each say() got its own turn back; together they are turns 1..8, each once: none lost or doubled.
    for name, got in results.items():
        assert [r["request"].split("(")[1].rstrip(")") for r in got] == [f"{name} {i}" for i in range(4)]
    by_turn = {r["turn"]: r["request"] for got in results.values() for r in got}
    assert sorted(by_turn) == list(range(1, 9))
    s = _session(str(tiny_model_dir), tmp_path / "shared", postgres_url)
    try:
        assert [(t.turn, t.request) for t in s.history()] == sorted(by_turn.items())
        assert all(len(t.refs) == 1 for t in s.history())
        assert [r.turn for r in s.media_log()] == list(range(1, 9))  # one output medium per turn
    finally:
        s.close()


def test_a_worker_killed_mid_turn_leaves_whole_turns(
    tiny_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    # durability="sync": checkpoints are written after every step, so the kill leaves a turn half
    # done in Postgres (ingest and resolve written, generate not).
    worker = _writer(tmp_path, tiny_model_dir, postgres_url, "w", 2, durability="sync", hang=True)
    try:
        requests = [json.loads(_read_line(worker, "{"))["request"] for _ in range(2)]
        _read_line(worker, "generating")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        worker.kill()
    s = _session(str(tiny_model_dir), tmp_path / "shared", postgres_url, durability="sync")
    try:
        assert s.graph.get_state(s.config).values["turn"] == 3  # the half turn is there ...
        answer = s.say("draw a large blue circle at night")  # ... and the new worker drops it
        history = s.history()
        assert [(t.turn, t.request) for t in history] == [
            (1, requests[0]),
            (2, requests[1]),
            (3, "draw a large blue circle at night"),
        ]
        assert answer.turn == 3 and len(answer.refs) == 1
        kinds = [m.type for m in s.state()["messages"]]
        assert kinds == ["human", "ai"] * 3
        assert [r.turn for r in s.media_log()] == [1, 2, 3]  # nothing of the killed turn is left
    finally:
        s.close()


def test_an_unreachable_database_is_a_named_error(tiny_model: Any, shared_root: Path) -> None:
    from codi2_agent.local_services import free_port

    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(PostgresUnavailableError, match=r"cannot connect .*127\.0\.0\.1") as caught:
        _session(tiny_model, shared_root, url)
    assert "secret" not in str(caught.value)  # the password never reaches a message


def test_a_lock_connection_the_server_dropped_is_replaced(postgres_url: str) -> None:
    locks, other = PostgresThreadLocks(postgres_url), PostgresThreadLocks(postgres_url)
    try:
        with locks.hold("t", timeout=1):
            pass
        (idle,) = locks._idle  # kept for the next hold
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # as a server restart would
            admin.execute("SELECT pg_terminate_backend(%s)", (idle.info.backend_pid,))
        # The next hold takes a new connection (no OperationalError), and it is a real lock.
        with locks.hold("t", timeout=1), pytest.raises(ThreadBusyError), other.hold("t", timeout=0):
            pass
    finally:
        locks.close()
        other.close()


def test_waiting_for_another_process_to_set_up_the_tables_does_not_block_its_indexes(
    postgres_url: str,
) -> None:
    """A process that waits for the setup lock must hold no snapshot while it waits: the process that
    holds the lock runs CREATE INDEX CONCURRENTLY, which waits for every open snapshot (the two-worker
    deadlock the load test found)."""
    from codi2_agent.graphs import open_postgres
    from codi2_agent.graphs._postgres import _SETUP_LOCK

    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))  # another process sets up
        holder.execute("CREATE TABLE IF NOT EXISTS setup_probe (x int)")
        opened: queue.Queue[Any] = queue.Queue()
        waiter = threading.Thread(target=lambda: opened.put(open_postgres(postgres_url)), daemon=True)
        waiter.start()
        time.sleep(1.0)  # the waiter is now waiting for the setup lock
        assert opened.empty()
        holder.execute("SET statement_timeout = '20s'")  # a blocked index build fails instead of hanging
        holder.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS setup_probe_x ON setup_probe (x)")
        holder.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        parts = opened.get(timeout=60)  # and the waiter sets up once the lock is free
        parts.close()
