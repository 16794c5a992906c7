"""`CoDi2Toolkit`: generate / edit / apply-example-edit / describe / recall tools for LLM agents.

Every call is one turn of a session-graph thread, so an agent's calls share one history and one
exemplar memory: an edit can name "the last image" or an id an earlier call returned, and "do the
same edit to this one" finds the edit it means.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from codi2_agent.graphs import TurnOptions
from codi2_agent.locking import ThreadBusyError
from codi2_agent.media import MediaRef, Modality
from codi2_agent.messages import ref_block, user_message

from ._access import MediaAccess
from ._preview import MIN_PREVIEW_BYTES, preview_block
from ._streaming import tool_event_sink

if TYPE_CHECKING:
    from codi2_agent.backends import Backend
    from codi2_agent.model import CoDi2Model
    from codi2_agent.session import Session, TurnResult

__all__ = [
    "ApplyExampleEditInput",
    "CoDi2ApplyExampleEditTool",
    "CoDi2DescribeTool",
    "CoDi2EditTool",
    "CoDi2GenerateTool",
    "CoDi2RecallTool",
    "CoDi2Toolkit",
    "DescribeInput",
    "EditInput",
    "GenerateInput",
    "RecallInput",
]

DEFAULT_PREVIEW_BYTES = 64 * 1024  # a 256x256 PNG of a simple scene, or 2 s of 16 kHz audio

_MEDIA_HELP = (
    "The medium: an id returned by an earlier call ('@m:4a8d5d3261e8'), an artifact:// url, words such as "
    "'the last image' or 'the star from turn 3', or a file path under the allowed folders."
)


# --- argument schemas ----------------------------------------------------------------------------
class GenerateInput(BaseModel):
    """Arguments of `codi2_generate`."""

    prompt: str = Field(
        description="What to draw or play, e.g. 'a small red star in the snow'.", min_length=1
    )
    modality: Literal["image", "audio"] = Field(default="image", description="Make an image or a sound.")
    seed: int | None = Field(default=None, description="Fix the random seed to reproduce a result.")


class EditInput(BaseModel):
    """Arguments of `codi2_edit`."""

    media: str = Field(description=_MEDIA_HELP, min_length=1)
    instruction: str = Field(description="The change, e.g. 'make it blue' or 'raise the pitch to 660 Hz'.")


class ApplyExampleEditInput(BaseModel):
    """Arguments of `codi2_apply_example_edit`."""

    example_after: str = Field(description="The result of an earlier edit to imitate (" + _MEDIA_HELP + ")")
    target: str = Field(description="The medium to apply the same edit to. " + _MEDIA_HELP)
    example_before: str | None = Field(
        default=None, description="The medium before that edit; by default the one it was made from."
    )


class DescribeInput(BaseModel):
    """Arguments of `codi2_describe`."""

    media: str = Field(description=_MEDIA_HELP, min_length=1)
    question: str | None = Field(default=None, description="A question about it; by default, describe it.")


class RecallInput(BaseModel):
    """Arguments of `codi2_recall`."""

    query: str = Field(description="What to look for, e.g. 'the picture with the blue star'.", min_length=1)
    modality: Literal["image", "audio"] | None = Field(
        default=None, description="Only images or only sounds."
    )
    k: int = Field(default=3, ge=1, le=10, description="How many to return.")


# --- the tools -------------------------------------------------------------------------------------
class _Runner:
    """The session all of a toolkit's tools share, one call at a time (a thread is sequential)."""

    def __init__(self, session: Session, access: MediaAccess, preview_max_bytes: int | None = None) -> None:
        self.session = session
        self.access = access
        self.preview_max_bytes = preview_max_bytes  # None: results carry references only
        self.lock = threading.Lock()

    def source(self, phrase: str, attachments: list[MediaRef]) -> str:
        """A tool argument naming a medium, as a reference the graph resolves (files and urls stored)."""
        ref = self.access.load(phrase, self.session.artifacts)
        if ref is None:
            return phrase.strip()
        attachments.append(ref)
        return ref.uri

    def turn(
        self,
        text: str,
        options: TurnOptions,
        attachments: list[MediaRef],
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> TurnResult:
        with self.lock:
            try:
                result = self.session.run(user_message(text, attachments), options, on_event=on_event)
            except ValueError as e:  # bad media or arguments: the agent can fix its call
                raise ToolException(str(e)) from e
            except ThreadBusyError as e:  # another writer holds the thread: the agent may retry later
                raise ToolException(f"{e}; try again shortly") from e
        if result.clarification:
            raise ToolException(result.text)
        return result


def _summary(result: TurnResult, verb: str, reply: str) -> str:
    lines = []
    for ref in result.refs:
        caption = f" showing {ref.caption!r}" if ref.caption else ""
        lines.append(f"{verb} {ref.modality.value} @m:{ref.short_id}{caption} (turn {result.turn}).")
    if result.refs:
        lines.append("Refer to it later by its @m: id.")
    if result.text and result.text != reply:  # the model's plain "Here it is." says nothing new
        lines.insert(0, f"CoDi-2 says: {result.text}")
    return " ".join(lines) or "CoDi-2 returned nothing."


def _with_previews(summary: str, refs: list[MediaRef], runner: _Runner) -> str | list[dict[str, Any]]:
    """The summary, followed by a capped preview of each medium when the toolkit shows media."""
    if runner.preview_max_bytes is None or not refs:
        return summary
    blocks: list[dict[str, Any]] = [{"type": "text", "text": summary}]
    for ref in refs:
        found = preview_block(runner.session.artifacts.get(ref), runner.preview_max_bytes)
        if found is None:
            blocks.append({"type": "text", "text": f"(@m:{ref.short_id} is too large to preview)"})
            continue
        block, note = found
        blocks += [{"type": "text", "text": f"Preview of @m:{ref.short_id} ({note}):"}, block]
    return blocks


# What a tool returns: the content the LLM reads (text, or text and previews) and the references.
_Result = tuple[str | list[dict[str, Any]] | ToolMessage, list[dict[str, Any]]]

# The id of the tool call being run: LangChain hands it to `BaseTool.run`, not to `_run`.
_tool_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("codi2_tool_call_id", default=None)


class _CoDi2Tool(BaseTool):
    """Shared plumbing: content-and-artifact results, errors as error ToolMessages, async in a thread."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runner: Any = Field(exclude=True)
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool = True
    handle_validation_error: bool = True

    def _answer(self, result: TurnResult, verb: str) -> _Result:
        # The artifact carries references, not bytes: agents checkpoint their messages too. Previews
        # (opt-in, capped) go in the content, the part an LLM reads.
        reply = self.runner.session.backend.vocabulary.reply
        return self._reply(
            _with_previews(_summary(result, verb, reply), result.refs, self.runner), result.refs
        )

    def _reply(self, content: str | list[dict[str, Any]], refs: list[MediaRef]) -> _Result:
        artifact = [ref_block(r) for r in refs]
        call_id = _tool_call_id.get()
        if isinstance(content, list) and call_id is not None:
            # LangChain turns tool content into a string when it holds a block type it does not list
            # for tool messages (audio is one); a ready ToolMessage keeps the preview blocks as they are.
            blocks: list[str | dict[Any, Any]] = list(content)
            message = ToolMessage(content=blocks, artifact=artifact, tool_call_id=call_id, name=self.name)
            return message, artifact
        return content, artifact

    def _turn(self, text: str, options: TurnOptions, attachments: list[MediaRef]) -> TurnResult:
        """Run the call's turn; its progress events go to whoever streams the calling run."""
        sink = tool_event_sink(tool=self.name, tool_call_id=_tool_call_id.get())
        runner: _Runner = self.runner
        return runner.turn(text, options, attachments, on_event=sink)

    def run(self, tool_input: Any, *args: Any, tool_call_id: str | None = None, **kwargs: Any) -> Any:
        token = _tool_call_id.set(tool_call_id)
        try:
            return super().run(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
        finally:
            _tool_call_id.reset(token)

    async def arun(self, tool_input: Any, *args: Any, tool_call_id: str | None = None, **kwargs: Any) -> Any:
        token = _tool_call_id.set(tool_call_id)
        try:
            return await super().arun(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
        finally:
            _tool_call_id.reset(token)

    async def _arun(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        # The model is CPU-bound and the checkpointer may be sync-only (SQLite): run in a worker thread.
        sync_manager = run_manager.get_sync() if run_manager is not None else None
        return await run_in_executor(None, self._run, *args, run_manager=sync_manager, **kwargs)


class CoDi2GenerateTool(_CoDi2Tool):
    """Draw an image or play a sound from a description."""

    name: str = "codi2_generate"
    description: str = (
        "Create a new image or sound from a text description with CoDi-2. Returns the new medium's "
        "@m: id, which later calls can use to edit or describe it."
    )
    args_schema: type[BaseModel] = GenerateInput

    def _run(
        self,
        prompt: str,
        modality: Literal["image", "audio"] = "image",
        seed: int | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> _Result:
        # The graph phrases the request as the model learned it ("draw …" / "play …").
        options = TurnOptions(task="generate", output=modality, seed=seed)
        return self._answer(self._turn(prompt.strip(), options, []), "Made")


class CoDi2EditTool(_CoDi2Tool):
    """Edit an image or sound following an instruction."""

    name: str = "codi2_edit"
    description: str = (
        "Edit an existing image or sound with CoDi-2, e.g. 'make it blue', 'turn the star into a circle', "
        "'replace the wind with rain'. Returns the edited medium's @m: id."
    )
    args_schema: type[BaseModel] = EditInput

    def _run(
        self, media: str, instruction: str, run_manager: CallbackManagerForToolRun | None = None
    ) -> _Result:
        attachments: list[MediaRef] = []
        source = self.runner.source(media, attachments)
        options = TurnOptions(task="edit", sources=(source,), instruction=instruction)
        return self._answer(self._turn(instruction, options, attachments), "Edited into")


class CoDi2ApplyExampleEditTool(_CoDi2Tool):
    """Apply an edit shown by an example (before -> after) to another medium: in-context analogy."""

    name: str = "codi2_apply_example_edit"
    description: str = (
        "Do to a target image or sound what an earlier edit did (A became A'; now B becomes ?). Give the "
        "edited example's @m: id (its original is found automatically) and the target."
    )
    args_schema: type[BaseModel] = ApplyExampleEditInput

    def _run(
        self,
        example_after: str,
        target: str,
        example_before: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> _Result:
        attachments: list[MediaRef] = []
        after = self.runner.source(example_after, attachments)
        before = self.runner.source(example_before, attachments) if example_before else None
        goal = self.runner.source(target, attachments)
        example = (before, after) if before else (after,)
        options = TurnOptions(task="analogy", sources=(goal,), example=example)
        return self._answer(self._turn("do the same edit to this one", options, attachments), "Made")


class CoDi2DescribeTool(_CoDi2Tool):
    """Describe an image or sound (captioning / visual and audio question answering)."""

    name: str = "codi2_describe"
    description: str = "Describe an image or sound with CoDi-2, or answer a question about it."
    args_schema: type[BaseModel] = DescribeInput

    def _run(
        self, media: str, question: str | None = None, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        attachments: list[MediaRef] = []
        source = self.runner.source(media, attachments)
        options = TurnOptions(task="describe", sources=(source,), instruction=question)
        result = self._turn(question or "describe this.", options, attachments)
        return result.text or "(no description)", []


class CoDi2RecallTool(_CoDi2Tool):
    """Find earlier media in the exemplar memory by description."""

    name: str = "codi2_recall"
    description: str = (
        "Search everything made or seen so far for media matching a description, e.g. 'the picture with "
        "the blue star'. Returns their @m: ids, most similar first."
    )
    args_schema: type[BaseModel] = RecallInput

    def _run(
        self,
        query: str,
        modality: Literal["image", "audio"] | None = None,
        k: int = 3,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> _Result:
        options = TurnOptions(
            task="recall", query=query, k=k, modality=Modality(modality) if modality else None
        )
        result = self._turn(f"find {query}", options, [])
        return self._reply(_with_previews(result.text, result.refs, self.runner), result.refs)


# --- the toolkit ---------------------------------------------------------------------------------
class CoDi2Toolkit(BaseToolkit):
    """CoDi-2 tools for LLM agents, all running through one session-graph thread.

    Setup:
        Part of codi2-agent. Any tool-calling chat model can drive the tools.

    Instantiate:
        .. code-block:: python

            from codi2_agent.tools import CoDi2Toolkit

            toolkit = CoDi2Toolkit(
                model="tiny",                       # or a CoDi2Model / Backend
                root="./agent-session",             # artifacts, memory, checkpoints
                media_roots=["./inputs"],           # files the agent may read; nothing else
                allow_urls=False,                   # refuse http(s) urls (the default)
            )
            tools = toolkit.get_tools()

    Invoke:
        .. code-block:: python

            from langchain.agents import create_agent

            agent = create_agent(model=llm, tools=tools)
            agent.invoke({"messages": [("user", "Draw a red star, make it blue, then do that to a circle")]})

            made = tools[0].invoke({"type": "tool_call", "id": "1", "name": "codi2_generate",
                                    "args": {"prompt": "a small red star in the snow"}})
            made.content    # 'Made image @m:4a8d5d3261e8 showing … (turn 1). Refer to it later by …'
            made.artifact   # [{'type': 'image', 'url': 'artifact://4a8d…', 'mime_type': 'image/png', …}]

    One writer per thread: the tools' calls run one at a time, and a call that finds the thread held
    by another process waits (`Session` ``lock_timeout``), then returns a tool error ("thread … is
    busy; try again shortly") instead of interleaving with it.

    Progress: inside a LangGraph run (``create_agent``), each call's diffusion events (``start``,
    ``progress`` with ``step``/``total``, ``end``), tagged with ``tool`` and ``tool_call_id``, go to
    the run's ``stream_mode="custom"``.

    Args:
        model: ``"tiny"``, a model folder, a `CoDi2Model` or a `Backend` (ignored with `session`).
        session: an existing `codi2_agent.Session` to run the tools in (shares its thread).
        root: the session folder when no `session` is given (default ``./codi2-agent``).
        thread_id: the thread the tools' calls form (its key includes the tenant: two tenants'
            "agent" threads are two threads).
        tenant: whose thread, media and memory the tools read and write; another tenant's ids are
            unknown here.
        media_roots: folders whose files the tools may read (none by default).
        allow_urls: fetch ``http(s)://`` media (off by default).
        preview_media: also put each produced (or recalled) image or sound in the tool result's
            content as a v1 ``image`` / ``audio`` block, so a multimodal LLM sees what it made (off by
            default: results then carry ``artifact://`` references only).
        preview_max_bytes: the cap on each preview's file size: larger images are downscaled, sounds
            resampled and cut (see `codi2_agent.tools._preview`). Previews are checkpointed with
            the agent's messages, so keep it small.
        graph_options: passed to the `Session`: its ``device=``, ``dtype=``, ``device_map=`` and
            ``offload=`` (where the model runs and in what precision, e.g. ``dtype="bfloat16"``; unset
            ones from ``CODI2_DEVICE`` / ``CODI2_DTYPE``) and `build_session_graph`'s options (e.g.
            ``num_inference_steps=``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    session: Any
    access: MediaAccess = Field(default_factory=MediaAccess)
    _runner: Any = PrivateAttr(default=None)

    def __init__(
        self,
        model: str | Path | CoDi2Model | Backend = "tiny",
        *,
        session: Session | None = None,
        root: str | Path = "codi2-agent",
        thread_id: str = "agent",
        tenant: str = "default",
        media_roots: list[str | Path] | tuple[str | Path, ...] = (),
        allow_urls: bool = False,
        preview_media: bool = False,
        preview_max_bytes: int = DEFAULT_PREVIEW_BYTES,
        **graph_options: Any,
    ) -> None:
        from codi2_agent.session import Session

        if preview_media and preview_max_bytes < MIN_PREVIEW_BYTES:
            raise ValueError(
                f"preview_max_bytes must be at least {MIN_PREVIEW_BYTES}, got {preview_max_bytes}"
            )
        if graph_options.get("review"):
            raise ValueError("tools cannot wait for a human review; use a Session with review=True instead")
        if session is None:
            session = Session(
                model, thread=thread_id, root=root, tenant=tenant, progress=False, **graph_options
            )
        elif graph_options:
            raise ValueError(f"graph options {sorted(graph_options)} need a new session, but session= is set")
        access = MediaAccess(roots=tuple(Path(r) for r in media_roots), allow_urls=allow_urls)
        super().__init__(session=session, access=access)  # type: ignore[call-arg]
        self._runner = _Runner(session, self.access, preview_max_bytes if preview_media else None)

    def get_tools(self) -> list[BaseTool]:
        """The five tools, sharing this toolkit's session."""
        runner = self._runner
        return [
            CoDi2GenerateTool(runner=runner),
            CoDi2EditTool(runner=runner),
            CoDi2ApplyExampleEditTool(runner=runner),
            CoDi2DescribeTool(runner=runner),
            CoDi2RecallTool(runner=runner),
        ]

    def close(self) -> None:
        self.session.close()
