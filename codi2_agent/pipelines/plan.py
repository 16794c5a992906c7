"""The planner: a validated `PipelineSpec` expanded into `PlannedTurn`s (loops once per file).

`load_pipeline` / `parse_pipeline` check what the schema cannot see — names, ``@name`` references,
placeholders, input files that exist and decode, output paths — and report each problem with its
line, like the schema's own (`PipelineError`).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from codi2_agent.media import Media, MediaError, Modality

from .spec import (
    SESSION_DIR,
    ExampleSpec,
    PipelineError,
    PipelineSpec,
    Problem,
    TurnSpec,
    dotted,
    line_of,
    read_spec,
)

__all__ = ["Pipeline", "PlannedTurn", "load_pipeline", "parse_pipeline"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})
PLACEHOLDERS = ("file", "stem", "name", "index")


@dataclass(frozen=True)
class PlannedTurn:
    """One turn of the expanded plan: a turn of the file, for one file of its loop if it has one."""

    key: str  # stable id across runs: "main/01", "shapes/circle/01"
    label: str  # the turn's name, or its position
    thread: str
    position: int  # 1-based position in its thread
    spec: TurnSpec  # placeholders filled in
    loc: tuple[str | int, ...]  # where the turn is in the file
    out_stem: str  # output path without extension, relative to the output folder
    loop: str | None = None
    file: Path | None = None
    base_thread: str | None = None  # a loop's thread is forked from this one
    base_after: str | None = None  # key of the main turn the loop follows (None: before any turn)
    offset: int = 0  # turns the thread starts with (a loop thread: the main turns before the loop)
    digests: tuple[str, ...] = ()  # sha256 of every input file, in order
    refs: tuple[tuple[str, str], ...] = ()  # ("name", key) of the turns whose outputs it uses ("@name")

    @property
    def thread_turn(self) -> int:
        """This turn's number in its thread."""
        return self.offset + self.position


