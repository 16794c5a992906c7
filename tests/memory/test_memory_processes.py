"""Across processes: persistence over a restart (embedded) and concurrent writers through a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from codi2_agent.memory import ExemplarMemory, HashingEmbedder

WRITER = Path(__file__).with_name("_memory_writer.py")


def _start(args: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_embedded_memory_survives_a_crashed_writer(tmp_path):
    """A process writes and dies without closing; a new process finds every item and can query it."""
    path = tmp_path / "db"
    args = {
        "mode": "embedded",
        "path": str(path),
        "namespace": "codi2",
        "tenant": "alice",
        "thread": "t1",
        "n": 120,
        "batch": 25,
        "crash": True,
    }
    written = _result(_start(args))["ids"]
    assert len(written) == 120

    memory = ExemplarMemory(path, embedder=HashingEmbedder(dim=32))
    try:
        assert memory.count("alice") == 120
        assert {i.id for i in memory.items("alice")} == set(written)
        hit = memory.search("alice", "t1 picture number 7", k=1)[0]
        assert hit.caption == "t1 picture number 7"
        assert memory.items("alice", thread="t1")[-1].turn == 119  # oldest first
    finally:
        memory.close()


def test_two_processes_share_memory_through_the_server(chroma_server, tmp_path):
    """Two writers, started together on one new tenant, lose nothing and each sees the other's items."""
    go = tmp_path / "go"
    common = {
        "mode": "server",
        "host": chroma_server.host,
        "port": chroma_server.port,
        "namespace": "mp",
        "tenant": "team",
        "n": 150,
        "batch": 10,
        "go_file": str(go),
        "expect_total": 300,
    }
    procs = [_start({**common, "thread": t}) for t in ("p0", "p1")]
    go.touch()  # both create the tenant's collection and write at the same time
    results = [_result(p) for p in procs]

    assert [r["seen_total"] for r in results] == [300, 300]
    assert results[0]["other_threads"] == ["p1"] and results[1]["other_threads"] == ["p0"]
    memory = ExemplarMemory(
        host=chroma_server.host, port=chroma_server.port, embedder=HashingEmbedder(dim=32), namespace="mp"
    )
    stored = {i.id for i in memory.items("team")}
    assert stored == set(results[0]["ids"]) | set(results[1]["ids"]) and len(stored) == 300
    assert memory.search("team", "p1 picture number 3", k=1)[0].thread == "p1"
    assert memory.tenants() == ["team"]
