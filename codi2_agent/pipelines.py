"""Scripted multi-turn pipelines: a YAML file of turns and loops over files, run through a `Session`.

A pipeline is a conversation written down: turns with words and media, and `for_each` loops that
run the same turns once per file of a folder ("apply the edit from this example pair to every image
in ./in"). Outputs go to a folder with a report (``report.md`` + ``report.json``: every turn's
inputs, outputs and timings). Re-running resumes: finished turns are read back from the report and
the session's checkpoints, never generated again; a turn whose definition (or an input file's
content) changed is redone, and so is everything after it in its thread.

The format (every relative path is relative to the YAML file's folder)::

    version: 1
    name: blue-everything           # names the default output folder (outputs/<name>) and the thread
    model: tiny                     # optional: 'tiny' or a model folder (`--model` overrides it)
    seed: 0                         # defaults for every turn; a turn may override each of them
    diffusion_steps: 20
    turns:
      - name: star                  # optional: names the output files; later turns say "@star"
        say: draw a small red star in the snow
      - name: blue
        say: make it blue
      - for_each: inputs/shapes     # a folder (its image and audio files) or a glob ("in/*.png")
        name: shapes
        turns:                      # once per file, each file in its own thread forked from here
          - say: do the same edit to this one
            image: "{file}"
            example: {before: "@star", after: "@blue"}
            save_as: "blue/{stem}"

Turn fields: ``say`` (the words), ``image`` / ``audio`` (a file, ``@name`` of an earlier turn's
output, or a list of them), ``example`` (``before`` and ``after`` of an edit to imitate: in-context
analogy; ``after`` alone when it is an earlier turn's edit), ``task`` (generate, edit, analogy,
compose, describe; read from the words by default), ``output`` (auto, text, image, audio), ``seed``,
``diffusion_steps``, ``guidance_scale``, ``max_new_tokens``, ``save_as`` (output path without
extension, relative to the output folder). Inside ``for_each``, ``{file}``, ``{stem}``, ``{name}``
and ``{index}`` stand for the current file's path, name without extension, name, and position (1…).

The output folder holds the media (``01-star.png``, ``shapes/circle/01.png`` or the ``save_as``
names; text answers as ``.txt``), ``report.md``, ``report.json`` and ``session/`` (the artifacts,
exemplar memory and checkpoints of the pipeline's threads, which is what resuming reads).

Example:
    >>> from codi2_agent.pipelines import load_pipeline, run_pipeline    # doctest: +SKIP
    >>> pipeline = load_pipeline("examples/pipelines/edit_rounds.yaml")  # doctest: +SKIP
    >>> report = run_pipeline(pipeline, out="outputs/edit-rounds", model="tiny")  # doctest: +SKIP
    >>> report.status, len(report.turns)  # doctest: +SKIP
    ('complete', 7)
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import itertools
import json
import os
import shutil
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from codi2_agent.media import Media, MediaError, MediaRef, Modality

if TYPE_CHECKING:
    from codi2_agent.backends import Backend
    from codi2_agent.model import CoDi2Model
    from codi2_agent.session import Session, TurnResult

__all__ = [
    "ExampleSpec",
    "ForEachSpec",
    "Pipeline",
    "PipelineBusyError",
    "PipelineError",
    "PipelineReport",
    "PipelineRunError",
    "PipelineSpec",
    "PlannedTurn",
    "Problem",
    "TurnRecord",
    "TurnSpec",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})
PLACEHOLDERS = ("file", "stem", "name", "index")
REPORT_JSON, REPORT_MD, SESSION_DIR = "report.json", "report.md", "session"
_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_TAGS = ("turn", "loop")  # discriminator tags pydantic puts into error locations


# =================================================================================================
# Errors
# =================================================================================================
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file, located by line and field."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = (f"{self.file}:{self.line}" if self.line else self.file) + (
            f": {self.field}" if self.field else ""
        )
        return f"{where}: {self.message}"


class PipelineError(ValueError):
    """A malformed pipeline: YAML syntax, an unknown or invalid field, a missing input file.

    `problems` lists each one with its line and field; ``str(error)`` is one line per problem.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PipelineRunError(RuntimeError):
    """A turn failed while running (bad media, a question back from the model, …); the report says which."""


