"""Attribute probes: the judges of generated media must be accurate, and survive save/load exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codi2_agent.data.probes import (
    DEFAULT_PROBES_DIR,
    AttributeProbe,
    Probes,
    load_probes,
    score,
    train_probes,
)
from codi2_agent.data.world import ATTRIBUTES, random_attrs, render, render_seed
from codi2_agent.media import Media


def _test_renders(n: int, seed: int = 1) -> tuple[list[Media], list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    attrs = [random_attrs(m, rng, "test") for m in ("image", "audio") for _ in range(n)]  # type: ignore[arg-type]
    return [render(a, render_seed(rng, "test")) for a in attrs], attrs


@pytest.fixture(scope="module")
def untrained() -> Probes:
    torch.manual_seed(0)
    return Probes(AttributeProbe(3, ATTRIBUTES["image"]), AttributeProbe(1, ATTRIBUTES["audio"], pool="grid"))


def test_save_load_round_trip_gives_identical_predictions(untrained: Probes, tmp_path: Path) -> None:
    media, _ = _test_renders(8)
    untrained.test_accuracy = {"shape": 0.5}
    folder = untrained.save(tmp_path / "probes")
    loaded = Probes.load(folder)
    assert loaded.test_accuracy == {"shape": 0.5}
    with torch.no_grad():
        for modality in ("image", "audio"):
            x = torch.randn(4, *((3, 32, 32) if modality == "image" else (1, 32, 64)))
            a, b = untrained._net(modality).eval()(x), loaded._net(modality)(x)  # type: ignore[arg-type]
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.predict(media) == untrained.predict(media)


def test_predict_score_accuracy_shapes(untrained: Probes) -> None:
    media, attrs = _test_renders(3)
    preds = untrained.predict(media)
    assert [set(p) for p in preds] == [set(a) for a in attrs]  # mixed modalities keep their order
    verdict = untrained.score(media[0], {"shape": attrs[0]["shape"]})
    assert set(verdict) == {"shape"} and isinstance(verdict["shape"], bool)
    acc = untrained.accuracy(media, attrs)
    assert set(acc) == {*ATTRIBUTES["image"], *ATTRIBUTES["audio"], "all"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    with pytest.raises(ValueError, match="probes know no attribute"):
        untrained.score(media[0], {"pitch": "440"})
    with pytest.raises(ValueError, match="do not describe"):
        score(media[0], {"pitch": "440"}, untrained)
    with pytest.raises(ValueError, match="probes read images and audio"):
        untrained.predict([Media.from_text("hi")])


@pytest.mark.skipif(not (DEFAULT_PROBES_DIR / "probes.json").is_file(), reason="no shipped probe weights")
def test_shipped_probes_judge_test_renders_correctly() -> None:
    probes = load_probes()
    assert all(v >= 0.98 for v in probes.test_accuracy.values()), probes.test_accuracy
    media, attrs = _test_renders(60, seed=2)
    acc = probes.accuracy(media, attrs)
    assert all(v >= 0.97 for v in acc.values()), acc
    assert score(media[0], attrs[0]) == dict.fromkeys(attrs[0], True)


@pytest.mark.slow
def test_brief_training_reaches_high_accuracy(tmp_path: Path) -> None:
    probes = train_probes(steps=300, seed=0, n_train={"image": 2000, "audio": 800}, n_test=150)
    assert all(v >= 0.9 for v in probes.test_accuracy.values()), probes.test_accuracy
    media, _ = _test_renders(10, seed=3)
    assert Probes.load(probes.save(tmp_path)).predict(media) == probes.predict(media)
