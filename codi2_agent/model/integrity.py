"""Integrity of a model folder: a sha256 manifest written at save time and checked before anything loads.

`CoDi2Model.save_pretrained` writes ``manifest.json`` (relative path -> sha256 and size of every file
it covers); `CoDi2Model.from_pretrained` calls `verify_folder` before it reads a single weight, so
bit rot, a truncated copy, a swapped tokenizer or a weight file slipped into the folder is a named
error instead of a model that loads and answers with garbage.

What a manifest covers: every file in the folder, following symlinked folders (as
`assemble_paper_model(link=True)` makes them), except the manifest itself, hidden files
(``.gitattributes``, ``.cache/``) and Markdown documentation (``REPRODUCE.md``, model cards), which
stay free to edit. Checked on load, cheapest first:

1. a listed file is missing -> `IncompleteWeightsError` (a `CorruptWeightsError` and a
   `WeightsNotFoundError`), naming what is gone;
2. an unlisted file a loader could read -> `CorruptWeightsError`: a weight file anywhere, or any file
   inside a component folder (transformers and diffusers pick files there up by name). Top-level
   files no loader reads (notes, eval tables) are allowed;
3. a size, then a sha256, that differs -> `CorruptWeightsError` naming the file and both values;
4. every ``.safetensors`` header (a few KB each, with or without a manifest, even with
   ``verify=False``) -> a truncated or garbled file is a `CorruptWeightsError` naming its path.

A folder without a manifest (assembled by hand from third-party snapshots) loads with a logged
warning; ``verify="strict"`` refuses it and ``verify=False`` skips steps 1-3. Hashing reads every
byte once: about 0.1 s for the shipped tiny folder (41.6 MB), and in proportion for large ones (a
paper-preset folder of ~15 GB costs tens of seconds per load, on top of the minutes loading takes).
The check guards against damage and doctoring at rest, not against a process rewriting the files
while they load. Files in an absolute component subfolder lie outside the folder and its manifest.

Write a manifest for a folder you trust (the command that made the shipped tiny one)::

    python -c "from codi2_agent.model.integrity import write_manifest; write_manifest('FOLDER')"

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text("{}")
    >>> sorted(json.loads(write_manifest(folder).read_text())["files"])
    ['config.json']
    >>> verify_folder(folder, "strict")
    True
    >>> _ = (folder / "config.json").write_text("{ }")
    >>> verify_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    codi2_agent.model.integrity.CorruptWeightsError: .../config.json: size differs from manifest.json ...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codi2_agent.model.configuration_codi2 import ModelLoadError

__all__ = [
    "CHUNK_SIZE",
    "MANIFEST_NAME",
    "WEIGHT_SUFFIXES",
    "CorruptWeightsError",
    "IncompleteWeightsError",
    "Manifest",
    "WeightsNotFoundError",
    "file_sha256",
    "manifest_files",
    "read_manifest",
    "verify_folder",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHUNK_SIZE = 1 << 20  # hash 1 MB at a time: a 10 GB shard never sits in memory
# Files a loader would read as weights wherever they sit (safetensors, pickles, TF/Flax, GGUF, ONNX).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
VERIFY_MODES = (True, False, "strict")
_CHANGED = "the file changed after the model was saved"


# --- errors ---------------------------------------------------------------------------------------------
class WeightsNotFoundError(ModelLoadError, FileNotFoundError):
    """A model folder that is missing, or lacks files or tensors the config needs."""


class CorruptWeightsError(ModelLoadError, ValueError):
    """A model file that is not what was saved: changed, truncated, unreadable, unlisted, or a manifest
    that is itself damaged. `path` is the file, `reason` what was found."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, like other exceptions
        return (type(self), (self.path, self.reason))


class IncompleteWeightsError(CorruptWeightsError, WeightsNotFoundError):
    """Files the manifest lists are gone (`path` is the model folder). Both a corruption and an
    incomplete folder, so callers catching either family see it."""

    def _message(self) -> str:
        return f"model folder {self.path} is incomplete: {self.reason}"


# --- the manifest -------------------------------------------------------------------------------------
class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]


class Manifest(BaseModel):
    """``manifest.json``: the files of a model folder, by relative POSIX path."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["codi2-manifest"] = "codi2-manifest"
    version: Literal[1] = 1
    algorithm: Literal["sha256"] = "sha256"
    files: dict[str, ManifestEntry]

    @field_validator("files")
    @classmethod
    def _paths_stay_inside(cls, files: dict[str, ManifestEntry]) -> dict[str, ManifestEntry]:
        # a doctored manifest must not make the check read (or report on) files outside the folder
        for name in files:
            parts = PurePosixPath(name).parts
            if not parts or name.startswith("/") or "\\" in name or any(p in (".", "..") for p in parts):
                raise ValueError(f"{name!r} is not a relative path inside the folder")
            if PurePosixPath(name).as_posix() != name or name == MANIFEST_NAME:
                raise ValueError(f"{name!r} is not a relative path inside the folder")
        return files


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in `CHUNK_SIZE` pieces into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _covered(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return relative != MANIFEST_NAME and not name.startswith(".") and not name.lower().endswith(".md")


def manifest_files(folder: str | Path) -> list[str]:
    """The files of `folder` a manifest covers, as sorted relative POSIX paths (see the module doc)."""
    folder = Path(folder)
    found: list[str] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or two links to one source: walk each folder once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root).relative_to(folder)
        for name in files:
            relative = (base / name).as_posix()
            if _covered(relative) and os.path.isfile(os.path.join(root, name)):
                found.append(relative)
    return sorted(found)


def write_manifest(folder: str | Path) -> Path:
    """Hash every covered file of `folder` into ``folder/manifest.json`` (written atomically)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsNotFoundError(f"model folder {folder} does not exist")
    files = {
        name: ManifestEntry(sha256=file_sha256(folder / name), size=(folder / name).stat().st_size)
        for name in manifest_files(folder)
    }
    text = json.dumps(Manifest(files=files).model_dump(), indent=2, sort_keys=True) + "\n"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST_NAME}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, folder / MANIFEST_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return folder / MANIFEST_NAME


