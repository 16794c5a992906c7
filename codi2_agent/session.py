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
        s.rewind(1)                                        # back to how it was after turn 1
        t = s.fork("what-if")                              # a new thread from here
        other = s.open_thread("second")                    # another thread, same model/memory/store
        s.threads(), s.where()                             # what this folder holds, and where
        s.say("play a high sine tone with wind").save("out/")
"""

from __future__ import annotations

import base64
import html
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from codi2_agent._session_threads import ThreadOperationsMixin
from codi2_agent.artifacts import ArtifactStore
from codi2_agent.locking import LOCKS_FOLDER, FileThreadLocks, ThreadBusyError
from codi2_agent.media import HasMedia, Media, MediaRef, Modality

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

    from codi2_agent.backends import Backend
    from codi2_agent.graphs import MediaRecord, SessionParts, TurnOptions
    from codi2_agent.memory import Memory
    from codi2_agent.model import CoDi2Model

__all__ = ["ReviewPendingError", "Session", "ThreadBusyError", "TurnResult"]

logger = logging.getLogger(__name__)

Durability = Literal["sync", "async", "exit"]
DEFAULT_ROOT = "codi2-session"


class ReviewPendingError(RuntimeError):
    """A new turn was started while the last output still waits for `accept()` / `reject()`."""


@dataclass
class TurnResult(HasMedia):
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
    agreement: float | None = None  # with verify=: the self-check's score of the medium (cosine)
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


class Session(ThreadOperationsMixin):
    """One conversation thread with CoDi-2: say things, get text, images and sounds back.

    Args:
        model: ``"tiny"`` (shipped weights), a model folder, a `CoDi2Model`, or a `Backend`.
        thread: the thread id; the same id in the same `root` continues the conversation.
        root: folder holding artifacts, memory and checkpoints (default ``./codi2-session``).
        tenant: whose exemplar memory the thread reads and writes.
        review: pause after each generated medium until `accept()` or `reject()`.
        durability: when checkpoints are written — ``"exit"`` (default: once per turn, a few KB) or
            ``"async"`` / ``"sync"`` (after every step; a crashed turn resumes mid-way).
        progress: show a tqdm bar while media are generated; None (default) shows one only when
            stderr is a terminal (or in a notebook).
        lock_timeout: seconds a turn waits for another writer of the same thread before
            `ThreadBusyError`.
        device, dtype, device_map, offload: where the model runs and in what precision
            (``dtype="bfloat16"``), when it is loaded here from a name or folder; see `load_model`.
            Unset ones come from ``CODI2_DEVICE``, ``CODI2_DTYPE``, … (`codi2_agent.settings`).
        graph_options: passed to `build_session_graph` (``context=``, ``num_inference_steps=``,
            ``verify=`` for the model's self-check, …).

    Tenancy: a thread belongs to its tenant (its checkpoint key includes the tenant), and the tenant
    sees only media its own threads stored or were given (`artifacts` is the tenant's view of the
    store). Another tenant's thread of the same name is a different thread.

    One writer per thread: a turn (and `rewind` / `copy`) holds the thread's lock, across processes,
    so two writers never interleave — the second waits up to `lock_timeout`, then gets
    `ThreadBusyError`. Readers see whole turns. A turn cut short by a crash is dropped when the
    thread is next written, so a thread is always made of complete turns. The lock is a file under
    `root`; with ``checkpointer="postgresql://…"`` (checkpoints and thread log in Postgres) it is a
    Postgres advisory lock, so processes on several hosts share threads (docs/deploy.md).

    Threads of one `root` share the model, store, memory and checkpoints: `open_thread`, `fork` and
    `copy` return such sessions. A second *process* on the same root needs a Chroma server for the
    memory (embedded Chroma is single-process).
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
        progress: bool | None = None,
        lock_timeout: float = 30.0,
        device: str | None = None,
        dtype: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        offload: bool | None = None,
        **graph_options: Any,
    ) -> None:
        from codi2_agent._placing import load_placed
        from codi2_agent.graphs import open_session_graph, thread_key

        thread_key(tenant, thread)  # refuse a bad name before opening anything
        folder = Path(root) if root is not None else Path.cwd() / DEFAULT_ROOT
        model = load_placed(model, device=device, dtype=dtype, device_map=device_map, offload=offload)
        parts = open_session_graph(model, folder, tenant=tenant, review=review, **graph_options)
        self.lock_timeout = lock_timeout
        self._bind(parts, thread=thread, tenant=tenant, durability=durability, progress=progress, owner=True)

    def _bind(
        self,
        parts: SessionParts,
        *,
        thread: str,
        tenant: str,
        durability: Durability,
        progress: bool | None,
        owner: bool,
    ) -> None:
        from codi2_agent.graphs import thread_key

        if durability not in ("sync", "async", "exit"):
            raise ValueError(f"durability must be 'sync', 'async' or 'exit', got {durability!r}")
        self.thread = thread
        self.tenant = tenant
        self.key = thread_key(tenant, thread)  # the checkpoint key: tenant and thread
        self.durability: Durability = durability
        self.progress = _interactive() if progress is None else progress
        self._parts = parts
        self._artifacts = parts.artifacts.for_tenant(tenant)
        self._owns_parts = owner
        self._reconciled = False  # memory trimmed to the thread log (once per opened session)

    def open_thread(self, thread: str, *, tenant: str | None = None) -> Session:
        """Another thread of this session's folder, sharing its model, store, memory and checkpoints
        (of this session's tenant, or of `tenant`: a server hosts many tenants on one set of parts).

        Closing the returned session leaves the shared parts open (this session owns them)."""
        other = object.__new__(Session)
        other.lock_timeout = self.lock_timeout
        other._bind(self._parts, thread=thread, tenant=tenant or self.tenant, durability=self.durability,
                    progress=self.progress, owner=False)  # fmt: skip
        if other.tenant == self.tenant:
            other._artifacts = self._artifacts  # one tenant, one view (and one decoded-media cache)
        return other

    def __repr__(self) -> str:
        return f"Session(thread={self.thread!r}, root={str(self.root)!r}, turns={self.turn})"

    # --- parts ----------------------------------------------------------------------------------
    @property
    def graph(self) -> Any:
        """The compiled session graph."""
        return self._parts.graph

    @property
    def artifacts(self) -> ArtifactStore:
        """The tenant's view of the artifact store."""
        return self._artifacts

    @property
    def memory(self) -> Memory | None:
        """The exemplar memory (None when the session runs without one)."""
        return self._parts.memory

    @property
    def backend(self) -> Backend:
        return self._parts.backend

    @property
    def root(self) -> Path:
        return self._parts.root

    @property
    def config(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.key, "tenant": self.tenant}}

    def state(self) -> dict[str, Any]:
        """The thread's current graph state (values)."""
        return dict(self.graph.get_state(self.config).values)

    @property
    def turn(self) -> int:
        """Number of turns so far."""
        return int(self.state().get("turn") or 0)

    @property
    def pending(self) -> bool:
        """True while an output waits for `accept()` / `reject()` (not for a turn cut short by a
        crash: that one is dropped when the thread is next written)."""
        snapshot = self.graph.get_state(self.config)
        return any(task.interrupts for task in snapshot.tasks)

    @contextmanager
    def _writing(self, review: Literal["refuse", "require", "ignore"] = "refuse") -> Iterator[None]:
        """Hold the thread's one-writer lock, check the review state, and drop a turn an earlier
        crash cut short — all from one read of the thread's state."""
        from codi2_agent.graphs import recover_thread

        locks = self._parts.locks or FileThreadLocks(self.root / LOCKS_FOLDER)
        with locks.hold(self.key, timeout=self.lock_timeout, name=self.thread):
            snapshot = self.graph.get_state(self.config)
            waiting = any(task.interrupts for task in snapshot.tasks)
            if review == "refuse" and waiting:
                raise ReviewPendingError("the last output waits for review: call accept() or reject() first")
            if review == "require" and not waiting:
                raise ValueError("no output is waiting for review")
            if recover_thread(self.graph, self.config, snapshot):
                logger.warning("thread %r: dropped a turn that a crash cut short", self.thread)
                self._reconciled = False
            if not self._reconciled:
                self._reconcile_memory()
            yield

    def _reconcile_memory(self) -> None:
        """Match the thread's memory items to its log, once per opened session. A process that died
        between a memory write and its checkpoint left items no turn of the thread owns (recall from
        other threads must never return them); one that died before a write behind its turn landed
        left records the memory lacks (they are written now)."""
        from codi2_agent.graphs import restore_memory

        memory = self.memory
        if memory is not None and hasattr(memory, "reconcile_thread"):
            keep = {(r.id, r.turn) for r in self.media_log()}
            dropped = memory.reconcile_thread(self.tenant, self.key, keep)
            if dropped:
                logger.warning("thread %r: forgot %d exemplar(s) a crash left behind", self.thread, dropped)
        if memory is not None:
            log = self._thread_log()
            restored = restore_memory(memory, log, self.artifacts, self.tenant, self.key, self.turn)
            if restored:
                logger.warning("thread %r: wrote %d exemplar(s) a crash kept out", self.thread, restored)
        self._reconciled = True

    # --- turns ----------------------------------------------------------------------------------
    def say(self, text: str = "", *media: Media | MediaRef | str | Path, options: TurnOptions | None = None,
            **generation: Any) -> TurnResult:  # fmt: skip
        """Send one message — text and any media (Media, a file path, a stored MediaRef, or a
        reference such as ``"@m:4a8d5d3261e8"`` that the graph resolves like the same words in `text`).

        `generation` keywords (``output=``, ``seed=``, ``num_inference_steps=``, ``guidance_scale=``,
        ``max_new_tokens=``) apply to this turn only.
        """
        from codi2_agent.graphs import TurnOptions
        from codi2_agent.messages import user_message

        # "@m:…" names a medium of the conversation or memory: the graph resolves it (or asks back).
        mentions = [m.strip() for m in media if isinstance(m, str) and m.strip().startswith("@m:")]
        refs = [
            self._store(item) for item in media if not (isinstance(item, str) and item.strip() in mentions)
        ]
        text = " ".join([text, *mentions]).strip()
        if not text and not refs:
            raise ValueError("say() needs text or media")
        if generation:
            options = (options or TurnOptions()).model_copy(update=generation)
            TurnOptions.model_validate(options.model_dump())  # report a bad keyword by name
        return self.run(user_message(text, refs), options)

    def _store(self, item: Media | MediaRef | str | Path) -> MediaRef:
        if isinstance(item, MediaRef):
            return self.artifacts.ref(item)
        if isinstance(item, Media):
            return self.artifacts.put(item)
        if isinstance(item, (str, Path)):
            return self.artifacts.put(Media.open(item))
        raise TypeError(f"media must be Media, MediaRef or a path, not {type(item).__name__}")

    def run(
        self,
        message: HumanMessage,
        options: TurnOptions | None = None,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> TurnResult:
        """Run one turn from a ready message (its media as artifact refs or inline data).

        `on_event` receives the turn's progress events as they stream (``start``, ``progress`` with
        step/total, ``end``): how a tool passes them on to the agent run that called it.
        """
        from codi2_agent.messages import message_text

        graph_input = {"messages": [message], "options": options}
        return self._drive(graph_input, request=message_text(message), on_event=on_event)

    def accept(self) -> TurnResult:
        """Keep the output awaiting review (it becomes usable as an exemplar)."""
        return self._resume("accept")

    def reject(self) -> TurnResult:
        """Discard the output awaiting review (it is never used as an exemplar)."""
        return self._resume("reject")

    def _resume(self, answer: str) -> TurnResult:
        from langgraph.types import Command

        return self._drive(Command(resume=answer), request=None, review="require")

    def _drive(
        self,
        graph_input: Any,
        *,
        request: str | None,
        review: Literal["refuse", "require"] = "refuse",
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> TurnResult:
        """Run the graph and read the turn's answer from the stream itself (no history rebuild)."""
        bar = None
        answer: AIMessage | None = None
        interrupted = False
        try:
            with self._writing(review):
                for mode, chunk in self.graph.stream(
                    graph_input, self.config, stream_mode=["custom", "updates"], durability=self.durability
                ):
                    if mode == "custom":
                        bar = self._progress(bar, chunk)
                        if on_event is not None and isinstance(chunk, dict):
                            on_event(chunk)
                    elif "__interrupt__" in chunk:
                        interrupted = True
                    elif "respond" in chunk:
                        answer = chunk["respond"]["messages"][-1]
        finally:
            if bar is not None:
                bar.close()
        if interrupted:
            return self._awaiting_review()
        if answer is None:
            raise RuntimeError("the turn produced no answer")
        if request is None:  # resumed after a review: the request is the thread's last human message
            human = _last_of(self.state().get("messages", []), "human")
            request = _text(human) if human is not None else ""
        return self._result(answer, request)

    def _progress(self, bar: Any, event: Any) -> Any:
        if not self.progress or not isinstance(event, dict) or event.get("event") != "progress":
            return bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=event["total"], desc=f"turn {event.get('turn')}", leave=False)
        bar.update(event["step"] - bar.n)
        return bar

    def _awaiting_review(self) -> TurnResult:
        values = self.state()
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

    def _latest(self) -> TurnResult | None:
        """The thread's last answered turn (None for an empty thread)."""
        if self.pending:
            return self._awaiting_review()
        turns = self._results()
        return turns[-1] if turns else None

    def _thread_log(self) -> Any:
        from codi2_agent.graphs import ThreadLog

        log = ThreadLog(self.graph.store)
        log.adopt(self.tenant, self.key, self.state())  # a thread written before the log existed
        return log

    def _results(self) -> list[TurnResult]:
        from langchain_core.messages import AIMessage

        entries = self._thread_log().turns(self.tenant, self.key, self.turn)
        return [
            self._result(AIMessage(content=e.content, response_metadata=e.metadata), e.request)
            for e in entries
        ]

    def media_log(self) -> list[MediaRecord]:
        """Every medium of the thread, in order: inputs and outputs, with their turn, parents (the
        media each was made from) and the instruction that made it."""
        return list(self._thread_log().media(self.tenant, self.key, self.turn))

    def _result(self, message: AIMessage, request: str) -> TurnResult:
        from codi2_agent.messages import message_parts

        parts = message_parts(message)
        meta = message.response_metadata or {}
        return TurnResult(
            turn=int(meta.get("turn", 0)),
            text=" ".join(p for p in parts if isinstance(p, str)),
            refs=[p for p in parts if isinstance(p, MediaRef)],
            request=request,
            task=meta.get("task"),
            clarification=bool(meta.get("clarification")),
            agreement=meta.get("agreement"),
            artifacts=self.artifacts,
        )

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the memory and checkpoint database (threads opened from this session too)."""
        if self._owns_parts:
            self._parts.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interactive() -> bool:
    """A terminal or a notebook: where a progress bar is wanted."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    if type(shell).__name__ == "ZMQInteractiveShell":  # a notebook kernel (ipykernel merely imported is not)
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _text(message: BaseMessage) -> str:
    from codi2_agent.messages import message_text

    return message_text(message)


def _last_of(messages: Sequence[BaseMessage], kind: str) -> BaseMessage | None:
    return next((m for m in reversed(messages) if m.type == kind), None)
