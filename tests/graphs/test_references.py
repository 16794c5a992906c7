"""Reference resolution and request reading: pure functions over a thread's media log.

One group of tests per kind of reference people use (pronouns, positions, turns, descriptions,
ellipsis, explicit ids, several sources, edits), then the questions back, then intent (chat and
out-of-vocabulary), all against small hand-made logs.
"""

from __future__ import annotations

import re

import pytest

from codi2_agent.data.phrasing import tiny_vocabulary
from codi2_agent.graphs import MediaRecord, resolve
from codi2_agent.graphs._intent import Lexicon, read_request
from codi2_agent.graphs._language import find_mentions
from codi2_agent.graphs._words import clean_instruction, tokenize
from codi2_agent.media import MediaRef, Modality
from codi2_agent.model.vocabulary import Vocabulary

TINY = Vocabulary.from_dict(tiny_vocabulary())


def _ref(n: int, modality: str = "image", caption: str | None = None) -> MediaRef:
    artifact = f"{n:02x}" * 32
    mime = "image/png" if modality == "image" else "audio/wav"
    return MediaRef(
        id=artifact, uri="artifact://" + artifact, modality=Modality(modality), mime=mime, caption=caption
    )


def _rec(n: int, turn: int, role: str = "output", modality: str = "image", caption: str | None = None,
         parents: tuple[str, ...] = (), subject: str | None = None,
         instruction: str | None = None) -> MediaRecord:  # fmt: skip
    ref = _ref(n, modality, caption)
    return MediaRecord(
        ref=ref,
        role=role,
        turn=turn,
        parents=parents,
        subject=subject or ref.short_id,
        instruction=instruction,
    )


@pytest.fixture
def log() -> list[MediaRecord]:
    """turn 1: a star is drawn; 2: a cat photo comes in and is made green; 3: a sound; 4: the star, blue."""
    star = _rec(1, 1, caption="a small red star in the snow")
    cat = _rec(2, 2, role="input", caption="a grey cat on a sofa")
    green_cat = _rec(3, 2, parents=(cat.id,), subject=cat.subject)  # an edit output without a caption
    tone = _rec(4, 3, modality="audio", caption="a high sine tone with wind")
    blue_star = _rec(5, 4, parents=(star.id,), subject=star.subject, instruction="make it blue")
    return [star, cat, green_cat, tone, blue_star]


@pytest.fixture
def chain() -> list[MediaRecord]:
    """One star edited three times, then a sound, then a second subject (a circle)."""
    a = _rec(1, 1, caption="a small red star in the snow")
    b = _rec(2, 2, caption="a small blue star in the snow", parents=(a.id,), subject=a.subject)
    c = _rec(3, 3, caption="a large blue star in the snow", parents=(b.id,), subject=a.subject)
    d = _rec(4, 4, caption="a large blue star in the desert", parents=(c.id,), subject=a.subject)
    tone = _rec(5, 5, modality="audio", caption="a low sine tone with rain")
    higher = _rec(6, 6, modality="audio", caption="a high sine tone with rain", parents=(tone.id,),
                  subject=tone.subject)  # fmt: skip
    circle = _rec(7, 7, caption="a large green circle at night")
    return [a, b, c, d, tone, higher, circle]


def _ids(records: list[MediaRecord] | tuple[MediaRecord, ...]) -> list[int]:
    return [int(r.id[:2], 16) for r in records]


def _resolved(text: str, log: list[MediaRecord], **kw: object) -> list[int]:
    res = resolve(text, attached=[], log=log, **kw)  # type: ignore[arg-type]
    assert res.clarification is None, res.clarification
    assert res.intent == "media"
    return _ids(res.sources)


# --- the log the original rules knew ---------------------------------------------------------------
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
    assert _resolved(text, log) == expected


# --- pronouns and demonstratives -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected", "task"),
    [
        ("make it blue", [7], "edit"),
        ("could you put that in the snow?", [7], "edit"),
        ("this one is nice, now make it small", [7], "edit"),
        ("what is this?", [7], "describe"),
        ("raise its pitch", [6], "edit"),  # the words lean to sound: the newest sound
        ("make it quieter", [6], "edit"),
        ("play it lower", [6], "edit"),
    ],
)
def test_pronouns_take_the_medium_at_hand(
    chain: list[MediaRecord], text: str, expected: list[int], task: str
) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.clarification is None and _ids(res.sources) == expected and res.task == task


def test_attached_media_are_what_this_and_it_mean(chain: list[MediaRecord]) -> None:
    photo = _rec(9, 8, role="input", caption="a ginger cat on a mat")
    res = resolve("make this blue", attached=[photo], log=chain)
    assert _ids(res.sources) == [9] and res.task == "edit"


