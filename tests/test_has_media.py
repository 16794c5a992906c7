"""`HasMedia`: `GenerationOutput` (the model's answer) and `TurnResult` (a session turn's answer)
pick their `.image` and `.audio` the same way: the first medium of that modality, None without one."""

from __future__ import annotations

import pytest
from samples import image, tone

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import HasMedia, Media
from codi2_agent.model import GenerationOutput
from codi2_agent.session import TurnResult

FIRST_IMAGE, SECOND_IMAGE = image(1), image(2)
LOW, HIGH = tone(220.0), tone(880.0)


@pytest.mark.parametrize(
    ("media", "want_image", "want_audio"),
    [
        ([], None, None),
        ([FIRST_IMAGE], FIRST_IMAGE, None),
        ([LOW], None, LOW),
        ([FIRST_IMAGE, LOW, SECOND_IMAGE, HIGH], FIRST_IMAGE, LOW),
        ([HIGH, SECOND_IMAGE, FIRST_IMAGE], SECOND_IMAGE, HIGH),
    ],
    ids=["none", "image-only", "audio-only", "image-first", "audio-first"],
)
def test_both_answers_pick_the_first_medium_of_each_modality(
    tmp_path, media: list[Media], want_image: Media | None, want_audio: Media | None
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    generated = GenerationOutput(text="here", media=list(media))
    turn = TurnResult(turn=1, text="here", refs=[store.put(m) for m in media], artifacts=store)
    for answer in (generated, turn):
        assert isinstance(answer, HasMedia)
        assert answer.image == want_image and answer.audio == want_audio  # Media == None is False
    # a turn's media come back decoded from the store, yet equal to what the model produced
    assert turn.image == generated.image and turn.audio == generated.audio


def test_a_turn_without_a_store_cannot_load_its_media(tmp_path) -> None:
    ref = ArtifactStore(tmp_path / "artifacts").put(FIRST_IMAGE)
    detached = TurnResult(turn=1, text="", refs=[ref])
    with pytest.raises(ValueError, match="no artifact store to load media from"):
        _ = detached.image
    with pytest.raises(ValueError, match="no artifact store to load media from"):
        _ = detached.audio
