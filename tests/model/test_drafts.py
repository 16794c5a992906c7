"""Draft decoding (codi2_agent/model/drafts.py): proposed tokens are kept only where they are the greedy
choice, so `generate(..., draft_texts=...)` answers exactly as plain `generate` does, in fewer LM calls.

Both paths pick argmax over the same logits, but a many-token forward pass sums in another order than
a one-token one; only a tie within float rounding could tell them apart, so the equality is checked on
many inputs: the shipped model's captions of world images and sounds with the drafts a session passes
(an edit's source caption, the request, the reply), misleading drafts, and seeded random weights,
whose answers run to the token budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import GenerateRequest, LocalBackend, PromptTurn, _caption_drafts
from codi2_agent.data import world
from codi2_agent.media import Media, MediaRef
from codi2_agent.model import CoDi2Model, load_model
from codi2_agent.model.drafts import MAX_DRAFT_TOKENS, TextDrafts
from codi2_agent.model.generation import MAX_REPLY_TOKENS

IMAGES, SOUNDS = 32, 16


@pytest.fixture(scope="module")
def shipped() -> CoDi2Model:
    return load_model("tiny")


@contextmanager
def counting_lm_calls(model: CoDi2Model) -> Iterator[list[int]]:
    """The number of LM forward passes made inside the block, in calls[0]."""
    calls = [0]
    forward = model.lm.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    model.lm.forward = counted
    try:
        yield calls
    finally:
        del model.lm.forward  # the class's forward again


def question(media: Media, shipped: CoDi2Model) -> list[str | Media]:
    return [media, shipped.vocabulary.prompt(f"caption_{media.modality.value}")]


def an_edit_of(attrs: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """`attrs` with one attribute changed: what the source of an edit to `attrs` looked like."""
    name = list(attrs)[int(rng.integers(len(attrs)))]
    others = [v for v in world.ATTRIBUTES[world.modality_of(attrs)][name] if v != attrs[name]]
    return world.edit(attrs, name, others[int(rng.integers(len(others)))])


def session_cases() -> list[tuple[Media, list[str], bool]]:
    """World renders (held-out combinations included), the drafts a session would pass with them, and
    whether those hold the model's own words: an edit's source caption is the model's caption of the
    source (the world's first phrasing), a request is phrased as people do."""
    rng = np.random.default_rng(7)
    cases = []
    for modality, n in (("image", IMAGES), ("audio", SOUNDS)):
        for i in range(n):
            attrs = world.random_attrs(modality, rng, "all")
            media = world.render(attrs, world.render_seed(rng))
            if i % 2:
                source = world.caption(an_edit_of(attrs, rng))
                cases.append((media, [source, "make it so", "Here you go."], True))
            else:
                cases.append((media, [f"draw {world.caption(attrs, rng)}", "Here you go."], False))
    return cases


# --- the shipped model: captions as a session asks for them ------------------------------------------
def test_captions_with_session_drafts_equal_plain_greedy_in_fewer_calls(shipped: CoDi2Model) -> None:
    plain_calls = draft_calls = 0
    for media, drafts, own_words in session_cases():
        prompt = question(media, shipped)
        with counting_lm_calls(shipped) as calls:
            plain = shipped.generate(prompt, output="text", max_new_tokens=24)
        with counting_lm_calls(shipped) as drafted_calls:
            drafted = shipped.generate(prompt, output="text", max_new_tokens=24, draft_texts=drafts)
        assert drafted.text == plain.text, (drafts, plain.text)
        assert len(plain.text.split()) >= 3  # a real caption, not an empty answer that proves nothing
        assert drafted_calls[0] <= calls[0]
        if own_words:
            plain_calls, draft_calls = plain_calls + calls[0], draft_calls + drafted_calls[0]
    # One call per token without drafts; an edit's caption, one word away from its source's, in two or
    # three (8.1 -> 2.6 calls a caption over two 24-turn bench sessions).
    assert draft_calls < plain_calls / 2, (draft_calls, plain_calls)


def test_misleading_drafts_change_nothing(shipped: CoDi2Model) -> None:
    """Wrong words, markers and placeholders typed as text, empty and overlong texts, a budget shorter
    than the draft: the answer is still the greedy one."""
    media = world.render({"shape": "star", "colour": "red", "size": "small", "scene": "snow"}, 3)
    misleading = [
        ["a large blue circle in the forest"],
        ["<boi> <image> <image_gen> a small <boa> red star </s> in the snow"],
        ["", "   ", "snow snow snow snow " * 20],
        ["a small red star in the snow in the snow in the snow"],
    ]
    for budget in (24, 3, 1):
        plain = shipped.generate(question(media, shipped), output="text", max_new_tokens=budget).text
        for drafts in misleading:
            got = shipped.generate(
                question(media, shipped), output="text", max_new_tokens=budget, draft_texts=drafts
            )
            assert got.text == plain, (budget, drafts)


@pytest.mark.parametrize("output", ["auto", "image"])
def test_drafted_reply_then_medium_equals_plain(shipped: CoDi2Model, output: str) -> None:
    """A reply before a forced or chosen marker: same text, and the medium decoded from a cache that
    holds exactly the prompt and the reply (rejected draft tokens were dropped from it)."""
    prompt = ["draw a small red star in the snow"]
    kwargs = {"output": output, "seed": 4, "num_inference_steps": 2, "return_media_features": True}
    plain = shipped.generate(prompt, **kwargs)
    for drafts in (["Here you go."], ["Here you are, a star."], [plain.text]):
        got = shipped.generate(prompt, **kwargs, draft_texts=drafts)
        assert got.text == plain.text
        assert got.modality is plain.modality
        if plain.features is not None:
            assert got.features is not None
            torch.testing.assert_close(got.features, plain.features, atol=1e-4, rtol=0)


# --- random weights: long answers, up to the budget ---------------------------------------------------
def test_random_model_answers_with_drafts_equal_plain(tiny_model: CoDi2Model) -> None:
    """Seeded random weights answer with budget-long token salad: its own answer as the draft is
    accepted whole, and a draft with words changed is repaired in place."""
    rng = np.random.default_rng(0)
    for i, words in enumerate(["draw a red star", "what is in this image?"]):
        for output in ("text", "audio"):
            plain = tiny_model.generate([words], output=output, max_new_tokens=20, num_inference_steps=1)
            tokens = plain.text.split()
            changed = [t if rng.random() < 0.7 else "blue" for t in tokens]
            for drafts in ([plain.text], [" ".join(changed)], [" ".join(tokens[3:])]):
                with counting_lm_calls(tiny_model) as calls:
                    got = tiny_model.generate(
                        [words], output=output, max_new_tokens=20, num_inference_steps=1, draft_texts=drafts
                    )
                assert got.text == plain.text, (i, output, drafts)
            assert calls[0] < MAX_REPLY_TOKENS  # bounded by the budget, whatever the drafts


# --- TextDrafts ----------------------------------------------------------------------------------
def ids(shipped: CoDi2Model, text: str) -> list[int]:
    return list(shipped.tokenizer(text, add_special_tokens=False).input_ids)


def proposed(shipped: CoDi2Model, texts: Sequence[str], so_far: str, limit: int = 16) -> str:
    drafts = TextDrafts.from_texts(shipped.tokenizer, texts)
    return str(shipped.tokenizer.decode(drafts.propose(ids(shipped, so_far) if so_far else [], limit)))


def test_proposals_copy_substitute_and_start(shipped: CoDi2Model) -> None:
    texts = ["a small red star in the snow", "draw a large blue circle on a sunny day"]
    assert proposed(shipped, texts, "") == " a small red star in the snow</s>"  # 1. the first text
    assert proposed(shipped, texts, " a small red") == " star in the snow</s>"  # 2. a copy
    assert proposed(shipped, texts, " a small blue") == " star in the snow</s>"  # a substituted word
    assert proposed(shipped, texts, " a large blue") == " circle on a sunny day</s>"  # another text's
    assert proposed(shipped, texts, " a small red star on") == " the snow</s>"  # 3 words before: first
    assert proposed(shipped, texts, "a large") == " blue circle on a sunny day</s>"  # "a" matches " a"
    assert proposed(shipped, texts, " a small red", limit=2) == " star in"
    assert proposed(shipped, texts, " nothing like it") == ""
    assert proposed(shipped, [], " a small") == ""


def test_special_tokens_are_never_proposed(shipped: CoDi2Model) -> None:
    drafts = TextDrafts.from_texts(shipped.tokenizer, ["a <boi> small <image> red </s> star <audio_gen>"])
    special = set(shipped.tokenizer.all_special_ids) - {shipped.tokenizer.eos_token_id}
    for so_far in ("", " a", " small", " red", " star"):
        got = drafts.propose(ids(shipped, so_far) if so_far else [], MAX_DRAFT_TOKENS)
        assert not special & set(got), so_far


# --- the backend: what a caption is drafted from --------------------------------------------------
def _ref(caption: str | None) -> MediaRef:
    return MediaRef(
        id="0" * 64, uri="artifact://" + "0" * 64, modality="image", mime="image/png", caption=caption
    )


def test_caption_drafts_are_the_sources_captions_then_the_words() -> None:
    request = GenerateRequest(
        prompt=(
            PromptTurn(role="user", parts=("here is an example:", _ref("a red star"), "becomes", _ref(None))),
            PromptTurn(role="user", parts=("do the same to this:", _ref("a blue circle"))),
        ),
        output="image",
    )
    assert _caption_drafts(request, "the same edit.") == [
        "a blue circle",
        "a red star",
        "do the same to this:",
        "becomes",
        "here is an example:",
        "the same edit.",
    ]


def test_backend_captions_equal_undrafted_captions(shipped: CoDi2Model, tmp_path) -> None:
    """Through `LocalBackend`, as the session graph asks: the stored output's caption is the one
    plain greedy decoding reads back from it."""
    backend = LocalBackend(shipped, ArtifactStore(tmp_path / "artifacts"))
    source = backend.artifacts.put(
        world.render({"shape": "star", "colour": "red", "size": "small", "scene": "snow"}, 1)
    )
    source = source.model_copy(update={"caption": "a small red star in the snow"})
    for seed, words in enumerate(["make it blue", "make it big", "put it in the forest"]):
        request = GenerateRequest(
            prompt=(PromptTurn(role="user", parts=(source, words)),),
            output="image",
            seed=seed,
            num_inference_steps=4,
            caption_outputs=True,
        )
        result = backend.generate(request)
        produced = backend.artifacts.get(result.media[0])
        assert result.media[0].caption == backend._caption(produced)
        assert result.media[0].caption is not None