# --- ordinals and positions ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("go back to the first picture and make it yellow", [1]),
        ("take the very first one and make it large", [1]),
        ("use the original star and make it green", [1]),
        ("make the second picture red", [2]),
        ("the previous one, in the snow", [4]),  # the picture before the newest picture
        ("the one before that, make it orange", [4]),
        ("the one before the last one, make it small", [4]),
        ("the penultimate picture, make it green", [4]),
        ("the second-to-last picture, in the rain please", [4]),
        ("the first sound, but higher", [5]),
        ("the previous sound, with wind", [5]),
        ("make the last star small", [4]),
    ],
)
def test_positions(chain: list[MediaRecord], text: str, expected: list[int]) -> None:
    assert _resolved(text, chain, vocabulary=TINY) == expected


def test_one_step_back_is_the_version_before_the_current_one(chain: list[MediaRecord]) -> None:
    assert _resolved("go back one step and make it red", chain[:4]) == [3]
    assert _resolved("go back to the version before this one", chain[:4]) == [3]
    res = resolve("go back one step and make it red", attached=[], log=chain)
    assert res.clarification is not None and "1 version" in res.clarification.question  # the new circle


def test_very_first_spans_every_kind_and_original_follows_the_subject(chain: list[MediaRecord]) -> None:
    assert _resolved("the original, but in the forest", chain[:4]) == [1]  # the current subject's first
    assert _resolved("the original, but in the forest", chain) == [7]  # the circle is its own original
    sounds_first = [chain[4], *chain[:4]]
    assert _resolved("describe the very first one", sounds_first) == [5]
    assert _resolved("describe the original sound", chain) == [5]
    assert _resolved("describe the first version of the star", chain) == [1]
    assert _resolved("describe the previous version", chain[:4]) == [3]


# --- recency and turns -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the picture from turn 3, put it at night", [3]),
        ("go back to turn 2 and make it small", [2]),
        ("what did you draw in turn 1?", [1]),
        ("the star from four turns ago, make it red", [4]),  # now is turn 8
        ("describe what you made last turn", [7]),
        ("the earlier sound, add wind", [5]),  # of two: the older
        ("make the later sound lower", [6]),
        ("the star you drew earlier, make it green", [3]),  # the one before the newest star
        ("make the most recent picture yellow", [7]),
        ("the circle from earlier, make it red", [7]),  # the only circle
        ("the star from two turns ago, make it red", [4]),  # turn 6 made a sound: the star as it was
        ("take the star from three turns ago and make it small", [4]),
    ],
)
def test_recency_and_turns(chain: list[MediaRecord], text: str, expected: list[int]) -> None:
    assert _resolved(text, chain, vocabulary=TINY) == expected


def test_a_turn_without_that_kind_of_medium_asks(chain: list[MediaRecord]) -> None:
    res = resolve("describe the sound from the last turn", attached=[], log=chain)
    assert res.clarification is not None and "Turn 7 has no sound" in res.clarification.question


def test_a_subject_that_did_not_exist_yet_at_that_turn_asks(chain: list[MediaRecord]) -> None:
    res = resolve("make the circle from turn 2 blue", attached=[], log=chain, vocabulary=TINY)
    assert res.clarification is not None and "Turn 2 has no circle" in res.clarification.question


# --- descriptions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("make the red star green", [1]),
        ("the small blue star, put it at night", [2]),
        ("describe the large blue star", [4]),  # two large blue stars of one subject: the newest
        ("the one in the snow, make it yellow", [3]),
        ("the star in the desert, make it red", [4]),
        ("describe the sound with rain", [6]),
        ("the low tone, make it higher", [5]),
        ("what's in the snowy one?", [3]),  # "snowy" finds "snow"
        ("make the circle at night blue", [7]),
    ],
)
def test_descriptions_match_captions(chain: list[MediaRecord], text: str, expected: list[int]) -> None:
    assert _resolved(text, chain, vocabulary=TINY) == expected


def test_a_medium_without_a_caption_is_described_by_its_source_and_its_edit(log: list[MediaRecord]) -> None:
    assert _resolved("make the blue star small", log) == [5]  # "make it blue" made it blue
    assert _resolved("make the red star small", log) == [1]  # and the red one is the original


