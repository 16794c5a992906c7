"""benchmarks/bench_additivity.py: its additive fit is exact on additive tables and measures what is not,
and a run on the shipped tiny model writes every section."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_additivity", BENCHMARKS / "bench_additivity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCHEMA = {"instrument": ("a", "b", "c"), "pitch": ("lo", "mid", "hi"), "ambience": ("x", "y")}
COMBOS = [dict(zip(SCHEMA, values, strict=True)) for values in itertools.product(*SCHEMA.values())]
HELD = np.array([c["instrument"] == "a" and c["pitch"] == "hi" for c in COMBOS])  # one pair never seen


def test_design_has_an_intercept_and_one_indicator_per_attribute_value(bench) -> None:
    design = bench.one_hot_design(COMBOS, SCHEMA)
    assert design.shape == (18, 1 + 3 + 3 + 2)
    assert np.all(design[:, 0] == 1)
    assert np.all(design.sum(1) == 1 + len(SCHEMA))  # one value of each attribute per combination
    first = COMBOS.index({"instrument": "b", "pitch": "lo", "ambience": "y"})
    assert design[first].tolist() == [1, 0, 1, 0, 1, 0, 0, 0, 1]


def test_additive_tables_are_predicted_exactly_on_held_out_pairs(bench) -> None:
    rng = np.random.default_rng(0)
    parts = {(a, v): rng.normal(size=5) for a, vs in SCHEMA.items() for v in vs}
    table = np.stack([sum(parts[(a, c[a])] for a in SCHEMA) for c in COMBOS])
    fitted = bench.additive_fit(table, bench.one_hot_design(COMBOS, SCHEMA), HELD)
    assert bench.mse(fitted[HELD], table[HELD]) < 1e-20
    assert bench.mse(fitted[~HELD], table[~HELD]) < 1e-20


def test_an_interaction_on_the_held_out_pair_is_what_the_fit_misses(bench) -> None:
    rng = np.random.default_rng(1)
    parts = {(a, v): rng.normal(size=4) for a, vs in SCHEMA.items() for v in vs}
    table = np.stack([sum(parts[(a, c[a])] for a in SCHEMA) for c in COMBOS])
    bump = np.array([0.5, -0.5, 1.0, 0.0])
    table[HELD] += bump  # a conjunction the train rows cannot show
    fitted = bench.additive_fit(table, bench.one_hot_design(COMBOS, SCHEMA), HELD)
    assert bench.mse(fitted[~HELD], table[~HELD]) < 1e-20
    assert bench.mse(fitted[HELD], table[HELD]) == pytest.approx(float((bump**2).mean()))


def run_bench(out: Path, *args: str) -> str:
    """Run the script on sounds with one render per combination; its table, checked to be what it printed."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_additivity.py"), *args, "--modality", "audio",
         "--renders", "1", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == out.read_text()
    return proc.stdout


def test_a_run_on_the_shipped_model_writes_every_section(tmp_path: Path) -> None:
    text = run_bench(tmp_path / "additivity.txt")
    assert "# audio: 120 combinations, 40 held out" in text
    fit = dict(re.findall(r"additive fit on train combinations: (train rows|held-out)\s+([\d.]+)", text))
    assert set(fit) == {"train rows", "held-out"}
    row = re.search(r"^0: tiny\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", text, re.M)
    assert row is not None, text
    train, held, held_vs_own, own_vs_truth = map(float, row.groups())
    assert 0 <= train < held <= 1  # seen combinations are answered more closely than unseen ones
    # root mean squares obey the triangle inequality: answer -> own additive extrapolation -> truth
    assert held**0.5 <= held_vs_own**0.5 + own_vs_truth**0.5 + 1e-3
    assert own_vs_truth == pytest.approx(float(fit["held-out"]), abs=0.02)  # the LM fits seen combos well
    pairs = re.search(r"per held-out pair: (.*)$", text, re.M)
    assert pairs is not None and len(pairs.group(1).split(", ")) == 8


