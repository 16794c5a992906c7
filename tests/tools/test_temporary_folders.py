"""Temporary folders made on the user's behalf are removed: ChatCoDi2's default store, the agent example's."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path
from typing import Any

from codi2_agent.tools import ChatCoDi2

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_example.py"


def _drawn_into_a_temporary_store(llm: ChatCoDi2) -> Path:
    llm.invoke("draw a small red star in the snow", output="image")
    folder = llm.backend.artifacts.root
    assert folder.name.startswith("codi2-chat-") and any(p.is_file() for p in folder.rglob("*"))
    return folder


def test_close_removes_the_temporary_store(tiny_model: Any) -> None:
    llm = ChatCoDi2(model=tiny_model, num_inference_steps=2)
    folder = _drawn_into_a_temporary_store(llm)
    llm.close()
    assert not folder.exists()
    llm.close()  # idempotent
    # Still usable: a new call makes a new store.
    again = _drawn_into_a_temporary_store(llm)
    assert again != folder
    with llm:
        pass
    assert not again.exists()


def test_a_dropped_chat_model_removes_its_store(tiny_model: Any) -> None:
    llm = ChatCoDi2(model=tiny_model, num_inference_steps=2)
    folder = _drawn_into_a_temporary_store(llm)
    del llm
    gc.collect()
    assert not folder.exists()


def test_a_given_store_is_left_alone(tiny_model: Any, tmp_path: Path) -> None:
    llm = ChatCoDi2(model=tiny_model, artifacts=tmp_path / "artifacts", num_inference_steps=2)
    llm.invoke("draw a small red star in the snow", output="image")
    llm.close()
    assert any(p.is_file() for p in (tmp_path / "artifacts").rglob("*"))


def test_agent_example_removes_its_temporary_root(tiny_model: Any, monkeypatch: Any, tmp_path: Path) -> None:
    # Point tempfile at a folder of our own, so whatever the example leaves behind is visible.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spec = importlib.util.spec_from_file_location("agent_example_tmp", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_example_tmp"] = module
    spec.loader.exec_module(module)
    records = module.main(model=tiny_model, steps=2, verbose=False)
    assert len(records) == 4 and all(r["result"].status == "success" for r in records)
    assert list(tmp_path.iterdir()) == []
