"""The pipeline file format: pydantic specs, the errors, and YAML read with line numbers.

`read_spec` turns YAML text into a validated `PipelineSpec` and keeps the YAML node tree, so every
problem (here and in the planner) is reported as ``file:LINE: field.path: message``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

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

from codi2_agent.media import OutputKind, Task

__all__ = [
    "SESSION_DIR",
    "ExampleSpec",
    "ForEachSpec",
    "PipelineBusyError",
    "PipelineError",
    "PipelineRunError",
    "PipelineSpec",
    "Problem",
    "TurnSpec",
    "dotted",
    "line_of",
    "read_spec",
]

SESSION_DIR = "session"  # the output folder's session (artifacts, memory, checkpoints): no turn writes there
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
    task: Task | None = None  # the session graph's own task names
    output: OutputKind | None = None
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
        if self.task == "recall":  # runs like "find the red star": a search of the exemplar memory
            if not self.say.strip():
                raise ValueError("a recall turn needs `say`: what to look for in memory")
            if self.output not in (None, "auto"):
                raise ValueError("a recall turn answers with the media it finds; `output` does not apply")
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
# YAML, with line numbers
# =================================================================================================
def read_spec(text: str, file: str) -> tuple[PipelineSpec, yaml.Node]:
    """The validated spec of YAML `text`, and its node tree (for the lines of later problems).

    Raises:
        PipelineError: YAML syntax, an empty file or not a mapping, a duplicate key, a schema error.
    """
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
        raise PipelineError([Problem(file, mark.line + 1 if mark else 0, "", message)]) from None
    if root is None:
        raise PipelineError([Problem(file, 1, "", "the pipeline is empty")])
    if not isinstance(root, yaml.MappingNode):
        raise PipelineError(
            [Problem(file, root.start_mark.line + 1, "", "a pipeline is a mapping (name:, turns:)")]
        )
    problems = [
        Problem(file, line, dotted(loc), f"{key!r} appears twice") for loc, key, line in _duplicates(root)
    ]
    if problems:
        raise PipelineError(problems)
    data = yaml.safe_load(text)

    # 2. The schema
    try:
        return PipelineSpec.model_validate(data), root
    except ValidationError as e:
        raise PipelineError([_problem(file, root, err) for err in e.errors()]) from None


def dotted(loc: Sequence[str | int]) -> str:
    """A location as written in messages: ``turns[1].example.after``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(root: yaml.Node, loc: Sequence[str | int]) -> int:
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


def _strip_tags(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in _TAGS and i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] == "turns":
            continue
        out.append(part)
    return tuple(out)


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
        return Problem(file, line_of(root, loc[:-1]), dotted(loc), msg)
    elif kind == "string_pattern_mismatch":
        msg = "names start with a letter and use only letters, digits, '-' and '_' (at most 64)"
    return Problem(file, line_of(root, loc), dotted(loc), msg)