def test_a_training_workdir_is_measured_checkpoint_by_checkpoint_and_its_last_is_the_model(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from codi2_agent.training.recipe import TinyRecipe, train

    work, out = tmp_path / "work", tmp_path / "model"
    train(out, workdir=work, recipe=replace(TinyRecipe.smoke(), lm_branches=2), progress=False)

    text = run_bench(tmp_path / "checkpoints.txt", "--workdir", str(work), "--layers")
    rows = re.findall(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", text, re.M)
    assert [name for name, *_ in rows] == ["align", "lm/branch0", "lm/branch1", "lm", "tune"]
    errors = {name: (float(train_), float(held)) for name, train_, held, _ in rows}
    assert errors["lm/branch0"] != errors["lm/branch1"]  # each branch on its own draw: other weights
    # the last checkpoint is what the run assembled: measured as a model folder it gives the same errors
    model_row = re.search(
        r"^0: \S+\s+([\d.]+)\s+([\d.]+)", run_bench(tmp_path / "model.txt", "--model", str(out)), re.M
    )
    assert model_row is not None
    assert (float(model_row.group(1)), float(model_row.group(2))) == errors["tune"]
    assert "## 1. encoder C_x" not in text  # the workdir mode alone: no model was asked for
    from codi2_agent.data import world

    per_pair = re.findall(r"^   per held-out pair: (.+)$", text, re.M)
    assert len(per_pair) == len(rows)
    branch0 = {name: float(e) for name, e in re.findall(r"(\S+) ([\d.]+)(?:,|$)", per_pair[1])}
    assert set(branch0) == {"+".join(v for _, v in sorted(p)) for p in world.HELD_OUT["audio"]}
    branch1 = {name: float(e) for name, e in re.findall(r"(\S+) ([\d.]+)(?:,|$)", per_pair[2])}
    assert branch0 != branch1 and min(branch0.values()) > 0
    # --layers: after each checkpoint, every LM layer, the final norm and the head's two layers
    layers = re.findall(r"^   (.+?)\s+off additive, train ([\d.]+)  held-out ([\d.]+)$", text, re.M)
    n_layers = json.loads((out / "config.json").read_text())["lm"]["num_hidden_layers"]
    names = [f"layer {i}" for i in range(n_layers)] + ["final norm", "head hidden", "head output"]
    assert [name for name, *_ in layers] == names * len(rows)
    shares = np.array([[float(train_), float(held)] for _, train_, held in layers])
    assert (shares >= 0).all() and (shares[:, 0] <= 1.0).all()  # a least-squares fit never exceeds the spread
    assert len(set(shares[:, 1].round(3))) > len(names)  # the checkpoints' states differ
    agreement = re.search(r"the better on the other half: (\d+) of (\d+)$", text, re.M)
    n = len(branch0)
    assert agreement is not None and int(agreement.group(2)) == math.comb(n, n // 2) // 2  # two branches


def test_checkpoints_come_in_the_recipes_order_with_branches_by_number(bench, tmp_path: Path) -> None:
    for name in ("tune", "lm", "lm/branch10", "lm/branch2", "lm/branch0", "lm/branch_old", "align"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "final.pt").write_bytes(b"")
    (tmp_path / "lm" / "branch3").mkdir()  # a branch still training: no final weights yet
    found = [str(p.parent.relative_to(tmp_path)) for p in bench.reasoning_checkpoints(tmp_path)]
    assert found == ["align", "lm/branch0", "lm/branch2", "lm/branch10", "lm", "tune"]


def test_pick_agreement_counts_splits_where_one_half_ranks_branches_as_the_other(bench) -> None:
    pairs = ("p", "q", "r", "s")
    better = dict.fromkeys(pairs, 0.04)
    worse = dict.fromkeys(pairs, 0.06)
    assert bench.pick_agreement([better, worse]) == (3, 3)  # {p,q|r,s}, {p,r|q,s}, {p,s|q,r}
    assert bench.pick_agreement([better, worse, dict.fromkeys(pairs, 0.05)]) == (9, 9)
    # idiosyncratic: each branch bad on its own pair; the split decides which looks better
    a = {"p": 0.10, "q": 0.04, "r": 0.04, "s": 0.04}
    b = {"p": 0.04, "q": 0.10, "r": 0.04, "s": 0.04}
    # {p,q|r,s}: a and b tie on both halves (counted as agreeing: neither is lower); {p,r|q,s} and
    # {p,s|q,r}: a looks worse on the half with p, better on the other half
    assert bench.pick_agreement([a, b]) == (1, 3)
