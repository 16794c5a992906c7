"""Every command through a real subprocess: --help, demo, train, eval, bench and info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

COMMANDS = ["demo", "chat", "run", "train", "train-ablate", "eval", "bench", "info", "serve"]

STEPS = "2"  # diffusion steps: the decoders run, quickly


def test_version_is_the_installed_package_version(cli: Any) -> None:
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"codi2-agent {version('codi2-agent')}\n"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_everywhere(cli: Any, command: str) -> None:
    proc = cli(*([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: " in proc.stdout and "--help" in proc.stdout
    if not command:
        assert all(c in proc.stdout for c in COMMANDS)


def test_demo_writes_and_prints_its_outputs(cli: Any, model_arg: str, tmp_path: Path) -> None:
    proc = cli("demo", "--model", model_arg, "--steps", STEPS, "--out", "demo")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert len(summary) == 7
    for turn in summary:
        for path in turn["files"]:
            assert path in proc.stdout and (tmp_path / path).is_file()


def test_eval_writes_a_table(cli: Any, model_arg: str, tmp_path: Path) -> None:
    proc = cli(
        "eval", "--model", model_arg, "--per-task", "1", "--steps", STEPS, "--out", "res", "--name", "t"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "res" / "t.txt").is_file() and "written to" in proc.stdout


def test_eval_defaults_to_outputs_and_prints_each_row_once(cli: Any, model_arg: str, tmp_path: Path) -> None:
    proc = cli("eval", "--model", model_arg, "--per-task", "1", "--steps", STEPS)
    assert proc.returncode == 0, proc.stderr
    # Never over the committed tables in benchmarks/results/ (relative to where it runs).
    table = tmp_path / "outputs" / "eval" / "eval_tiny.txt"
    assert table.is_file() and not (tmp_path / "benchmarks").exists()
    rows = json.loads(table.with_suffix(".json").read_text())
    printed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) > 5 and all(printed.count(row["task"]) == 1 for row in rows), proc.stdout
    assert proc.stdout.count("task ") == 1  # one column header
    # The file holds the same rows the terminal showed.
    assert [line.split()[0] for line in table.read_text().splitlines()[2:]] == [r["task"] for r in rows]


def test_bench_quick_runs_a_benchmark_script(cli: Any, tmp_path: Path) -> None:
    proc = cli("bench", "--quick", "--only", "memory", "--out", "bench")
    assert proc.returncode == 0, proc.stderr
    assert "== bench_memory.py" in proc.stdout and (tmp_path / "bench" / "memory.txt").is_file()


def test_info_shows_model_and_session_parts(cli: Any, model_arg: str, model, tmp_path: Path) -> None:
    from codi2_agent import Session

    with Session(model, thread="t", root=tmp_path / "s", num_inference_steps=2, progress=False) as s:
        s.say("draw a small red star in the snow")
    proc = cli("info", "--model", model_arg, "--root", "s", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model"]["found"] and info["model"]["bytes"] > 0
    session = info["session"]
    assert session["artifacts"]["files"] >= 1 and session["memory"]["tenants"] == {"default": 1}
    assert session["checkpoints"]["threads"] == 1 and session["checkpoints"]["bytes"] > 0
    text = cli("info", "--model", model_arg, "--root", "s")
    assert text.returncode == 0 and "checkpoints" in text.stdout and "1 threads" in text.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "--model", "no/such/model"], "no model at no/such/model"),
        (["demo", "--model", "no/such/model"], "no/such/model"),
        (["chat", "--model", "nonsense"], "neither a shipped model"),
        (["train", "--out", "x", "--stages", "bogus"], "unknown stages"),
        (["train", "--out", "x", "--perception-from", "no/such/model"], "no/such/model does not exist"),
        (
            ["train", "--out", "x", "--perception-from", "tiny", "--retrain", "encoders"],
            "cannot retrain ['encoders']",
        ),
        (
            ["train", "--out", "x", "--recipe", "no/such.json"],
            "recipe file no/such.json: cannot read it as JSON",
        ),
        (["train", "--preset", "paper", "--out", "x", "--recipe", "r.json"], "it is for the tiny preset"),
        (["bench", "--only", "nope"], "unknown benchmark"),
    ],
)
def test_bad_input_is_one_line_and_no_traceback(
    cli: Any, user_error: Any, args: list[str], needle: str
) -> None:
    assert len(user_error(cli(*args), 1, needle)) == 1


@pytest.mark.parametrize("model", ["bogus", "folder-without-config"])
def test_bench_refuses_an_unknown_model(cli: Any, user_error: Any, tmp_path: Path, model: str) -> None:
    # bench_model.py would otherwise time random weights and label the table with this name.
    (tmp_path / "folder-without-config").mkdir()
    proc = cli("bench", "--quick", "--only", "model,memory", "--model", model, "--out", "bench")
    assert len(user_error(proc, 2, f"--model {model!r} is neither a shipped model")) == 1
    assert "== bench_" not in proc.stdout and not (tmp_path / "bench").exists()


def test_train_runs_with_a_recipe_file_over_the_defaults(cli: Any, user_error: Any, tmp_path: Path) -> None:
    # How an older checkpoint's recipe is run again: its recipe.json (or a part of it) over today's
    # defaults, --seed and --threads on top. The run records the recipe it trains with before any stage.
    (tmp_path / "v4.json").write_text(json.dumps({"analogy_replay": 0, "tune_steps": 7}))
    proc = cli("train", "--smoke", "--recipe", "v4.json", "--seed", "3", "--threads", "1",
               "--stages", "lm", "--out", "m", "--workdir", "w")  # fmt: skip
    user_error(proc, 1, "stage 'encoders' must finish first")  # lm alone in a fresh workdir
    used = json.loads((tmp_path / "w" / "recipe.json").read_text())
    assert (used["analogy_replay"], used["tune_steps"], used["seed"], used["threads"]) == (0, 7, 3, 1)
    assert used["lm_steps"] == 10  # --smoke's, which the file left alone
