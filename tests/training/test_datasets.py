"""Dataset readers: each format read from tiny real files into the right `Sample`s, streamed, and
every kind of bad input refused by name (strict) or counted and skipped (lenient)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from codi2_agent.media import CorruptMediaError, Media, MediaError, MediaNotFoundError, MediaTooLargeError
from codi2_agent.training.datasets import (
    BadRecordError,
    CorruptShardError,
    DatasetError,
    DatasetFormatError,
    ProblemLog,
    UnsafePathError,
    find_sources,
    load_media,
    open_dataset,
)


# --- tiny real datasets -------------------------------------------------------------------------
def png(path: Path, size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def tone(path: Path, seconds: float, rate: int, hz: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return path


def jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def image_pairs(folder: Path) -> Path:
    png(folder / "images/a.png", (20, 10))
    png(folder / "images/b.png", (16, 16))
    png(folder / "images/c.png", (8, 12))
    captions = {"a": "a red bus on a bridge", "b": "a square of red", "c": "a tall red thing"}
    return jsonl(
        folder / "pairs.jsonl", [{"image": f"images/{k}.png", "caption": c} for k, c in captions.items()]
    )


def shard(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def encoded(media_path: Path) -> bytes:
    return media_path.read_bytes()


# --- the formats --------------------------------------------------------------------------------
def test_image_caption_jsonl_gives_both_directions_with_decoded_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_pairs(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    samples = list(open_dataset("data"))  # a relative folder: sources are still named inside it
    assert [s.task for s in samples] == ["caption_image", "text_to_image"] * 3
    caption, generate = samples[0], samples[1]
    assert caption.target is None and caption.target_text == "a red bus on a bridge"
    (picture,) = caption.input_media()
    assert picture.image.size == (20, 10) and picture.caption == "a red bus on a bridge"
    assert generate.target is not None and generate.target.image.size == (20, 10)
    assert "a red bus on a bridge" in generate.messages[0].text() and not generate.input_media()
    assert [s.target.image.size for s in samples[1::2] if s.target] == [(20, 10), (16, 16), (8, 12)]
    assert caption.meta["source"] == "pairs.jsonl:1" and caption.meta["format"] == "image_caption"
    assert all(s.check() is s for s in samples)


def test_webdataset_shards_are_read_key_by_key_images_and_sounds(tmp_path: Path) -> None:
    media = tmp_path / "media"
    Image.new("RGB", (24, 18), (0, 90, 200)).save(media / "x.jpg") if media.mkdir() is None else None
    png(media / "y.png", (9, 7))
    tone(media / "z.flac", 0.5, 44100)
    caption_json = json.dumps({"caption": "a tiny red square"}).encode()
    shard(tmp_path / "data/shard-000000.tar", [
        ("000001.jpg", encoded(media / "x.jpg")), ("000001.txt", b"a blue field\n"),
        ("000002.png", encoded(media / "y.png")), ("000002.json", caption_json),
    ])  # fmt: skip
    shard(
        tmp_path / "data/shard-000001.tar.gz",
        [("000003.flac", encoded(media / "z.flac")), ("000003.txt", b"a tone")],
        "w:gz",
    )
    samples = list(open_dataset(tmp_path / "data", sample_rate=16000))
    assert Counter(s.task for s in samples) == {
        "caption_image": 2, "text_to_image": 2, "caption_audio": 1, "text_to_audio": 1,
    }  # fmt: skip
    assert [s.target_text for s in samples if s.task == "caption_image"] == [
        "a blue field",
        "a tiny red square",
    ]
    assert [s.target.image.size for s in samples if s.task == "text_to_image"] == [(24, 18), (9, 7)]
    sound = next(s.target for s in samples if s.task == "text_to_audio")
    assert sound.sample_rate == 16000 and sound.audio.size == 8000  # 0.5 s at 44.1 kHz, resampled
    assert samples[0].meta["source"] == "shard-000000.tar:000001"


def test_audio_caption_csv_and_audiocaps_names_resampled_to_the_model_rate(tmp_path: Path) -> None:
    tone(tmp_path / "clips/dog.wav", 0.5, 22050)
    tone(tmp_path / "clips/rain.flac", 0.25, 48000)
    (tmp_path / "clips.csv").write_text(
        "audio,caption\nclips/dog.wav,a dog barks\nclips/rain.flac,rain on a roof\n"
    )
    tone(tmp_path / "audio/Yabc123.wav", 1.0, 32000)
    tone(tmp_path / "audio/xyz_30.flac", 0.5, 16000)
    (tmp_path / "audiocaps.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n1,abc123,0,a car passes\n2,xyz,30,birds sing\n"
    )
    samples = list(open_dataset(tmp_path, sample_rate=24000))
    assert [(s.meta["source"], s.task) for s in samples[::2]] == [
        ("audiocaps.csv:2", "caption_audio"), ("audiocaps.csv:3", "caption_audio"),
        ("clips.csv:2", "caption_audio"), ("clips.csv:3", "caption_audio"),
    ]  # fmt: skip
    sounds = [s.target for s in samples if s.task == "text_to_audio"]
    assert all(m is not None and m.sample_rate == 24000 for m in sounds)
    assert [m.audio.size for m in sounds if m] == [24000, 12000, 12000, 6000]
    assert [s.target_text for s in samples if s.task == "caption_audio"][:2] == ["a car passes", "birds sing"]


def test_edit_triplets_images_with_instructpix2pix_names_and_audio(tmp_path: Path) -> None:
    png(tmp_path / "in/0.png", (12, 12), (255, 0, 0))
    png(tmp_path / "out/0.png", (12, 12), (0, 0, 255))
    tone(tmp_path / "in/1.wav", 0.5, 16000, 440)
    tone(tmp_path / "out/1.wav", 0.5, 16000, 880)
    jsonl(tmp_path / "edits.jsonl", [
        {"input_image": "in/0.png", "edit_prompt": "make it blue", "edited_image": "out/0.png",
         "original_prompt": "a red square", "edited_prompt": "a blue square"},
        {"input": "in/1.wav", "instruction": "an octave higher", "output": "out/1.wav"},
    ])  # fmt: skip
    image_edit, audio_edit = open_dataset(tmp_path)
    assert (image_edit.task, audio_edit.task) == ("edit_image", "edit_audio")
    assert "make it blue" in image_edit.messages[0].text()
    (source,) = image_edit.input_media()
    assert source.image.getpixel((0, 0)) == (255, 0, 0) and source.caption == "a red square"
    assert image_edit.target is not None and image_edit.target.image.getpixel((0, 0)) == (0, 0, 255)
    assert image_edit.target.caption == "a blue square"
    assert audio_edit.target is not None and audio_edit.target.sample_rate == 16000
    assert audio_edit.input_media()[0].audio.size == 8000


def test_subject_sets_from_a_manifest_and_from_folders(tmp_path: Path) -> None:
    manifest = tmp_path / "m"
    for i in range(3):
        png(manifest / f"dog/{i}.png", (10 + i, 10))
    captions = ["my dog", "my dog on grass", "my dog asleep"]
    images = [f"dog/{i}.png" for i in range(3)]
    jsonl(manifest / "subjects.jsonl", [{"subject": "dog", "images": images, "captions": captions}])
    samples = list(open_dataset(manifest))
    assert [s.task for s in samples] == ["subject_image"] * 3
    assert [s.target.image.size for s in samples if s.target] == [(10, 10), (11, 10), (12, 10)]
    assert all(len(s.input_media()) == 2 and s.target not in s.input_media() for s in samples)
    assert "my dog on grass" in samples[1].messages[0].text()

    folders = tmp_path / "f"
    for i in range(4):
        png(folders / f"teapot/{i}.png", (8, 8), (i * 40, 0, 0))
    png(folders / "cat/a.png", (6, 6))
    png(folders / "cat/b.png", (6, 6))
    (folders / "cat/b.txt").write_text("my cat on a sofa\n")
    samples = list(open_dataset(folders))
    assert Counter(s.meta["subject"] for s in samples) == {"cat": 2, "teapot": 4}
    assert [len(s.input_media()) for s in samples] == [1, 1, 3, 3, 3, 3]  # up to 3 references
    assert "my cat on a sofa" in samples[1].messages[0].text()


def test_auto_detection_names_each_source_and_tasks_filter(tmp_path: Path) -> None:
    image_pairs(tmp_path)
    tone(tmp_path / "a.wav", 0.1, 16000)
    (tmp_path / "sounds.csv").write_text("file,caption\na.wav,a beep\n")
    jsonl(
        tmp_path / "z_edits.jsonl", [{"input": "images/a.png", "instruction": "x", "output": "images/b.png"}]
    )
    folder, sources = find_sources(tmp_path)
    assert folder == tmp_path
    assert [(s.format, s.path.name) for s in sources] == [
        ("image_caption", "pairs.jsonl"), ("audio_caption", "sounds.csv"), ("edit", "z_edits.jsonl"),
    ]  # fmt: skip
    only = list(open_dataset(tmp_path, tasks={"text_to_image", "edit_image"}))
    assert Counter(s.task for s in only) == {"text_to_image": 3, "edit_image": 1}
    # A named format reads every file it can as that format: pairs.jsonl's records are not edits.
    assert [s.path.name for s in find_sources(tmp_path, "edit")[1]] == ["pairs.jsonl", "z_edits.jsonl"]
    problems = ProblemLog()
    assert [s.task for s in open_dataset(tmp_path, "edit", problems=problems)] == ["edit_image"]
    assert problems.counts == {"BadRecordError": 3}


def test_reading_is_deterministic_under_the_seed(tmp_path: Path) -> None:
    image_pairs(tmp_path)

    def prompts(seed: int) -> list[str]:
        return [s.messages[0].text() for s in open_dataset(tmp_path, seed=seed)]

    assert prompts(0) == prompts(0)
    assert any(prompts(s) != prompts(0) for s in range(1, 6))


# --- streaming ----------------------------------------------------------------------------------
def test_the_first_sample_of_a_long_jsonl_is_read_without_reading_the_rest(tmp_path: Path) -> None:
    png(tmp_path / "one.png", (4, 4))
    # Line 1 is good; lines 2-1000 are not JSON at all: strict reading raises as soon as it meets one.
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "one.png", "caption": "a red dot"}) + "\n" + "{not json\n" * 999
    )
    stream = open_dataset(tmp_path / "pairs.jsonl", "image_caption", strict=True)
    first = next(stream)
    assert first.target_text == "a red dot"
    next(stream)  # the same record's generation sample: still line 1
    with pytest.raises(BadRecordError, match=r"pairs\.jsonl:2: "):
        next(stream)


def test_a_truncated_shard_gives_its_whole_samples_then_one_problem(tmp_path: Path) -> None:
    png(tmp_path / "m/a.png", (5, 5))
    members = [
        (f"{i:06d}.{ext}", data)
        for i in range(3)
        for ext, data in (("png", encoded(tmp_path / "m/a.png")), ("txt", b"red"))
    ]
    data = shard(tmp_path / "s/full.tar", members).read_bytes()
    (tmp_path / "s/full.tar").write_bytes(data[: 512 * 7 + 100])  # cut inside the fourth member
    problems = ProblemLog()
    samples = list(open_dataset(tmp_path / "s", problems=problems))
    assert len(samples) == 2  # key 000000 whole; 000001 lost with the rest of the shard
    assert problems.counts == {"CorruptShardError": 1}
    with pytest.raises(CorruptShardError, match=r"full\.tar"):
        list(open_dataset(tmp_path / "s", strict=True))


# --- untrusted input ----------------------------------------------------------------------------
BAD_RECORDS: dict[str, tuple[object, type[Exception]]] = {
    "dotdot": ({"image": "../outside.png", "caption": "c"}, UnsafePathError),
    "absolute": ({"image": "/etc/hostname", "caption": "c"}, UnsafePathError),
    "windows_absolute": ({"image": "C:\\x.png", "caption": "c"}, UnsafePathError),
    "symlink_out": ({"image": "link.png", "caption": "c"}, UnsafePathError),
    "corrupt": ({"image": "corrupt.png", "caption": "c"}, CorruptMediaError),
    "missing": ({"image": "nowhere.png", "caption": "c"}, MediaNotFoundError),
    "huge": ({"image": "huge.png", "caption": "c"}, MediaTooLargeError),
    "not_json": ("{'image': 'good.png'", BadRecordError),
    "not_object": ('["good.png", "c"]', BadRecordError),
    "nested_too_deep": ("[" * 100_000, BadRecordError),
    "huge_number": ('{"image": "good.png", "caption": "c", "n": ' + "9" * 5000 + "}", BadRecordError),
    "no_caption": ({"image": "good.png"}, BadRecordError),
    "empty_caption": ({"image": "good.png", "caption": "  "}, BadRecordError),
    "path_not_text": ({"image": 7, "caption": "c"}, BadRecordError),
    "sound_for_image": ({"image": "beep.wav", "caption": "c"}, BadRecordError),
}


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A dataset folder with one good picture and every bad file the records name."""
    root = tmp_path / "root"
    png(root / "good.png", (6, 4))
    png(tmp_path / "outside.png", (3, 3))
    os.symlink(tmp_path / "outside.png", root / "link.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        root / "huge.png"
    )
    tone(root / "beep.wav", 0.1, 16000)
    return root


