"""`ExemplarMemory`: the public front of the memory, composed of small parts.

- `_collections.py`: reaching Chroma, one checked collection per tenant, record validation;
- `_vectors.py`: the encoder and the checks every vector passes;
- `_writes.py`: `add_many` (all-or-nothing, idempotent, edits linked to their sources);
- `_background.py`: `submit_many`'s writes on a worker thread, and the wait every other method does;
- `_lookups.py`: reads without vectors — `get`, `items`, `threads`, explicit `reference`s;
- `_search.py`: similarity — `search`, `analogous_edits`;
- `_lifecycle.py`: shared-bank opt-in, forgetting, `compact`, reading a tenant out (`records`);
- `_transfer.py`: export / import folders, through this class's public methods.

The memory answers what needs vectors or crosses threads. Thread-local lookups ("the last image",
"turn 3", an edit chain) are resolved by the session graph from its own media log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media, MediaRef, Modality

from . import _lifecycle
from ._background import BackgroundWrites, after_background_writes
from ._collections import Collections, check_namespace, connect
from ._embedding import Embedder, HashingEmbedder, register_embedder
from ._index_check import IndexReport, close_embedded, open_embedded
from ._item import SHARED_TENANT, EditPair, MemoryItem, NewItem, Role
from ._lifecycle import CompactReport
from ._lookups import Lookups
from ._protocol import Memory, QueryLike
from ._search import Search
from ._vector_copy import VectorCopy
from ._vectors import Vectors
from ._where import filters
from ._writes import Writer

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

__all__ = ["SHARED_TENANT", "CompactReport", "ExemplarMemory"]

VectorsLike = np.ndarray | Sequence[Sequence[float]]


class ExemplarMemory:
    """Exemplar memory over Chroma: add media with lineage, retrieve in-context exemplars per tenant.

    Setup:
        Installed with codi2-agent (``chromadb``). For several processes, start a server:

        .. code-block:: bash

            chroma run --path ./memory-db --host 127.0.0.1 --port 8765

    Instantiate:
        .. code-block:: python

            from codi2_agent.artifacts import ArtifactStore
            from codi2_agent.memory import ExemplarMemory, HashingEmbedder

            memory = ExemplarMemory("./memory-db", embedder=HashingEmbedder(64),
                                    artifacts=ArtifactStore("./artifacts"))        # embedded
            memory = ExemplarMemory(host="127.0.0.1", port=8765, embedder=model.embedder)  # server

    Use:
        .. code-block:: python

            a = store.put(Media.open("star.png"), caption="a red star", turn=1)
            memory.add("alice", "t1", a, role="input")
            b = store.put(edited, caption="a blue star", turn=2)
            memory.add("alice", "t1", b, role="output", parents=[a], instruction="make it blue")

            memory.search("alice", "the picture with the blue star", k=1)[0].artifact_id == b.id
            pair = memory.analogous_edits("alice", "make the circle blue", k=1)[0]
            pair.source.ref, pair.target.ref                      # exemplar A -> A'
            memory.reference("alice", "@m:" + a.id[:8])           # explicit reference, any thread

    Args:
        path: folder of an embedded ``chromadb.PersistentClient`` (single process only: chroma#3792).
        host, port: a ``chroma run`` server; the way for several processes to share one memory.
        client: an existing Chroma client instead of `path` / `host` (its owner closes it).
        embedder: the encoder whose vector space the memory lives in; defaults to `HashingEmbedder()`.
        artifacts: the `ArtifactStore` (or its root) holding the media; used to embed refs without
            vectors, to check refs exist before writing, and by export / import / compact.
        namespace: prefix of every collection name, so several memories can share one Chroma.
        clock: time source for `created_at` / `updated_at` (tests pass a fake).
        verify_index: embedded only — check the HNSW index files of this namespace's collections
            before Chroma opens them, so damaged files are rebuilt (or raise `CorruptMemoryError`)
            instead of crashing this process (docs/architecture.md §11). Free when the files are as
            this memory last closed them (a hash of the index files); otherwise a child process
            probes them (about 2 s, mostly importing Chroma). The result is `index_report`.
        verify_timeout_s: how long that child may go without an answer before the collection it is
            reading counts as damaged.

    Raises:
        CorruptMemoryError: the embedded folder is damaged beyond repair (the message says how).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str | None = None,
        port: int = 8000,
        client: ClientAPI | None = None,
        embedder: Embedder | None = None,
        artifacts: ArtifactStore | str | Path | None = None,
        namespace: str = "codi2",
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        verify_index: bool = True,
        verify_timeout_s: float = 60.0,
    ) -> None:
        check_namespace(namespace)
        self.embedder: Embedder = register_embedder(embedder if embedder is not None else HashingEmbedder())
        self.artifacts = ArtifactStore(artifacts) if isinstance(artifacts, (str, Path)) else artifacts
        self.namespace = namespace
        self._clock = clock
        self._folder: Path | None = None
        self._copy: VectorCopy | None = None
        self.index_report: IndexReport | None = None
        """What the index check found on open (embedded with ``verify_index=True``), else None."""
        if path is not None and host is None and client is None:
            self._folder = Path(path).expanduser()
            self._folder.mkdir(parents=True, exist_ok=True)
            self._copy, self.index_report = open_embedded(
                self._folder, namespace, verify=verify_index, timeout_s=verify_timeout_s
            )
        try:
            chroma, self.mode = connect(path, host, port, client, ssl=ssl, headers=headers)
        except BaseException:
            self._release_folder(record=False)
            raise
        self._owns_client = client is None
        self._collections = Collections(chroma, self.embedder, namespace, self._now, self._copy)
        vectors = Vectors(self.embedder, self._collections.ef)
        self._lookups = Lookups(self._collections)
        self._search = Search(self._collections, vectors, self._lookups)
        self._writer = Writer(self._collections, vectors, self._now)
        self._background = BackgroundWrites()

    def __repr__(self) -> str:
        return (
            f"ExemplarMemory(mode={self.mode!r}, namespace={self.namespace!r}, "
            f"encoder={self.embedder.name!r})"
        )

    def _now(self) -> float:
        # Millisecond resolution: the server's JSON float round trip is exact at 13 significant digits,
        # not always at 17, and an item must read back equal to what was written.
        return round(self._clock(), 3)

    def close(self) -> None:
        """Release the Chroma client if this memory created it (embedded: closes the SQLite files, and
        records the index files as verified for the next open). Waits for `submit_many` writes first,
        and raises the error of one that failed after releasing everything."""
        try:
            self._background.close()
        finally:
            self._close_client()

    def _close_client(self) -> None:
        self._collections.clear()
        client = self._collections.client
        if self._owns_client and hasattr(client, "close"):
            client.close()
        # Only a memory that checked the files itself vouches for them.
        self._release_folder(record=self.index_report is not None and not self.index_report.shared)

    def _release_folder(self, *, record: bool) -> None:
        if self._folder is None:
            return
        folder, self._folder = self._folder, None  # once: close() may be called again
        close_embedded(folder, self.namespace if record else None, self._copy)

    def __enter__(self) -> ExemplarMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections -----------------------------------------------------------------------------
    def collection_name(self, tenant: str) -> str:
        """The Chroma collection that holds `tenant`'s memory (a pure function of the tenant)."""
        return self._collections.name(tenant)

    @after_background_writes
    def tenants(self) -> list[str]:
        """Tenants that have a memory in this namespace (the shared bank is not listed)."""
        return self._collections.tenants()

    @after_background_writes
    def count(self, tenant: str) -> int:
        """How many items `tenant` holds."""
        col = self._collections.open(tenant)
        return 0 if col is None else col.count()

    # --- writing ---------------------------------------------------------------------------------
    def add(
        self,
        tenant: str,
        thread: str,
        ref: MediaRef,
        *,
        turn: int | None = None,
        role: Role = "input",
        parents: Sequence[MediaRef | str] = (),
        task: str | None = None,
        subject: str | None = None,
        caption: str | None = None,
        instruction: str | None = None,
        embedding: Sequence[float] | np.ndarray | None = None,
        media: Media | None = None,
    ) -> MemoryItem:
        """Remember one medium (idempotent: the same medium at the same place is stored once).

        The vector comes from `embedding` if given, else from embedding `media`, else from the media
        loaded from the artifact store. See `add_many` for the rules.
        """
        entry = NewItem(thread, ref, turn, role, tuple(parents), task, subject, caption, instruction)
        vecs = None if embedding is None else np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        return self.add_many(tenant, [entry], vectors=vecs, media=None if media is None else [media])[0]

    @after_background_writes
    def add_many(
        self,
        tenant: str,
        entries: Sequence[NewItem],
        *,
        media: Sequence[Media | None] | None = None,
        vectors: VectorsLike | None = None,
        embeddings: VectorsLike | None = None,
    ) -> list[MemoryItem]:
        """Remember a batch of media in one write; all of them are stored, or none.

        Args:
            tenant: whose memory; `SHARED_TENANT` writes to the shared exemplar bank.
            entries: what each medium is and where it sits (thread, turn, role, lineage).
            media: decoded media to embed (entries with None are loaded from the artifact store).
            vectors: (N, dim) precomputed vectors in this memory's encoder space, for a caller that
                already embedded the media: the encoder is not called and `media` is not needed.
                They are checked like computed ones (shape, finite values, no all-zero rows).
            embeddings: the older name of `vectors`.

        Returns:
            The stored items, in the order of `entries` (a re-added item keeps its `created_at`).

        Raises:
            ValueError: a bad entry (the message names it), or no way to get a vector.
            EmbeddingDimensionError: vectors of the wrong length.
            ArtifactNotFoundError: a ref the configured artifact store does not hold.
            ExemplarMemoryError: Chroma failed; nothing from this call is stored.
        """
        if vectors is not None and embeddings is not None:
            raise ValueError("pass precomputed vectors as vectors= or embeddings=, not both")
        name = "embeddings" if embeddings is not None else "vectors"
        prepared = self._writer.prepare(
            tenant,
            entries,
            vectors=vectors if vectors is not None else embeddings,
            vectors_name=name,
            media=media,
            artifacts=self.artifacts,
        )
        return self._writer.commit(prepared)

    def submit_many(
        self,
        tenant: str,
        entries: Sequence[NewItem],
        *,
        media: Sequence[Media | None] | None = None,
        vectors: VectorsLike | None = None,
    ) -> Future[list[MemoryItem]]:
        """`add_many` that returns before Chroma has the items ("write-behind"): for a caller that
        should not wait on the disk, such as a session turn.

        Everything that can refuse the input is checked now and raises here, as in `add_many` (so do
        the encoder's errors: media are embedded now). Only the write runs later, on this memory's
        writer thread, in submission order. Every other method of this memory waits for the writes
        still pending, so this process reads its own writes; a write that failed (nothing of it is
        stored) raises its `ExemplarMemoryError` from the next such call, or from `close()`.

        Returns:
            A `Future` of the stored items (`add_many`'s return value).
        """
        prepared = self._writer.prepare(
            tenant, entries, vectors=vectors, vectors_name="vectors", media=media, artifacts=self.artifacts
        )
        return self._background.submit(lambda: self._writer.commit(prepared))

    @property
    def write_behind(self) -> bool:
        """Whether a `submit_many` write overlaps the caller's own work, so a session turn should not
        wait for it: True on a Chroma server (its HTTP client waits for the answer without holding
        Python's GIL). False for embedded Chroma: its Rust binding holds the GIL for the whole write
        (5-40 ms, mostly disk syncs), so the caller's next Python step would wait for it anyway."""
        impl = self._collections.client.get_settings().chroma_api_impl
        return "fastapi" in impl.lower()

    def flush(self) -> None:
        """Wait until every `submit_many` write so far is in Chroma; raise the error of one that failed."""
        self._background.settle()

    @after_background_writes
    def write_records(self, tenant: str, items: Sequence[MemoryItem], vectors: np.ndarray) -> None:
        """Store already-built items exactly as given, with their (N, dim) vectors — the other half of
        `records` (import). Checked and rolled back like `add_many`; ids are not recomputed."""
        self._writer.write_records(tenant, items, vectors)

    # --- lookups without vectors -----------------------------------------------------------------
    @after_background_writes
    def get(self, tenant: str, item_id: str) -> MemoryItem:
        """The item with this id (see `item_id`), or `UnknownReferenceError`."""
        return self._lookups.get(tenant, item_id)

    @after_background_writes
    def items(
        self,
        tenant: str,
        *,
        thread: str | None = None,
        subject: str | None = None,
        modality: Modality | str | None = None,
        role: Role | None = None,
        task: str | None = None,
    ) -> list[MemoryItem]:
        """Every matching item, oldest first (`recency_key` order)."""
        fields = filters(thread=thread, subject=subject, modality=modality, role=role, task=task)
        return self._lookups.items(tenant, fields)

    @after_background_writes
    def threads(self, tenant: str) -> list[str]:
        """Names of the tenant's threads (a scan of its metadata)."""
        return self._lookups.threads(tenant)

    @after_background_writes
    def reference(
        self,
        tenant: str,
        ref: str | MediaRef | MemoryItem,
        *,
        thread: str | None = None,
        role: Role | None = None,
        modality: Modality | str | None = None,
    ) -> MemoryItem:
        """Resolve an explicit reference to one item, in any thread of `tenant`.

        `ref` may be an item id (32 hex), an artifact id (64 hex), an ``artifact://`` uri, a `MediaRef`,
        a `MemoryItem`, or an artifact-id prefix of at least 6 hex digits (optionally written
        ``@m:ab12cd``). An artifact mentioned several times resolves to its latest mention;
        `thread` / `role` / `modality` narrow the candidates.

        Raises:
            UnknownReferenceError: nothing matches (the message says what was looked for).
            AmbiguousReferenceError: a prefix that matches several different media.
        """
        return self._lookups.reference(tenant, ref, filters(thread=thread, role=role, modality=modality))

    # --- similarity ------------------------------------------------------------------------------
    @after_background_writes
    def search(
        self,
        tenant: str,
        query: QueryLike,
        *,
        k: int = 4,
        thread: str | None = None,
        subject: str | None = None,
        modality: Modality | str | None = None,
        role: Role | None = None,
        task: str | None = None,
        include_shared: bool | None = None,
    ) -> list[MemoryItem]:
        """Items most similar to `query`, nearest first — free text ("the picture with the blue star"),
        a `Media`, a stored `MemoryItem` ("more like this") or a raw vector.

        Text goes through this memory's registered Chroma embedding function (the model's text side).
        `include_shared=None` adds the shared bank when `thread` has opted in (`opt_in_shared`).
        """
        fields = filters(thread=thread, subject=subject, modality=modality, role=role, task=task)
        shared = _lifecycle.reads_shared(self._collections, tenant, thread, include_shared)
        return self._search.search(tenant, query, k=k, fields=fields, shared=shared)

    @after_background_writes
    def analogous_edits(
        self,
        tenant: str,
        request: QueryLike | None = None,
        *,
        source: QueryLike | MediaRef | None = None,
        k: int = 2,
        thread: str | None = None,
        include_shared: bool | None = None,
    ) -> list[EditPair]:
        """Recorded edits (A → A′) most similar to the current request, for "do to this what you did to
        that": by the instruction text (`request`), by the medium to edit (`source`), or both combined.
        """
        shared = _lifecycle.reads_shared(self._collections, tenant, thread, include_shared)
        return self._search.analogous_edits(tenant, request, source, k=k, thread=thread, shared=shared)

    # --- lifecycle -------------------------------------------------------------------------------
    @after_background_writes
    def opt_in_shared(self, tenant: str, thread: str, enabled: bool = True) -> None:
        """Let `thread` read the shared exemplar bank (`SHARED_TENANT`) in its queries (or stop it).

        Stored in the tenant collection's metadata, so every process sees it. Writes to the bank are
        explicit: ``memory.add(SHARED_TENANT, ...)``; a tenant's own items never move there.
        """
        _lifecycle.opt_in_shared(self._collections, tenant, thread, enabled)

    @after_background_writes
    def shared_opt_in(self, tenant: str, thread: str) -> bool:
        """Whether `thread` reads the shared bank by default."""
        return _lifecycle.shared_opt_in(self._collections, tenant, thread)

    @after_background_writes
    def forget_thread(self, tenant: str, thread: str) -> int:
        """Delete every item of `thread`; returns how many. Artifacts stay (other items may share them)."""
        return _lifecycle.forget_thread(self._collections, tenant, thread)

    @after_background_writes
    def forget_items(self, tenant: str, item_ids: Iterable[str]) -> int:
        """Delete these items of `tenant`; returns how many existed (so a repeated call returns 0).

        Ids of another tenant's items match nothing here: each tenant's items live in its own
        collection. Raises `ValueError` for a string that is not an item id (see `item_id`).
        """
        return _lifecycle.forget_items(self._collections, tenant, item_ids)

    @after_background_writes
    def reconcile_thread(self, tenant: str, thread: str, keep: Iterable[tuple[str, int]]) -> int:
        """Trim `thread`'s items to the media its log holds; returns how many were deleted.

        `keep` is the (artifact id, turn) of every medium in the thread's log, e.g.
        ``{(r.id, r.turn) for r in state["media"]}``: an item at a place not in it was written by a
        process that died before its checkpoint (docs/architecture.md §11), and recall from another
        thread would otherwise return it. Other threads and tenants are untouched; running it twice
        deletes nothing the second time. Call it while holding the thread's writer lock.
        """
        return _lifecycle.reconcile_thread(self._collections, self._lookups, tenant, thread, keep)

    @after_background_writes
    def forget_tenant(self, tenant: str) -> int:
        """Delete a tenant's whole memory (its collection); returns how many items it held."""
        return _lifecycle.forget_tenant(self._collections, tenant)

    @after_background_writes
    def compact(self, tenant: str, *, drop_corrupt: bool = False) -> CompactReport:
        """Tidy a tenant's memory: drop items whose artifact is gone from the store (they can never be
        shown as exemplars) and, with ``drop_corrupt=True``, items whose metadata is corrupt.

        To reclaim disk space of an embedded memory afterwards, stop all users and run
        ``chroma vacuum --path <path>``.
        """
        return _lifecycle.compact(
            self._collections, self._lookups, tenant, self.artifacts, drop_corrupt=drop_corrupt
        )

    @after_background_writes
    def records(self, tenant: str) -> Iterator[tuple[MemoryItem, np.ndarray]]:
        """Every item of `tenant` with its stored vector, page by page (raises on a corrupt item)."""
        return _lifecycle.records(self._collections, tenant)

    @after_background_writes
    def export_tenant(self, tenant: str, dest: str | Path) -> Path:
        """Write `tenant`'s memory to the new folder `dest`: ``memory.jsonl`` (a header line, then one
        line per item with its vector) and ``artifacts/`` (the media, in `ArtifactStore` layout).

        The folder appears complete or not at all (written beside it, then renamed).
        """
        from ._transfer import export_tenant

        return export_tenant(self, tenant, Path(dest))

    @after_background_writes
    def import_tenant(self, src: str | Path, *, tenant: str | None = None) -> int:
        """Load an `export_tenant` folder (into `tenant`, default the exported one); returns the item count.

        Everything is validated (encoder, dimensions, every record, every artifact's hash) before the
        first write; re-importing is idempotent.
        """
        from ._transfer import import_tenant

        return import_tenant(self, Path(src), tenant=tenant)


if TYPE_CHECKING:
    # mypy checks here that the front offers everything the session graph relies on.
    _conforms: type[Memory] = ExemplarMemory
