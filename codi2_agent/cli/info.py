"""`codi2-agent info`: where the model and a session's artifacts, memory and checkpoints live."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from codi2_agent.cli._common import ModelOption, _fail, _say


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under `path`."""
    if path.is_file():
        return 1, path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _memory_info(path: Path) -> dict[str, Any]:
    """Tenants and item counts of an embedded Chroma memory, read without an encoder."""
    try:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
        try:
            tenants = {
                str((c.metadata or {}).get("tenant", c.name)): c.count()
                for c in client.list_collections()
                if (c.metadata or {}).get("codi2_memory")
            }
        finally:
            client.close() if hasattr(client, "close") else None
        return {"tenants": tenants}
    except Exception as e:  # a damaged or foreign folder: report it, do not fail `info`
        return {"error": f"unreadable ({type(e).__name__}: {e})"}


def _checkpoint_info(path: Path) -> dict[str, Any]:
    import sqlite3

    from codi2_agent.graphs import checkpoint_summary

    try:
        return dict(checkpoint_summary(path))
    except sqlite3.Error as e:
        return {"error": f"unreadable ({e})"}


def info(
    model: ModelOption = "tiny",
    root: Annotated[
        Path, typer.Option(help="Session folder to describe (chat's and Session's default).")
    ] = Path("codi2-session"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show where the model, the session's artifacts, memory and checkpoints live, and their sizes."""
    from codi2_agent.graphs import CHECKPOINT_FILE
    from codi2_agent.model import SHIPPED_MODELS, shipped_model_path

    # 1. The model
    path = shipped_model_path(model) if model in SHIPPED_MODELS else Path(model).expanduser()
    found = (path / "config.json").is_file()
    files, size = _size(path)
    model_info: dict[str, Any] = {
        "name": model,
        "path": str(path.resolve()),
        "found": found,
        "files": files,
        "bytes": size,
    }
    if found:
        with contextlib.suppress(OSError, ValueError):
            model_info["preset"] = json.loads((path / "config.json").read_text()).get("preset")

    # 2. The session folder: artifacts, memory, checkpoints
    root = root.expanduser()
    parts: dict[str, Any] = {}
    for key, sub in (("artifacts", "artifacts"), ("memory", "memory"), ("checkpoints", CHECKPOINT_FILE)):
        p = root / sub
        n, b = _size(p)
        entry: dict[str, Any] = {"path": str(p.resolve()), "exists": p.exists(), "files": n, "bytes": b}
        if key == "memory" and p.is_dir():
            entry.update(_memory_info(p))
        if key == "checkpoints" and p.is_file():
            entry.update(_checkpoint_info(p))
        parts[key] = entry
    report = {"model": model_info, "session": {"root": str(root.resolve()), "exists": root.is_dir(), **parts}}

    # 3. Show
    if as_json:
        _say(json.dumps(report, indent=2))
    else:
        m = report["model"]
        _say(f"{'model':<15}{model}" + (f" (preset {m['preset']})" if m.get("preset") else ""))
        _say(f"{'  path':<15}{m['path']}")
        _say(f"{'  size':<15}" + (f"{_mb(size)} in {files} files" if found else "(not found)"))
        _say(f"{'session':<15}{report['session']['root']}" + ("" if root.is_dir() else " (not created yet)"))
        for key, e in parts.items():
            line = f"  {key:<12} {e['path']}  " + (
                f"{_mb(e['bytes'])} in {e['files']} files" if e["exists"] else "(none yet)"
            )
            if "tenants" in e:
                line += "; " + (
                    ", ".join(f"tenant {t!r}: {n} items" for t, n in e["tenants"].items()) or "empty"
                )
            if "threads" in e:
                line += f"; {e['threads']} threads, {e['checkpoints']} checkpoints"
            if "error" in e:
                line += f"; {e['error']}"
            _say(line)
    if not found:
        hint = (
            f"; reproduce it with `codi2-agent train --preset {model} --out {path}`"
            if model in SHIPPED_MODELS
            else ""
        )
        raise _fail(f"no model at {path}{hint}")
