"""Checking an embedded memory's HNSW index files on open, without risking this process.

Chroma's native code crashes (SIGSEGV) on a search over flipped bytes in ``data_level0.bin``, fails
every read of a collection whose ``header.bin``, ``link_lists.bin``, ``length.bin`` or
``index_metadata.pickle`` is damaged or missing, and silently answers with wrong neighbours when the
segment folder or its id map is gone. So, before this process opens Chroma:

1. If the index files of this namespace's collections are exactly as this memory last left them
   (a fingerprint of their bytes, kept in the vector copy), nothing else runs: that is the cost of
   a clean reopen (a few milliseconds per megabyte of index).
2. Otherwise a child process (`_index_probe.py`) opens each collection and probes it; a child that
   dies by a signal or stops answering marks the collection it was reading as damaged, and a new
   child carries on with the rest.
3. Each damaged index folder is moved aside, and another child re-adds the collection's items with
   their metadata (which Chroma keeps in SQLite, readable without the index) and their vectors (from
   the vector copy, `_vector_copy.py`). Then the damaged folder is deleted. When some vector has no
   copy, the folder is put back and `CorruptMemoryError` says which collection and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._errors import CorruptMemoryError
from ._vector_copy import VectorCopy

__all__ = [
    "IndexReport",
    "check_index",
    "close_embedded",
    "index_fingerprint",
    "open_embedded",
    "vector_segments",
]

logger = logging.getLogger(__name__)

CHROMA_DB = "chroma.sqlite3"
DAMAGED = ".damaged"  # suffix of an index folder moved aside for a rebuild


@dataclass(frozen=True)
class IndexReport:
    """What opening an embedded memory found in its index files (`ExemplarMemory.index_report`)."""

    skipped: bool  # nothing to check, or the files were as last verified: no child process ran
    checked: tuple[str, ...] = ()  # collections a child process probed
    rebuilt: tuple[str, ...] = ()  # collections whose index was rebuilt from the vector copy
    problems: dict[str, str] = field(default_factory=dict)  # collection -> what the probe found
    copied: int = 0  # vectors copied from a healthy index into the vector copy (older memories)
    seconds: float = 0.0
    shared: bool = False  # the folder was already open in this process: checked by its first opener


# Embedded folders this process has open (resolved path -> how many memories): a second memory on a
# folder whose Chroma is live here must not start a child on the same files.
_OPEN: dict[Path, int] = {}
_OPEN_LOCK = threading.Lock()


def open_embedded(
    folder: Path, namespace: str, *, verify: bool, timeout_s: float
) -> tuple[VectorCopy, IndexReport | None]:
    """The folder's vector copy and, when `verify`, the report of its index check (None: unverified)."""
    key = folder.resolve()
    with _OPEN_LOCK:
        live = _OPEN.get(key, 0) > 0
        _OPEN[key] = _OPEN.get(key, 0) + 1
    try:
        copy = VectorCopy(folder)
        try:
            if not verify:
                return copy, None
            if live:  # checked by the memory that opened it first; its Chroma is using the files now
                return copy, IndexReport(skipped=True, shared=True)
            return copy, check_index(folder, namespace, copy, timeout_s=timeout_s)
        except BaseException:
            copy.close()
            raise
    except BaseException:
        close_embedded(folder)
        raise


def close_embedded(folder: Path, namespace: str | None = None, copy: VectorCopy | None = None) -> None:
    """Forget one opener of `folder`; the last one (of a verified memory: `namespace` given) records
    the index files as they are now, so the next open can trust them without a child."""
    key = folder.resolve()
    with _OPEN_LOCK:
        _OPEN[key] = _OPEN.get(key, 1) - 1
        last = _OPEN[key] <= 0
        if last:
            del _OPEN[key]
    if copy is None:
        return
    try:
        if last and namespace is not None and (folder / CHROMA_DB).is_file():
            copy.set_fingerprint(namespace, index_fingerprint(folder, vector_segments(folder, namespace)))
    finally:
        copy.close()