def test_open_vocabulary_descriptions_use_caption_words_then_similarity() -> None:
    bike = _rec(1, 1, role="input", caption="a red bicycle leaning on a wall")
    waves = _rec(2, 2, role="input", modality="audio", caption="waves crashing on a beach")
    assert _resolved("make the bicycle blue", [bike, waves]) == [1]
    assert _resolved("combine the bicycle photo with the beach sound", [bike, waves]) == [1, 2]
    res = resolve("make the bike blue", attached=[], log=[bike, waves])
    assert res.clarification is not None and "can't find the bike" in res.clarification.question
    asked: list[str] = []

    def similar(text: str) -> list[str]:
        asked.append(text)
        return ["ff" * 32, bike.id]  # memory may know media outside this log: those are skipped

    assert _resolved("make the bike blue", [bike, waves], similar=similar) == [1]
    assert asked == ["bike"]


# --- ellipsis: only the change is named ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected", "instruction"),
    [
        ("blue instead", [7], "make it blue"),
        ("and now bigger", [7], "make it bigger"),
        ("in the snow this time", [7], "put it in the snow"),
        ("what about purple?", [7], "make it purple"),
        ("a star this time", [7], "make it a star"),
        ("higher", [6], "make it higher"),  # a word about sound: the newest sound
        ("with wind instead", [6], "put it with wind"),
        ("an octave lower", [6], "make it an octave lower"),
        ("same, but orange", [7], "make it orange"),
    ],
)
def test_ellipsis_edits_the_current_subject(
    chain: list[MediaRecord], text: str, expected: list[int], instruction: str
) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.clarification is None and res.task == "edit"
    assert _ids(res.sources) == expected and res.instruction == instruction


def test_ellipsis_without_a_medium_of_its_kind_asks() -> None:
    tone = _rec(1, 1, modality="audio", caption="a low sine tone with crickets")
    res = resolve("blue instead", attached=[], log=[tone], vocabulary=TINY)
    assert res.clarification is not None and "no image" in res.clarification.question


# --- explicit ids and several sources --------------------------------------------------------------
def test_explicit_ids(chain: list[MediaRecord]) -> None:
    assert _resolved("make @m:020202020202 green", chain) == [2]
    assert _resolved(f"describe artifact://{'03' * 32}", chain) == [3]
    assert _resolved("the picture @m:040404040404, put it at night", chain) == [4]  # one medium, not two


@pytest.mark.parametrize(
    ("text", "expected", "task"),
    [
        ("combine the first picture with the last sound", [1, 6], "compose"),
        ("put the circle in the ambience of the first sound", [7, 5], "compose"),
        ("use the sound with rain as the background for the picture", [6, 7], "compose"),
        ("what changed between the first and the last picture?", [1, 7], "describe"),
        ("compare the first star to the last one", [1, 4], "describe"),
        ("what's the difference between the red star and the large one?", [1, 4], "describe"),
        (
            "compare the small blue star with the green circle",
            [2, 7],
            "describe",
        ),  # not "a star with a circle"
    ],
)
def test_several_sources(chain: list[MediaRecord], text: str, expected: list[int], task: str) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.clarification is None and res.task == task and _ids(res.sources) == expected


def test_what_changed_with_one_or_no_source_compares_with_the_chain(chain: list[MediaRecord]) -> None:
    assert _resolved("what changed?", chain[:4]) == [3, 4]  # the newest against its source
    assert _resolved("what changed in the second picture since then?", chain[:4]) == [2, 4]
    assert _resolved("what changed from the original to now?", chain[:4]) == [1, 4]


# --- references to edits ---------------------------------------------------------------------------
def test_the_edit_you_made_to_the_cat_is_an_example_pair(log: list[MediaRecord]) -> None:
    res = resolve("do the edit you made to the cat to the first picture", attached=[], log=log)
    assert res.clarification is None
    assert res.task == "analogy"
    assert _ids(list(res.example)) == [2, 3]  # cat -> green cat
    assert _ids(res.sources) == [1]


@pytest.mark.parametrize(
    ("text", "example", "target"),
    [
        ("do what you did to the star to the circle", [3, 4], [7]),
        ("do to the circle what you did to the red star", [1, 2], [7]),  # the edit applied to it
        ("give the circle the same treatment as the star", [3, 4], [7]),
        ("do the same to the circle", [3, 4], [7]),  # the newest image edit
        ("same for the circle", [3, 4], [7]),
        ("apply that change to the circle too", [3, 4], [7]),
        ("repeat the last sound edit on the first sound", [5, 6], [5]),
        ("the same edit, but on the small blue star", [3, 4], [2]),
    ],
)
def test_references_to_edits(
    chain: list[MediaRecord], text: str, example: list[int], target: list[int]
) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.clarification is None and res.task == "analogy"
    assert _ids(res.example) == example and _ids(res.sources) == target


