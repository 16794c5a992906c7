"""The in-context builder (exemplars of the same task, the text-only trick, bounded memory,
determinism) and `mix` (weighted, deterministic, lazy interleaving)."""

from __future__ import annotations

import gc
import itertools
import json
import re
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codi2_agent.data.samples import Message, Sample
from codi2_agent.media import Media
from codi2_agent.training.datasets import InContextBuilder, mix, open_dataset


def picture(i: int, caption: str | None) -> Media:
    return Media.from_image(np.full((4, 4, 3), i % 256, dtype=np.uint8), caption=caption)


def caption_sample(i: int, captioned: bool = True) -> Sample:
    media = picture(i, f"picture number {i}" if captioned else None)
    ask = Message("user", ["describe this picture.", media])
    return Sample("caption_image", [ask], f"picture number {i}", None, None, {"source": f"cap:{i}"})


def generate_sample(i: int) -> Sample:
    ask = Message("user", [f"draw picture number {i}"])
    return Sample(
        "text_to_image", [ask], "Here it is.", picture(i, f"picture number {i}"), None, {"source": f"gen:{i}"}
    )


def stream(n: int) -> Iterator[Sample]:
    """Caption and generation samples, interleaved two to one."""
    for i in range(n):
        yield caption_sample(i)
        if i % 2 == 0:
            yield generate_sample(i)


def summary(samples: list[Sample]) -> list[tuple[str, str, int, bool, tuple[str, ...]]]:
    return [
        (s.task, s.meta["source"], s.meta["n_shots"], s.meta["text_only"], tuple(s.meta["exemplar_sources"]))
        for s in samples
    ]


def test_each_sample_gets_k_exemplars_of_its_own_task_never_itself() -> None:
    out = list(InContextBuilder(shots=2, reservoir_size=8, seed=0)(stream(30)))
    assert Counter(s.task for s in out) == {"caption_image": 30, "text_to_image": 15}  # one out per one in
    for sample in out:
        prefix = "cap:" if sample.task == "caption_image" else "gen:"
        assert sample.meta["n_shots"] == 2 and len(sample.messages) == 2 * 2 + 1
        assert all(src.startswith(prefix) for src in sample.meta["exemplar_sources"])
        assert sample.meta["source"] not in sample.meta["exemplar_sources"]
        assert [m.role for m in sample.messages] == ["user", "assistant"] * 2 + ["user"]
        assert sample.check() is sample
    first_generate = next(s for s in out if s.task == "text_to_image")
    answers = [m for m in first_generate.messages if m.role == "assistant"]
    assert all(m.media() and m.text() == "Here it is." for m in answers)  # the exemplars' solved answers


def test_a_range_of_shots_is_drawn_per_sample() -> None:
    out = list(InContextBuilder(shots=(1, 3), reservoir_size=8, seed=3)(stream(60)))
    counts = Counter(s.meta["n_shots"] for s in out)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 10
    assert all(len(s.messages) == 2 * s.meta["n_shots"] + 1 for s in out)


def test_the_same_seed_builds_the_same_samples() -> None:
    def build(seed: int) -> list[tuple[str, str, int, bool, tuple[str, ...]]]:
        return summary(
            list(InContextBuilder(shots=(1, 3), reservoir_size=6, text_only_p=0.5, seed=seed)(stream(40)))
        )

    assert build(7) == build(7)
    assert build(7) != build(8)


def test_text_only_exemplars_show_captions_at_the_configured_rate() -> None:
    builder = InContextBuilder(shots=1, reservoir_size=16, text_only_p=0.3, seed=1)
    out = list(builder(caption_sample(i) for i in range(1000)))
    rate = sum(s.meta["text_only"] for s in out) / len(out)
    assert 0.26 < rate < 0.34 and builder.stats["text_only"] == sum(s.meta["text_only"] for s in out)
    text_only = next(s for s in out if s.meta["text_only"])
    shown, answer, query = text_only.messages
    assert (
        not shown.media() and "picture number" in shown.text() and answer.text().startswith("picture number")
    )
    assert len(query.media()) == 1  # the query keeps its medium
    media_shot = next(s for s in out if not s.meta["text_only"])
    assert len(media_shot.messages[0].media()) == 1


def test_uncaptioned_exemplars_keep_their_media_and_are_counted() -> None:
    builder = InContextBuilder(shots=1, reservoir_size=4, text_only_p=1.0, seed=0)
    out = list(builder(caption_sample(i, captioned=False) for i in range(10)))
    assert not any(s.meta["text_only"] for s in out)
    assert builder.stats["text_only_uncaptioned"] == 10 and all(s.messages[0].media() for s in out)


