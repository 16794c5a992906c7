"""When the served model starts a call, and on which requests: `ModelBatcher`, free of Ray and HTTP.

Ray Serve's ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its *first* request. The
sessions of a server answer their users and send their next turns a few tens of milliseconds apart
(each has its own graph work to do first), so a fixed window opened by the first of them closes on
two or three, the model starts on those, and the rest queue behind that call: the sessions split
into cohorts that take turns on the model with small batches (measured: 8 sessions, 28 calls for
91 requests). `ModelBatcher` instead waits, while the model is free, until the requests *stop
arriving*: a call starts once the batch is full, or once no request is on its way and none arrived
for ``batch_wait_timeout_s`` (a lone request waits no longer than before), and at the latest
``max_batch_wait_s`` after the model became free (a steady stream cannot hold it idle).

That alone cannot rejoin a cohort once it is split: if session B's first request arrives just after
the model started on A's, A's next request arrives while B's call runs, and the two take turns for
ever, each alone. So the batcher also waits (within ``max_batch_wait_s``) for the *sessions it has
just answered* that come back quickly: a session (the request's ``x-session-id``) is expected back
after its answer if its last return came within ``max_batch_wait_s`` (a new session is assumed to),
so A and B meet in one call from their next turn on. A session a person types into returns slowly,
is marked so after its first answer and is not waited for again; a request without a session is
never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Arrival", "ModelBatcher"]

Item = TypeVar("Item")
Answer = TypeVar("Answer")
# Sessions whose return speed is remembered; the least recently seen are forgotten first (a client
# chooses its session names, so the table is bounded).
MAX_SESSIONS = 4096


@dataclass(eq=False)
class Arrival:
    """A request that reached the server and is on its way to the model (parsed, then gathered)."""

    session: str | None = None  # its conversation, if the client named one
    joined: bool = False


class ModelBatcher(Generic[Item, Answer]):
    """One model, many callers: each call takes every request waiting, up to `max_batch_size`.

    Use from one event loop: `expect()` when a request arrives, `answer()` once it is ready for the
    model (with whatever arrived together, e.g. from ``@serve.batch``), `discard()` when it leaves
    early (a bad request, a client gone). `run` answers one batch, in order; it runs one at a time.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Answer]]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_batch_wait_s: float,
    ) -> None:
        self._run = run
        self.configure(max_batch_size, batch_wait_timeout_s, max_batch_wait_s)
        self._waiting: list[tuple[Item, asyncio.Future[Answer], str | None]] = []
        self._on_the_way: set[Arrival] = set()
        # session -> whether it came back within max_batch_wait_s of its last answer (new: assumed so)
        self._quick: OrderedDict[str, bool] = OrderedDict()
        self._answered_at: dict[str, float] = {}  # sessions answered, not yet back: when
        # quick sessions answered and not yet back -> until when: what `_answered_at` and `_quick` say,
        # kept apart so that the gather loop scans only the few sessions it waits for, not the table
        self._due: dict[str, float] = {}
        self._last_arrival = float("-inf")
        self._changed: asyncio.Event | None = None  # made on the loop that uses it
        self._model_free: asyncio.Lock | None = None
        self.gather_seconds = 0.0  # time the free model waited for arriving requests

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float, max_batch_wait_s: float) -> None:
        if max_batch_size < 1 or batch_wait_timeout_s < 0 or max_batch_wait_s < 0:
            raise ValueError(
                "max_batch_size must be >= 1 and the waits >= 0, got "
                f"{max_batch_size}, {batch_wait_timeout_s}, {max_batch_wait_s}"
            )
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_batch_wait_s = max_batch_wait_s

    # --- a request's way in ---------------------------------------------------------------------------
    def expect(self, session: str | None = None) -> Arrival:
        """A request has arrived (from `session`, if named): a free model waits for it (within its
        limits) before starting."""
        now = time.monotonic()
        arrival = Arrival(session)
        if session is not None:
            answered = self._answered_at.pop(session, None)
            self._due.pop(session, None)
            quick = self._quick.pop(session, True)
            if answered is not None:
                quick = now - answered <= self.max_batch_wait_s
            self._quick[session] = quick
            while len(self._quick) > MAX_SESSIONS:
                forgotten, _ = self._quick.popitem(last=False)
                self._answered_at.pop(forgotten, None)
                self._due.pop(forgotten, None)
        self._on_the_way.add(arrival)
        self._last_arrival = now
        self._notify()
        return arrival

    def discard(self, arrival: Arrival) -> None:
        """The request will not come to the model (refused, cancelled); a no-op once it has joined."""
        if not arrival.joined:
            self._on_the_way.discard(arrival)
            self._notify()

    async def answer(self, arrivals: Sequence[Arrival], items: Sequence[Item]) -> list[Answer]:
        """Answer `items` (whose `arrivals` these are), in order, in whichever model calls take them."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Answer]] = [loop.create_future() for _ in items]
        for arrival in arrivals:
            arrival.joined = True
            self._on_the_way.discard(arrival)
        self._waiting.extend(zip(items, futures, [a.session for a in arrivals], strict=True))
        self._notify()
        while not all(f.done() for f in futures):
            await self._run_waiting(futures)
        return [f.result() for f in futures]

    # --- the model's side -------------------------------------------------------------------------------
    async def _run_waiting(self, mine: list[asyncio.Future[Answer]]) -> None:
        """One model call on the requests waiting once the model is free, unless another call has
        answered all of `mine` meanwhile (then its caller returns at once)."""
        if self._model_free is None:
            self._model_free = asyncio.Lock()
        async with self._model_free:
            if all(f.done() for f in mine):
                return
            await self._gather()
            taken = self._waiting[: self.max_batch_size]
            del self._waiting[: self.max_batch_size]
            if not taken:
                return
            try:
                answers = await self._run([item for item, _, _ in taken])
            except Exception as e:  # the callers of this call get its error
                for _, future, _ in taken:
                    if not future.done():
                        future.set_exception(e)
                return
            finally:
                self._answered([session for _, _, session in taken])
            for (_, future, _), answer in zip(taken, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    def _answered(self, sessions: list[str | None]) -> None:
        """These sessions got their answers now: the quick ones are due back within max_batch_wait_s."""
        now = time.monotonic()
        for session in sessions:
            if session is not None and session in self._quick:
                self._answered_at[session] = now
                if self._quick[session]:
                    self._due[session] = now + self.max_batch_wait_s

    async def _gather(self) -> None:
        """Wait, the model being free, until the batch is full or the requests stop arriving (and
        the quick sessions just answered are back)."""
        start = time.monotonic()
        deadline = start + self.max_batch_wait_s
        while len(self._waiting) < self.max_batch_size:
            now = time.monotonic()
            for session in [s for s, until in self._due.items() if until <= now]:
                del self._due[session]  # not back in time: it starts no later call
            quiet_from = self._last_arrival + self.batch_wait_timeout_s
            if now >= deadline or (not self._on_the_way and not self._due and now >= quiet_from):
                break
            # a request on its way joins (or leaves) with a notification, and so does a session
            # coming back; otherwise wake when quiet, or when the next due session is overdue
            if self._on_the_way:
                wake = deadline
            elif self._due:
                wake = min(deadline, max(quiet_from, min(self._due.values())))
            else:
                wake = min(deadline, quiet_from)
            changed = self._event()
            changed.clear()
            with contextlib.suppress(TimeoutError):  # woken by the clock: quiet, or out of time
                await asyncio.wait_for(changed.wait(), timeout=max(0.0, wake - now))
        self.gather_seconds += time.monotonic() - start

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        self._event().set()
