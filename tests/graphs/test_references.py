"""Reference resolution and request reading: pure functions over a thread's media log."""

from __future__ import annotations

import pytest

from codi2_agent.graphs import MediaRecord, resolve
from codi2_agent.graphs._language import clean_instruction, find_mentions, infer_task
from codi2_agent.media import MediaRef, Modality


def _ref(n: int, modality: str = "image", caption: str | None = None) -> MediaRef:
    artifact = f"{n:02x}" * 32
    mime = "image/png" if modality == "image" else "audio/wav"
    return MediaRef(
        id=artifact, uri="artifact://" + artifact, modality=Modality(modality), mime=mime, caption=caption
    )


def _rec(n: int, turn: int, role: str = "output", modality: str = "image", caption: str | None = None,
         parents: tuple[str, ...] = (), subject: str | None = None) -> MediaRecord:  # fmt: skip
    ref = _ref(n, modality, caption)
    return MediaRecord(ref=ref, role=role, turn=turn, parents=parents, subject=subject or ref.short_id)


@pytest.fixture
def log() -> list[MediaRecord]:
    """turn 1: a star is drawn; 2: a cat photo comes in and is made green; 3: a sound; 4: the star, blue."""
    star = _rec(1, 1, caption="a small red star in the snow")
    cat = _rec(2, 2, role="input", caption="a grey cat on a sofa")
    green_cat = _rec(3, 2, parents=(cat.id,), subject=cat.subject)  # an edit output without a caption
    tone = _rec(4, 3, modality="audio", caption="a high sine tone with wind")
    blue_star = _rec(5, 4, parents=(star.id,), subject=star.subject)
    return [star, cat, green_cat, tone, blue_star]


def _ids(records: list[MediaRecord]) -> list[int]:
    return [int(r.id[:2], 16) for r in records]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("make it bigger", [5]),  # "it": the latest medium
        ("make the last image bigger", [5]),
        ("describe the first picture", [1]),
        ("what do you hear in the sound from turn 3?", [4]),
        ("make the star green", [5]),  # the star's edit chain: its latest version
        ("go back to the star from turn 1 and make it green", [1]),
        ("make the cat purple", [3]),  # "the cat" is the green cat now (its chain, no caption of its own)
        ("now the second picture, but large", [2]),
        ("make @m:030303030303 blue", [3]),
        ("lower the pitch of the latest sound", [4]),
    ],
)
def test_resolves_what_users_say(log: list[MediaRecord], text: str, expected: list[int]) -> None:
    res = resolve(text, attached=[], log=log)
    assert res.clarification is None, res.clarification
    assert _ids(res.sources) == expected


def test_the_edit_you_made_to_the_cat_is_an_example_pair(log: list[MediaRecord]) -> None:
    res = resolve("do the edit you made to the cat to the first picture", attached=[], log=log)
    assert res.clarification is None
    assert res.task == "analogy"
    assert _ids(list(res.example)) == [2, 3]  # cat -> green cat
    assert _ids(res.sources) == [1]


def test_do_the_same_uses_the_latest_edit_and_attached_media(log: list[MediaRecord]) -> None:
    circle = _rec(9, 5, role="input", caption="a large green circle at night")
    res = resolve("do the same to this one", attached=[circle], log=log)
    assert res.task == "analogy" and res.output == "image"
    assert _ids(list(res.example)) == [1, 5]  # the star edit, the most recent one
    assert _ids(res.sources) == [9]


def test_explicit_ids_outside_the_thread_come_from_memory(log: list[MediaRecord]) -> None:
    far = _rec(10, 7, caption="a square from another thread")
    asked: list[str] = []

    def lookup(token: str) -> MediaRecord | None:
        asked.append(token)
        return far if far.id.startswith(token) else None

    res = resolve("make @m:0a0a0a0a blue", attached=[], log=log, lookup=lookup)
    assert _ids(res.sources) == [10] and asked == ["0a0a0a0a"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("make @m:abcdef12 blue", "can't find '@m:abcdef12'"),
        ("what is in the picture from turn 9?", "Turn 9 has no image"),
        ("describe the third sound", "1 sound"),
        ("make the dragon blue", "can't find the dragon"),
        ("apply the edit you made to the moon to it", "haven't edited the moon"),
    ],
)
def test_unresolvable_references_get_a_question(log: list[MediaRecord], text: str, says: str) -> None:
    res = resolve(text, attached=[], log=log)
    assert res.clarification is not None
    assert says in res.clarification.question
    assert res.clarification.candidates  # the question lists what there is


def test_it_without_any_media_asks_back() -> None:
    res = resolve("make it blue", attached=[], log=[])
    assert res.clarification is not None and "no image or sound" in res.clarification.question
    res = resolve("do the same to the first picture", attached=[], log=[_rec(1, 1)])
    assert res.clarification is not None  # no edit to repeat


def test_an_ambiguous_prefix_asks_for_more_digits() -> None:
    a, b = _rec(1, 1), _rec(1, 2)
    b = b.model_copy(
        update={
            "ref": b.ref.model_copy(update={"id": "01" * 31 + "ff", "uri": "artifact://" + "01" * 31 + "ff"})
        }
    )
    res = resolve("make @m:010101 blue", attached=[], log=[a, b])
    assert res.clarification is not None and "more digits" in res.clarification.question


def test_structured_references_from_tools(log: list[MediaRecord]) -> None:
    res = resolve("make it purple", attached=[], log=log, task="edit", extra_sources=["the first picture"])
    assert _ids(res.sources) == [1]
    res = resolve(
        "x", attached=[], log=log, task="analogy", extra_sources=["@m:010101"], example=["@m:030303"]
    )
    assert res.clarification is None and _ids(list(res.example)) == [2, 3]
    res = resolve("x", attached=[], log=log, task="edit", extra_sources=["banana"])
    assert res.clarification is not None


@pytest.mark.parametrize(
    ("text", "task", "output"),
    [
        ("draw a small red star in the snow", "generate", "image"),
        ("play a high sine tone with wind", "generate", "audio"),
        ("describe this picture.", "describe", "text"),
        ("find the picture with the blue star", "recall", "text"),
        ("change the background to snow", "edit", "auto"),
        ("do the same to the circle", "analogy", "auto"),
    ],
)
def test_infer_task(text: str, task: str, output: str) -> None:
    assert infer_task(text, has_source=False) == (task, output)


def test_instruction_cleanup() -> None:
    text = "go back to the star from turn 3 and make it green"
    assert clean_instruction(text, find_mentions(text)) == "make it green"
    text = "make @m:ab12cd34 bigger"
    assert clean_instruction(text, find_mentions(text)) == "make it bigger"
