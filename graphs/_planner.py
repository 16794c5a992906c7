"""An optional planner: a LangChain chat model turns a message and the thread's media into a request.

The rules in `_references` are the default: fast, offline and predictable. A planner is for phrasings
no rule knows. It is any chat model that supports ``with_structured_output``; it is shown the
message and the thread's media (short ids, turns, captions, what each was made from) and returns a
`Plan`. The plan is checked before it is used — every id must name a medium of this thread, the task
must fit the sources — and a plan that fails the check (or a planner that fails) is dropped: the rules
resolve the message as if there were no planner. A planner can also answer in words (small talk) or
ask back (a really ambiguous request).

Example:
    >>> from codi2_agent.media import MediaRef, Modality
    >>> from codi2_agent.graphs._state import MediaRecord
    >>> sha = "ab12cd" * 10 + "0000"
    >>> image = MediaRef(id=sha, uri="artifact://" + sha, modality=Modality.IMAGE, mime="image/png")
    >>> star = MediaRecord(ref=image, role="output", turn=1, instruction="draw a red star")
    >>> plan = Plan(action="make", task="edit", sources=["@m:" + image.short_id], instruction="make it blue")
    >>> request = checked_request(plan, "make the star blue", [star])
    >>> request.sources == (star,), request.output
    (True, 'image')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from codi2_agent.media import OutputKind, Task

from ._state import Clarification, MediaRecord, Request

__all__ = ["Plan", "Planner", "PlannerOutcome", "checked_request", "media_lines"]

logger = logging.getLogger(__name__)

# Tasks a planner may choose: "recall" is a search the tools ask for explicitly, not a turn to plan.
PlannedTask = Literal["generate", "edit", "analogy", "compose", "describe"]


class Plan(BaseModel):
    """What the planner model returns for one message."""

    action: Literal["make", "answer", "ask"] = Field(
        description="make: produce, change or describe media; answer: reply in words only (small talk, "
        "or something the model cannot make); ask: the request is ambiguous, ask the user back"
    )
    task: PlannedTask = Field(
        default="generate",
        description="generate: new media from words; edit: change one medium; analogy: do to the source "
        "what the example pair shows; compose: combine several media; describe: answer about media in words",
    )
    output: OutputKind = Field(default="auto", description="the kind of medium to produce, or text")
    sources: list[str] = Field(
        default_factory=list, description="ids (as listed, e.g. @m:ab12cd) of the media the request is about"
    )
    example: list[str] = Field(
        default_factory=list,
        description="analogy only: ids of the before and after media of the edit to imitate",
    )
    instruction: str = Field(default="", description="what to make or change, with the references left out")
    reply: str | None = Field(default=None, description="answer/ask: the words to say to the user")


class PlannerOutcome(BaseModel):
    """A checked plan: exactly one of a request, a question back, or an answer in words."""

    request: Request | None = None
    clarification: Clarification | None = None
    answer: str | None = None


def media_lines(log: Sequence[MediaRecord]) -> str:
    """The thread's media as the planner reads them, one line each, oldest first."""
    by_id = {r.id: r for r in log}
    lines = []
    for r in log:
        line = f"@m:{r.ref.short_id} — turn {r.turn}, {'sent by the user' if r.role == 'input' else 'made'}"
        line += f" {r.modality.value}"
        if r.caption:
            line += f", looks like {r.caption!r}"
        if r.parents:
            made_from = ", ".join(f"@m:{by_id[p].ref.short_id}" for p in r.parents if p in by_id)
            line += f", made from {made_from or 'earlier media'} by {r.instruction!r}"
        elif r.instruction and r.role == "output":
            line += f", made from the words {r.instruction!r}"
        lines.append(line)
    return "\n".join(lines) or "(no media yet)"


