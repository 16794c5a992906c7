"""`codi2-agent data check DIR`: counts per format and task, problems with file and line, exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from codi2_agent.cli import app


def write_mixed_dataset(root: Path) -> Path:
    """Every format in one folder: a shard, image pairs, audio pairs, edits (no subject folders:
    with manifests present, sub-folders are the manifests' media)."""
    pictures = root / "images"
    pictures.mkdir(parents=True)
    for name, size in (("a", (8, 6)), ("b", (6, 8))):
        Image.new("RGB", size, (10, 200, 10)).save(pictures / f"{name}.png")
    sf.write(root / "beep.wav", np.zeros(1600, dtype=np.float32), 16000)
    (root / "pairs.jsonl").write_text(
        json.dumps({"image": "images/a.png", "caption": "green"}) + "\n"
        + json.dumps({"image": "images/b.png", "caption": "green again"}) + "\n"
    )  # fmt: skip
    (root / "sounds.csv").write_text("audio,caption\nbeep.wav,silence\n")
    (root / "edits.jsonl").write_text(
        json.dumps({"input": "images/a.png", "instruction": "turn it", "output": "images/b.png"}) + "\n"
    )
    with tarfile.open(root / "shard-0.tar", "w") as tar:
        for name, data in (("k.png", (pictures / "a.png").read_bytes()), ("k.txt", b"green")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_check_counts_samples_per_format_and_task(tmp_path: Path, runner: CliRunner) -> None:
    root = write_mixed_dataset(tmp_path / "data")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"dataset: {root.resolve()}"
    rows = {tuple(line.split()) for line in lines if line.startswith("  ")}
    assert {
        ("image_caption", "caption_image", "2"),
        ("image_caption", "text_to_image", "2"),
        ("audio_caption", "caption_audio", "1"),
        ("audio_caption", "text_to_audio", "1"),
        ("edit", "edit_image", "1"),
        ("webdataset", "caption_image", "1"),
        ("webdataset", "text_to_image", "1"),
    } <= rows
    assert {("edit", "edits.jsonl"), ("webdataset", "shard-0.tar"), ("audio_caption", "sounds.csv")} <= rows
    assert "total: 9 samples from 4 source(s)" in lines and "problems: 0" in lines
    quick = runner.invoke(app, ["data", "check", str(root), "--limit", "1"])
    assert "total: 4 samples from 4 source(s)" in quick.stdout.splitlines()


def test_check_lists_problems_with_their_line_and_strict_fails(tmp_path: Path, runner: CliRunner) -> None:
    root = write_mixed_dataset(tmp_path / "data")
    with (root / "pairs.jsonl").open("a") as f:
        f.write("{broken\n")
        f.write(json.dumps({"image": "../../etc/hostname", "caption": "x"}) + "\n")
        f.write(json.dumps({"image": "images/gone.png", "caption": "x"}) + "\n")
    lenient = runner.invoke(app, ["data", "check", str(root)])
    assert lenient.exit_code == 0, lenient.output
    out = lenient.stdout
    assert "problems: 3 (BadRecordError 1, MediaNotFoundError 1, UnsafePathError 1)" in out
    assert "  pairs.jsonl:3: BadRecordError: not a JSON line" in out
    assert "  pairs.jsonl:4: UnsafePathError: field 'image': '../../etc/hostname' climbs out" in out
    assert "  pairs.jsonl:5: MediaNotFoundError: no media file at" in out
    assert "image_caption  caption_image    2" in out  # the good lines still count

    strict = runner.invoke(app, ["data", "check", str(root), "--strict", "--json"])
    assert strict.exit_code == 1
    report = json.loads(strict.stdout)
    assert report["problem_counts"] == {"BadRecordError": 1, "MediaNotFoundError": 1, "UnsafePathError": 1}
    assert [(p["file"], p["line"]) for p in report["problems"]] == [("pairs.jsonl", n) for n in (3, 4, 5)]
    clean = runner.invoke(app, ["data", "check", str(write_mixed_dataset(tmp_path / "clean")), "--strict"])
    assert clean.exit_code == 0


def test_a_named_format_and_a_subject_folder(tmp_path: Path, runner: CliRunner) -> None:
    for subject, n in (("cup", 3), ("owl", 2)):
        for i in range(n):
            (tmp_path / subject).mkdir(exist_ok=True)
            Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(tmp_path / subject / f"{i}.png")
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "subjects"])
    assert result.exit_code == 0, result.output
    assert "subjects       subject_image    5" in result.stdout
    none = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "webdataset"])
    assert none.exit_code == 2 and "no dataset of format 'webdataset'" in none.stderr


def test_the_installed_command_exits_2_with_one_line_when_nothing_is_there(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.run(
        [sys.executable, "-m", "codi2_agent.cli", "data", "check", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip().startswith("error: no dataset at") and len(proc.stderr.strip().splitlines()) == 1
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_unknown_format_name_is_a_one_line_error(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--format", "parquet"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown dataset format 'parquet'; expected auto or one of")