@dataclass
class Pipeline:
    """A validated pipeline and its plan (`load_pipeline` / `parse_pipeline`)."""

    spec: PipelineSpec
    source: Path | None
    base_dir: Path
    turns: list[PlannedTurn]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def thread(self) -> str:
        return self.spec.thread or self.spec.name

    @property
    def model(self) -> str:
        """The file's ``model:`` (a folder relative to the file), else ``"tiny"``."""
        from codi2_agent.model import SHIPPED_MODELS

        name = self.spec.model or "tiny"
        return name if name in SHIPPED_MODELS else str(self.base_dir / Path(name).expanduser())

    def default_out(self) -> Path:
        """``out:`` of the file (relative to it), else ``outputs/<name>`` in the current folder."""
        return self.base_dir / self.spec.out if self.spec.out else Path("outputs") / self.spec.name

    def describe(self) -> str:
        """The plan, one line per turn."""
        threads = len({t.thread for t in self.turns})
        lines = [f"pipeline {self.name!r}: {len(self.turns)} turns in {threads} thread(s)"]
        for t in self.turns:
            media = [Path(m).name if not m.startswith("@") else m for m in (*t.spec.image, *t.spec.audio)]
            words = t.spec.say or f"({t.spec.effective_task})"
            lines.append(f"  {t.key}: {words!r}" + (f" + {', '.join(media)}" if media else ""))
        return "\n".join(lines)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read, validate and plan a pipeline file; raises `PipelineError` naming each problem's line and field.

    Example:
        >>> load_pipeline("examples/pipelines/edit_rounds.yaml").name    # doctest: +SKIP
        'edit-rounds'
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError([Problem(str(path), 0, "", "no such pipeline file")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError([Problem(str(path), 0, "", f"cannot read it ({e})")]) from None
    return parse_pipeline(text, base_dir=path.resolve().parent, source=path)


def parse_pipeline(text: str, *, base_dir: str | Path = ".", source: str | Path | None = None) -> Pipeline:
    """`load_pipeline` for YAML text; relative paths are relative to `base_dir`."""
    name = str(source) if source is not None else "<pipeline>"
    base = Path(base_dir).resolve()
    spec, root = read_spec(text, name)
    # What the schema cannot see: names, references, placeholders, files
    planner = _Planner(spec, base, name, root)
    turns = planner.plan()
    if planner.problems:
        raise PipelineError(planner.problems)
    return Pipeline(
        spec=spec, source=Path(source) if source is not None else None, base_dir=base, turns=turns
    )


class _Planner:
    """Expands loops, checks names / references / placeholders / files, and names the outputs."""

    def __init__(self, spec: PipelineSpec, base: Path, file: str, root: yaml.Node) -> None:
        self.spec, self.base, self.file, self.root = spec, base, file, root
        self.problems: list[Problem] = []
        self.main = spec.thread or spec.name

    def fail(self, loc: tuple[str | int, ...], message: str) -> None:
        problem = Problem(self.file, line_of(self.root, loc), dotted(loc), message)
        if problem not in self.problems:  # a loop's body is checked once per file
            self.problems.append(problem)

    def plan(self) -> list[PlannedTurn]:
        out: list[PlannedTurn] = []
        names: dict[str, str] = {}  # turn name -> key, main thread
        loops: set[str] = set()
        position = 0
        last_main: str | None = None
        for i, step in enumerate(self.spec.turns):
            loc: tuple[str | int, ...] = ("turns", i)
            if isinstance(step, TurnSpec):
                position += 1
                key = f"main/{position:02d}"
                turn = self.turn(
                    step,
                    loc,
                    names,
                    {},
                    key=key,
                    label=step.name or f"{position:02d}",
                    thread=self.main,
                    position=position,
                    out_stem=f"{position:02d}" + (f"-{step.name}" if step.name else ""),
                )
                if turn is not None:
                    out.append(turn)
                self.claim_name(step.name, key, names, (*loc, "name"))
                last_main = key
                continue
            loop = step.name or f"loop{i + 1}"
            if loop in loops:
                self.fail((*loc, "name"), f"another for_each is already named {loop!r}")
            loops.add(loop)
            claimed = dict(names)
            for j, body in enumerate(step.turns):
                self.claim_name(body.name, "", claimed, (*loc, "turns", j, "name"))
            files = self.files(step.for_each, (*loc, "for_each"))
            root = _loop_root(self.base, step.for_each)
            for n, path in enumerate(files, start=1):
                rel = _file_key(path, root)
                fills = {"file": str(path), "stem": path.stem, "name": path.name, "index": str(n)}
                body_names = dict(names)
                thread = f"{self.main}/{loop}/{rel}"
                for j, body in enumerate(step.turns, start=1):
                    bloc: tuple[str | int, ...] = (*loc, "turns", j - 1)
                    key = f"{loop}/{rel}/{j:02d}"
                    turn = self.turn(
                        body,
                        bloc,
                        body_names,
                        fills,
                        key=key,
                        label=body.name or f"{j:02d}",
                        thread=thread,
                        position=j,
                        out_stem=key + (f"-{body.name}" if body.name else ""),
                        loop=loop,
                        file=path,
                        offset=position,
                        base_thread=f"{self.main}/{loop}",
                        base_after=last_main,
                    )
                    if turn is not None:
                        out.append(turn)
                    if body.name:
                        body_names[body.name] = key
            if not files:  # still check the body once, for placeholder and reference mistakes
                probe, known = {"file": "", "stem": "", "name": "", "index": "1"}, dict(names)
                for j, body in enumerate(step.turns):
                    self.check_text(body, (*loc, "turns", j), probe, check_files=False, names=known)
                    if body.name:
                        known[body.name] = ""
        self.check_outputs(out)
        return out

    def claim_name(
        self, name: str | None, key: str, names: dict[str, str], loc: tuple[str | int, ...]
    ) -> None:
        if name is None:
            return
        if name in names:
            self.fail(loc, f"another turn is already named {name!r}")
        names[name] = key

    def files(self, pattern: str, loc: tuple[str | int, ...]) -> list[Path]:
        where = self.base / pattern
        if glob.has_magic(pattern):
            matches = glob.glob(os.path.join(glob.escape(str(self.base)), pattern), recursive=True)
            found = sorted(Path(p).resolve() for p in matches if Path(p).is_file())
            if not found:
                self.fail(loc, f"{pattern!r} matches no files (in {self.base})")
            return found
        if not where.is_dir():
            self.fail(loc, f"no folder {where}" + ("" if where.exists() else " (it does not exist)"))
            return []
        found = sorted(p.resolve() for p in where.iterdir() if p.is_file() and _suffix_modality(p))
        if not found:
            self.fail(loc, f"the folder {where} has no image or audio files")
        return found

    def fill(self, value: str, fills: dict[str, str], loc: tuple[str | int, ...]) -> str | None:
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as e:
            self.fail(loc, f"bad braces in {value!r} ({e}); write {{{{ and }}}} for literal braces")
            return None
        for f in used:
            if not fills:
                self.fail(loc, f"{{{f}}} only works inside a for_each loop (write {{{{ }}}} for braces)")
                return None
            if f not in fills:
                self.fail(
                    loc, f"unknown placeholder {{{f}}}; use " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                )
                return None
        return value.format(**fills) if used or "{" in value or "}" in value else value

    def check_text(
        self,
        spec: TurnSpec,
        loc: tuple[str | int, ...],
        fills: dict[str, str],
        *,
        check_files: bool,
        names: dict[str, str],
    ) -> TurnSpec | None:
        """`spec` with placeholders filled; media checked (files exist and decode, ``@name`` known)."""
        update: dict[str, Any] = {}
        for fname in ("say", "save_as"):
            value = getattr(spec, fname)
            if value:
                filled = self.fill(value, fills, (*loc, fname))
                if filled is None:
                    return None
                update[fname] = filled
        for fname in ("image", "audio"):
            values = []
            many = len(getattr(spec, fname)) > 1
            for i, value in enumerate(getattr(spec, fname)):
                vloc = (*loc, fname, i) if many else (*loc, fname)
                filled = self.fill(value, fills, vloc)
                if filled is None:
                    return None
                values.append(self.media(filled, Modality(fname), vloc, names, check_files))
            update[fname] = values
        if spec.example is not None:
            ex: dict[str, Any] = {}
            for fname in ("before", "after"):
                value = getattr(spec.example, fname)
                if value is None:
                    continue
                filled = self.fill(value, fills, (*loc, "example", fname))
                if filled is None:
                    return None
                ex[fname] = self.media(filled, None, (*loc, "example", fname), names, check_files)
            if "before" not in ex and not ex["after"].startswith("@"):
                self.fail(
                    (*loc, "example"),
                    "an example file needs its `before`; only an earlier "
                    "turn's edit (@name) finds its own source",
                )
            update["example"] = ExampleSpec(**ex)
        if update.get("save_as") is not None:
            save = update["save_as"]
            if Path(save).is_absolute() or ".." in Path(save).parts or not save.strip("/"):
                self.fail(
                    (*loc, "save_as"),
                    f"save_as must be a relative path inside the output folder, got {save!r}",
                )
        return spec.model_copy(update=update)

    def media(
        self,
        value: str,
        modality: Modality | None,
        loc: tuple[str | int, ...],
        names: dict[str, str],
        check_files: bool,
    ) -> str:
        """A checked media value: ``@name`` as is, a file as its absolute path."""
        if value.startswith("@"):
            if value[1:] not in names:
                known = ", ".join("@" + n for n in names if n) or "none yet"
                self.fail(loc, f"{value} is not the name of an earlier turn (earlier names: {known})")
            return value
        path = (self.base / value).resolve()
        if not check_files:
            return str(path)
        if not path.is_file():
            self.fail(loc, f"file not found: {value}" + (f" ({path})" if value != str(path) else ""))
            return str(path)
        try:
            media = Media.open(path)
        except (MediaError, OSError) as e:
            self.fail(loc, str(e))
            return str(path)
        if modality is not None and media.modality is not modality:
            self.fail(loc, f"{value} is {media.modality.value}, not {modality.value}")
        return str(path)

    def turn(
        self,
        spec: TurnSpec,
        loc: tuple[str | int, ...],
        names: dict[str, str],
        fills: dict[str, str],
        **planned: Any,
    ) -> PlannedTurn | None:
        filled = self.check_text(spec, loc, fills, check_files=True, names=names)
        if filled is None:
            return None
        if filled.save_as:
            planned["out_stem"] = filled.save_as.strip("/")
        media = [*filled.image, *filled.audio]
        if filled.example is not None:
            media += [m for m in (filled.example.before, filled.example.after) if m is not None]
        digests = tuple(_digest(Path(m)) for m in media if not m.startswith("@") and Path(m).is_file())
        refs = tuple((m[1:], names[m[1:]]) for m in media if m.startswith("@") and m[1:] in names)
        return PlannedTurn(spec=filled, loc=loc, digests=digests, refs=refs, **planned)

    def check_outputs(self, turns: list[PlannedTurn]) -> None:
        seen: dict[str, PlannedTurn] = {}
        for t in turns:
            clash = seen.get(t.out_stem)
            if clash is not None:
                where = (*t.loc, "save_as") if t.spec.save_as else t.loc
                self.fail(where, f"turns {clash.key} and {t.key} would both write {t.out_stem}.*")
            seen[t.out_stem] = t
        if any(t.out_stem.split("/")[0] in (SESSION_DIR,) for t in turns):
            self.fail(
                ("turns",), f"outputs may not go into {SESSION_DIR}/ (the pipeline's session lives there)"
            )


def _suffix_modality(path: Path) -> Modality | None:
    suffix = path.suffix.lower()
    return (
        Modality.IMAGE if suffix in IMAGE_SUFFIXES else Modality.AUDIO if suffix in AUDIO_SUFFIXES else None
    )


def _loop_root(base: Path, pattern: str) -> Path:
    """The folder a loop's files are named relative to: the folder, or a glob up to its first wildcard."""
    if not glob.has_magic(pattern):
        return (base / pattern).resolve()
    fixed = itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts)
    return base.joinpath(*fixed).resolve()


def _file_key(path: Path, base: Path) -> str:
    """A file's id inside a loop: its path relative to the loop's folder, without the suffix."""
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    return (rel.parent / rel.stem).as_posix()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
