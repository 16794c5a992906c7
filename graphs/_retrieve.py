"""The retrieve step of the session graph: in-context exemplars (and recall hits) from memory.

Kept apart from the other nodes because it is the one step that talks to the exemplar memory's
vector side: analogous edit pairs for "do the same", solved shots for edits and generations, and
free-text recall — each filtered to items that are live in this thread (not undone, not after a
fork), which only the thread log knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from codi2_agent.media import MediaRef

from ._state import Clarification, Exemplar, MediaRecord, Request, SessionState, TurnOptions

if TYPE_CHECKING:
    from codi2_agent.memory import Memory

    from ._nodes import NodeSettings

__all__ = ["RetrieveStep"]


class RetrieveStep:
    """Mixed into `SessionNodes`: the retrieve node and its memory queries."""

    memory: Memory | None
    settings: NodeSettings

    # Provided by `SessionNodes` (which mixes this class in).
    def tenant(self, config: RunnableConfig | None) -> str:
        raise NotImplementedError

    def thread(self, config: RunnableConfig | None) -> str:
        raise NotImplementedError

    def media_log(self, state: SessionState, config: RunnableConfig, upto: int) -> list[MediaRecord]:
        raise NotImplementedError

    def _record(self, item: Any) -> MediaRecord:
        """A memory item as a media record (for media from other threads)."""
        return MediaRecord(
            ref=item.ref,
            role=item.role,
            turn=max(1, item.turn),
            parents=tuple(item.parent_ids),
            instruction=item.instruction,
            task=item.task,
            subject=item.subject,
        )

    def _live(self, state: SessionState, config: RunnableConfig) -> Callable[[Any], bool]:
        """A test for memory items: those of this thread (or of the threads it was forked from) count
        only while their turn is in the thread's media log (not undone, not after the fork); other
        threads' always do. The log is indexed once per call, not scanned once per item."""
        own = {self.thread(config), *state.get("ancestors", [])}
        logged = {(r.id, r.turn) for r in self.media_log(state, config, int(state.get("turn") or 0))}
        return lambda item: item.thread not in own or (item.artifact_id, item.turn) in logged

    # =============================================================================================
    # 3. retrieve: in-context exemplars from memory
    # =============================================================================================
    def retrieve(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        req = state["request"]
        assert req is not None
        tenant = self.tenant(config)
        options = state.get("options") or TurnOptions()
        if req.task == "recall":
            return {"found": self._recall(state, config, req, options)}
        if self.memory is None or self.settings.context == "window":
            return {"exemplars": []}
        live = self._live(state, config)
        exemplars: list[Exemplar] = []
        update: dict[str, Any] = {}
        if req.task == "analogy":
            wanted = self.settings.analogy_shots - 1 + (0 if req.example else 1)
            pairs = (
                self._pairs(state, config, req.instruction, source=req.sources[-1].ref, k=4) if wanted else []
            )
            if not req.example:  # no edit in this thread: the most similar one in memory
                if not pairs:
                    question = "I haven't made an edit yet, so I don't know which edit to repeat."
                    return {"clarification": Clarification(question=question)}
                src, dst, _ = pairs[0]
                req = req.model_copy(update={"example": (self._record(src), self._record(dst))})
                update["request"] = req
            # Extra pairs only of the same edit (same instruction): more evidence, not another task.
            same = req.example[1].instruction
            for src, dst, score in pairs:
                if len(exemplars) >= self.settings.analogy_shots - 1:
                    break
                if same and dst.instruction == same and dst.artifact_id != req.example[1].id:
                    exemplars.append(
                        Exemplar(kind="pair", refs=(src.ref, dst.ref), instruction=same, score=score)
                    )
        elif req.task == "edit" and self.settings.shots > 0:
            for src, dst, score in self._pairs(
                state, config, req.instruction, source=None, k=self.settings.shots
            ):
                if req.sources[0].id not in (src.artifact_id, dst.artifact_id):
                    exemplars.append(
                        Exemplar(
                            kind="pair", refs=(src.ref, dst.ref), instruction=dst.instruction, score=score
                        )
                    )
        elif req.task == "generate" and self.settings.shots > 0:
            modality = req.output if req.output in ("image", "audio") else None
            hits = self.memory.search(
                tenant, req.instruction, k=4 * self.settings.shots, role="output", modality=modality
            )
            for item in hits:
                if item.task == "generate" and item.instruction and live(item):
                    score = None if item.distance is None else 1.0 - item.distance
                    exemplars.append(
                        Exemplar(kind="shot", refs=(item.ref,), instruction=item.instruction, score=score)
                    )
                if len(exemplars) >= self.settings.shots:
                    break
        update["exemplars"] = exemplars
        return update

    def _pairs(
        self, state: SessionState, config: RunnableConfig, request: str, *, source: MediaRef | None, k: int
    ) -> list[tuple[Any, Any, float | None]]:
        """Live edit pairs from memory most like `request` (and `source`), best first."""
        from codi2_agent.memory import UnknownReferenceError

        if self.memory is None:
            return []
        try:
            found = self.memory.analogous_edits(self.tenant(config), request, source=source, k=k)
        except UnknownReferenceError:  # the source is not remembered: search by the words alone
            found = self.memory.analogous_edits(self.tenant(config), request, k=k)
        live = self._live(state, config)
        out = []
        for pair in found:
            if live(pair.source) and live(pair.target):
                score = None if pair.distance is None else 1.0 - pair.distance
                out.append((pair.source, pair.target, score))
        return out

    def _recall(
        self, state: SessionState, config: RunnableConfig, req: Request, options: TurnOptions
    ) -> list[MediaRef]:
        if self.memory is None:
            return []
        hits = self.memory.search(
            self.tenant(config), req.instruction, k=4 * options.k, modality=options.modality
        )
        live = self._live(state, config)
        out: list[MediaRef] = []
        for item in hits:
            if live(item) and item.artifact_id not in {r.id for r in out}:
                out.append(item.ref)
            if len(out) >= options.k:
                break
        return out
