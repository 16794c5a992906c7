"""ExemplarMemory against real Chroma, in both modes (embedded PersistentClient and `chroma run`)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from codi2_agent.artifacts import ArtifactNotFoundError
from codi2_agent.media import Media, MediaRef, Modality
from codi2_agent.memory import (
    SHARED_TENANT,
    AmbiguousReferenceError,
    EditPair,
    ExemplarMemory,
    ExemplarMemoryError,
    MemoryItem,
    NewItem,
    UnknownReferenceError,
    item_id,
)


@pytest.fixture
def session(memory: ExemplarMemory, store, shape_image):
    """Thread t1 of alice: a red circle, edited to blue, then to a blue square; plus an unrelated thread."""
    red = store.put(shape_image("red"), caption="a red circle", turn=1)
    blue = store.put(shape_image("blue"), caption="a blue circle", turn=1)
    square = store.put(shape_image("blue", square=True), caption="a blue square", turn=2)
    green = store.put(shape_image("green", square=True), caption="a green square", turn=1)
    items = {
        "red": memory.add("alice", "t1", red, role="input", subject="shape"),
        "blue": memory.add(
            "alice",
            "t1",
            blue,
            role="output",
            parents=[red],
            instruction="make it blue",
            task="edit",
            subject="shape",
        ),
        "square": memory.add(
            "alice",
            "t1",
            square,
            role="output",
            parents=[blue],
            instruction="make it a square",
            task="edit",
            subject="shape",
        ),
        "green": memory.add("alice", "t2", green, role="input"),
    }
    return items


def test_add_records_all_metadata(memory, session, store):
    blue: MemoryItem = session["blue"]
    assert blue.id == item_id("alice", "t1", 1, "output", blue.artifact_id)
    assert (blue.tenant, blue.thread, blue.turn, blue.role, blue.modality) == (
        "alice",
        "t1",
        1,
        "output",
        Modality.IMAGE,
    )
    assert blue.parent_ids == (session["red"].artifact_id,)
    assert blue.parent_items == (session["red"].id,)  # linked by id: the parent ref carried its turn
    assert (blue.caption, blue.instruction, blue.task, blue.subject) == (
        "a blue circle",
        "make it blue",
        "edit",
        "shape",
    )
    assert blue.is_edit and not session["red"].is_edit
    assert blue.created_at <= blue.updated_at
    assert memory.get("alice", blue.id) == blue
    assert store.get(blue.ref).image.size == (16, 16)
    assert memory.count("alice") == 4
    assert memory.tenants() == ["alice"]
    assert memory.threads("alice") == ["t1", "t2"]


def test_re_adding_is_idempotent_and_keeps_created_at(memory, session, store, shape_image):
    before = memory.get("alice", session["blue"].id)
    blue_ref = session["blue"].ref
    again = memory.add(
        "alice",
        "t1",
        blue_ref,
        role="output",
        parents=[session["red"].ref],
        instruction="make it blue",
        task="edit",
        subject="shape",
    )
    assert again.id == before.id and again.created_at == before.created_at
    assert memory.count("alice") == 4
    # The same artifact in another place is another item.
    memory.add("alice", "t1", blue_ref, turn=5, role="input")
    assert memory.count("alice") == 5


def test_add_many_batches_and_dedupes_within_the_batch(memory, store, shape_image):
    refs = [store.put(shape_image(c), caption=f"a {c} circle", turn=i) for i, c in enumerate(COLORS)]
    entries = [NewItem("t", r) for r in refs] + [NewItem("t", refs[0])]
    items = memory.add_many("bob", entries)
    assert len(items) == 5 and items[0].id == items[-1].id
    assert memory.count("bob") == 4


def test_items_are_in_recency_order(memory, session):
    assert [i.id for i in memory.items("alice", thread="t1")] == [
        session[k].id for k in ("red", "blue", "square")
    ]


def test_items_filter_by_subject_role_modality_and_task(memory, session):
    assert [i.id for i in memory.items("alice", subject="shape", role="input")] == [session["red"].id]
    assert [i.id for i in memory.items("alice", task="edit")] == [session["blue"].id, session["square"].id]
    assert len(memory.items("alice", modality=Modality.IMAGE)) == 4
    assert memory.items("alice", modality="audio") == []
    assert memory.items("alice", thread="nope") == [] and memory.items("carol") == []
    with pytest.raises(ValueError, match="role must be"):
        memory.items("alice", role="assistant")


def test_reference_by_id_artifact_uri_and_prefix(memory, session):
    red, green = session["red"], session["green"]
    assert memory.reference("alice", red.id).id == red.id
    assert memory.reference("alice", red).id == red.id
    assert memory.reference("alice", red.artifact_id).id == red.id
    assert memory.reference("alice", red.ref.uri).id == red.id
    assert memory.reference("alice", red.ref).id == red.id
    assert memory.reference("alice", "@m:" + red.artifact_id[:8]).id == red.id
    assert memory.reference("alice", "@m:" + red.artifact_id[:12] + "…").id == red.id  # as displayed
    assert memory.reference("alice", red.artifact_id[:14]).id == red.id  # indexed short-id path
    # Explicit references cross threads: no thread needed for t2's medium.
    assert memory.reference("alice", "@m:" + green.artifact_id[:10]).id == green.id


def test_reference_resolves_to_the_latest_mention_unless_narrowed(memory, session):
    blue = session["blue"]
    again = memory.add("alice", "t2", blue.ref, turn=7, role="input")  # the same medium, used again
    assert memory.reference("alice", blue.artifact_id).id == again.id
    assert memory.reference("alice", blue.ref, role="output").id == blue.id
    assert memory.reference("alice", "@m:" + blue.artifact_id[:8], thread="t1").id == blue.id
    with pytest.raises(UnknownReferenceError, match="with thread='t2', role='output'"):
        memory.reference("alice", blue.ref, thread="t2", role="output")


def test_reference_errors_are_clear(memory, session):
    with pytest.raises(UnknownReferenceError, match="no media whose id starts with 'ffffff'"):
        memory.reference("alice", "@m:ffffff")
    with pytest.raises(UnknownReferenceError, match="not a reference"):
        memory.reference("alice", "the cat picture")
    with pytest.raises(UnknownReferenceError, match="for artifact"):
        memory.reference("bob", session["red"].artifact_id)  # exists, but in another tenant
    with pytest.raises(UnknownReferenceError, match="at least 6 hex digits"):
        memory.reference("alice", "@m:abc")
    with pytest.raises(TypeError, match="turn numbers are resolved by the session graph"):
        memory.reference("alice", 1)  # type: ignore[arg-type]
    assert isinstance(UnknownReferenceError("x"), KeyError) and str(UnknownReferenceError("x")) == "x"


def test_ambiguous_references(memory, session, store, shape_image):
    yellow = store.put(shape_image("yellow"), caption="a yellow circle", turn=1)
    memory.add("alice", "t1", yellow, role="output", parents=[session["red"].ref])
    # Force a prefix collision: the shortest prefix shared by two stored artifacts.
    ids = sorted(i.artifact_id for i in memory.items("alice"))
    common = max((len(_common(a, b)), a, b) for a, b in itertools.pairwise(ids))
    prefix = _common(common[1], common[2])
    if len(prefix) >= 6:  # with 5 random sha256 ids this is rare; the error path is tested below anyway
        with pytest.raises(AmbiguousReferenceError):
            memory.reference("alice", prefix)


def test_ambiguous_prefix_by_construction(memory, shape_image):
    # Two items whose artifact ids share a 12-digit prefix cannot come from real content, so write
    # them with hand-made ids through the normal API (refs need not be in a store without one).

    a, b = "abcdef123456" + "0" * 52, "abcdef123456" + "1" * 52
    refs = [
        MediaRef(id=x, uri="artifact://" + x, modality=Modality.IMAGE, mime="image/png", turn=1)
        for x in (a, b)
    ]
    memory.artifacts = None
    vecs = np.eye(2, memory.embedder.dim, dtype=np.float32)
    memory.add_many("dora", [NewItem("t", r) for r in refs], embeddings=vecs)
    with pytest.raises(AmbiguousReferenceError, match="matches 2 media"):
        memory.reference("dora", "abcdef1234")
    with pytest.raises(AmbiguousReferenceError):
        memory.reference("dora", "@m:abcdef123456")
    assert memory.reference("dora", "abcdef1234560").artifact_id == a


def test_free_text_search(memory, session):
    hits = memory.search("alice", "the picture with the blue square", k=2)
    assert hits[0].id == session["square"].id
    assert hits[0].distance is not None and hits[0].distance <= hits[1].distance
    only_t2 = memory.search("alice", "a square", k=4, thread="t2")
    assert [h.id for h in only_t2] == [session["green"].id]
    inputs = memory.search("alice", "circle", k=4, role="input")
    assert {h.role for h in inputs} == {"input"}
    assert memory.search("nobody", "anything") == []


def test_search_by_media_item_and_vector(memory, session, shape_image):
    like_red = memory.search("alice", shape_image("red", caption="a red circle"), k=1)
    assert like_red[0].id == session["red"].id
    more_like = memory.search("alice", session["green"], k=1)
    assert more_like[0].id == session["green"].id
    vec = memory.embedder.embed_text(["blue circle"])[0]
    assert memory.search("alice", vec, k=1)[0].id == session["blue"].id


def test_analogous_edit_pairs(memory, session, shape_image):
    pairs = memory.analogous_edits("alice", "make the circle blue", k=2)
    assert all(isinstance(p, EditPair) for p in pairs)
    assert pairs[0].source.id == session["red"].id and pairs[0].target.id == session["blue"].id
    assert pairs[0].instruction == "make it blue"
    assert len(pairs) == 2 and pairs[1].source.id == session["blue"].id  # A' -> A'' is an edit too
    by_source = memory.analogous_edits(
        "alice", source=shape_image("blue", square=True, caption="a blue square"), k=1
    )
    assert by_source[0].target.id == session["square"].id
    assert memory.analogous_edits("alice", "make it blue", thread="t2") == []
    with pytest.raises(ValueError, match="needs request="):
        memory.analogous_edits("alice")


def test_edit_links_in_batch_by_turn_and_by_fallback(memory, store, shape_image):
    a = store.put(shape_image("red"), caption="a red circle", turn=3)
    b = store.put(shape_image("green"), caption="a green circle", turn=3)
    c = store.put(shape_image("yellow"), caption="a yellow circle", turn=4)
    # Input and output of one turn in one batch: linked inside the batch.
    src, out = memory.add_many(
        "fay", [NewItem("t", a), NewItem("t", b, role="output", parents=[a], instruction="make it green")]
    )
    assert out.parent_items == (src.id,)
    # Parent named by a bare id (no turn): not linked, but edit pairs still find it by artifact id.
    late = memory.add("fay", "t", c, role="output", parents=[b.id], instruction="make it yellow")
    assert late.parent_items == () and late.parent_ids == (b.id,)
    pairs = memory.analogous_edits("fay", "a yellow circle", k=2)
    assert {(p.source.id, p.target.id) for p in pairs} == {(src.id, out.id), (out.id, late.id)}
    assert (pairs[0].source.id, pairs[0].target.id) == (out.id, late.id)


def test_analogous_edits_by_a_stored_source_ref(memory, session):
    # The graph passes the medium to edit as a MediaRef: it is looked up, then its vector is used.
    pairs = memory.analogous_edits("alice", "make it blue", source=session["red"].ref, k=1)
    assert (pairs[0].source.id, pairs[0].target.id) == (session["red"].id, session["blue"].id)
    ghost = MediaRef(
        id="e" * 64, uri="artifact://" + "e" * 64, modality=Modality.IMAGE, mime="image/png", turn=1
    )
    with pytest.raises(UnknownReferenceError):
        memory.analogous_edits("alice", "make it blue", source=ghost, k=1)


def test_shared_bank_is_opt_in_per_thread(memory, store, shape_image, session):
    star = store.put(shape_image("yellow", square=True), caption="a yellow star exemplar", turn=0)
    memory.add(
        SHARED_TENANT, "bank", star, role="output", parents=[session["red"].ref], instruction="make it yellow"
    )
    query = "a yellow star exemplar"
    assert all(not h.shared for h in memory.search("alice", query, k=5, thread="t1"))
    assert not memory.shared_opt_in("alice", "t1")
    memory.opt_in_shared("alice", "t1")
    assert memory.shared_opt_in("alice", "t1") and not memory.shared_opt_in("alice", "t2")
    hits = memory.search("alice", query, k=5, thread="t1")
    assert hits[0].shared and hits[0].tenant == SHARED_TENANT
    assert all(not h.shared for h in memory.search("alice", query, k=5, thread="t2"))
    assert memory.search("alice", query, k=1, include_shared=True)[0].shared
    # Opting in did not clobber the collection's encoder record (checked when it is reopened).
    assert memory.items("alice", thread="t1")[-1].id == session["square"].id
    memory.opt_in_shared("alice", "t1", enabled=False)
    assert all(not h.shared for h in memory.search("alice", query, k=5, thread="t1"))
    with pytest.raises(ValueError, match="reserved"):
        memory.add("__other", "t", star)


def test_forget_thread_and_tenant(memory, session):
    assert memory.forget_thread("alice", "t1") == 3
    assert [i.id for i in memory.items("alice")] == [session["green"].id]
    with pytest.raises(UnknownReferenceError):
        memory.reference("alice", session["red"].artifact_id)
    assert memory.forget_thread("alice", "t1") == 0
    assert memory.forget_tenant("alice") == 1
    assert memory.tenants() == [] and memory.count("alice") == 0


def test_failed_write_leaves_nothing(memory, store, shape_image, monkeypatch):
    ok = store.put(shape_image("red"), turn=1)
    vecs = np.ones((2, memory.embedder.dim), dtype=np.float32)
    vecs[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        memory.add_many("erin", [NewItem("t", ok), NewItem("t", ok, turn=2)], embeddings=vecs)
    missing = Media.from_text("never stored")

    ghost = MediaRef(
        id="0" * 64, uri="artifact://" + "0" * 64, modality=Modality.TEXT, mime="text/plain", turn=1
    )
    with pytest.raises(ArtifactNotFoundError):
        memory.add_many("erin", [NewItem("t", ok), NewItem("t", ghost)], media=[shape_image("red"), missing])
    with pytest.raises(ValueError, match="turn"):
        memory.add_many("erin", [NewItem("t", ok), NewItem("t", ok.model_copy(update={"turn": None}))])
    assert memory.count("erin") == 0

    # Chroma failing on the second chunk of a large batch: the first chunk is rolled back.
    refs = [store.put(Media.from_text(f"note {i}"), turn=i) for i in range(6)]
    memory._collections.batch = 2
    col = memory._collections.create("erin")
    real_upsert, calls = col.upsert, []

    def flaky(**kw):
        calls.append(len(kw["ids"]))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_upsert(**kw)

    monkeypatch.setattr(col, "upsert", flaky)
    with pytest.raises(ExemplarMemoryError, match="nothing from this call is stored"):
        memory.add_many("erin", [NewItem("t", r) for r in refs])
    assert calls == [2, 2] and memory.count("erin") == 0


def test_export_import_round_trip(memory, session, store, tmp_path, embedder):
    out = memory.export_tenant("alice", tmp_path / "export")
    assert (out / "memory.jsonl").is_file() and len(list((out / "artifacts").glob("??/*"))) == 4
    with pytest.raises(FileExistsError):
        memory.export_tenant("alice", out)

    # Into a fresh memory with an empty artifact store, under the same and under a new tenant name.
    from codi2_agent.artifacts import ArtifactStore

    other_store = ArtifactStore(tmp_path / "other-artifacts")
    fresh = ExemplarMemory(tmp_path / "fresh-db", embedder=embedder, artifacts=other_store)
    assert fresh.import_tenant(out) == 4
    assert fresh.import_tenant(out) == 4  # idempotent
    assert fresh.count("alice") == 4
    assert {i.id for i in fresh.items("alice")} == {i.id for i in memory.items("alice")}
    assert fresh.search("alice", "blue square", k=1)[0].id == session["square"].id
    assert other_store.get(session["red"].ref).image.size == (16, 16)
    assert fresh.import_tenant(out, tenant="alice-copy") == 4
    moved = fresh.reference("alice-copy", session["red"].artifact_id)
    assert moved.tenant == "alice-copy" and moved.id != session["red"].id
    fresh.close()


def test_import_refuses_damage(memory, session, tmp_path):
    out = memory.export_tenant("alice", tmp_path / "export")
    from codi2_agent.memory import CorruptMetadataError

    lines = (out / "memory.jsonl").read_text().splitlines()
    (out / "memory.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # truncated
    with pytest.raises(CorruptMetadataError, match="truncated"):
        memory.import_tenant(out, tenant="zed")
    row = json.loads(lines[-1])
    row["item"]["turn"] += 1  # edited by hand: the id no longer matches the fields
    (out / "memory.jsonl").write_text("\n".join([*lines[:-1], json.dumps(row)]) + "\n")
    with pytest.raises(CorruptMetadataError, match="does not match its fields"):
        memory.import_tenant(out, tenant="zed")
    (out / "memory.jsonl").write_text("\n".join(lines) + "\n")
    art = next((out / "artifacts").glob("??/*"))
    art.write_bytes(b"tampered")
    with pytest.raises(CorruptMetadataError, match="does not hash"):
        memory.import_tenant(out, tenant="zed")
    assert memory.count("zed") == 0


def test_compact_drops_dangling_items(memory, session, store):
    store.delete(session["green"].ref)
    report = memory.compact("alice")
    assert report.dropped_dangling == [session["green"].id] and report.kept == 3
    assert memory.count("alice") == 3


COLORS = ["red", "blue", "green", "yellow"]


def _common(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
