"""Task builders: every sample is well-formed, belongs to its split, and asks for the right answer.

Media carry their canonical captions, so most checks read attributes back with `parse_caption`
instead of trusting the builder's own bookkeeping.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from codi2_agent.data.phrasing import corpus, parse_change
from codi2_agent.data.samples import Sample
from codi2_agent.data.tasks import TASKS, sample_task
from codi2_agent.data.world import (
    AMBIENCE_TO_SCENE,
    IMAGE_ATTRIBUTES,
    TEST_SEED_OFFSET,
    edit,
    is_held_out,
    parse_caption,
    scene_phrase,
)
from codi2_agent.media import Media

SEEDS = range(50)


def attrs_of(media: Media) -> dict[str, str]:
    assert media.caption, "rendered media carry their caption"
    return parse_caption(media.caption)


def differing(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def check_split(sample: Sample, split: str) -> None:
    """Train: no held-out combination anywhere. Test: the answer has one, seeds from the test range."""
    shown = [attrs_of(m) for m in sample.input_media()]
    if split == "train":
        assert not any(is_held_out(a) for a in shown)
        if sample.target_attrs and "attribute" not in sample.target_attrs:
            assert not is_held_out(sample.target_attrs)
    else:
        assert sample.meta["seed"] >= TEST_SEED_OFFSET
        if sample.task == "what_changed":
            assert is_held_out(sample.meta["after_attrs"])
        else:
            assert sample.target_attrs is not None and is_held_out(sample.target_attrs)


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_builder_yields_valid_samples(name: str, split: str) -> None:
    for seed in SEEDS:
        sample = sample_task(name, seed, split).check()  # type: ignore[arg-type]
        assert sample.task == name and sample.meta["split"] == split
        check_split(sample, split)
        if sample.target is not None:
            # The answer medium shows exactly the target attributes; the reply text is short (an
            # analogy's names its edit, a concept's the shared value: checked by their own tests).
            assert attrs_of(sample.target) == sample.target_attrs
            names_inference = name.startswith("analogy") or name == "concept_image"
            assert len(sample.target_text) <= (48 if names_inference else 12)
        else:
            assert sample.target_text and sample.target_attrs


@pytest.mark.parametrize("name", sorted(TASKS))
def test_builders_are_deterministic(name: str) -> None:
    a, b = sample_task(name, 7), sample_task(name, 7)
    assert [m.role for m in a.messages] == [m.role for m in b.messages]
    for x, y in zip(a.messages, b.messages, strict=True):
        assert [p if isinstance(p, str) else p.to_bytes() for p in x.content] == [
            p if isinstance(p, str) else p.to_bytes() for p in y.content
        ]
    assert a.target_text == b.target_text and a.target == b.target
    assert sample_task(name, 8).messages != a.messages or sample_task(name, 9).messages != a.messages


@pytest.mark.parametrize("name", ["edit_image", "edit_audio"])
def test_edit_changes_exactly_the_instructed_attribute(name: str) -> None:
    kinds = set()
    for seed in SEEDS:
        s = sample_task(name, seed)
        (source,) = s.messages[-1].media()
        assert differing(attrs_of(source), s.target_attrs) == {s.meta["edited"]}
        assert s.target_attrs[s.meta["edited"]] == s.meta["value"]
        kinds.add(s.meta["edited"])
    assert len(kinds) >= 3  # the edits are spread over the attributes


@pytest.mark.parametrize("name", ["analogy_image", "analogy_audio"])
@pytest.mark.parametrize("n_shots", [1, 3])
def test_analogy_pairs_share_the_edit(name: str, n_shots: int) -> None:
    for seed in SEEDS:
        s = sample_task(name, seed, n_shots=n_shots)
        media = s.messages[-1].media()
        assert len(media) == 2 * n_shots + 1
        attr, value = s.meta["edited"], s.meta["value"]
        for a, a2 in zip(media[0:-1:2], media[1:-1:2], strict=True):
            assert differing(attrs_of(a), attrs_of(a2)) == {attr} and attrs_of(a2)[attr] == value
        query = attrs_of(media[-1])
        assert differing(query, s.target_attrs) == {attr} and s.target_attrs[attr] == value
        assert s.target_attrs == edit(query, attr, value)
        # The answer's text names the edit the examples show, before the medium that applies it.
        assert s.target_text == f"the same edit: the {attr} becomes {value}."


@pytest.mark.parametrize("name", ["analogy_image", "analogy_audio", "concept_image"])
def test_text_only_puts_captions_where_exemplar_media_were(name: str) -> None:
    for seed in SEEDS:
        s = sample_task(name, seed, **({"n_shots": 2} if name.startswith("analogy") else {}), text_only=True)
        (query,) = s.input_media()  # only the query stays media
        text = s.messages[-1].text()
        captions = s.meta["exemplar_captions"]
        assert captions and all(c in text for c in captions)
        assert len(captions) == (4 if name.startswith("analogy") else len(s.meta["examples"]))
        attr, value = s.meta["edited"], s.meta["value"]
        assert s.target_attrs == edit(attrs_of(query), attr, value)


@pytest.mark.parametrize("name", ["text_to_image", "caption_audio", "edit_image", "compose_image_audio"])
def test_generic_shots_prepend_solved_turns(name: str) -> None:
    for seed in range(10):
        plain = sample_task(name, seed, n_shots=2).check()
        assert len(plain.messages) == 5 and [m.role for m in plain.messages[:2]] == ["user", "assistant"]
        text = sample_task(name, seed, n_shots=2, text_only=True).check()
        assert not any(m.media() for m in text.messages[:4])  # exemplar media became captions
        assert text.messages[-1].media() == plain.messages[-1].media()
        assert text.target == plain.target


def test_multi_round_is_a_chain_of_edits() -> None:
    turns_seen, modalities = set(), set()
    for seed in SEEDS:
        s = sample_task("multi_round", seed)
        turns = s.meta["turns"]
        turns_seen.add(turns)
        modalities.add(s.meta["modality"])
        assert 3 <= turns <= 6 and len(s.messages) == 2 * turns - 1
        assert [m.role for m in s.messages] == ["user", "assistant"] * (turns - 1) + ["user"]
        outputs = [m.media() for m in s.messages if m.role == "assistant"]
        assert all(len(o) == 1 for o in outputs)
        latest = attrs_of(outputs[-1][0])
        assert differing(latest, s.target_attrs) == {s.meta["edited"]}
        # each assistant output is one edit away from the one before
        chain = [attrs_of(o[0]) for o in outputs]
        assert all(len(differing(a, b)) == 1 for a, b in itertools.pairwise(chain))
        assert not s.messages[-1].media()  # the last request is text only
    assert turns_seen == {3, 4, 5, 6} and modalities == {"image", "audio"}
    with pytest.raises(ValueError, match="n_shots"):
        sample_task("multi_round", 0, n_shots=1)


def test_multi_round_text_only_keeps_only_the_latest_output() -> None:
    s = sample_task("multi_round", 3, text_only=True).check()
    assert len(s.input_media()) == 1 and s.messages[-2].media()


def test_compose_takes_the_scene_of_the_sound() -> None:
    for seed in SEEDS:
        s = sample_task("compose_image_audio", seed)
        (image,) = [m for m in s.input_media() if m.modality.value == "image"]
        (sound,) = [m for m in s.input_media() if m.modality.value == "audio"]
        scene = AMBIENCE_TO_SCENE[attrs_of(sound)["ambience"]]
        assert s.target_attrs == edit(attrs_of(image), "scene", scene)
        assert attrs_of(image)["scene"] != scene


def test_what_changed_names_the_attribute_and_values() -> None:
    for seed in SEEDS:
        s = sample_task("what_changed", seed)
        before, after = s.input_media()
        (attribute,) = differing(attrs_of(before), attrs_of(after))
        assert parse_change(s.target_text) == (
            attribute,
            attrs_of(before)[attribute],
            attrs_of(after)[attribute],
        )
        assert s.target is None and s.target_attrs == dict(
            zip(("attribute", "from", "to"), parse_change(s.target_text), strict=True)
        )


def test_concept_examples_share_exactly_one_value() -> None:
    for seed in SEEDS:
        s = sample_task("concept_image", seed)
        *examples, query = (attrs_of(m) for m in s.input_media())
        assert 2 <= len(examples) <= 4
        shared = {k for k in IMAGE_ATTRIBUTES if len({e[k] for e in examples}) == 1}
        assert shared == {s.meta["edited"]}
        assert s.target_attrs == edit(query, s.meta["edited"], examples[0][s.meta["edited"]])
        # The answer's text names the shared value, before the medium that applies it.
        attr, value = s.meta["edited"], s.meta["value"]
        lead, _, rest = s.target_text.partition(" the ")
        assert lead in ("the concept:", "the same concept:", "one thing in common:")
        assert rest == f"{attr} becomes {value}." and value == examples[0][attr]


def test_concept_answer_draws_like_a_generic_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming the concept changed only the answer text: a seed still gives the same media and prompts
    (held-out sets scored before the change stay the same samples)."""
    import codi2_agent.data.tasks as tasks_module
    from codi2_agent.data.phrasing import REPLIES, pick

    def draw() -> list[Sample]:  # one rng for several samples, as a held-out set is drawn
        rng = np.random.default_rng(3)
        return [sample_task("concept_image", rng, "test") for _ in range(8)]

    named = draw()
    monkeypatch.setattr(tasks_module, "concept_reply", lambda attribute, value, rng: pick(REPLIES, rng))
    generic = draw()
    for a, b in zip(named, generic, strict=True):
        assert a.target_text != b.target_text and b.target_text in REPLIES
        assert [m.text() for m in a.messages] == [m.text() for m in b.messages]
        assert [x.to_bytes() for x in a.input_media()] == [x.to_bytes() for x in b.input_media()]
        assert a.target.to_bytes() == b.target.to_bytes()  # type: ignore[union-attr]


