"""The session graph's state: small, typed, and free of bytes.

Everything a checkpoint holds is text, numbers and `MediaRef`s (≈ 200 bytes each); media live in the
`ArtifactStore`. Nothing in it grows with the thread: `messages` is a window of the conversation
(kept as deltas, `DeltaChannel`), and what does grow — the media log and the transcript — lives in
the thread log in the LangGraph store (`graphs._log`). The rest is per-turn scratch that `ingest`
resets at the start of each turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from langchain_core.messages import AnyMessage
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from codi2_agent.backends import GenerateResult, OutputKind, PromptTurn
from codi2_agent.media import MediaRef, Modality, Task

__all__ = [
    "SERDE_ALLOWLIST",
    "Clarification",
    "Exemplar",
    "MediaRecord",
    "Request",
    "SessionInput",
    "SessionState",
    "Task",
    "TurnOptions",
]

Role = Literal["input", "output"]


class MediaRecord(BaseModel):
    """One medium of the thread: who brought it (role), when (turn), and what it was made from."""

    model_config = ConfigDict(frozen=True)

    ref: MediaRef
    role: Role
    turn: int = Field(ge=1)
    parents: tuple[str, ...] = ()  # artifact ids of the media it was made from (edit chains)
    instruction: str | None = None  # the request that produced it
    task: str | None = None
    subject: str | None = None  # short id of the first medium of its edit chain

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def modality(self) -> Modality:
        return self.ref.modality

    @property
    def caption(self) -> str | None:
        return self.ref.caption

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.turn, self.role, self.ref.id)


class TurnOptions(BaseModel):
    """Structured instructions for one turn, beside (or instead of) the words of the message.

    Tools use these so that an agent's call means exactly what it says: `sources` and `example`
    are references ("@m:ab12cd", "artifact://…", "the last image") resolved like words in a message.
    """

    model_config = ConfigDict(frozen=True)

    task: Task | None = None
    output: OutputKind | None = None
    sources: tuple[str, ...] = ()
    example: tuple[str, ...] = ()  # (before, after) or (after,) of an edit to imitate
    instruction: str | None = None  # the edit / question, when the message text is not it
    query: str | None = None  # recall: what to look for
    modality: Modality | None = None  # recall: only this kind of media
    k: int = Field(default=3, ge=1, le=20)  # recall: how many
    seed: int | None = None
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = None
    max_new_tokens: int | None = Field(default=None, ge=1)
    caption: str | None = None  # caption to give the produced medium


class Request(BaseModel):
    """What `resolve` understood the turn to ask for."""

    model_config = ConfigDict(frozen=True)

    text: str  # the message's words
    task: Task
    output: OutputKind
    instruction: str  # the words for the model, with references taken out
    sources: tuple[MediaRecord, ...] = ()  # media the request is about, in order
    example: tuple[MediaRecord, ...] = ()  # analogy: (before, after)
    caption: str | None = None  # caption for a generated medium


class Exemplar(BaseModel):
    """An in-context example retrieved from memory: a single medium or an edit pair."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["pair", "shot"]
    refs: tuple[MediaRef, ...]
    instruction: str | None = None
    score: float | None = None  # similarity to the request (1 - cosine distance)


class Clarification(BaseModel):
    """A question back to the user instead of a guess."""

    model_config = ConfigDict(frozen=True)

    question: str
    candidates: tuple[MediaRef, ...] = ()


class SessionInput(TypedDict, total=False):
    """What a turn is started with: a message (and optionally structured options)."""

    messages: list[AnyMessage]
    options: TurnOptions | None


def _extend_records(state: Sequence[MediaRecord] | None, writes: Sequence[Any]) -> list[MediaRecord]:
    """Append media records, keeping one per (turn, role, artifact): re-applying a write is a no-op.

    Batching-invariant, as a `DeltaChannel` reducer must be.
    """
    out = list(state or [])
    seen = {r.key for r in out}
    for write in writes:
        for record in write if isinstance(write, (list, tuple)) else [write]:
            if isinstance(record, dict):  # a state update given as plain data (update_state, forks)
                record = MediaRecord.model_validate(record)
            if record.key not in seen:
                seen.add(record.key)
                out.append(record)
    return out


def _add_records(left: Sequence[MediaRecord] | None, right: Any) -> list[MediaRecord]:
    return _extend_records(left, [right])


try:  # LangGraph >= 1.2: store the growing channels as deltas (beta in LangGraph, stable on disk)
    from langgraph.channels.delta import DeltaChannel
    from langgraph.graph.message import _messages_delta_reducer

    _Messages = Annotated[list[AnyMessage], DeltaChannel(_messages_delta_reducer, snapshot_frequency=50)]
    _Media = Annotated[list[MediaRecord], DeltaChannel(_extend_records, snapshot_frequency=50)]
    DELTA_CHANNELS = True
except ImportError:  # older LangGraph: whole lists in every checkpoint (correct, just larger)
    from langgraph.graph.message import add_messages

    _Messages = Annotated[list[AnyMessage], add_messages]  # type: ignore[misc,assignment]
    _Media = Annotated[list[MediaRecord], _add_records]  # type: ignore[misc,assignment]
    DELTA_CHANNELS = False


class SessionState(TypedDict, total=False):
    """The state of one conversation thread.

    Keys:
        messages: the recent conversation (a window: the whole transcript is in the thread log);
            media appear as content blocks with ``artifact://`` urls.
        turn_media: this turn's media (inputs, then outputs); the whole thread's media log — the
            source of "it", "turn 2", "the star" — is in the thread log (`graphs._log`).
        media: the media log of threads written before the thread log existed (read once, to move
            it into the log; never written now).
        turn: the number of the current (or last) turn, from 1.
        options: structured instructions for this turn (tools), or None.
        request: what this turn asks for, once resolved.
        clarification: a question back to the user, when a reference cannot be resolved.
        exemplars: in-context examples retrieved from memory.
        prompt: the interleaved prompt sent to the backend.
        result: the backend's answer (media as refs).
        verdict: the review's decision, when the graph was built with ``review=True``.
        found: media a recall turn found.
        answer: a text-only reply the resolver gave (small talk, a request outside the model's
            vocabulary), with its `intent` ("chat" / "out_of_vocabulary").
        ancestors: threads this one was forked from (their media up to the fork are in `media`).
    """

    messages: _Messages
    turn_media: list[MediaRecord]
    media: _Media
    turn: int
    options: TurnOptions | None
    request: Request | None
    clarification: Clarification | None
    exemplars: list[Exemplar]
    prompt: list[PromptTurn] | None
    result: GenerateResult | None
    verdict: Literal["accepted", "rejected"] | None
    found: list[MediaRef]
    answer: str | None
    intent: str | None
    ancestors: list[str]


# Our pydantic types, for the checkpointer's msgpack allowlist (strict mode refuses anything else).
SERDE_ALLOWLIST: tuple[type, ...] = (
    MediaRef,
    Modality,
    MediaRecord,
    TurnOptions,
    Request,
    Exemplar,
    Clarification,
    PromptTurn,
    GenerateResult,
)
