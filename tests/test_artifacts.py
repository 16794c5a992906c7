"""ArtifactStore: content addressing, atomic writes, and refusal of ids that leave the root."""

from __future__ import annotations

import os

import pytest
from samples import image, tone

from codi2_agent.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    CorruptArtifactError,
    InvalidArtifactIdError,
)
from codi2_agent.media import CorruptMediaError, Media, Modality


def test_put_get_round_trip_and_dedup(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = store.put(image(1), caption="noise", turn=2)
    assert (
        ref.modality is Modality.IMAGE
        and ref.mime == "image/png"
        and ref.caption == "noise"
        and ref.turn == 2
    )
    assert ref.id == image(1).sha256() and ref.uri == f"artifact://{ref.id}"
    assert store.get(ref) == image(1) and store.get(ref).caption == "noise"
    assert store.get(ref.uri) == image(1) and store.get(ref.id) == image(1)
    again = store.put(image(1))
    assert again.id == ref.id and list(store.ids()) == [ref.id]
    a = store.put(tone())
    assert store.get(a) == tone() and store.ref(a.id).modality is Modality.AUDIO
    t = store.put(Media.from_text("notes"))
    assert store.get(t).text == "notes"
    with store.open(ref) as f:
        assert f.read() == image(1).to_bytes()[0]
    assert sorted(store.ids()) == sorted([ref.id, a.id, t.id])


def test_put_bytes_validates_before_storing(tmp_path):
    store = ArtifactStore(tmp_path)
    data = image(4).to_bytes()[0]
    assert store.get(store.put_bytes(data)) == image(4)
    with pytest.raises(CorruptMediaError):
        store.put_bytes(data[:40])
    assert len(list(store.ids())) == 1


def test_ids_and_uris_that_would_leave_the_root_are_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    for bad in ("../../etc/passwd", "artifact://../x", "/etc/passwd", "A" * 64, "a" * 63, "a" * 64 + "/.."):
        with pytest.raises(InvalidArtifactIdError, match="not an artifact id"):
            store.get(bad)
    with pytest.raises(ArtifactNotFoundError, match="no artifact"):
        store.get("b" * 64)
    assert "b" * 64 not in store and "../x" not in store


def test_symlinked_shard_outside_the_root_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    artifact_id = image(5).sha256()
    os.symlink(outside, store.root / artifact_id[:2])
    with pytest.raises(InvalidArtifactIdError, match="outside"):
        store.put(image(5))
    assert list(outside.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    kept = store.put(image(6))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put(image(7))
    monkeypatch.undo()
    assert list(store.ids()) == [kept.id]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    assert store.get(kept) == image(6)


def test_get_checks_the_file_against_its_id(tmp_path):
    store = ArtifactStore(tmp_path, cache_size=0)
    ref = store.put(image(1))
    other = store.put(image(2))
    # Swap the bytes of one artifact for another's: same format, valid PNG, wrong content.
    store.path(ref).write_bytes(store.path(other).read_bytes())
    with pytest.raises(CorruptArtifactError, match=ref.id[:12]):
        store.get(ref)
    assert store.get(other) == image(2)  # the intact artifact still reads


def test_decoded_media_are_cached_and_bounded(tmp_path):
    store = ArtifactStore(tmp_path, cache_size=2)
    refs = [store.put(image(i)) for i in range(3)]
    store._cache.clear()
    assert store.get(refs[0]) == image(0) and store.reads == 1
    first = store.get(
        refs[0],
    )
    assert store.reads == 1 and first.content_id == refs[0].id  # served from the cache
    store.get(refs[1])
    store.get(refs[2])  # evicts refs[0], the least recently used
    store.get(refs[0])
    assert store.reads == 4
    # Captions are per reference, never written into the shared cached medium.
    assert store.get(refs[0].model_copy(update={"caption": "a"})).caption == "a"
    assert store.get(refs[0]).caption is None
    # A deleted artifact is gone even while it is cached.
    store.delete(refs[0])
    with pytest.raises(ArtifactNotFoundError):
        store.get(refs[0])
