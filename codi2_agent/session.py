"""`Session`: the notebook and pipeline face of one session-graph thread.

``s.say("draw a small red star in the snow")`` runs one turn through the graph and returns a
`TurnResult` whose image or sound shows inline in Jupyter and saves to files. The thread lives in a
folder (artifacts, exemplar memory, SQLite checkpoints), so a restarted notebook picks it up again.

Setup:
    Part of codi2-agent. For notebook progress bars install ``ipywidgets`` (tqdm falls back to text).

Instantiate:
    .. code-block:: python

        from codi2_agent import Session

        s = Session(model="tiny", thread="demo")          # folder ./codi2-session by default

Invoke:
    .. code-block:: python

        s.say("draw a small red star in the snow")         # shows the image in a notebook
        s.say("make it blue")
        s.say("now the first picture, but large")
        s.say("what is in this image?", Media.open("photo.png"))
        s.history()                                        # every turn, as TurnResults
        s.undo()                                           # forget the last turn
        t = s.fork("what-if")                              # a new thread from here
        s.say("play a high sine tone with wind").save("out/")
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media, MediaRef, Modality

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

    from codi2_agent.backends import Backend
    from codi2_agent.graphs import SessionParts, TurnOptions
    from codi2_agent.model import CoDi2Model

__all__ = ["ReviewPendingError", "Session", "TurnResult"]

Durability = Literal["sync", "async", "exit"]
DEFAULT_ROOT = "codi2-session"


class ReviewPendingError(RuntimeError):
    """A new turn was started while the last output still waits for `accept()` / `reject()`."""


@dataclass
class TurnResult:
    """One turn's answer: text and media (references into the session's artifact store).

    Shows inline in Jupyter (images, audio players); `save` writes the media to files.
    """

    turn: int
    text: str
    refs: list[MediaRef] = field(default_factory=list)
    request: str = ""
    task: str | None = None
    clarification: bool = False  # the answer is a question back (a reference could not be resolved)
    pending_review: bool = False  # waiting for Session.accept() / Session.reject()
    artifacts: ArtifactStore | None = field(default=None, repr=False, compare=False)
    _media: list[Media] | None = field(default=None, repr=False, compare=False)

    @property
    def media(self) -> list[Media]:
        """The decoded media (loaded from the artifact store on first access)."""
        if self._media is None:
            if self.artifacts is None:
                raise ValueError("this TurnResult has no artifact store to load media from")
            self._media = [self.artifacts.get(r) for r in self.refs]
        return self._media

    @property
    def image(self) -> Media | None:
        return next((m for m in self.media if m.modality is Modality.IMAGE), None)

    @property
    def audio(self) -> Media | None:
        return next((m for m in self.media if m.modality is Modality.AUDIO), None)

    @property
    def ids(self) -> list[str]:
        """``@m:`` references to this turn's media, for later requests."""
        return [f"@m:{r.short_id}" for r in self.refs]

    def save(self, folder: str | Path) -> list[Path]:
        """Write the media (and the text, if any) to `folder`; returns the paths written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [
            m.save(folder / f"turn{self.turn:03d}-{i}-{r.short_id}")
            for i, (m, r) in enumerate(zip(self.media, self.refs, strict=True))
        ]
        if self.text:
            text_path = folder / f"turn{self.turn:03d}.txt"
            text_path.write_text(self.text + "\n", encoding="utf-8")
            paths.append(text_path)
        return paths

    # --- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        media = ", ".join(f"{r.modality.value} @m:{r.short_id}" for r in self.refs)
        flags = " (question)" if self.clarification else " (awaiting review)" if self.pending_review else ""
        return f"TurnResult(turn={self.turn}{flags}, text={self.text!r}" + (
            f", media=[{media}])" if media else ")"
        )

    def _repr_png_(self) -> bytes | None:
        image = self.image if self.refs and self.artifacts is not None else None
        return image._repr_png_() if image is not None else None

    def _repr_html_(self) -> str:
        parts = [f"<div><b>turn {self.turn}</b>"]
        if self.request:
            parts.append(f" &mdash; <i>{html.escape(self.request)}</i>")
        parts.append("</div>")
        if self.text:
            parts.append(f"<div>{html.escape(self.text)}</div>")
        if self.refs and self.artifacts is not None:
            for media, ref in zip(self.media, self.refs, strict=True):
                label = html.escape(f"@m:{ref.short_id}" + (f" — {ref.caption}" if ref.caption else ""))
                if media.modality is Modality.IMAGE:
                    b64 = base64.b64encode(media.to_bytes()[0]).decode("ascii")
                    parts.append(
                        '<figure style="display:inline-block;margin:4px">'
                        f'<img src="data:image/png;base64,{b64}" '
                        'style="width:128px;image-rendering:pixelated"/>'
                        f"<figcaption>{label}</figcaption></figure>"
                    )
                else:
                    parts.append(f"<div>{media._repr_html_()} {label}</div>")
        if self.pending_review:
            parts.append("<div><i>Keep it? Call accept() or reject().</i></div>")
        return "".join(parts)


class Session:
    """One conversation thread with CoDi-2: say things, get text, images and sounds back.

    Args:
        model: ``"tiny"`` (shipped weights), a model folder, a `CoDi2Model`, or a `Backend`.
        thread: the thread id; the same id in the same `root` continues the conversation.
        root: folder holding artifacts, memory and checkpoints (default ``./codi2-session``).
        tenant: whose exemplar memory the thread reads and writes.
        review: pause after each generated medium until `accept()` or `reject()`.
        durability: when checkpoints are written — ``"exit"`` (default: once per turn, a few KB) or
            ``"async"`` / ``"sync"`` (after every step; a crashed turn resumes mid-way).
        progress: show a tqdm bar while media are generated.
        graph_options: passed to `build_session_graph` (``context=``, ``num_inference_steps=``, …).

    Several `Session`s of one `root` may run in one process (`fork` shares everything); a second
    process needs a Chroma server for the memory (embedded Chroma is single-process).
    """

    def __init__(
        self,
        model: str | Path | CoDi2Model | Backend = "tiny",
        *,
        thread: str = "default",
        root: str | Path | None = None,
        tenant: str = "default",
        review: bool = False,
        durability: Durability = "exit",
        progress: bool = True,
        _parts: SessionParts | None = None,
        **graph_options: Any,
    ) -> None:
        from codi2_agent.graphs import open_session_graph

        if durability not in ("sync", "async", "exit"):
            raise ValueError(f"durability must be 'sync', 'async' or 'exit', got {durability!r}")
        self.thread = thread
        self.tenant = tenant
        self.durability: Durability = durability
        self.progress = progress
        folder = Path(root) if root is not None else Path.cwd() / DEFAULT_ROOT
        self._parts = _parts or open_session_graph(
            model, folder, tenant=tenant, review=review, **graph_options
        )
        self._owns_parts = _parts is None

    def __repr__(self) -> str:
        return f"Session(thread={self.thread!r}, root={str(self.root)!r}, turns={self.turn})"

    # --- parts ----------------------------------------------------------------------------------
    @property
    def graph(self) -> Any:
        """The compiled session graph."""
        return self._parts.graph

    @property
    def artifacts(self) -> ArtifactStore:
        return self._parts.artifacts

    @property
    def memory(self) -> Any:
        return self._parts.memory

    @property
    def backend(self) -> Backend:
        return self._parts.backend

    @property
    def root(self) -> Path:
        return self._parts.root

    @property
    def config(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.thread, "tenant": self.tenant}}

    def state(self) -> dict[str, Any]:
        """The thread's current graph state (values)."""
        return dict(self.graph.get_state(self.config).values)

    @property
    def turn(self) -> int:
        """Number of turns so far."""
        return int(self.state().get("turn") or 0)

    @property
    def pending(self) -> bool:
        """True while an output waits for `accept()` / `reject()`."""
        return bool(self.graph.get_state(self.config).next)

    # --- turns ----------------------------------------------------------------------------------
    def say(self, text: str = "", *media: Media | MediaRef | str | Path, options: TurnOptions | None = None,
            **generation: Any) -> TurnResult:  # fmt: skip
        """Send one message — text and any media (Media, a file path, or a stored MediaRef).

        `generation` keywords (``output=``, ``seed=``, ``num_inference_steps=``, ``guidance_scale=``,
        ``max_new_tokens=``) apply to this turn only.
        """
        from langchain_core.messages import HumanMessage

        from codi2_agent.graphs import TurnOptions, ref_block

        if self.pending:
            raise ReviewPendingError("the last output waits for review: call accept() or reject() first")
        content: list[Any] = [{"type": "text", "text": text}] if text else []
        for item in media:
            content.append(ref_block(self._store(item)))
        if not content:
            raise ValueError("say() needs text or media")
        if generation:
            options = (options or TurnOptions()).model_copy(update=generation)
            TurnOptions.model_validate(options.model_dump())  # report a bad keyword by name
        return self.run(HumanMessage(content=content), options)

    def _store(self, item: Media | MediaRef | str | Path) -> MediaRef:
        if isinstance(item, MediaRef):
            return self.artifacts.ref(item)
        if isinstance(item, Media):
            return self.artifacts.put(item)
        if isinstance(item, (str, Path)):
            return self.artifacts.put(Media.open(item))
        raise TypeError(f"media must be Media, MediaRef or a path, not {type(item).__name__}")

    def run(self, message: HumanMessage, options: TurnOptions | None = None) -> TurnResult:
        """Run one turn from a ready message (its media as artifact refs or inline data)."""
        return self._drive({"messages": [message], "options": options})

    def accept(self) -> TurnResult:
        """Keep the output awaiting review (it becomes usable as an exemplar)."""
        return self._resume("accept")

    def reject(self) -> TurnResult:
        """Discard the output awaiting review (it is never used as an exemplar)."""
        return self._resume("reject")

    def _resume(self, answer: str) -> TurnResult:
        from langgraph.types import Command

        if not self.pending:
            raise ValueError("no output is waiting for review")
        return self._drive(Command(resume=answer))

    def _drive(self, graph_input: Any) -> TurnResult:
        bar = None
        try:
            for event in self.graph.stream(
                graph_input, self.config, stream_mode="custom", durability=self.durability
            ):
                bar = self._progress(bar, event)
        finally:
            if bar is not None:
                bar.close()
        return self._latest()

    def _progress(self, bar: Any, event: Any) -> Any:
        if not self.progress or not isinstance(event, dict) or event.get("event") != "progress":
            return bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=event["total"], desc=f"turn {event.get('turn')}", leave=False)
        bar.update(event["step"] - bar.n)
        return bar

    def _latest(self) -> TurnResult:
        snapshot = self.graph.get_state(self.config)
        values = snapshot.values
        if snapshot.next:  # waiting for review: show what was made
            result = values.get("result")
            human = _last_of(values.get("messages", []), "human")
            return TurnResult(
                turn=int(values.get("turn") or 0),
                text=(result.text if result is not None else "") or "Keep this output?",
                refs=list(result.media) if result is not None else [],
                request=_text(human) if human is not None else "",
                task=values["request"].task if values.get("request") else None,
                pending_review=True,
                artifacts=self.artifacts,
            )
        turns = self._results(values.get("messages", []))
        if not turns:
            raise RuntimeError("the turn produced no answer")
        return turns[-1]

    def _results(self, messages: Sequence[BaseMessage]) -> list[TurnResult]:
        from langchain_core.messages import AIMessage, HumanMessage

        out = []
        request = ""
        for m in messages:
            if isinstance(m, HumanMessage):
                request = _text(m)
            elif isinstance(m, AIMessage):
                out.append(self._result(m, request))
        return out

    def _result(self, message: AIMessage, request: str) -> TurnResult:
        from codi2_agent.graphs import message_parts

        parts = message_parts(message)
        meta = message.response_metadata or {}
        return TurnResult(
            turn=int(meta.get("turn", 0)),
            text=" ".join(p for p in parts if isinstance(p, str)),
            refs=[p for p in parts if isinstance(p, MediaRef)],
            request=request,
            task=meta.get("task"),
            clarification=bool(meta.get("clarification")),
            artifacts=self.artifacts,
        )

    # --- history, undo, fork --------------------------------------------------------------------
    def history(self) -> list[TurnResult]:
        """Every answered turn of the thread, oldest first."""
        return self._results(self.state().get("messages", []))

    def __iter__(self) -> Iterator[TurnResult]:
        return iter(self.history())

    def undo(self) -> TurnResult | None:
        """Forget the last turn (its media stop being references or exemplars); returns the new last
        turn, or None when the thread is empty again. The old branch stays in the checkpoint history."""
        from langgraph.types import Overwrite

        snapshot = self.graph.get_state(self.config)
        turn = int(snapshot.values.get("turn") or 0)
        if turn == 0:
            raise ValueError("nothing to undo: the thread has no turns")
        if turn == 1:
            self.graph.update_state(
                self.config,
                {
                    "messages": Overwrite([]),
                    "media": Overwrite([]),
                    "turn": 0,
                    "request": None,
                    "result": None,
                },
                as_node="respond",
            )
            return None
        # The last checkpoint at rest after turn - 1; branching from it drops the turn.
        for past in self.graph.get_state_history(self.config):
            if not past.next and int(past.values.get("turn") or 0) == turn - 1:
                self.graph.update_state(past.config, None, as_node="respond")
                return self._latest()
        raise RuntimeError(f"no checkpoint of turn {turn - 1} to go back to")

    def fork(self, thread: str) -> Session:
        """A new thread that starts as a copy of this one (same model, memory and store)."""
        if thread == self.thread:
            raise ValueError("a fork needs a new thread id")
        child = Session(thread=thread, tenant=self.tenant, durability=self.durability, progress=self.progress,
                        _parts=self._parts)  # fmt: skip
        if child.turn:
            raise ValueError(f"thread {thread!r} already has turns")
        values = self.state()
        values["ancestors"] = [*values.get("ancestors", []), self.thread]
        self.graph.update_state(child.config, values, as_node="respond")
        return child

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the memory and checkpoint database (sessions sharing them via `fork` too)."""
        if self._owns_parts:
            self._parts.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(message: BaseMessage) -> str:
    from codi2_agent.graphs import message_text

    return message_text(message)


def _last_of(messages: Sequence[BaseMessage], kind: str) -> BaseMessage | None:
    return next((m for m in reversed(messages) if m.type == kind), None)