def test_every_bad_record_is_counted_with_its_line_and_skipped(hostile: Path) -> None:
    good = {"image": "good.png", "caption": "a good one"}
    jsonl(hostile / "pairs.jsonl", [good, *(record for record, _ in BAD_RECORDS.values()), "", good])
    problems = ProblemLog()
    samples = list(open_dataset(hostile, "image_caption", problems=problems, max_file_bytes=4000))
    assert len(samples) == 4 and {s.meta["source"] for s in samples} == {
        "pairs.jsonl:1",
        f"pairs.jsonl:{len(BAD_RECORDS) + 3}",
    }
    expected = [(line, kind.__name__) for line, (_, kind) in enumerate(BAD_RECORDS.values(), start=2)]
    assert [(p.line, p.kind) for p in problems.problems] == expected
    assert problems.total == len(BAD_RECORDS) and all(p.file == "pairs.jsonl" for p in problems.problems)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_strict_mode_raises_the_named_error_with_its_place(hostile: Path, case: str) -> None:
    record, error = BAD_RECORDS[case]
    jsonl(hostile / "pairs.jsonl", [{"image": "good.png", "caption": "fine"}, record])
    with pytest.raises(error, match=r"^pairs\.jsonl:2: "):
        list(open_dataset(hostile, "image_caption", strict=True, max_file_bytes=4000))