class PipelineBusyError(RuntimeError):
    """Another run is writing to the same output folder."""


# =================================================================================================
# The format
# =================================================================================================
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class ExampleSpec(_Spec):
    """An edit to imitate: `before` becomes `after` (a file or ``@name``). Without `before`, `after`
    must be an earlier turn's edit, whose source is then the `before`."""

    before: str | None = None
    after: str


class TurnSpec(_Spec):
    """One turn: words, media, and how to answer."""

    name: Annotated[str | None, Field(pattern=_NAME)] = None
    say: str = ""
    image: list[str] = []
    audio: list[str] = []
    example: ExampleSpec | None = None
    task: Literal["generate", "edit", "analogy", "compose", "describe"] | None = None
    output: Literal["auto", "text", "image", "audio"] | None = None
    seed: int | None = None
    diffusion_steps: int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: float | None = Field(default=None, ge=0)
    max_new_tokens: int | None = Field(default=None, ge=1)
    save_as: str | None = None

    _listify = field_validator("image", "audio", mode="before")(_as_list)

    @model_validator(mode="after")
    def _check(self) -> TurnSpec:
        if not self.say.strip() and self.task is None and self.example is None:
            raise ValueError("a turn needs `say` (what to ask), or a `task` / `example` with media")
        if self.example is not None and self.task not in (None, "analogy"):
            raise ValueError(f"`example` makes this an analogy turn, but task is {self.task!r}")
        return self

    @property
    def effective_task(self) -> str | None:
        return "analogy" if self.example is not None else self.task


class ForEachSpec(_Spec):
    """Run `turns` once per file; each file gets its own thread, forked from the main thread here."""

    for_each: str = Field(min_length=1, description="a folder or a glob, relative to the YAML file")
    name: Annotated[str | None, Field(pattern=_NAME)] = None
    turns: list[TurnSpec] = Field(min_length=1)


def _step_kind(value: Any) -> str:
    return "loop" if isinstance(value, dict) and "for_each" in value else "turn"


Step = Annotated[
    Annotated[TurnSpec, Tag("turn")] | Annotated[ForEachSpec, Tag("loop")], Discriminator(_step_kind)
]


class PipelineSpec(_Spec):
    """A whole pipeline file."""

    version: Literal[1] = 1
    name: str = Field(pattern=_NAME)
    description: str | None = None
    model: str | None = None
    thread: str | None = Field(default=None, min_length=1)
    out: str | None = None
    seed: int | None = 0
    diffusion_steps: int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: float | None = Field(default=None, ge=0)
    turns: list[Step] = Field(min_length=1)


_FIELDS = sorted(
    {*TurnSpec.model_fields, *ForEachSpec.model_fields, *PipelineSpec.model_fields, *ExampleSpec.model_fields}
)


# =================================================================================================
# Loading and planning
# =================================================================================================
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
    # 1. YAML -> node tree (kept for line numbers) -> plain data
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark, start = e.problem_mark or e.context_mark, e.context_mark
        message = f"YAML syntax error: {e.problem or e}"
        if mark is not None:
            message = f"YAML syntax error at column {mark.column + 1}: {e.problem or e}"
        if start is not None and mark is not None and start.line != mark.line:
            message += f" ({e.context} at line {start.line + 1})"
        raise PipelineError([Problem(name, mark.line + 1 if mark else 0, "", message)]) from None
    if root is None:
        raise PipelineError([Problem(name, 1, "", "the pipeline is empty")])
    if not isinstance(root, yaml.MappingNode):
        raise PipelineError(
            [Problem(name, root.start_mark.line + 1, "", "a pipeline is a mapping (name:, turns:)")]
        )
    problems = [
        Problem(name, line, _dotted(loc), f"{key!r} appears twice") for loc, key, line in _duplicates(root)
    ]
    if problems:
        raise PipelineError(problems)
    data = yaml.safe_load(text)

    # 2. The schema
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as e:
        raise PipelineError([_problem(name, root, err) for err in e.errors()]) from None

    # 3. What the schema cannot see: names, references, placeholders, files
    planner = _Planner(spec, base, name, root)
    turns = planner.plan()
    if planner.problems:
        raise PipelineError(planner.problems)
    return Pipeline(
        spec=spec, source=Path(source) if source is not None else None, base_dir=base, turns=turns
    )


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _strip_tags(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in _TAGS and i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] == "turns":
            continue
        out.append(part)
    return tuple(out)


