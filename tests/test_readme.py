"""README.md runs as written.

Every ```python block and every ```yaml pipeline runs verbatim, in README order, in one empty
working directory — the files one block writes are there for the next, as for a reader following
the page. Python blocks of one section (the text under one heading) share a namespace. A YAML
pipeline starts with ``# FILE.yaml; run it with: codi2-agent run FILE.yaml``: it is saved as FILE
and that command runs (the installed console script, in a subprocess).

A block that cannot run offline on a CPU is marked in the README, right before it, with
``<!-- readme-test: skip (why) -->``; it is compiled (so it stays valid Python) but not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_RE = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->$")
MARKER_RE = re.compile(r"^<!--\s*readme-test:")
SKIP_FORM = "<!-- readme-test: skip (why) -->"
YAML_HEADER_RE = re.compile(
    r"^#\s*(?P<file>[\w./-]+\.ya?ml)\b.*?run it with:\s*(?P<command>codi2-agent\s.+?)\s*$"
)
RUNNABLE = ("python", "yaml")
COMMAND_TIMEOUT_S = 600

# Failures that come from a known library bug, not from the README: the README shows what a user
# would write, and the block is expected to pass once the library is fixed (then this entry goes).
KNOWN_LIBRARY_BUGS: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    section: str
    language: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-')}"


def parse_readme(text: str) -> list[Block]:
    """The runnable blocks, in order, with their section and skip marker."""
    blocks: list[Block] = []
    section, marker, fence = "top", None, None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is not None:
            if line.startswith("```"):
                language, start = fence
                if language in RUNNABLE:
                    blocks.append(Block(start, section, language, "\n".join(body) + "\n", marker))
                fence, marker, body = None, None, []
            else:
                body.append(line)
            continue
        if line.startswith("```"):
            fence = (line[3:].strip().lower(), number)
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        stripped = line.strip()
        if MARKER_RE.match(stripped):
            found = SKIP_RE.match(stripped)
            assert found, f"README.md:{number}: malformed marker {stripped!r}; want: {SKIP_FORM}"
            marker = found["reason"].strip()
        elif stripped and marker is not None:
            raise AssertionError(f"README.md:{number}: a readme-test marker must come right before a block")
    return blocks


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))


@dataclass
class Outcome:
    error: str | None = None  # traceback or command output of a failure
    blocked_by: Block | None = None  # an earlier block of its section failed, so it did not run


def _run_python(block: Block, namespace: dict) -> None:
    # Pad so tracebacks name the README's own line numbers.
    code = compile("\n" * block.line + block.code, str(README), "exec")
    exec(code, namespace)


def _run_yaml(block: Block) -> None:
    header = YAML_HEADER_RE.match(block.code.splitlines()[0])
    assert header, (
        f"README.md:{block.line}: a pipeline block starts with "
        "'# FILE.yaml; run it with: codi2-agent run FILE.yaml'"
    )
    Path(header["file"]).write_text(block.code, encoding="utf-8")
    program, *args = shlex.split(header["command"])
    executable = Path(sys.executable).parent / program  # the console script installed beside python
    done = subprocess.run(
        [str(executable), *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=os.environ
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`{header['command']}` exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )


def _close(namespace: dict) -> None:
    """Release what a section opened (Chroma clients, SQLite) before the next one starts."""
    from codi2_agent.session import Session
    from codi2_agent.tools import CoDi2Toolkit

    for value in namespace.values():
        if isinstance(value, (Session, CoDi2Toolkit)):
            value.close()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Run every unmarked block once, in README order, in one fresh folder."""
    folder = tmp_path_factory.mktemp("readme")
    results: dict[str, Outcome] = {}
    namespaces: dict[str, dict] = {}
    failed: dict[str, Block] = {}  # section -> its first failing block
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for block in BLOCKS:
            if block.skip is not None:
                continue
            if block.section in failed:
                results[block.id] = Outcome(blocked_by=failed[block.section])
                continue
            namespace = namespaces.setdefault(block.section, {"__name__": "__readme__"})
            try:
                if block.language == "python":
                    _run_python(block, namespace)
                else:
                    _run_yaml(block)
                results[block.id] = Outcome()
            except Exception:
                results[block.id] = Outcome(error=traceback.format_exc())
                failed[block.section] = block
        for namespace in namespaces.values():
            _close(namespace)
    yield results


def _known_bug(error: str) -> str | None:
    return next((why for text, why in KNOWN_LIBRARY_BUGS.items() if text in error), None)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, outcomes: dict[str, Outcome]) -> None:
    if block.skip is not None:
        # A block that cannot run here (a GPU, an API key) must still be valid code with a reason.
        assert block.skip.strip(), f"README.md:{block.line}: a skip marker needs its reason"
        if block.language == "python":
            compile(block.code, f"README.md:{block.line}", "exec")
        return
    outcome = outcomes[block.id]
    if outcome.blocked_by is not None:
        earlier = outcomes[outcome.blocked_by.id].error or ""
        if (why := _known_bug(earlier)) is not None:
            pytest.xfail(f"not run: README.md:{outcome.blocked_by.line} failed on a {why}")
        pytest.fail(f"not run: README.md:{outcome.blocked_by.line} of the same section failed")
    if outcome.error is not None:
        if (why := _known_bug(outcome.error)) is not None:
            pytest.xfail(why)
        pytest.fail(f"README.md:{block.line} ({block.language}, section {block.section!r}):\n{outcome.error}")


def test_readme_inventory() -> None:
    """What the README promises a reader: the two commands, and runnable examples of every surface."""
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    ran = [b for b in BLOCKS if b.skip is None]
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert sum(b.language == "yaml" for b in ran) >= 1
    assert len(ran) >= 6
    # Skipping is for what a CPU cannot run offline; most of the page must run.
    assert len(skipped) <= len(ran) // 2, [f"README.md:{b.line}: {b.skip}" for b in skipped]
    used = "\n".join(b.code for b in ran)
    for surface in ("Session(", "load_model(", "run_pipeline(", "CoDi2Toolkit(", "ChatCoDi2("):
        assert surface in used, f"no runnable README example uses {surface}"


def test_parse_readme_reads_markers_and_sections() -> None:
    text = (
        "## One\n```python\nx = 1\n```\n"
        "<!-- readme-test: skip (needs a GPU) -->\n```python\ngpu()\n```\n"
        "```\nnot code\n```\n## Two\n```yaml\n# job.yaml; run it with: codi2-agent run job.yaml\n```\n"
    )
    blocks = parse_readme(text)
    assert [(b.section, b.language, b.skip) for b in blocks] == [
        ("One", "python", None),
        ("One", "python", "needs a GPU"),
        ("Two", "yaml", None),
    ]
    assert blocks[0].code == "x = 1\n" and blocks[0].line == 2
    with pytest.raises(AssertionError, match="right before a block"):
        parse_readme("<!-- readme-test: skip (why) -->\nsome text\n```python\nx\n```\n")
    with pytest.raises(AssertionError, match="malformed marker"):
        parse_readme("<!-- readme-test: skipp -->\n```python\nx\n```\n")
