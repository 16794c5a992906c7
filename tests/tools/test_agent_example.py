"""The agent example: `create_agent` + the toolkit + a scripted model, four turns of edit and analogy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_example.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_example"] = module
    spec.loader.exec_module(module)
    return module


def test_four_turn_edit_and_analogy_job(tiny_model: Any, tmp_path: Path) -> None:
    records = _load().main(model=tiny_model, root=tmp_path, steps=2, verbose=False)
    assert [r["tool"] for r in records] == [
        "codi2_generate", "codi2_edit", "codi2_generate", "codi2_apply_example_edit"
    ]  # fmt: skip
    assert all(r["result"].status == "success" and r["result"].artifact for r in records)
    star, blue, circle, analogy = (r["result"].artifact[0]["extras"]["artifact_id"] for r in records)
    assert records[1]["args"]["media"] == "@m:" + star[:12]  # the agent used the ids the tools returned
    assert records[3]["args"] == {"example_after": "@m:" + blue[:12], "target": "@m:" + circle[:12]}
    assert "@m:" + analogy[:12] in records[3]["answer"]
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