def test_subject_keeps_the_subject_in_a_new_scene() -> None:
    for seed in SEEDS:
        s = sample_task("subject_image", seed)
        shots = [attrs_of(m) for m in s.input_media()]
        assert 1 <= len(shots) <= 3
        for shot in shots:
            assert differing(shot, s.target_attrs) == {"scene"}
        scene = s.target_attrs["scene"]
        assert any(p in s.messages[-1].text() for p in (scene_phrase(scene), *_scene_words(scene)))


def _scene_words(scene: str) -> tuple[str, ...]:
    from codi2_agent.data.world import SCENE_PHRASES

    return SCENE_PHRASES[scene]


def test_corpus_covers_every_word_the_tasks_use() -> None:
    vocab = {w for line in corpus() for w in re.findall(r"[a-z]+|\d+", line.lower())}
    rng = np.random.default_rng(0)
    for name in sorted(TASKS):
        for _ in range(15):
            extra = {"n_shots": 2, "text_only": True} if name != "multi_round" else {}
            s = sample_task(name, rng, **extra)
            words = re.findall(
                r"[a-z]+|\d+", " ".join([*(m.text() for m in s.messages), s.target_text]).lower()
            )
            assert set(words) <= vocab, (name, set(words) - vocab)


def test_unknown_task_and_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        sample_task("paint_by_numbers", 0)
    with pytest.raises(ValueError, match="exemplar"):
        sample_task("analogy_image", 0, n_shots=0)
    with pytest.raises(ValueError, match="split"):
        sample_task("text_to_image", 0, "dev")  # type: ignore[arg-type]
