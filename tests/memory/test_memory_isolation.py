"""Property: no query or lookup ever returns another tenant's items (random tenants, threads, items,
queries), and every explicit reference to another tenant's media resolves to nothing."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import SHARED_TENANT, ExemplarMemory, HashingEmbedder, NewItem, UnknownReferenceError

WORDS = ["red", "blue", "green", "star", "circle", "square", "night", "snow", "rain", "bird", "piano"]
tenants = st.text(min_size=1, max_size=12).filter(lambda t: not t.startswith("__"))
threads = st.sampled_from(["t1", "t2", "main", "ünï", "a/b"])
captions = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
item = st.tuples(tenants, threads, captions, st.booleans())
_counter = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import chromadb
    from chromadb.config import Settings

    c = chromadb.PersistentClient(
        str(tmp_path_factory.mktemp("iso")), settings=Settings(anonymized_telemetry=False)
    )
    yield c
    c.close()  # type: ignore[attr-defined]


def _ref(seed: str, turn: int) -> MediaRef:
    aid = hashlib.sha256(seed.encode()).hexdigest()
    return MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png", turn=turn)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.lists(item, min_size=1, max_size=14),
    queries=st.lists(
        st.tuples(tenants, captions, st.sampled_from([None, "t1", "main"])), min_size=1, max_size=4
    ),
    bank=st.booleans(),
)
def test_queries_never_cross_tenants(client, items, queries, bank):
    emb = HashingEmbedder(dim=16)
    memory = ExemplarMemory(client=client, embedder=emb, namespace=f"p{next(_counter)}")
    owned: dict[str, set[str]] = {}
    threads_of: dict[str, set[str]] = {}
    last_ref: dict[tuple[str, str], MediaRef] = {}
    for n, (tenant, thread, caption, is_edit) in enumerate(items):
        ref = _ref(f"{tenant}|{n}", n)
        parent = last_ref.get((tenant, thread)) if is_edit else None
        it = memory.add_many(
            tenant,
            [
                NewItem(
                    thread,
                    ref,
                    role="output" if parent else "input",
                    parents=[parent] if parent else [],
                    caption=caption,
                    instruction=caption,
                )
            ],
            vectors=emb.embed_text([caption]),
        )[0]
        owned.setdefault(tenant, set()).add(it.id)
        threads_of.setdefault(tenant, set()).add(thread)
        last_ref[(tenant, thread)] = ref
    bank_ids = set()
    if bank:  # a shared bank exists, and one thread of every tenant opts in
        bank_ids = {
            memory.add(SHARED_TENANT, "bank", _ref("bank", 0), embedding=emb.embed_text(["red star"])[0]).id
        }
        for tenant in owned:
            memory.opt_in_shared(tenant, "t1")

    def check(tenant: str, found, thread: str | None) -> None:
        allowed = owned.get(tenant, set())
        if bank and thread == "t1":
            allowed = allowed | bank_ids
        for f in found:
            assert f.id in allowed, f"query for {tenant!r} returned {f.tenant!r}'s item {f.id}"
            assert f.tenant in (tenant, SHARED_TENANT)

    assert memory.tenants() == sorted(owned)
    for tenant, text, thread in queries + [(t, "red star", None) for t in owned]:
        mine = owned.get(tenant, set())
        check(tenant, memory.search(tenant, text, k=50, thread=thread), thread)
        check(tenant, memory.items(tenant, thread=thread), None)
        check(tenant, [item for item, _ in memory.records(tenant)], None)
        pairs = memory.analogous_edits(tenant, text, k=10, thread=thread)
        check(tenant, [x for p in pairs for x in p.items], thread)
        for iid in sorted(mine)[:2]:  # "more like this" and "edits like this one", from own items
            own = memory.get(tenant, iid)
            check(tenant, memory.search(tenant, own, k=50, thread=thread), thread)
            pairs = memory.analogous_edits(tenant, text, source=own.ref, k=10, thread=thread)
            check(tenant, [x for p in pairs for x in p.items], thread)
            check(tenant, [memory.reference(tenant, "@m:" + own.artifact_id[:12])], None)
        assert set(memory.threads(tenant)) == threads_of.get(tenant, set())
        assert memory.count(tenant) == len(mine)

    # Explicit references to another tenant's media resolve to nothing, whatever their form.
    for tenant in sorted({q[0] for q in queries} | set(owned)):
        for other, ids in owned.items():
            if other == tenant:
                continue
            theirs = [memory.get(other, iid) for iid in sorted(ids)]
            for it in theirs:
                for form in (it.id, it.artifact_id, it.ref, it.ref.uri, "@m:" + it.artifact_id[:12]):
                    with pytest.raises(UnknownReferenceError):
                        memory.reference(tenant, form)
                with pytest.raises(UnknownReferenceError):
                    memory.get(tenant, it.id)
            with pytest.raises(UnknownReferenceError):
                memory.analogous_edits(tenant, "red star", source=theirs[0].ref)
            with pytest.raises(ValueError, match="belongs to tenant"):
                memory.search(tenant, theirs[0])