def vector_segments(folder: Path, namespace: str) -> dict[str, tuple[str, str]]:
    """{collection name: (vector segment id, its applied sequence number)} of `namespace`'s
    collections, read from Chroma's SQLite file without opening Chroma."""
    own = (f"{namespace}-t-", f"{namespace}-shared")
    try:
        conn = sqlite3.connect(f"file:{folder / CHROMA_DB}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT c.name, s.id, m.seq_id FROM segments s JOIN collections c ON s.collection = c.id "
                "LEFT JOIN max_seq_id m ON m.segment_id = s.id WHERE s.scope = 'VECTOR'"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise CorruptMemoryError(folder, f"Chroma's database {CHROMA_DB} cannot be read ({e})") from e
    return {
        name: (str(segment), repr(seq))
        for name, segment, seq in rows
        if isinstance(name, str) and name.startswith(own)
    }


def index_fingerprint(folder: Path, segments: dict[str, tuple[str, str]]) -> str:
    """A digest of every index file of `segments` (names, sizes, contents) and their sequence numbers."""
    digest = hashlib.sha256()
    for name in sorted(segments):
        segment, seq = segments[name]
        digest.update(f"{name}\0{segment}\0{seq}\n".encode())
        directory = folder / segment
        files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
        for file in files:
            with file.open("rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
            digest.update(f"{file.name}\0{file.stat().st_size}\0{content}\n".encode())
    return digest.hexdigest()


def check_index(folder: Path, namespace: str, copy: VectorCopy, *, timeout_s: float) -> IndexReport:
    """Check (and if need be rebuild) `namespace`'s indexes in `folder`; see the module docstring."""
    start = time.perf_counter()
    if not (folder / CHROMA_DB).is_file():
        return IndexReport(skipped=True)
    segments = vector_segments(folder, namespace)
    if not segments or copy.fingerprint(namespace) == index_fingerprint(folder, segments):
        return IndexReport(skipped=True, seconds=time.perf_counter() - start)

    names = sorted(segments)
    outcomes = _probe(folder, names, timeout_s)
    problems = {n: o["reason"] for n, o in outcomes.items() if o["event"] != "ok"}
    for name, reason in problems.items():
        logger.warning("memory %s: the index of %s is damaged (%s); rebuilding it", folder, name, reason)
    if problems:
        _rebuild(folder, {n: segments[n][0] for n in problems}, problems, timeout_s)
    copy.set_fingerprint(namespace, index_fingerprint(folder, vector_segments(folder, namespace)))
    return IndexReport(
        skipped=False,
        checked=tuple(names),
        rebuilt=tuple(sorted(problems)),
        problems=problems,
        copied=sum(int(o.get("copied", 0)) for o in outcomes.values()),
        seconds=time.perf_counter() - start,
    )


def _probe(folder: Path, names: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Each collection's probe outcome; a collection whose probe killed the child is 'bad'."""
    outcomes: dict[str, dict[str, Any]] = {}
    while pending := [n for n in names if n not in outcomes]:
        events, failure = _run_child("probe", folder, pending, timeout_s)
        _fatal(folder, events)
        current = None
        for e in events:
            if e["event"] == "begin":
                current = e["collection"]
            elif e["event"] in ("ok", "bad"):
                outcomes[e["collection"]] = e
                current = None
        if failure is None:
            for name in pending:  # a child that finished without a word about a collection
                outcomes.setdefault(name, {"event": "bad", "reason": "the probe did not report on it"})
        elif current is not None:
            outcomes[current] = {"event": "bad", "reason": f"Chroma {failure} while reading it"}
        else:
            raise CorruptMemoryError(folder, f"Chroma {failure} while opening the folder")
    return outcomes


def _rebuild(folder: Path, segments: dict[str, str], problems: dict[str, str], timeout_s: float) -> None:
    """Move each damaged index aside, re-add its items in a child, and delete or restore the folders."""
    aside = {name: _move_aside(folder / segment) for name, segment in segments.items()}
    events, failure = _run_child("rebuild", folder, sorted(segments), timeout_s)
    _fatal(folder, events, restore=aside, segments=segments)
    done = {e["collection"] for e in events if e["event"] == "rebuilt"}
    failed = {e["collection"]: e["reason"] for e in events if e["event"] == "unrecoverable"}
    for name in segments:
        if name not in done and name not in failed:
            failed[name] = f"rebuilding it failed: Chroma {failure or 'did not report on it'}"
    for name, segment in segments.items():
        if name in done:
            for old in folder.glob(f"{segment}{DAMAGED}*"):
                shutil.rmtree(old, ignore_errors=True)
            logger.warning("memory %s: rebuilt the index of %s from the vector copy", folder, name)
        else:
            _restore(folder / segment, aside[name])
    if failed:
        raise CorruptMemoryError(
            folder,
            "; ".join(
                f"collection {n}: its index is damaged ({problems[n]}) and {why}" for n, why in failed.items()
            )
            + ". Restore the folder from a backup, or forget the tenant and add its media again",
        )


def _fatal(
    folder: Path,
    events: list[dict[str, Any]],
    *,
    restore: dict[str, Path | None] | None = None,
    segments: dict[str, str] | None = None,
) -> None:
    for e in events:
        if e["event"] == "fatal":
            for name, moved in (restore or {}).items():
                _restore(folder / (segments or {})[name], moved)
            raise CorruptMemoryError(folder, f"Chroma cannot open it ({e['reason']})")


def _move_aside(segment: Path) -> Path | None:
    if not segment.exists():
        return None
    n = 0
    while (target := segment.with_name(f"{segment.name}{DAMAGED}{n or ''}")).exists():
        n += 1
    segment.rename(target)
    return target


def _restore(segment: Path, moved: Path | None) -> None:
    """Put a damaged index folder back where it was, for inspection, dropping what a failed rebuild made."""
    if moved is None:
        return
    if segment.exists():
        shutil.rmtree(segment)
    moved.rename(segment)


def _run_child(
    mode: str, folder: Path, names: list[str], timeout_s: float
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `_index_probe` on `names`; its events, and how it failed (None when it finished)."""
    job = json.dumps({"mode": mode, "folder": str(folder), "collections": names, "probes": 16})
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    # The child imports this package the way this process did, wherever that was from.
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codi2_agent.memory._index_probe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        proc.stdin.write(job)
        proc.stdin.close()
        events, failure = [], None
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                proc.kill()
                failure = f"gave no answer for {timeout_s:g} s"
                break
            if line is None:
                break
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not ours: something else printed to stdout
        code = proc.wait()
        reader.join(timeout=5)
        if failure is None and code != 0:
            failure = _death(code, stderr)
        elif failure is None and not any(e["event"] == "done" for e in events):
            failure = "stopped before finishing"
    return events, failure


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _death(code: int, stderr: IO[str]) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"crashed (signal {-code})"
    stderr.seek(0)
    tail = stderr.read()[-500:].strip().replace("\n", " | ")
    return f"exited with status {code} ({tail})"
