"""BatchStream: the paper trainer's batches from a stream of Samples (shuffled, sharded, resumable)."""

from __future__ import annotations

import re

import pytest

from codi2_agent.data.samples import Message, Sample
from codi2_agent.model.processing_codi2 import CoDi2Processor, build_tokenizer
from codi2_agent.training.paper import BatchStream, EmptyDataError

PROCESSOR = CoDi2Processor(build_tokenizer())
SAMPLES = [Sample("chat", [Message("user", [f"item {i}"])], f"answer {i}", None, None) for i in range(12)]


def _items(stream: BatchStream, batches: int) -> list[int]:
    """The sample numbers in the next `batches` batches, in order."""
    out = []
    for _ in range(batches):
        ids = stream.next_batch()["input_ids"]
        out += [int(re.search(r"item (\d+)", PROCESSOR.decode(row)).group(1)) for row in ids]
    return out


def test_the_shuffle_buffer_mixes_the_order_and_keeps_every_sample():
    plain = _items(BatchStream(SAMPLES, PROCESSOR, 4), 3)
    assert plain == list(range(12))
    shuffled = _items(BatchStream(SAMPLES, PROCESSOR, 4, shuffle_buffer=6, seed=1), 3)
    assert shuffled != plain and len(set(shuffled)) >= 9  # a buffer, not a permutation of the epoch
    again = _items(BatchStream(SAMPLES, PROCESSOR, 4, shuffle_buffer=6, seed=1), 3)
    assert again == shuffled  # seeded


def test_processes_take_disjoint_shares_and_a_resumed_stream_continues_exactly():
    ranks = [BatchStream(SAMPLES, PROCESSOR, 2, rank=r, world=2, shuffle_buffer=5, seed=3) for r in (0, 1)]
    first = [_items(s, 2) for s in ranks]
    assert not set(first[0]) & set(first[1]) and len(first[0]) == len(first[1]) == 4
    assert ranks[0].position == ranks[1].position == 8  # the group consumed 2 batches x 2 x 2
    resumed = BatchStream(SAMPLES, PROCESSOR, 2, rank=1, world=2, shuffle_buffer=5, seed=3, position=8)
    assert _items(resumed, 3) == _items(ranks[1], 3)  # across the epoch boundary too


def test_unusable_samples_are_skipped_and_counted_and_an_empty_source_is_an_error():
    broken = Sample("chat", [Message("assistant", ["hi"])], "x", None, None)  # must start with the user
    stream = BatchStream([SAMPLES[0], broken, "junk", SAMPLES[1]], PROCESSOR, 4)
    assert _items(stream, 1) == [0, 1] and stream.skipped == {"ValueError": 2}
    with pytest.raises(EmptyDataError, match="yielded no samples"):
        BatchStream([], PROCESSOR, 2).next_batch()
    with pytest.raises(EmptyDataError, match="could not be used"):
        BatchStream(lambda: iter([broken] * 50), PROCESSOR, 5).next_batch()
