"""`ModelBatcher`: when the served model starts a call and on which requests (no Ray, a real event loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from codi2_agent.serving import batching
from codi2_agent.serving.batching import ModelBatcher


class Model:
    """Stands for the model: records each call's items, takes `seconds` per call, can be told to fail."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.started: list[float] = []
        self.seconds = seconds
        self.fail_on: int | None = None

    async def run(self, items: list[int]) -> list[str]:
        self.started.append(time.monotonic())
        self.calls.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError(f"item {self.fail_on} broke the call")
        return [f"answer {i}" for i in items]


def batcher(model: Model, *, size: int = 8, wait: float = 0.05, most: float = 1.0) -> ModelBatcher[int, str]:
    return ModelBatcher(model.run, max_batch_size=size, batch_wait_timeout_s=wait, max_batch_wait_s=most)


async def request(
    b: ModelBatcher[int, str], item: int, *, after: float, parse: float = 0.01, session: str | None = None
) -> str:
    """A request arriving `after` s from now, ready for the model `parse` s later (as the handler)."""
    await asyncio.sleep(after)
    arrival = b.expect(session)
    try:
        await asyncio.sleep(parse)
        (answer,) = await b.answer([arrival], [item])
        return answer
    finally:
        b.discard(arrival)


def test_requests_arriving_a_little_apart_make_one_call() -> None:
    # Sessions answered together send their next turns ~20 ms apart: a window opened by the first
    # request (50 ms) would close on three of them; waiting for arrivals to stop takes all six.
    model = Model()
    b = batcher(model)

    async def main() -> list[str]:
        return await asyncio.gather(*(request(b, i, after=0.02 * i) for i in range(6)))

    answers = asyncio.run(main())
    assert answers == [f"answer {i}" for i in range(6)]
    assert model.calls == [[0, 1, 2, 3, 4, 5]]


def test_a_lone_request_waits_only_for_the_quiet_gap() -> None:
    model = Model()
    b = batcher(model, wait=0.05, most=5.0)

    async def main() -> float:
        t0 = time.monotonic()
        await request(b, 7, after=0.0, parse=0.0)
        return model.started[0] - t0

    waited = asyncio.run(main())
    assert model.calls == [[7]]
    assert 0.04 <= waited < 1.0  # the 50 ms gap, never the 5 s limit
    assert 0.04 <= b.gather_seconds < 1.0


def test_a_request_that_leaves_before_joining_does_not_hold_the_model() -> None:
    model = Model()
    b = batcher(model, wait=0.01, most=5.0)

    async def main() -> float:
        t0 = time.monotonic()
        gone = b.expect()  # arrives, then is refused (bad input) before it joins
        task = asyncio.create_task(request(b, 1, after=0.0, parse=0.0))
        await asyncio.sleep(0.05)
        b.discard(gone)
        await task
        return model.started[0] - t0

    started = asyncio.run(main())
    assert model.calls == [[1]]
    assert started < 1.0  # not the 5 s limit


def test_a_steady_stream_starts_the_model_by_max_batch_wait() -> None:
    model = Model()
    b = batcher(model, size=64, wait=0.1, most=0.2)

    async def main() -> None:
        # a request every 30 ms for 0.9 s: never a 100 ms pause
        await asyncio.gather(*(request(b, i, after=0.03 * i) for i in range(30)))

    asyncio.run(main())
    assert len(model.calls) >= 2  # the first call did not wait for the whole stream
    assert len(model.calls[0]) < 30
    assert sorted(i for call in model.calls for i in call) == list(range(30))


