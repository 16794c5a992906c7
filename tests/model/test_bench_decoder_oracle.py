"""benchmarks/bench_decoder_oracle.py: a small run on the shipped tiny repeats `evaluate`'s decoder-oracle
row for the same draw, and a malformed setting is refused by name."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from codi2_agent.data.probes import load_probes
from codi2_agent.evaluation import _decoder_oracle
from codi2_agent.model import load_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decoder_oracle.py"


def test_a_draw_of_eval_size_repeats_the_eval_row(tmp_path: Path) -> None:
    out = tmp_path / "oracle.txt"
    args = ["--per-draw", "6", "--draws", "5", "--settings", "2:3.5", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in out.read_text().splitlines()[2:]]
    own = [r for r in rows if r[:3] == ["20", "3.5", "5"]]  # the model's own setting comes first
    other = [r for r in rows if r[:3] == ["2", "3.5", "5"]]
    assert rows[0][:3] == ["20", "3.5", "5"] and len(own) == 1 and len(other) == 1
    assert sum(r[0] == "misses:" for r in rows) == 2  # one list of misses per setting
    # evaluate()'s own decoder oracle on the same seed and size, decoded one row at a time; at 2 steps
    # the renders are poor, so the figures depend on every sample being the same one
    model, probes = load_model("tiny"), load_probes()
    for row, steps in ((own[0], None), (other[0], 2)):
        expected = _decoder_oracle(model, probes, 6, 5, steps)[0]
        assert float(row[3]) == pytest.approx(expected.accuracy, abs=1e-3)
        assert row[4] == f"shape={expected.per_attribute['shape']:.3f}"
        assert row[5:8] == [f"{a}={expected.per_attribute[a]:.3f}" for a in ("colour", "size", "scene")]
    assert float(other[0][3]) < 1.0  # the check above is not between two perfect scores


def test_the_audio_round_trip_row_is_the_probes_on_inverted_true_mels(tmp_path: Path) -> None:
    out = tmp_path / "oracle.txt"
    args = ["--modality", "audio", "--round-trip", "--per-draw", "6", "--draws", "5", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--settings", "2:1.0", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in out.read_text().splitlines()]
    trip = [r for r in rows if r[:3] == ["round", "trip", "5"]]
    assert len(trip) == 1 and rows[-2][:3] == ["round", "trip", "all"] and rows[-1][0] == "misses:"
    # The same six renders, inverted here without the script: the row must be their probe verdicts.
    from codi2_agent.evaluation import decoder_oracle_draw
    from codi2_agent.media import Media

    model, probes = load_model("tiny"), load_probes()
    attrs, media = decoder_oracle_draw("audio", 5, 6)
    mel = model.decoder("audio").mel
    wavs = mel.invert(mel(model.processor.media_tensor(media[0].modality, media)))
    restored = [Media.from_audio(w.numpy(), mel.sample_rate) for w in wavs]
    expected = probes.accuracy(restored, attrs)
    assert float(trip[0][3]) == pytest.approx(expected["all"], abs=1e-3)
    assert trip[0][4:7] == [f"{a}={expected[a]:.3f}" for a in ("instrument", "pitch", "ambience")]
    # and it is not the decoder's row: 2 steps without guidance render far worse than the true mels
    decoded = [r for r in rows if r[:3] == ["2", "1.0", "5"]]
    assert float(decoded[0][3]) < float(trip[0][3])


def test_round_trip_is_refused_for_pictures() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--modality", "image", "--round-trip"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "--round-trip is for --modality audio" in proc.stderr


@pytest.mark.parametrize("text", ["20", "x:3.5", "0:3.5", "20:0.5"])
def test_a_malformed_setting_is_named(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=text.replace(".", r"\.")):
        load_benchmark("bench_decoder_oracle").parse_settings(f"20:3.5,{text}")
