"""A resumed paper run reads past the consumed samples of real dataset folders without decoding
their media, and draws the very batches an uninterrupted run draws; each process decodes the media
of its own share only, and a bad medium is skipped and counted when it is used, not when read past."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from codi2_agent.media import Media
from codi2_agent.model.processing_codi2 import CoDi2Processor, build_tokenizer
from codi2_agent.training.datasets import DeferredMedia, ProblemLog, check_dataset, open_dataset
from codi2_agent.training.datasets._source import ReadOptions
from codi2_agent.training.paper import BatchStream
from codi2_agent.training.paper.sources import dataset_sources

PROCESSOR = CoDi2Processor(build_tokenizer())
MEDIA_KEYS = ("image_values", "output_image_values", "audio_values", "output_audio_values")


def png_bytes(colour: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, 255 - colour, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every format in one folder: 8 image pairs, 3 audio pairs, a 3-key shard, 3 edits, a subject
    of 3 pictures (34 samples an epoch)."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    for i in range(14):
        (root / f"img/{i}.png").write_bytes(png_bytes(i * 17, (8 + i % 3, 8)))
    pairs = [{"image": f"img/{i}.png", "caption": f"picture {i}"} for i in range(8)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(root / f"{i}.wav", rng.uniform(-0.3, 0.3, 4410).astype(np.float32), 22050)
    (root / "sounds.csv").write_text("audio,caption\n" + "".join(f"{i}.wav,sound {i}\n" for i in range(3)))
    with tarfile.open(root / "shard-000000.tar", "w") as tar:
        for key in range(3):
            for name, data in ((f"{key:06d}.png", png_bytes(200 - key)), (f"{key:06d}.txt", b"shard")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    edits = [
        {"input": f"img/{8 + i}.png", "instruction": f"edit {i}", "output": f"img/{i}.png"} for i in range(3)
    ]
    (root / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
    subject = {"subject": "thing", "images": ["img/11.png", "img/12.png", "img/13.png"]}
    (root / "subjects.jsonl").write_text(json.dumps(subject) + "\n")
    return root


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What `Media.open` (every decode of a dataset reader) is called on, in order."""
    calls: list[object] = []
    real = Media.open.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Media], source: Any, **kwargs: Any) -> Media:
        calls.append(kwargs.get("name") or source)
        return real(cls, source, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Media, "open", classmethod(counting))
    return calls


def batches(stream: BatchStream, n: int) -> list[dict[str, Any]]:
    return [stream.next_batch() for _ in range(n)]


def media_rows(drawn: list[dict[str, Any]]) -> int:
    """The media a process put in its batches (an exemplar's or a shared pair's may repeat)."""
    return sum(batch[key].shape[0] for batch in drawn for key in MEDIA_KEYS if key in batch)


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_resume_reads_past_without_decoding_and_continues_with_the_same_batches(
    folder: Path, decodes: list[object], stage: str
) -> None:
    source = dataset_sources([folder], [folder], sample_rate=16000, seed=2)[stage]
    settings: dict[str, Any] = {"world": 2, "shuffle_buffer": 6, "seed": 1, "name": stage}
    for rank in (0, 1):
        decodes.clear()
        uninterrupted = BatchStream(source, PROCESSOR, 2, rank=rank, **settings)
        before = batches(uninterrupted, 6)
        assert uninterrupted.position == 24
        # this process decodes the media of its own samples only, never the other process's
        assert 0 < len(decodes) <= media_rows(before)
        after = batches(uninterrupted, 6)  # past the 34-sample epoch: the next epoch's reading too

        decodes.clear()
        resumed = BatchStream(source, PROCESSOR, 2, rank=rank, position=24, **settings)
        assert decodes == []  # 24 samples (and a shuffle buffer) read past, nothing decoded
        assert_same_batches(batches(resumed, 6), after)
        assert 0 < len(decodes) <= media_rows(after)
        assert resumed.position == uninterrupted.position and not resumed.skipped


def test_a_corrupt_medium_is_counted_when_used_and_not_when_read_past(
    tmp_path: Path, decodes: list[object]
) -> None:
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(
            png_bytes(i * 60) if i != 1 else b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
        )
    records = [{"image": f"{i}.png", "caption": f"picture {i}"} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = ProblemLog()

    def source() -> Iterator[Any]:
        return open_dataset(tmp_path, problems=problems, defer_decoding=True)

    resumed = BatchStream(source, PROCESSOR, 2, position=4)  # samples 2 and 3 show the corrupt picture
    assert decodes == [] and problems.total == 0
    assert resumed.next_batch()["input_ids"].shape[0] == 2 and not resumed.skipped

    uninterrupted = BatchStream(source, PROCESSOR, 2)
    first, second = uninterrupted.next_batch(), uninterrupted.next_batch()
    assert first["input_ids"].shape[0] == 2
    assert_same_batches([second], [BatchStream(source, PROCESSOR, 2, position=4).next_batch()])
    assert uninterrupted.skipped == {"CorruptMediaError": 2}  # both samples of the pair
    assert uninterrupted.position == 6  # the empty round was followed by the next one
    # the one medium is reported once, under its record's line
    assert [(p.file, p.line, p.kind) for p in problems.problems] == [("pairs.jsonl", 2, "CorruptMediaError")]


def test_check_dataset_decodes_even_when_asked_to_defer(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": "broken"}) + "\n")
    report = check_dataset(tmp_path, options=ReadOptions(defer_decoding=True))
    assert dict(report.problems.counts) == {"CorruptMediaError": 1} and not report.samples


def test_deferred_reading_gives_the_eager_samples_decoding_each_medium_once_on_use(
    folder: Path, decodes: list[object]
) -> None:
    eager = list(open_dataset(folder, sample_rate=16000))
    decodes.clear()
    deferred = list(open_dataset(folder, sample_rate=16000, defer_decoding=True))

    def described(samples: list[Any]) -> list[Any]:
        return [(s.task, s.meta, s.target_text, [m.text() for m in s.messages]) for s in samples]

    def media(sample: Any) -> list[Media]:
        return sample.input_media() + ([sample.target] if sample.target is not None else [])

    assert described(deferred) == described(eager) and len(deferred) == 34
    pairs = [
        (d, e)
        for ds, es in zip(deferred, eager, strict=True)
        for d, e in zip(media(ds), media(es), strict=True)
    ]
    assert all(isinstance(d, DeferredMedia) and not d.decoded for d, _ in pairs)
    assert [(d.modality, d.caption, d.sample_rate) for d, _ in pairs] == [
        (e.modality, e.caption, e.sample_rate) for _, e in pairs
    ]  # known before decoding: what checks, the in-context builder and the text-only trick read
    assert "not decoded" in repr(pairs[0][0]) and all(s.check() is s for s in deferred)
    assert decodes == []
    assert all(d == e for d, e in pairs)  # the same pixels and waveforms, once decoded
    assert len(decodes) == len({id(d) for d, _ in pairs})  # a medium shared by samples decodes once
