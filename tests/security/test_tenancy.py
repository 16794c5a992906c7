"""Tenants never reach each other's threads or media: through Session, content blocks, text
references, the toolkit, and the artifact store itself (property-based over random names)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langchain_core.tools import ToolException

from codi2_agent import Media, Session
from codi2_agent.artifacts import ArtifactNotFoundError, ArtifactStore, check_name
from codi2_agent.graphs import split_thread_key, thread_key
from codi2_agent.tools import CoDi2Toolkit

from .conftest import STEPS


def _picture(value: int) -> Media:
    arr = np.full((32, 32, 3), value, np.uint8)
    arr[4:12, 4:12] = (255 - value, 30, 200)
    return Media.from_image(arr)


@pytest.fixture
def pair(tiny_model: Any, tmp_path: Path) -> Iterator[tuple[Session, Session]]:
    """alice and bob in one session folder, each on a thread called "private"."""
    alice = Session(tiny_model, thread="private", tenant="alice", root=tmp_path, num_inference_steps=STEPS)
    bob = alice.open_thread("private", tenant="bob")
    yield alice, bob
    alice.close()


def test_a_thread_name_is_per_tenant(tiny_model: Any, tmp_path: Path) -> None:
    alice = Session(tiny_model, thread="private", tenant="alice", root=tmp_path, num_inference_steps=STEPS)
    mine = alice.say("draw a small red star in the snow")
    alice.close()

    bob = Session(tiny_model, thread="private", tenant="bob", root=tmp_path, num_inference_steps=STEPS)
    try:
        assert bob.history() == [] and bob.turn == 0  # alice's turns are not bob's
        bob.say("draw a large blue circle at night")
        assert bob.threads() == ["private"] and [t.turn for t in bob.history()] == [1]
    finally:
        bob.close()
    alice = Session(tiny_model, thread="private", tenant="alice", root=tmp_path, num_inference_steps=STEPS)
    try:
        assert [t.refs for t in alice.history()] == [mine.refs]  # nothing appended to alice's thread
    finally:
        alice.close()


def test_another_tenants_media_cannot_be_used(pair: tuple[Session, Session]) -> None:
    alice, bob = pair
    secret = alice.say("draw a small red star in the snow").refs[0]

    # As media given to say(): the same error as for an id that was never stored.
    with pytest.raises(ArtifactNotFoundError, match="no artifact"):
        bob.say("describe this", secret)
    # As content blocks: an artifact:// url or a file id.
    for block in (
        {"type": "image", "url": secret.uri},
        {"type": "image", "file_id": secret.id},
    ):
        answer = bob.run(HumanMessage(content=[{"type": "text", "text": "describe this"}, block]))
        assert answer.clarification and "no artifact" in answer.text and not answer.refs
    # As words: an @m: id of alice's medium is unknown to bob.
    answer = bob.say(f"describe @m:{secret.short_id}")
    assert answer.clarification and "can't find" in answer.text
    # Nothing bob did stored or described alice's picture for bob.
    assert secret.id not in set(bob.artifacts.ids())
    assert all(r.id != secret.id for r in bob.media_log())


def test_sharing_is_explicit(pair: tuple[Session, Session]) -> None:
    alice, bob = pair
    made = alice.say("draw a small red star in the snow").refs[0]
    alice.artifacts.share(made, "bob")
    answer = bob.say("describe this", made)
    assert not answer.clarification and answer.task == "describe"
    with pytest.raises(ArtifactNotFoundError):  # bob cannot pass on what he does not hold
        bob.artifacts.share(alice.artifacts.put(_picture(7)), "carol")


def test_toolkit_threads_are_per_tenant(tiny_model: Any, tmp_path: Path) -> None:
    alice = CoDi2Toolkit(tiny_model, root=tmp_path, tenant="alice", num_inference_steps=STEPS)
    generate = {t.name: t for t in alice.get_tools()}["codi2_generate"]
    generate.invoke({"prompt": "a small red star in the snow"})
    alice.close()

    bob = CoDi2Toolkit(tiny_model, root=tmp_path, tenant="bob", num_inference_steps=STEPS)
    try:
        describe = {t.name: t for t in bob.get_tools()}["codi2_describe"]
        with pytest.raises(ToolException, match="no images so far"):
            describe._run(media="the last image")  # the default thread "agent" is bob's own
    finally:
        bob.close()


names = st.text(min_size=1, max_size=12).filter(lambda s: not any(ord(c) < 32 or ord(c) == 127 for c in s))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=names, b=names, thread_a=names, thread_b=names, seed=st.integers(0, 200))
def test_keys_and_stores_never_cross_tenants(
    tmp_path: Path, a: str, b: str, thread_a: str, thread_b: str, seed: int
) -> None:
    # Keys: injective in (tenant, thread), and reversible.
    if (a, thread_a) != (b, thread_b):
        assert thread_key(a, thread_a) != thread_key(b, thread_b)
    assert split_thread_key(thread_key(a, thread_a)) == (a, thread_a)
    if a == b:
        return
    store = ArtifactStore(tempfile.mkdtemp(dir=tmp_path))  # a fresh store per example
    ref = store.for_tenant(a).put(_picture(seed))
    other = store.for_tenant(b)
    assert ref not in other and ref.id not in set(other.ids())
    for attempt in (ref, ref.id, ref.uri):
        with pytest.raises(ArtifactNotFoundError):
            other.get(attempt)
        with pytest.raises(ArtifactNotFoundError):
            other.ref(attempt)
    with pytest.raises(ArtifactNotFoundError):
        other.delete(ref)
    assert store.for_tenant(a).get(ref) == _picture(seed)  # untouched


@pytest.mark.parametrize("bad", ["", "a\x00b", "line\nbreak", "x" * 300, 7])
def test_bad_names_are_refused(tiny_model: Any, tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="name"):
        check_name(bad)
    with pytest.raises(ValueError, match="name"):
        Session(tiny_model, thread=bad, root=tmp_path)
    with pytest.raises(ValueError, match="name"):
        Session(tiny_model, tenant=bad, root=tmp_path)
