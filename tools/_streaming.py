"""Streaming helpers: stop sequences cut mid-stream and a blocking iterator consumed from an event loop
(`ChatCoDi2`), and where the tools' progress events go (`tool_event_sink`).

Example:
    >>> cut = StopCut(["!!"])
    >>> [cut.push(p) for p in ["Hi", " there", "!", "! bye"]] + [cut.finish("Hi there!! bye")]
    ['H', 'i ther', 'e', '', '']
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["StopCut", "cut_at_stops", "iterate_in_thread", "listening_to_tools", "tool_event_sink"]

ToolEvent = dict[str, Any]

T = TypeVar("T")


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class StopCut:
    """Streamed text in, the part of it before the first stop string out, as soon as that is certain.

    A piece is held back only while it could still be the start of a stop string: with stops of at
    most L characters, the last L - 1 characters seen. The pieces joined equal
    `cut_at_stops(whole text, stops)`.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._seen = ""
        self._sent = 0

    def push(self, piece: str) -> str:
        """Add streamed text; returns what can now be passed on ("" if nothing yet)."""
        self._seen += piece
        # A stop that starts before `safe` would already be complete in `_seen`, so it is in `cut`.
        safe = min(len(cut_at_stops(self._seen, self.stops)), len(self._seen) - self._hold)
        if safe <= self._sent:
            return ""
        out = self._seen[self._sent : safe]
        self._sent = safe
        return out

    def finish(self, whole: str) -> str:
        """The rest, given the whole answer's text (the pieces pushed joined)."""
        rest = cut_at_stops(whole, self.stops)[self._sent :]
        self._sent += len(rest)
        return rest


_DONE = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run the blocking iterator `make()` in a worker thread and yield its items here, as they come.

    The whole iteration stays in that one thread (an iterator holding a lock may not be resumed from
    another). If the consumer stops early, the worker closes the iterator after its current item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stopped = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the loop closed while the worker ran: nobody is listening
            stopped.set()

    def work() -> None:
        try:
            iterator = make()
            try:
                for item in iterator:
                    if stopped.is_set():
                        break
                    put(item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # handed to the consumer, raised there
            put(_DONE, e)
            return
        put(_DONE)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                break
            yield item
        await worker
    finally:
        stopped.set()


# --- tool progress -------------------------------------------------------------------------------
_listener: contextvars.ContextVar[Callable[[ToolEvent], None] | None] = contextvars.ContextVar(
    "codi2_tool_listener", default=None
)


@contextlib.contextmanager
def listening_to_tools(listener: Callable[[ToolEvent], None]) -> Iterator[None]:
    """Send the events of the tool calls made inside this block (and the tasks and threads it starts
    with a copied context) to `listener` too: how a server outside LangGraph (MCP) hears progress."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def _langgraph_writer() -> Callable[[ToolEvent], None] | None:
    """The custom-stream writer of the LangGraph run calling the tool, or None outside one."""
    from langgraph.config import get_stream_writer

    try:
        return get_stream_writer()
    except (RuntimeError, KeyError):  # not in a runnable context / a runnable that is not a graph
        return None


def tool_event_sink(**tags: Any) -> Callable[[ToolEvent], None] | None:
    """Where a tool call's events go, each tagged with `tags` (tool name, tool call id): the calling
    agent's ``stream_mode="custom"`` and any `listening_to_tools` listener. Call it in the tool's own
    context (the writer is looked up there, not in the thread that later runs the turn). None when
    nobody listens."""
    sinks = [s for s in (_langgraph_writer(), _listener.get()) if s is not None]
    if not sinks:
        return None

    def send(event: ToolEvent) -> None:
        tagged = {**event, **tags}
        for sink in sinks:
            sink(tagged)

    return send