def test_over_long_lines_and_captions_are_refused_without_holding_them(tmp_path: Path) -> None:
    png(tmp_path / "a.png", (2, 2))
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "a.png", "caption": "x" * 5000}) + "\n"
        + json.dumps({"image": "a.png", "caption": "y" * 300, "pad": "z" * 300000}) + "\n"
        + json.dumps({"image": "a.png", "caption": "ok"}) + "\n"
    )  # fmt: skip
    problems = ProblemLog()
    samples = list(open_dataset(tmp_path, "image_caption", problems=problems, max_record_bytes=500))
    assert [s.target_text for s in samples[::2]] == ["ok"]
    too_long = "line longer than 500 bytes"
    assert [(p.line, p.message) for p in problems.problems] == [(1, too_long), (2, too_long)]


def test_bad_shard_members_are_problems_by_key(tmp_path: Path) -> None:
    png(tmp_path / "m/a.png", (5, 5))
    picture = encoded(tmp_path / "m/a.png")
    path = tmp_path / "s/bad.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        members = [
            ("ok.png", picture), ("ok.txt", b"fine"), ("nocap.png", picture),
            ("big.png", b"\x00" * 5000), ("big.txt", b"x"),
            ("two.png", picture), ("two.jpg", picture), ("two.txt", b"x"),
            ("bad.png", b"\x89PNGbroken"), ("bad.txt", b"x"),
        ]  # fmt: skip
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("lnk.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    problems = ProblemLog()
    samples = list(open_dataset(path, problems=problems, max_file_bytes=4000))
    assert {s.meta["source"] for s in samples} == {"bad.tar:ok"}
    assert [(p.file, p.kind) for p in problems.problems] == [
        ("bad.tar:nocap", "BadRecordError"), ("bad.tar:big", "MediaTooLargeError"),
        ("bad.tar:two", "BadRecordError"), ("bad.tar:bad", "CorruptMediaError"),
        ("bad.tar:lnk", "BadRecordError"),
    ]  # fmt: skip


def test_folders_that_hold_no_dataset_are_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no dataset"):
        open_dataset(tmp_path)  # raised when called, before iteration
    jsonl(tmp_path / "odd.jsonl", [{"name": "x", "value": 1}])
    with pytest.raises(DatasetFormatError, match=r"odd\.jsonl.*\['name', 'value'\]"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetFormatError, match="unknown dataset format 'parquet'"):
        open_dataset(tmp_path, "parquet")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "absent")