def test_the_first_samples_wait_for_exemplars_and_a_lone_task_comes_out_short() -> None:
    builder = InContextBuilder(shots=2, reservoir_size=4, seed=0)
    samples = [caption_sample(i) for i in range(5)] + [generate_sample(99)]
    out = list(builder(samples))
    assert sorted(s.meta["source"] for s in out) == sorted(s.meta["source"] for s in samples)
    assert [s.meta["n_shots"] for s in out if s.task == "caption_image"] == [2] * 5
    (lone,) = [s for s in out if s.task == "text_to_image"]
    assert lone.meta["n_shots"] == 0 and builder.stats["short"] == 1


def test_memory_is_bounded_by_the_reservoir_on_an_endless_stream() -> None:
    made: list[weakref.ref[Sample]] = []  # Samples are unhashable dataclasses: no WeakSet

    def endless() -> Iterator[Sample]:
        for i in itertools.count():
            sample = caption_sample(i)
            made.append(weakref.ref(sample))
            yield sample

    out = InContextBuilder(shots=(1, 2), reservoir_size=5, seed=0)(endless())
    for sample in itertools.islice(out, 300):
        del sample
    gc.collect()
    assert (
        len(made) >= 300 and sum(ref() is not None for ref in made) <= 5 + 2
    )  # the reservoir, plus the sample being built and the next one


def test_exemplars_come_from_all_of_the_stream_not_only_its_end() -> None:
    out = list(InContextBuilder(shots=1, reservoir_size=10, seed=2)(caption_sample(i) for i in range(400)))
    late = [int(s.meta["exemplar_sources"][0].split(":")[1]) for s in out[-100:]]
    assert min(late) < 200  # a uniform reservoir keeps early samples too


def test_builder_over_a_real_dataset_folder(tmp_path: Path) -> None:
    lines = []
    for i in range(6):
        Image.new("RGB", (5 + i, 5), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a red square {i}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    builder = InContextBuilder(shots=2, reservoir_size=4, text_only_p=1.0, seed=0)
    out = list(builder(open_dataset(tmp_path, tasks={"text_to_image"})))
    assert len(out) == 6 and all(s.task == "text_to_image" and s.meta["n_shots"] == 2 for s in out)
    shots = out[0].messages[:4]
    assert not any(m.media() for m in shots)
    assert all("a red square" in m.text() for m in shots)  # the requests, and the answers' captions
    # an answer: the reply, then the caption in place of the picture it made
    assert re.fullmatch(r"(Here it is\.|Here you go\.|Done\.) a red square \d", shots[1].text())
    assert out[0].target is not None and out[0].target.image.size[1] == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": -1}, "shots"),
        ({"shots": (3, 1)}, "shots"),
        ({"shots": 4, "reservoir_size": 4}, "reservoir_size"),
        ({"text_only_p": 1.5}, "text_only_p"),
    ],
)
def test_bad_builder_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InContextBuilder(**kwargs)  # type: ignore[arg-type]


# --- mix ----------------------------------------------------------------------------------------
def endless(name: str) -> Iterator[Sample]:
    for i in itertools.count():
        yield Sample(
            name, [Message("user", [f"{name} {i}"])], f"{name} {i}", None, None, {"source": f"{name}:{i}"}
        )


def test_mix_draws_in_proportion_to_the_weights_lazily() -> None:
    mixed = list(
        itertools.islice(mix({"a": endless("a"), "b": endless("b")}, {"a": 3, "b": 1}, seed=0), 4000)
    )
    share = Counter(s.meta["mix_source"] for s in mixed)["a"] / len(mixed)
    assert 0.72 < share < 0.78
    a_order = [s.meta["source"] for s in mixed if s.task == "a"][:3]
    assert a_order == ["a:0", "a:1", "a:2"]  # each stream is read in its own order


def test_mix_is_deterministic_and_exhausts_or_stops_as_asked() -> None:
    def run(seed: int, until: str = "all") -> list[str]:
        sources = [itertools.islice(endless("a"), 5), itertools.islice(endless("b"), 50)]
        return [s.meta["source"] for s in mix(sources, [1, 1], seed=seed, until=until)]

    assert run(4) == run(4) and run(4) != run(5)
    assert len(run(4)) == 55  # "all": every sample of every source
    first = run(4, "first")
    assert Counter(src[0] for src in first)["a"] == 5 and len(first) < 55


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "1 weights for 2"), ([0, 0], "not all 0"), ([1, -1], ">= 0"), ({"a": 1, "c": 1}, "sources are")],
)
def test_mix_refuses_bad_weights(weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mix({"a": [], "b": []}, weights)  # type: ignore[arg-type]