def test_calls_take_at_most_max_batch_size_and_answer_in_order() -> None:
    model = Model(seconds=0.05)
    b = batcher(model, size=4)

    async def main() -> list[str]:
        arrivals = [b.expect() for _ in range(10)]
        return await b.answer(arrivals, list(range(10)))

    assert asyncio.run(main()) == [f"answer {i}" for i in range(10)]
    assert model.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_requests_arriving_during_a_call_go_together_into_the_next() -> None:
    model = Model(seconds=0.3)
    b = batcher(model, wait=0.02)

    async def main() -> None:
        first = asyncio.create_task(request(b, 0, after=0.0))
        later = [request(b, i, after=0.1 + 0.02 * i) for i in range(1, 5)]  # while call 1 runs
        await asyncio.gather(first, *later)

    asyncio.run(main())
    assert model.calls == [[0], [1, 2, 3, 4]]


def test_a_failing_call_fails_its_own_requests_only() -> None:
    model = Model(seconds=0.2)
    model.fail_on = 0
    b = batcher(model, wait=0.02)

    async def main() -> list[object]:
        first = asyncio.create_task(request(b, 0, after=0.0))
        second = asyncio.create_task(request(b, 1, after=0.1))  # arrives during the failing call
        return await asyncio.gather(first, second, return_exceptions=True)

    failed, answered = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and "item 0" in str(failed)
    assert answered == "answer 1"
    assert model.calls == [[0], [1]]


async def conversation(
    b: ModelBatcher[int, str], session: str | None, items: list[int], *, start: float, think: float
) -> None:
    """A session's turns: each sent `think` s after the last answer."""
    await asyncio.sleep(start)
    for item in items:
        await request(b, item, after=0.0, session=session)
        await asyncio.sleep(think)


def test_a_split_cohort_meets_again_on_its_next_turn() -> None:
    # B's first turn arrives just after the model started on A's: without sessions the two take
    # turns for ever, each alone; with sessions the model waits for A (just answered, quick) and
    # answers B's first turn with A's second, and so on.
    def calls(named: bool) -> list[list[int]]:
        model = Model(seconds=0.3)
        b = batcher(model, wait=0.05, most=0.5)

        async def main() -> None:
            await asyncio.gather(
                conversation(b, "a" if named else None, [10, 11, 12], start=0.0, think=0.05),
                conversation(b, "b" if named else None, [20, 21, 22], start=0.15, think=0.05),
            )

        asyncio.run(main())
        return [sorted(call) for call in model.calls]

    assert calls(named=False) == [[10], [20], [11], [21], [12], [22]]
    assert calls(named=True) == [[10], [11, 20], [12, 21], [22]]


def test_a_session_that_returns_slowly_is_waited_for_once_only() -> None:
    # "a" thinks 0.6 s between turns, longer than max_batch_wait_s (0.3): after its first answer the
    # model waits for it (a new session is assumed quick), after its second it does not. Requests
    # without a session (1, 2) arrive during a's calls and are never waited for themselves.
    model = Model(seconds=0.2)
    b = batcher(model, wait=0.02, most=0.3)

    async def main() -> None:
        await asyncio.gather(
            conversation(b, "a", [10, 11], start=0.0, think=0.6),  # calls at ~0.03 and ~0.86
            request(b, 1, after=0.05),  # during a's first call
            request(b, 2, after=0.95),  # during a's second call
        )

    asyncio.run(main())
    assert model.calls == [[10], [1], [11], [2]]
    ended = [t + model.seconds for t in model.started]
    waited_after_first = model.started[1] - ended[0]
    waited_after_second = model.started[3] - ended[2]
    assert waited_after_first >= 0.25  # held for "a", up to max_batch_wait_s
    assert waited_after_second < 0.2  # "a" is known to be slow now: only the quiet gap


def test_the_sessions_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "MAX_SESSIONS", 8)
    b = batcher(Model())

    async def main() -> None:
        for i in range(20):  # a client making up session names
            b.discard(b.expect(f"s{i}"))

    asyncio.run(main())
    assert list(b._quick) == [f"s{i}" for i in range(12, 20)]  # the most recent 8


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        batcher(Model(), size=0)
    with pytest.raises(ValueError, match="the waits >= 0"):
        batcher(Model(), wait=-0.1)