def test_do_it_again_repeats_the_last_edit_on_its_own_result(chain: list[MediaRecord]) -> None:
    res = resolve("do it again", attached=[], log=chain[:4])
    assert res.task == "analogy" and _ids(res.example) == [3, 4] and _ids(res.sources) == [4]
    res = resolve("once more", attached=[], log=chain[:4])
    assert _ids(res.example) == [3, 4] and _ids(res.sources) == [4]


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


# --- questions back --------------------------------------------------------------------------------
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


def test_an_ambiguous_description_names_every_candidate() -> None:
    red = _rec(1, 1, caption="a small red star in the snow")
    blue = _rec(2, 2, caption="a large blue star at night")
    res = resolve("make the star green", attached=[], log=[red, blue])
    assert res.clarification is not None
    assert {c.id for c in res.clarification.candidates} == {red.id, blue.id}
    question = res.clarification.question
    assert "@m:" + red.ref.short_id in question and "a large blue star at night" in question
    # One subject in several versions is not ambiguous: its newest version is meant.
    bluer = _rec(3, 3, caption="a small blue star in the snow", parents=(red.id,), subject=red.subject)
    assert _resolved("make the small star green", [red, blue, bluer]) == [3]


def test_two_media_made_in_the_newest_turn_make_it_ambiguous() -> None:
    a = _rec(1, 1, caption="a small red star in the snow")
    b, c = _rec(2, 2, caption="a large green circle at night"), _rec(3, 2, caption="a large green square")
    res = resolve("make it blue", attached=[], log=[a, b, c])
    assert res.clarification is not None and _ids(list(_as_records(res.clarification.candidates))) == [2, 3]
    tone = _rec(4, 2, modality="audio", caption="a middle sine tone with rain")
    assert _resolved("make it louder", [a, b, tone]) == [4]  # the words say which


def _as_records(refs: tuple[MediaRef, ...]) -> list[MediaRecord]:
    return [MediaRecord(ref=r, role="output", turn=1) for r in refs]


def test_the_other_one(chain: list[MediaRecord]) -> None:
    two = [chain[0], chain[6]]
    assert _resolved("describe the other picture", two) == [1]
    res = resolve("describe the other picture", attached=[], log=[chain[0], chain[3], chain[6]])
    assert res.clarification is not None and len(res.clarification.candidates) == 2


def test_it_without_any_media_asks_back() -> None:
    res = resolve("make it blue", attached=[], log=[])
    assert res.clarification is not None and "no image" in res.clarification.question
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


# --- intent: conversation, vocabulary, what is asked -----------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "hello, how are you?",
        "thanks!",
        "that looks great",
        "good night!",
        "what can you do?",
        "ok cool",
        "great, that's exactly what I wanted",
    ],
)
def test_conversation_gets_a_text_answer_and_no_media(log: list[MediaRecord], text: str) -> None:
    res = resolve(text, attached=[], log=log, vocabulary=TINY)
    assert res.intent == "chat" and not res.makes_media and res.answer
    assert res.sources == [] and res.output == "text"


def test_capabilities_come_from_the_models_vocabulary() -> None:
    answer = resolve("what can you make?", attached=[], log=[], vocabulary=TINY).answer
    assert answer is not None
    for word in ("circle", "triangle", "purple", "desert", "pluck", "cicadas", "880"):
        assert word in answer
    other = Vocabulary(attributes={"image": {"animal": ("dog", "cat")}})
    answer = resolve("what can you make?", attached=[], log=[], vocabulary=other).answer
    assert answer is not None and "dog" in answer and "circle" not in answer
    assert "from a description" in (resolve("hi", attached=[], log=[]).answer or "")


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("draw a dog", ["dog"]),
        ("can you paint a horse in the snow?", ["horse"]),
        ("draw a pink star", ["pink"]),
        ("play a violin melody", ["violin"]),
        ("show me a picture of the eiffel tower", ["eiffel", "tower"]),
        ("make it pink", ["pink"]),
        ("turn the star into a heart", ["heart"]),
        ("replace the star with a moon", ["moon"]),
    ],
)
def test_out_of_vocabulary_requests_get_an_honest_answer(
    chain: list[MediaRecord], text: str, unknown: list[str]
) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.intent == "out_of_vocabulary" and not res.makes_media
    assert res.answer is not None
    for word in unknown:
        assert f"'{word}'" in res.answer
    assert "circle" in res.answer  # and what it can make instead


def test_colour_answers_list_the_colours_the_model_knows(chain: list[MediaRecord]) -> None:
    answer = resolve("make it pink", attached=[], log=chain, vocabulary=TINY).answer
    assert answer is not None and "colours it knows: red, green, blue, yellow, purple, orange" in answer