def read_manifest(folder: str | Path) -> Manifest | None:
    """`folder`'s manifest, None when it has none; a damaged one is a `CorruptWeightsError`."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptWeightsError(path, f"not a valid manifest (not valid JSON: {e})") from None
    except ValidationError as e:
        details = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}"
            for err in e.errors(include_url=False)
        )
        raise CorruptWeightsError(path, f"not a valid manifest ({details})") from None


# --- checks ---------------------------------------------------------------------------------------------
def verify_folder(folder: str | Path, verify: bool | Literal["strict"] = True) -> bool:
    """Check `folder` against its manifest and every safetensors header; True when a manifest vouched
    for it, False when it loads unverified (no manifest, or ``verify=False``).

    Raises:
        IncompleteWeightsError: files the manifest lists are missing.
        CorruptWeightsError: a file differs from the manifest, an unlisted file could be loaded, the
            manifest is damaged (or, with ``verify="strict"``, absent), or a safetensors file is
            truncated or garbled (checked even with ``verify=False``).
        ValueError: `verify` is not True, False or "strict".
    """
    if verify not in VERIFY_MODES or not isinstance(verify, bool | str):
        raise ValueError(f"verify must be True, False or 'strict', got {verify!r}")
    folder = Path(folder)
    verified = False
    if verify:
        manifest = read_manifest(folder)
        if manifest is not None:
            _check_against(folder, manifest)
            verified = True
        elif verify == "strict":
            raise CorruptWeightsError(
                folder / MANIFEST_NAME,
                "missing; verify='strict' loads only folders whose files a manifest vouches for "
                "(write one with codi2_agent.model.integrity.write_manifest once you trust the files)",
            )
        else:
            logger.warning(
                "%s has no %s: its files are loaded unverified (write one with "
                "codi2_agent.model.integrity.write_manifest once you trust the files)",
                folder,
                MANIFEST_NAME,
            )
    for name in manifest_files(folder):
        if name.endswith(".safetensors"):
            _check_safetensors(folder / name)
    return verified


def _check_against(folder: Path, manifest: Manifest) -> None:
    listed = manifest.files
    missing = [name for name in listed if not (folder / name).is_file()]
    if missing:
        raise IncompleteWeightsError(
            folder, f"missing {_summary(folder, missing)} (listed in {MANIFEST_NAME})"
        )
    extra = [name for name in manifest_files(folder) if name not in listed and _loadable(name)]
    if extra:
        where = "a weight file" if extra[0].endswith(WEIGHT_SUFFIXES) else "a file its folder's loader reads"
        more = f"; {len(extra) - 1} more: {', '.join(extra[1:4])}" if len(extra) > 1 else ""
        raise CorruptWeightsError(
            folder / extra[0],
            f"not listed in {MANIFEST_NAME}: {where} the manifest does not vouch for (remove it, or "
            f"write a new manifest once you trust it){more}",
        )
    for name, entry in listed.items():  # sizes first: a truncated copy fails without hashing anything
        size = (folder / name).stat().st_size
        if size != entry.size:
            raise CorruptWeightsError(
                folder / name,
                f"size differs from {MANIFEST_NAME} (expected {entry.size} bytes, got {size}): {_CHANGED}",
            )
    for name, entry in listed.items():
        digest = file_sha256(folder / name)
        if digest != entry.sha256:
            raise CorruptWeightsError(
                folder / name,
                f"sha256 differs from {MANIFEST_NAME} (expected {entry.sha256[:16]}..., got "
                f"{digest[:16]}...): {_CHANGED}",
            )


def _loadable(name: str) -> bool:
    """Could a loader read this unlisted file? Weights anywhere; anything inside a component folder."""
    return name.endswith(WEIGHT_SUFFIXES) or "/" in name


def _summary(folder: Path, missing: list[str]) -> str:
    """Missing files, a vanished folder shown once: "language_model/ (3 files), tokenizer/x.json"."""
    shown: Counter[str] = Counter()
    for name in missing:
        parts = name.split("/")
        gone = next(
            (
                "/".join(parts[:i]) + "/"
                for i in range(1, len(parts))
                if not (folder.joinpath(*parts[:i])).exists()
            ),
            name,
        )
        shown[gone] += 1
    return ", ".join(
        f"{name} ({count} file{'s' if count > 1 else ''})" if name.endswith("/") else name
        for name, count in shown.items()
    )


def _check_safetensors(path: Path) -> None:
    """Read the header (offsets included: safetensors checks they cover the file exactly)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        raise CorruptWeightsError(path, f"not a readable safetensors file ({e})") from None
