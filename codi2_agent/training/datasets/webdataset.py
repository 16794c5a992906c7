"""Caption pairs from webdataset tar shards, read with the standard library in stream mode.

A shard is a tar whose consecutive members share a key (the name up to the first dot of the
base name)::

    shard-000000.tar   000001.jpg  000001.txt         (the caption)
                       000002.png  000002.json        ({"caption": "..."}; also "text", "prompt")
                       000003.flac 000003.txt         (a sound: caption_audio / text_to_audio)

The tar is read front to back (``mode="r|*"``, compressed or not): one sample's members are held
at a time, never the shard (with deferred decoding, a sample keeps its medium's bytes until it is
used). Nothing is extracted to disk, so member names cannot write anywhere;
links and devices inside a shard are refused as problems.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from codi2_agent.data.samples import Sample
from codi2_agent.media import MediaError, MediaTooLargeError
from codi2_agent.training.datasets._errors import BadRecordError, CorruptShardError, DatasetError, ProblemLog
from codi2_agent.training.datasets._samples import pair_samples
from codi2_agent.training.datasets._source import DatasetRoot, MediaKind, Origin, media_kind, text_field
from codi2_agent.training.datasets.pairs import CAPTION_KEYS

__all__ = ["read_shard", "split_key"]

_CAPTION_EXTENSIONS = ("txt", "json")
_MAX_MEMBERS_PER_KEY = 32  # a sample is a handful of files; more is a broken (or hostile) shard


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, as webdataset splits it: at the first dot of the base name."""
    path = PurePosixPath(name)
    stem, _, extension = path.name.partition(".")
    return str(path.parent / stem) if path.parent != PurePosixPath(".") else stem, extension.lower()


def read_shard(root: DatasetRoot, shard: Path, problems: ProblemLog) -> Iterator[Sample]:
    """The caption-pair samples of one shard, key by key, in the shard's order."""
    name, rng, options = root.relative(shard), root.rng_for(shard), root.options
    with shard.open("rb") as stream:
        for key, members in _groups(stream, name, root, problems):
            where = f"{name}:{key}"
            try:
                kind, media_name = _media_member(members)
                caption = _caption(members, options.max_record_bytes)
                origin = Origin(problems, where)
                media = root.decode(members[media_name], f"{where}.{media_name}", kind, origin)
            except (DatasetError, MediaError) as e:
                problems.report(e, where)
                continue
            meta = {"format": "webdataset", "source": where}
            yield from pair_samples(kind, media, caption, rng, options, meta)


def _groups(
    stream: IO[bytes], name: str, root: DatasetRoot, problems: ProblemLog
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each run of members sharing a key; problems reported."""
    key: str | None = None
    members: dict[str, bytes] = {}
    broken: Exception | None = None  # the first problem of the current key: the key is skipped
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                member_key, extension = split_key(member.name)
                if member_key != key:
                    if key is not None:
                        yield from _finish(key, members, broken, name, problems)
                    key, members, broken = member_key, {}, None
                if broken is not None:
                    continue
                broken = _refusal(member, extension, root, len(members))
                if broken is None and (media_kind(f"x.{extension}") or extension in _CAPTION_EXTENSIONS):
                    data = tar.extractfile(member)
                    assert data is not None  # a regular file, checked by _refusal
                    members[extension] = data.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        problems.report(CorruptShardError(f"cannot read the tar to its end ({e}); the rest is lost"), name)
        return
    if key is not None:
        yield from _finish(key, members, broken, name, problems)


def _finish(
    key: str, members: dict[str, bytes], broken: Exception | None, name: str, problems: ProblemLog
) -> Iterator[tuple[str, dict[str, bytes]]]:
    if broken is not None:
        problems.report(broken, f"{name}:{key}")
    else:
        yield key, members


def _refusal(member: tarfile.TarInfo, extension: str, root: DatasetRoot, held: int) -> Exception | None:
    """Why a member cannot be read (None when it can)."""
    if not member.isfile():
        return BadRecordError(f"member {member.name!r} is a link or device, not a file")
    if held >= _MAX_MEMBERS_PER_KEY:
        return BadRecordError(f"more than {_MAX_MEMBERS_PER_KEY} members share one key")
    cap = root.options.max_record_bytes if extension in _CAPTION_EXTENSIONS else root.options.max_file_bytes
    if member.size > cap:
        return MediaTooLargeError(f"member {member.name!r} is {member.size} bytes; the limit is {cap}")
    return None


def _media_member(members: dict[str, bytes]) -> tuple[MediaKind, str]:
    """("image" | "audio", extension) of the sample's one medium."""
    found = [(kind, ext) for ext in members if (kind := media_kind(f"x.{ext}")) is not None]
    if not found:
        raise BadRecordError(f"no image or audio member (has {sorted(members) or 'nothing'})")
    if len(found) > 1:
        raise BadRecordError(f"several media members ({sorted(ext for _, ext in found)}); expected one")
    kind, extension = found[0]
    return kind, extension


def _caption(members: dict[str, bytes], max_chars: int) -> str:
    """The caption: the .txt member, else the caption field of the .json member."""
    try:
        if "txt" in members:
            record = {"caption": members["txt"].decode("utf-8")}
        elif "json" in members:
            record = json.loads(members["json"].decode("utf-8"))
            if not isinstance(record, dict):
                raise BadRecordError("the .json member is not an object")
        else:
            raise BadRecordError("no caption member (.txt, or .json with a 'caption' field)")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecordError(f"unreadable caption member ({e})") from None
    caption = text_field(record, CAPTION_KEYS, max_chars)
    assert caption is not None
    return caption