@pytest.mark.parametrize(
    "text",
    [
        "draw a small red star in the snow",
        "play a low plucked tone with rain",
        "give me a high sine tone",
        "make it a square",
        "put that on a saw wave",
        "an octave higher",
        "draw something",
        "new picture please: a cross in the rain",
        "on a sunny day instead",  # a place: its words are not checked as things to make
    ],
)
def test_known_words_are_not_out_of_vocabulary(chain: list[MediaRecord], text: str) -> None:
    res = resolve(text, attached=[], log=chain, vocabulary=TINY)
    assert res.intent == "media" and res.clarification is None, res.answer


def test_an_open_vocabulary_is_never_out_of_vocabulary() -> None:
    for text in ("draw a dog", "make it pink", "paint a sunset over the ocean"):
        res = resolve(text, attached=[], log=[_rec(1, 1, caption="a cat")])
        assert res.intent == "media", text


@pytest.mark.parametrize(
    ("text", "task", "output"),
    [
        ("draw a small red star in the snow", "generate", "image"),
        ("play a high sine tone with wind", "generate", "audio"),
        ("let me hear rain", "generate", "audio"),
        ("a small blue square at night", "generate", "image"),
        ("describe this picture.", "describe", "text"),
        ("find the picture with the blue star", "recall", "text"),
        ("change the background to snow", "edit", "auto"),
        ("do the same to the circle", "analogy", "auto"),
        ("blue instead", "edit", "auto"),
        ("a little yellow circle in the rain please", "generate", "image"),  # "a little" is no amount here
        ("a bit smaller", "edit", "auto"),
    ],
)
def test_read_request(text: str, task: str, output: str) -> None:
    reading = read_request(text, find_mentions(text), lexicon=Lexicon(TINY))
    assert (reading.task, reading.output) == (task, output)


def test_generation_requests_look_nothing_up(chain: list[MediaRecord]) -> None:
    res = resolve("now draw a green triangle at night", attached=[], log=chain, vocabulary=TINY)
    assert res.task == "generate" and res.sources == [] and res.clarification is None


def test_a_long_log_stays_cheap() -> None:
    """2,000 media, captionless edits included (no recursion along a long chain)."""
    records = [_rec(1, 1, caption="a small red star in the snow")]
    for i in range(1, 2000):
        parent = records[-1]
        ref = MediaRef(id=f"{i:064x}", uri=f"artifact://{i:064x}", modality=Modality.IMAGE, mime="image/png")
        records.append(MediaRecord(ref=ref, role="output", turn=i + 1, parents=(parent.id,),
                                   subject=records[0].subject, instruction="make it bigger"))  # fmt: skip
    assert _resolved("make the red star blue", records) == [int(records[-1].id[:2], 16)]
    assert _resolved("go back to the very first picture", records) == [1]


def test_instruction_cleanup() -> None:
    text = "go back to the star from turn 3 and make it green"
    assert clean_instruction(text, find_mentions(text)) == "make it green"
    text = "make @m:ab12cd34 bigger"
    assert clean_instruction(text, find_mentions(text)) == "make it bigger"
    text = "the one before that, make it yellow"
    assert clean_instruction(text, find_mentions(text)) == "make it yellow"


def test_tokens_expand_contractions_and_keep_spans() -> None:
    tokens = tokenize("What's in the triangle's picture?")
    assert [t.word for t in tokens][:3] == ["what", "is", "in"]
    possessive = next(t for t in tokens if t.possessive)
    assert possessive.word == "triangle"
    assert (
        re.sub(r"\W", "", "What's in the triangle's picture?"[possessive.start : possessive.end])
        == "triangles"
    )


def test_what_was_asked_for_finds_a_medium_the_model_got_wrong() -> None:
    """The user says "the cross" because they asked for one, even if the model drew a star."""
    wrong = _rec(
        1, 1, caption="a small red star in the snow", instruction="draw a small red cross in the snow"
    )
    circle = _rec(
        2, 2, caption="a large green circle at night", instruction="draw a large green circle at night"
    )
    bluer = _rec(3, 3, caption="a small blue star in the snow", parents=(wrong.id,), subject=wrong.subject,
                 instruction="make it blue")  # fmt: skip
    log = [wrong, circle, bluer]
    assert _resolved("make the cross yellow", log, vocabulary=TINY) == [3]  # the subject's newest version
    assert _resolved("the red cross, make it bigger", log, vocabulary=TINY) == [1]  # as asked, then edited
    assert _resolved("make the star bigger", log, vocabulary=TINY) == [3]  # captions still come first