def _find(token: str, log: Sequence[MediaRecord]) -> MediaRecord | None:
    """The record a planner's id names: ``@m:<short id>``, ``artifact://<id>`` or the bare id."""
    token = token.strip().removeprefix("@m:").removeprefix("artifact://")
    if not token:
        return None
    latest: dict[str, MediaRecord] = {}
    for r in log:  # an id sent again in a later turn: the latest record (its turn and role)
        latest[r.id] = r
    matches = {r.id: r for r in latest.values() if r.id == token or r.ref.short_id == token}
    if not matches:
        matches = {r.id: r for r in latest.values() if len(token) >= 6 and r.id.startswith(token)}
    return next(iter(matches.values())) if len(matches) == 1 else None


def checked_request(plan: Plan, text: str, log: Sequence[MediaRecord]) -> Request:
    """The `Request` a "make" plan means, after checking it against the thread's media.

    Raises:
        ValueError: an id names no medium of this thread, or the task does not fit its sources.
    """

    def records(ids: Sequence[str], what: str) -> tuple[MediaRecord, ...]:
        found = []
        for token in ids:
            record = _find(token, log)
            if record is None:
                raise ValueError(f"the planner's {what} {token!r} is not a medium of this thread")
            found.append(record)
        return tuple(found)

    sources, example = records(plan.sources, "source"), records(plan.example, "example")
    needs = {"edit": (1, 1), "compose": (2, 8), "analogy": (1, 1), "describe": (1, 8), "generate": (0, 8)}
    low, high = needs[plan.task]
    if not low <= len(sources) <= high:
        raise ValueError(f"a {plan.task} needs {low} to {high} sources, the planner gave {len(sources)}")
    if plan.task == "analogy" and len(example) not in (1, 2):
        raise ValueError("an analogy needs the example edit's media (after, or before and after)")
    output: OutputKind = "text" if plan.task == "describe" else plan.output
    if output == "auto":
        output = sources[0].modality.value if sources else "image"
    task: Task = plan.task
    return Request(
        text=text,
        task=task,
        output=output,
        instruction=plan.instruction or text,
        sources=sources,
        example=example,
    )


class Planner:
    """Ask a chat model for a `Plan`; return the checked outcome, or None to fall back to the rules."""

    SYSTEM = (
        "You route requests for a model that makes and edits images and sounds. Read the user's "
        "message and the media of the conversation, then say what is asked: which media it is about "
        "(by their ids), which task, which kind of output, and the instruction without the references. "
        "Answer in words for small talk or for things the model cannot make; ask back only when the "
        "message could mean several of the media and nothing tells them apart."
    )

    def __init__(self, chat_model: Any) -> None:
        if not hasattr(chat_model, "with_structured_output"):
            raise TypeError(f"a planner is a LangChain chat model, got {type(chat_model).__name__}")
        self.chat_model = chat_model
        self._runnable = chat_model.with_structured_output(Plan)

    def __repr__(self) -> str:
        return f"Planner({type(self.chat_model).__name__})"

    def plan(self, text: str, log: Sequence[MediaRecord], *, vocabulary: str = "") -> PlannerOutcome | None:
        """The checked outcome for `text` in a thread whose media are `log`; None when the planner
        failed or its plan did not check out (the caller then uses the rules)."""
        known = f"\nThe model knows these words: {vocabulary}." if vocabulary else ""
        messages = [
            SystemMessage(self.SYSTEM + known),
            HumanMessage(f"Media so far:\n{media_lines(log)}\n\nMessage: {text}"),
        ]
        try:
            plan = self._runnable.invoke(messages)
            if isinstance(plan, dict):
                plan = Plan.model_validate(plan)
            if not isinstance(plan, Plan):
                raise ValueError(f"the planner returned {type(plan).__name__}, not a Plan")
            if plan.action == "answer":
                return PlannerOutcome(answer=plan.reply or "")
            if plan.action == "ask":
                candidates = tuple(r.ref for r in (_find(t, log) for t in plan.sources) if r is not None)
                question = plan.reply or "Which one do you mean?"
                return PlannerOutcome(clarification=Clarification(question=question, candidates=candidates))
            return PlannerOutcome(request=checked_request(plan, text, log))
        except Exception as e:  # a planner is advice: any failure falls back to the rules
            logger.warning("planner %r: %s; falling back to the rules", self, e)
            return None
