"""`codi2-agent run PIPELINE.yaml`: validation with pointed errors (exit 2), outputs and report, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from codi2_agent.data import world
from codi2_agent.pipelines import (
    PipelineBusyError,
    PipelineError,
    load_pipeline,
    parse_pipeline,
    run_pipeline,
)

STEPS = "2"  # diffusion steps: the decoders run, quickly

PIPELINE = """\
name: job
seed: 0
turns:
  - name: star
    say: draw a small red star in the snow
  - name: purple
    say: make it purple
  - for_each: in
    name: shapes
    turns:
      - say: do the same edit to this one
        image: "{file}"
        example: {after: "@purple"}
        save_as: "purple/{stem}"
      - say: what is in this picture?
  - for_each: in/*.png
    name: rainy
    turns:
      - say: do the same edit to this one
        image: "{file}"
        example: {before: pair/before.png, after: pair/after.png}
  - say: what do you hear?
    audio: tone.wav
"""
MAIN_TURNS = 3


def make_inputs(folder: Path, n: int = 2) -> None:
    shapes = ["square", "triangle", "cross", "circle"]
    for i, shape in enumerate(shapes[:n]):
        attrs = {"shape": shape, "colour": "green", "size": "large", "scene": "day"}
        world.render(attrs, 10 + i).save(folder / "in" / f"{shape}.png")
    circle = {"shape": "circle", "colour": "blue", "size": "small", "scene": "day"}
    world.render(circle, 1).save(folder / "pair" / "before.png")
    world.render(world.edit(circle, "scene", "rain"), 2).save(folder / "pair" / "after.png")
    world.render({"instrument": "sine", "pitch": "440", "ambience": "quiet"}, 3).save(folder / "tone.wav")


def write(folder: Path, text: str = PIPELINE, name: str = "job.yaml", inputs: int = 2) -> Path:
    make_inputs(folder, inputs)
    path = folder / name
    path.write_text(text)
    return path


def thread_turns(model: Any, root: Path) -> dict[str, list[str]]:
    """Every thread of a finished run's session, with its requests (to count what ran)."""
    from codi2_agent import Session

    with Session(model, thread="job", root=root, progress=False) as main:
        return {t: [r.request for r in main.open_thread(t).history()] for t in main.threads()}


# --- validation ------------------------------------------------------------------------------------
def test_check_prints_the_plan(cli: Any, tmp_path: Path) -> None:
    write(tmp_path)
    proc = cli("run", "job.yaml", "--check")
    assert proc.returncode == 0, proc.stderr
    assert "pipeline 'job': 9 turns in 5 thread(s)" in proc.stdout
    assert "shapes/square/01: 'do the same edit to this one' + square.png" in proc.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nturns:\n  - say: [unclosed\n", "job.yaml:4: YAML syntax error"),
        ("name: x\nturns:\n  - say: hi\n    imgae: in/square.png\n",
         "job.yaml:4: turns[0].imgae: unknown field 'imgae' (did you mean 'image'?)"),
        ("name: x\nturns:\n  - say: hi\n    image: in/nothere.png\n",
         "job.yaml:4: turns[0].image: file not found: in/nothere.png"),
    ],
)  # fmt: skip
def test_malformed_pipeline_exits_2_pointing_at_line_and_field(
    cli: Any, user_error: Any, tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, text)
    lines = user_error(cli("run", "job.yaml"), 2)
    assert lines == [f"error: {expected}"] or lines[0].startswith(f"error: {expected}"), lines


def test_missing_pipeline_file(cli: Any, user_error: Any) -> None:
    user_error(cli("run", "nothere.yaml"), 2, "nothere.yaml: no such pipeline file")


BAD = [
    ("turns: []\n", 1, "name", "missing required field 'name'"),
    ("name: x\nturns:\n  - say: hi\n  - say: [a, b]\n", 4, "turns[1].say", "valid string"),
    ("name: 3x\nturns:\n  - say: hi\n", 1, "name", "names start with a letter"),
    ("name: x\nturns:\n  - image: in/square.png\n", 3, "turns[0]", "a turn needs `say`"),
    ("name: x\nturns:\n  - say: hi\n    task: paint\n", 4, "turns[0].task", "'generate'"),
    ("name: x\nturns:\n  - say: '{file}'\n", 3, "turns[0].say", "{file} only works inside a for_each"),
    ("name: x\nturns:\n  - for_each: in\n    turns:\n      - say: '{stme}'\n", 5, "turns[0].turns[0].say",
     "unknown placeholder {stme}"),
    ("name: x\nturns:\n  - say: hi\n    image: '@star'\n", 4, "turns[0].image",
     "@star is not the name of an earlier turn"),
    ("name: x\nturns:\n  - say: hi\n    image: tone.wav\n", 4, "turns[0].image",
     "tone.wav is audio, not image"),
    ("name: x\nturns:\n  - for_each: nothere/*.png\n    turns:\n      - say: hi\n", 3, "turns[0].for_each",
     "matches no files"),
    ("name: x\nturns:\n  - name: a\n    say: hi\n  - name: a\n    say: ho\n", 5, "turns[1].name",
     "already named 'a'"),
    ("name: x\nname: y\nturns:\n  - say: hi\n", 2, "", "'name' appears twice"),
    ("name: x\nturns:\n  - for_each: in\n    turns:\n      - for_each: in\n        turns: [{say: hi}]\n", 5,
     "turns[0].turns[0].for_each", "cannot be nested"),
    ("name: x\nturns:\n  - say: hi\n    save_as: ../up\n", 4, "turns[0].save_as", "inside the output folder"),
    ("name: x\nturns:\n  - for_each: in\n    turns:\n      - say: hi\n        save_as: same\n", 6,
     "turns[0].turns[0].save_as", "would both write same"),
    ("name: x\nturns:\n  - say: hi\n    example: {after: pair/after.png}\n", 4, "turns[0].example",
     "needs its `before`"),
    ("name: x\nturns:\n  - task: recall\n    image: in/square.png\n", 3, "turns[0]",
     "a recall turn needs `say`"),
    ("name: x\nturns:\n  - say: the red star\n    task: recall\n    output: image\n", 3, "turns[0]",
     "`output` does not apply"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "field", "message"), BAD)
def test_each_problem_names_its_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    make_inputs(tmp_path)
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, base_dir=tmp_path, source="p.yaml")
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (line, field), info.value.problems
    assert message in problem.message, problem.message
    assert str(problem).startswith(f"p.yaml:{line}: " + (f"{field}: " if field else ""))


# --- running ---------------------------------------------------------------------------------------
def test_run_writes_outputs_and_a_report(cli: Any, model_arg: str, tmp_path: Path) -> None:
    write(tmp_path)
    proc = cli("run", "job.yaml", "--model", model_arg, "--steps", STEPS, "--out", "out")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["counts"]["done"] == report["counts"]["planned"] == 9
    by_key = {t["key"]: t for t in report["turns"]}
    # every turn: its inputs, outputs (files that exist), timings
    for turn in report["turns"]:
        assert turn["status"] == "done" and turn["seconds"] > 0 and turn["finished_at"]
        assert turn["outputs"] and all((out / o["path"]).is_file() for o in turn["outputs"])
        assert turn["outputs"][0]["path"] in proc.stdout
    assert by_key["main/01"]["outputs"][0]["path"] == "01-star.png"
    assert by_key["shapes/square/01"]["outputs"][0]["path"] == "purple/square.png"
    assert by_key["shapes/square/01"]["task"] == "analogy"
    assert [i["source"] for i in by_key["rainy/square/01"]["example"]] == [
        "pair/before.png",
        "pair/after.png",
    ]
    assert by_key["rainy/square/01"]["inputs"][0]["source"] == "in/square.png"
    assert by_key["rainy/square/01"]["outputs"][0]["modality"] == "image"
    assert by_key["main/03"]["inputs"][0]["modality"] == "audio" and by_key["main/03"]["task"] == "describe"
    md = (out / "report.md").read_text()
    assert "# Pipeline `job`: complete" in md and "![@m:" in md and "(purple/square.png)" in md
    assert "complete: 9/9 turns done" in proc.stdout


def test_turn_failure_is_reported_and_exits_1(
    cli: Any, user_error: Any, model_arg: str, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "name: x\nturns:\n  - say: draw a small red star in the snow\n  - say: make the dragon blue\n",
    )
    proc = cli("run", "job.yaml", "--model", model_arg, "--steps", STEPS, "--out", "out")
    user_error(proc, 1, "turn main/02 (02) failed: CoDi-2 asked back:", "dragon")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and [t["status"] for t in report["turns"]] == ["done", "failed"]


def test_resume_after_limit_redoes_nothing_finished(
    cli: Any, model_arg: str, model: Any, tmp_path: Path
) -> None:
    write(tmp_path)
    first = cli("run", "job.yaml", "--model", model_arg, "--steps", STEPS, "--out", "out", "--limit", "4")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    before = json.loads((out / "report.json").read_text())
    assert before["status"] == "incomplete" and before["counts"]["done"] == 4
    done = {t["key"]: t for t in before["turns"] if t["status"] == "done"}
    stamps = {o["path"]: (out / o["path"]).stat().st_mtime_ns for t in done.values() for o in t["outputs"]}

    second = cli("run", "job.yaml", "--model", model_arg, "--steps", STEPS, "--out", "out")
    assert second.returncode == 0, second.stderr
    after = json.loads((out / "report.json").read_text())
    assert after["status"] == "complete" and after["counts"] == {
        "planned": 9, "done": 9, "reused": 4, "ran": 5, "failed": 0, "pending": 0
    }  # fmt: skip
    for turn in after["turns"]:
        if turn["key"] in done:
            assert turn["reused"] and turn["outputs"] == done[turn["key"]]["outputs"]
    assert all((out / p).stat().st_mtime_ns == t for p, t in stamps.items())  # not rewritten
    assert second.stdout.count("(done earlier)") == 4
    # Each thread holds each of its turns exactly once.
    threads = thread_turns(model, out / "session")
    assert len(threads["job"]) == MAIN_TURNS
    assert threads["job/shapes/square"][2:] == ["do the same edit to this one", "what is in this picture?"]

    third = cli("run", "job.yaml", "--model", model_arg, "--steps", STEPS, "--out", "out")
    assert third.returncode == 0 and third.stdout.count("(done earlier)") == 9


def test_resume_after_a_kill_redoes_nothing_finished(model_arg: str, model: Any, tmp_path: Path) -> None:
    path = write(tmp_path, inputs=4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "codi2_agent.cli", "run", str(path), "--model", model_arg, "--steps", STEPS,
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    report = out / "report.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if report.is_file() and json.loads(report.read_text())["counts"]["done"] >= 3:
                break  # (the report is replaced atomically: always whole)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert report.is_file(), proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    killed = json.loads(report.read_text())
    done = {t["key"]: t["outputs"] for t in killed["turns"] if t["status"] == "done"}
    assert 3 <= len(done) < killed["counts"]["planned"], "the run finished before it could be killed"

    resumed = run_pipeline(load_pipeline(path), out, model=model, model_id=model_arg, diffusion_steps=2)
    assert resumed.status == "complete"
    for turn in resumed.turns:
        if turn.key in done:
            assert turn.reused and [asdict_(o) for o in turn.outputs] == done[turn.key]
    threads = thread_turns(model, out / "session")
    assert len(threads["job"]) == MAIN_TURNS
    for name in ("square", "triangle", "cross", "circle"):
        assert len(threads[f"job/shapes/{name}"]) == 2 + 2 and len(threads[f"job/rainy/{name}"]) == 2 + 1


def asdict_(entry: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(entry)


def test_a_changed_turn_is_redone_with_what_follows_it(model: Any, tmp_path: Path) -> None:
    path = write(tmp_path)
    out = tmp_path / "out"
    first = run_pipeline(load_pipeline(path), out, model=model, diffusion_steps=2)
    assert first.status == "complete" and first.counts["ran"] == 9
    path.write_text(PIPELINE.replace("make it purple", "make it orange"))
    second = run_pipeline(load_pipeline(path), out, model=model, diffusion_steps=2)
    reused = {t.key for t in second.turns if t.reused}
    # The star is kept; the edit changed, and everything that depends on it is redone:
    # the loops fork after it and the last turn follows it in the main thread.
    assert reused == {"main/01"}
    assert next(t for t in second.turns if t.key == "main/02").request == "make it orange"
    threads = thread_turns(model, out / "session")
    assert threads["job"] == ["draw a small red star in the snow", "make it orange", "what do you hear?"]
    assert threads["job/shapes/square"][1] == "make it orange"
    # New files in a loop's folder: only they run.
    world.render({"shape": "star", "colour": "red", "size": "small", "scene": "day"}, 9).save(
        tmp_path / "in" / "star.png"
    )
    third = run_pipeline(load_pipeline(path), out, model=model, diffusion_steps=2)
    assert {t.key for t in third.turns if not t.reused} == {
        "shapes/star/01", "shapes/star/02", "rainy/star/01"
    }  # fmt: skip


def test_one_run_at_a_time_per_output_folder(model: Any, tmp_path: Path) -> None:
    from codi2_agent.pipelines.run import _locked

    path = write(tmp_path)
    (tmp_path / "out").mkdir()
    with _locked(tmp_path / "out"), pytest.raises(PipelineBusyError, match="another run is writing"):
        run_pipeline(load_pipeline(path), tmp_path / "out", model=model)


def test_a_recall_turn_finds_earlier_media_for_later_turns(model: Any, tmp_path: Path) -> None:
    text = (
        "name: job\nturns:\n  - name: star\n    say: draw a small red star in the snow\n"
        "  - name: found\n    say: red star\n    task: recall\n"
        "  - say: make it blue\n    image: '@found'\n"
    )
    pipeline = parse_pipeline(text, base_dir=tmp_path)
    report = run_pipeline(pipeline, tmp_path / "out", model=model, diffusion_steps=2)
    assert report.status == "complete", report.to_markdown()
    star, found, blue = report.turns
    assert found.task == "recall" and found.text.startswith("Found: ")
    # The search finds the star the first turn made: its file is written again under the recall's name.
    assert star.outputs[0].id in [o.id for o in found.outputs]
    assert found.outputs[0].path == "02-found.png" and (tmp_path / "out" / "02-found.png").is_file()
    assert blue.inputs[0].id == found.outputs[0].id and blue.task == "edit"


README_LIKE = """\
name: job
turns:
  - name: star
    say: draw a small red star in the snow
  - name: purple
    say: make it purple
  - say: what is in this picture?
    image: "@purple"
  - for_each: in
    turns:
      - say: do the same edit to this one
        image: "{file}"
        example: {after: "@purple"}
"""


def test_an_example_edit_shown_again_still_finds_its_source(model: Any, tmp_path: Path) -> None:
    path = write(tmp_path, README_LIKE, inputs=1)
    report = run_pipeline(load_pipeline(path), tmp_path / "out", model=model, diffusion_steps=2)
    assert report.status == "complete"
    purple = report.turns[1].outputs[0].id
    assert [m.id for m in report.turns[-1].example] == [purple]