def _line_of(root: yaml.Node, loc: Sequence[str | int]) -> int:
    """The line of the deepest node along `loc` (a key's own line for mapping entries)."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _duplicates(node: yaml.Node, loc: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple, str, int]]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                yield loc, key, k.start_mark.line + 1
            seen.add(key)
            yield from _duplicates(v, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            yield from _duplicates(v, (*loc, i))


def _problem(file: str, root: yaml.Node, err: Any) -> Problem:
    loc = _strip_tags(err["loc"])
    kind, msg = err["type"], str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _FIELDS, n=1, cutoff=0.6)
        msg = f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        if key == "for_each":
            msg = "for_each cannot be nested inside another for_each"
    elif kind == "missing":
        msg = f"missing required field {loc[-1]!r}"
        return Problem(file, _line_of(root, loc[:-1]), _dotted(loc), msg)
    elif kind == "string_pattern_mismatch":
        msg = "names start with a letter and use only letters, digits, '-' and '_' (at most 64)"
    return Problem(file, _line_of(root, loc), _dotted(loc), msg)


class _Planner:
    """Expands loops, checks names / references / placeholders / files, and names the outputs."""

    def __init__(self, spec: PipelineSpec, base: Path, file: str, root: yaml.Node) -> None:
        self.spec, self.base, self.file, self.root = spec, base, file, root
        self.problems: list[Problem] = []
        self.main = spec.thread or spec.name

    def fail(self, loc: tuple[str | int, ...], message: str) -> None:
        problem = Problem(self.file, _line_of(self.root, loc), _dotted(loc), message)
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


# =================================================================================================
# Running
# =================================================================================================
@dataclass
class MediaEntry:
    """An input or output medium in the report."""

    modality: str
    id: str  # "@m:<12 hex>"
    path: str | None = None  # outputs: relative to the output folder; inputs: the file read
    source: str | None = None  # inputs: as written in the pipeline ("@star", a file)
    caption: str | None = None


@dataclass
class TurnRecord:
    """What one planned turn did: in the report and `report.json`, and what resuming reads."""

    key: str
    label: str
    thread: str
    position: int
    request: str
    file: str | None = None
    loop: str | None = None
    task: str | None = None
    status: Literal["done", "failed", "pending"] = "pending"
    inputs: list[MediaEntry] = field(default_factory=list)
    example: list[MediaEntry] = field(default_factory=list)
    outputs: list[MediaEntry] = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0
    finished_at: str | None = None
    error: str | None = None
    fingerprint: str = ""
    reused: bool = False  # finished by an earlier run and not generated again

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnRecord:
        fields: dict[str, Any] = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for k in ("inputs", "example", "outputs"):
            fields[k] = [MediaEntry(**m) for m in data.get(k, [])]
        return cls(**fields)


@dataclass
class PipelineReport:
    """The outcome of `run_pipeline`: every planned turn's record, and where everything is."""

    name: str
    source: str | None
    out: Path
    model: str
    status: Literal["complete", "incomplete", "failed", "interrupted"]
    turns: list[TurnRecord]
    settings: dict[str, Any] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # loop base thread -> fingerprint it was forked at
    started_at: str = ""
    finished_at: str | None = None
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        done = [t for t in self.turns if t.status == "done"]
        return {
            "planned": len(self.turns),
            "done": len(done),
            "reused": sum(t.reused for t in done),
            "ran": sum(not t.reused for t in done),
            "failed": sum(t.status == "failed" for t in self.turns),
            "pending": sum(t.status == "pending" for t in self.turns),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "out": str(self.out),
            "model": self.model,
            "status": self.status,
            "counts": self.counts,
            "settings": self.settings,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round(self.seconds, 3),
            "generation_seconds": round(sum(t.seconds for t in self.turns if t.status == "done"), 3),
            "bases": self.bases,
            "turns": [asdict(t) for t in self.turns],
        }

    def to_markdown(self) -> str:
        c = self.counts
        steps = self.settings.get("diffusion_steps") or "model default"
        lines = [
            f"# Pipeline `{self.name}`: {self.status}",
            "",
            f"- source: `{self.source or '(text)'}`",
            f"- model: `{self.model}`; seed {self.settings.get('seed')}; diffusion steps {steps}",
            f"- turns: {c['planned']} planned, {c['done']} done ({c['reused']} from an earlier run, "
            f"{c['ran']} this run), {c['failed']} failed, {c['pending']} not run yet",
            f"- time: {sum(t.seconds for t in self.turns if t.status == 'done'):.2f} s generating in all; "
            f"this run {self.seconds:.1f} s (started {self.started_at}, finished {self.finished_at or '-'})",
            "",
            "| # | turn | thread | request | inputs | outputs | answer | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, t in enumerate(self.turns, start=1):
            inputs = [_md_link(m, self.out) for m in (*t.example, *t.inputs)]
            outputs = [_md_media(m) for m in t.outputs]
            state = {"done": "", "failed": "**failed**: ", "pending": "*not run yet*"}[t.status]
            answer = state + (t.error or t.text if t.status != "pending" else "")
            mark = " ↺" if t.reused else ""
            cells = (
                str(i),
                t.label + mark,
                t.thread,
                t.request or f"({t.task})",
                "<br>".join(inputs),
                " ".join(outputs),
                answer,
                f"{t.seconds:.2f}" if t.status == "done" else "",
            )
            lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
        lines += ["", "↺: finished by an earlier run (resumed, not generated again)."]
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def write(self) -> None:
        """Write ``report.json`` and ``report.md`` into the output folder (atomically)."""
        _atomic_write(self.out / REPORT_JSON, json.dumps(self.to_json(), indent=2) + "\n")
        _atomic_write(self.out / REPORT_MD, self.to_markdown())


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_media(m: MediaEntry) -> str:
    if m.path is None:
        return m.id
    return f"![{m.id}]({m.path})" if m.modality == "image" else f"[{m.path}]({m.path})"


def _md_link(m: MediaEntry, out: Path) -> str:
    if m.path is None:
        return m.source or m.id
    try:
        rel = os.path.relpath(m.path, out)
    except ValueError:
        rel = m.path
    return f"[{m.source or Path(m.path).name}]({rel})"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _TurnFailed(Exception):
    pass


def run_pipeline(
    pipeline: Pipeline,
    out: str | Path | None = None,
    *,
    model: str | Path | CoDi2Model | Backend | None = None,
    model_id: str | None = None,
    diffusion_steps: int | None = None,
    seed: int | None = None,
    fresh: bool = False,
    limit: int | None = None,
    on_event: Callable[[str, TurnRecord], None] | None = None,
) -> PipelineReport:
    """Run (or resume) `pipeline`, writing media and the report into `out`.

    Args:
        pipeline: from `load_pipeline` / `parse_pipeline`.
        out: the output folder (default: `Pipeline.default_out`).
        model: ``"tiny"``, a model folder, a `CoDi2Model` or a `Backend` (default: the file's
            ``model:``, else ``"tiny"``).
        model_id: how the report names a loaded `model` (its name or folder); a different model
            means different answers, so a resumed run redoes the turns another model made.
        diffusion_steps, seed: override the file's defaults (turns' own values still win).
        fresh: forget an earlier run in `out` (its session and the outputs its report lists).
        limit: run at most this many turns now (finished ones do not count); the rest next time.
        on_event: called with ``("start" | "reused" | "done" | "failed", record)`` for each turn.

    Raises:
        PipelineRunError: a turn failed (the report, written first, says which and why).
        PipelineBusyError: another run is writing to `out`.
    """
    from codi2_agent.session import Session

    # 1. Settings, and a fingerprint per turn: what it asks, its inputs' content, and its thread so far
    out = Path(out) if out is not None else pipeline.default_out()
    model = model if model is not None else pipeline.model
    model_id = model_id or (str(model) if isinstance(model, (str, Path)) else "in-memory model")
    settings = {
        "seed": seed if seed is not None else pipeline.spec.seed,
        "diffusion_steps": diffusion_steps if diffusion_steps is not None else pipeline.spec.diffusion_steps,
        "guidance_scale": pipeline.spec.guidance_scale,
    }
    prints = _fingerprints(pipeline, model_id, settings)
    event = on_event or (lambda kind, record: None)

    # 2. The output folder: a lock, the earlier run's report, the session
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if fresh:
            _forget(out)
        previous = _previous(out)
        report = PipelineReport(
            name=pipeline.name,
            source=str(pipeline.source) if pipeline.source else None,
            out=out,
            model=model_id,
            status="incomplete",
            turns=[_pending(t) for t in pipeline.turns],
            settings=settings,
            bases=dict(previous.get("bases", {})) if previous else {},
            started_at=_now(),
        )
        old = {r.key: r for r in (TurnRecord.from_json(t) for t in (previous or {}).get("turns", []))}
        t0 = time.perf_counter()
        main = Session(model, thread=pipeline.thread, root=out / SESSION_DIR, progress=False)
        runner = _Runner(pipeline, main, out, settings)
        ran = 0
        try:
            # 3. The plan, in order: reuse what is finished, run the rest
            for i, planned in enumerate(pipeline.turns):
                if (
                    limit is not None
                    and ran >= limit
                    and not runner.finished(planned, old.get(planned.key), prints[planned.key])
                ):
                    break
                record = report.turns[i]
                record.fingerprint = prints[planned.key]
                event("start", record)
                if planned.base_thread is not None and planned.position == 1:
                    runner.ensure_base(planned, prints, report)
                done = runner.reuse(planned, old.get(planned.key), record)
                if done is not None:
                    report.turns[i] = done
                    event("reused", done)
                    continue
                try:
                    runner.run(planned, record)
                except _TurnFailed as e:
                    record.status, record.error, record.finished_at = "failed", str(e), _now()
                    report.status = "failed"
                    event("failed", record)
                    raise PipelineRunError(f"turn {planned.key} ({planned.label}) failed: {e}") from None
                ran += 1
                report.seconds = time.perf_counter() - t0
                report.write()
                event("done", record)
            else:
                report.status = "complete"
        except KeyboardInterrupt:
            report.status = "interrupted"
            raise
        except BaseException:
            if report.status != "failed":
                report.status = "failed"
            raise
        finally:
            report.finished_at = _now()
            report.seconds = time.perf_counter() - t0
            report.write()
            main.close()
    return report


def _fingerprints(pipeline: Pipeline, model_id: str, settings: dict[str, Any]) -> dict[str, str]:
    prints: dict[str, str] = {}
    last: dict[str, str] = {}  # thread -> fingerprint of its latest turn
    for t in pipeline.turns:
        if t.position == 1 and t.base_thread is not None:
            prev = prints.get(t.base_after or "", "")
        else:
            prev = last.get(t.thread, "")
        spec = t.spec.model_dump(mode="json")
        for key in ("image", "audio"):  # files count by their content (the digests), not their path
            spec[key] = [m if m.startswith("@") else "file" for m in spec[key]]
        if spec.get("example"):
            spec["example"] = {
                k: (v if v is None or v.startswith("@") else "file") for k, v in spec["example"].items()
            }
        refs = [prints.get(key, key) for _, key in t.refs]
        prints[t.key] = _fingerprint(prev, spec, t.digests, refs, model_id, settings)
        last[t.thread] = prints[t.key]
    return prints


def _pending(t: PlannedTurn) -> TurnRecord:
    return TurnRecord(
        key=t.key,
        label=t.label,
        thread=t.thread,
        position=t.position,
        request=t.spec.say,
        file=str(t.file) if t.file else None,
        loop=t.loop,
        task=t.spec.effective_task,
    )


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    import fcntl

    handle = (out / ".lock").open("w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineBusyError(
                f"another run is writing to {out}; wait for it or pick another --out"
            ) from None
        yield
    finally:
        handle.close()


def _previous(out: Path) -> dict[str, Any] | None:
    path = out / REPORT_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a damaged report: the session's checkpoints still hold the finished turns
    return data if isinstance(data, dict) else None


def _forget(out: Path) -> None:
    """Remove an earlier run: its session, its report, and the outputs that report lists (only those)."""
    previous = _previous(out) or {}
    for turn in previous.get("turns", []):
        for m in turn.get("outputs", []):
            if m.get("path"):
                (out / m["path"]).unlink(missing_ok=True)
    shutil.rmtree(out / SESSION_DIR, ignore_errors=True)
    for name in (REPORT_JSON, REPORT_MD):
        (out / name).unlink(missing_ok=True)


class _Runner:
    """Runs planned turns in their threads and keeps what later turns refer to (``@name``)."""

    def __init__(self, pipeline: Pipeline, main: Session, out: Path, settings: dict[str, Any]) -> None:
        self.pipeline, self.main, self.out, self.settings = pipeline, main, out, settings
        self.sessions: dict[str, Session] = {main.thread: main}
        self.outputs: dict[str, list[MediaRef]] = {}  # turn key -> output refs

    def session(self, thread: str) -> Session:
        from codi2_agent.session import Session

        if thread not in self.sessions:
            self.sessions[thread] = Session(thread=thread, progress=False, _parts=self.main._parts)
        return self.sessions[thread]

    # --- threads --------------------------------------------------------------------------------
    def ensure_base(self, planned: PlannedTurn, prints: dict[str, str], report: PipelineReport) -> None:
        """A loop's threads start as copies of a base thread: the main thread where the loop stands."""
        assert planned.base_thread is not None
        want = prints.get(planned.base_after or "", "")
        base = self.session(planned.base_thread)
        if report.bases.get(planned.base_thread) == want and base.turn == planned.offset:
            return
        _copy_thread(self.main, base, at_turn=planned.offset)
        report.bases[planned.base_thread] = want
        report.write()

    # --- resuming -------------------------------------------------------------------------------
    def finished(self, planned: PlannedTurn, old: TurnRecord | None, fingerprint: str) -> bool:
        return old is not None and old.status == "done" and old.fingerprint == fingerprint

    def reuse(self, planned: PlannedTurn, old: TurnRecord | None, record: TurnRecord) -> TurnRecord | None:
        """The earlier run's record when that turn is finished and unchanged; else None, after making
        its thread end just before it."""
        session = self.session(planned.thread)
        n = planned.thread_turn
        history = session.history() if session.turn >= n else []
        if self.finished(planned, old, record.fingerprint) and history:
            assert old is not None
            got = history[n - 1]
            if [f"@m:{r.short_id}" for r in got.refs] == [m.id for m in old.outputs if m.id] and all(
                (self.out / m.path).is_file() for m in old.outputs if m.path
            ):
                self.outputs[planned.key] = list(got.refs)
                old.reused = True
                return old
        unrecorded = old is None or (old.status == "pending" and old.fingerprint in ("", record.fingerprint))
        if len(history) == n and unrecorded:
            # Finished, but the run stopped before it wrote the record: keep that answer.
            got = history[-1]
            if got.request == planned.spec.say.strip() and not got.clarification:
                self.outputs[planned.key] = list(got.refs)
                self.save(planned, got, record, seconds=0.0)
                record.reused = True
                return record
        if planned.base_thread is not None and planned.position == 1:
            _copy_thread(self.session(planned.base_thread), session)
        else:
            while session.turn > n - 1:
                session.undo()
        return None

    # --- running --------------------------------------------------------------------------------
    def run(self, planned: PlannedTurn, record: TurnRecord) -> None:
        from langchain_core.messages import HumanMessage

        from codi2_agent.graphs import TurnOptions, ref_block

        session = self.session(planned.thread)
        spec, refs = planned.spec, dict(planned.refs)
        # 1. Media: example files first and the turn's own media last (an analogy's target is last)
        attachments: list[MediaRef] = []
        example: list[str] = []
        try:
            if spec.example is not None:
                for source in (spec.example.before, spec.example.after):
                    if source is None:
                        continue
                    ref = self.medium(source, None, refs, session)
                    if not source.startswith("@"):  # a file must come with the message to be known
                        attachments.append(ref)
                    record.example.append(self.entry(source, ref))
                    example.append(f"@m:{ref.short_id}")
            for modality, sources in ((Modality.IMAGE, spec.image), (Modality.AUDIO, spec.audio)):
                for source in sources:
                    ref = self.medium(source, modality, refs, session)
                    attachments.append(ref)
                    record.inputs.append(self.entry(source, ref))
            # 2. The turn
            settings = self.settings
            output = spec.output if spec.output != "auto" else None
            if output is None and spec.effective_task in ("edit", "analogy") and attachments:
                output = attachments[-1].modality.value  # the medium being edited: the last one
            options = TurnOptions(
                task=spec.effective_task,
                output=output,
                example=tuple(example),
                seed=spec.seed if spec.seed is not None else settings["seed"],
                num_inference_steps=spec.diffusion_steps or settings["diffusion_steps"],
                guidance_scale=spec.guidance_scale
                if spec.guidance_scale is not None
                else settings["guidance_scale"],
                max_new_tokens=spec.max_new_tokens,
            )
            words = spec.say.strip()
            content: list[Any] = [{"type": "text", "text": words}] if words else []
            content += [ref_block(r) for r in attachments]
            t0 = time.perf_counter()
            result = session.run(HumanMessage(content=content), options)
            seconds = time.perf_counter() - t0
        except (MediaError, ValueError, OSError) as e:
            raise _TurnFailed(str(e)) from e
        if result.clarification:
            record.text = result.text
            raise _TurnFailed(f"CoDi-2 asked back: {result.text}")
        self.outputs[planned.key] = list(result.refs)
        self.save(planned, result, record, seconds=seconds)

    def medium(
        self, source: str, modality: Modality | None, refs: dict[str, str], session: Session
    ) -> MediaRef:
        """A ``@name`` (an earlier turn's output) or a file (stored), as a reference."""
        if source.startswith("@"):
            made = [r for r in self.outputs.get(refs[source[1:]], []) if modality in (None, r.modality)]
            if not made:
                raise _TurnFailed(f"{source} made no {modality.value if modality else 'medium'}")
            return made[0]
        media = Media.open(source)
        if modality is not None and media.modality is not modality:
            raise _TurnFailed(f"{source} is {media.modality.value}, not {modality.value}")
        return session.artifacts.put(media)

    def entry(self, source: str, ref: MediaRef) -> MediaEntry:
        named = source.startswith("@")
        return MediaEntry(
            modality=ref.modality.value,
            id=f"@m:{ref.short_id}",
            path=None if named else source,
            source=source if named else _shown(source, self.pipeline.base_dir),
            caption=ref.caption,
        )

    def save(self, planned: PlannedTurn, result: TurnResult, record: TurnRecord, *, seconds: float) -> None:
        """Write the turn's media (and a text-only answer) under the output folder; fill the record."""
        from codi2_agent.media import MIME_TO_EXT

        record.outputs = []
        for i, (media, ref) in enumerate(zip(result.media, result.refs, strict=True)):
            name = planned.out_stem + (f"-{i + 1}" if i else "") + MIME_TO_EXT.get(ref.mime, "")
            path = self.out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(media.to_bytes()[0])
            os.replace(tmp, path)
            record.outputs.append(
                MediaEntry(
                    modality=ref.modality.value, id=f"@m:{ref.short_id}", path=name, caption=ref.caption
                )
            )
        if not result.refs and result.text:
            _atomic_write(self.out / f"{planned.out_stem}.txt", result.text + "\n")
            record.outputs.append(MediaEntry(modality="text", id="", path=f"{planned.out_stem}.txt"))
        record.text, record.task = result.text, result.task or record.task
        record.seconds, record.finished_at, record.status = round(seconds, 3), _now(), "done"


def _copy_thread(source: Session, dest: Session, *, at_turn: int | None = None) -> None:
    """Make `dest` a copy of `source` (as it was after `at_turn` turns): a fork that may overwrite."""
    from langgraph.types import Overwrite

    values: dict[str, Any] | None
    if at_turn is None or source.turn == at_turn:
        values = source.state()
    else:  # the last checkpoint at rest after that turn (source has moved on since)
        values = next(
            (
                dict(past.values)
                for past in source.graph.get_state_history(source.config)
                if not past.next and int(past.values.get("turn") or 0) == at_turn
            ),
            None,
        )
        if values is None:
            raise RuntimeError(f"thread {source.thread!r} has no checkpoint after turn {at_turn}")
    values["messages"] = Overwrite(list(values.get("messages", [])))
    values["media"] = Overwrite(list(values.get("media", [])))
    values["ancestors"] = [*values.get("ancestors", []), source.thread]
    values.setdefault("turn", 0)
    dest.graph.update_state(dest.config, values, as_node="respond")


def _shown(path: str, base: Path) -> str:
    """A file path as the pipeline's author knows it (relative to the pipeline folder when inside it)."""
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return path