def test_a_subject_with_one_readable_picture_is_a_problem(tmp_path: Path) -> None:
    png(tmp_path / "s/a.png", (4, 4))
    jsonl(tmp_path / "subjects.jsonl", [{"subject": "s", "images": ["s/a.png", "s/missing.png"]}])
    problems = ProblemLog()
    assert list(open_dataset(tmp_path, problems=problems)) == []
    assert Counter(problems.counts) == {"MediaNotFoundError": 1, "BadRecordError": 1}
    assert isinstance(Media.open(tmp_path / "s/a.png"), Media)


# --- deferred decoding (training's reading) -----------------------------------------------------
DECODED_ON_USE = {"corrupt", "missing", "huge", "sound_for_image"}  # the rest are the record's own


def test_deferred_decoding_files_media_problems_when_the_media_are_used(hostile: Path) -> None:
    good = {"image": "good.png", "caption": "a good one"}
    jsonl(hostile / "pairs.jsonl", [good, *(record for record, _ in BAD_RECORDS.values()), "", good])
    problems = ProblemLog()
    samples = list(
        open_dataset(hostile, "image_caption", problems=problems, max_file_bytes=4000, defer_decoding=True)
    )
    lines = {case: line for line, case in enumerate(BAD_RECORDS, start=2)}
    assert len(samples) == 4 + 2 * len(DECODED_ON_USE)
    assert {p.line for p in problems.problems} == {lines[c] for c in BAD_RECORDS if c not in DECODED_ON_USE}
    failed: dict[str, Exception] = {}
    for sample in samples:
        try:
            load_media(sample)
        except (MediaError, DatasetError) as e:
            failed[sample.meta["source"]] = e
    assert {source: type(e) for source, e in failed.items()} == {
        f"pairs.jsonl:{lines[c]}": BAD_RECORDS[c][1] for c in DECODED_ON_USE
    }
    assert all(str(e).startswith(f"{source}: ") for source, e in failed.items())  # located
    expected = [(line, kind.__name__) for line, (_, kind) in enumerate(BAD_RECORDS.values(), start=2)]
    assert sorted((p.line, p.kind) for p in problems.problems) == expected  # each medium filed once

    jsonl(hostile / "pairs.jsonl", [good, BAD_RECORDS["corrupt"][0]])
    strict = list(open_dataset(hostile, "image_caption", strict=True, defer_decoding=True))
    with pytest.raises(CorruptMediaError, match=r"^pairs\.jsonl:2: "):
        load_media(strict[-1])


def test_a_deferred_subject_keeps_an_unreadable_picture_and_fails_the_samples_that_show_it(
    tmp_path: Path,
) -> None:
    png(tmp_path / "s/a.png", (4, 4))
    jsonl(tmp_path / "subjects.jsonl", [{"subject": "s", "images": ["s/a.png", "s/missing.png"]}])
    problems = ProblemLog()
    samples = list(open_dataset(tmp_path, problems=problems, defer_decoding=True))
    assert len(samples) == 2 and problems.total == 0  # nothing decoded, nothing known to be wrong
    for sample in samples:  # one shows the missing picture, the other must draw it
        with pytest.raises(MediaNotFoundError, match=r"^subjects\.jsonl:1: "):
            load_media(sample)
    assert problems.counts == {"MediaNotFoundError": 1}  # one picture, filed once
