"""`ChatCoDi2`: CoDi-2 as a LangChain chat model that reads and writes images and sounds."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import Field, PrivateAttr, field_validator

from codi2_agent._placing import load_placed
from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import Backend, GenerateRequest, GenerateResult, PromptTurn
from codi2_agent.media import OutputKind
from codi2_agent.messages import inline_block, prompt_turns, ref_block
from codi2_agent.settings import check_device_name, check_dtype_name

from ._access import MediaAccess
from ._chat_inputs import MediaFileRefusedError, counting_stand_ins, read_local_files
from ._streaming import StopCut, cut_at_stops, iterate_in_thread

__all__ = ["ChatCoDi2", "CoDi2CapabilityError", "MediaFileRefusedError"]

MODEL_ENV = "CODI2_AGENT_MODEL"


def _default_model() -> str:
    return os.environ.get(MODEL_ENV, "tiny")


class CoDi2CapabilityError(NotImplementedError):
    """Something a chat model may be asked for that CoDi-2 cannot do (tool calls, structured output)."""


class ChatCoDi2(BaseChatModel):
    """CoDi-2 any-to-any generation as a LangChain chat model.

    Takes LangChain v1 content blocks — text, image and audio, as base64 (or ``data:`` urls), a
    ``file_id``, an ``artifact://`` url of the configured `ArtifactStore`, or a local file under
    ``media_roots`` — and answers with text and, when the model draws or plays, an image or audio
    block. Decoding is greedy and diffusion noise is seeded, so equal inputs give equal outputs.
    Stateless: for multi-turn work with memory use `CoDi2Toolkit` or `codi2_agent.Session`.

    Tokens are the model's own (`get_num_tokens`, `get_num_tokens_from_messages`, so
    ``trim_messages(..., token_counter=llm)`` trims to the real prompt); results and the last
    streamed chunk carry `usage_metadata`. CoDi-2 does not call tools or return JSON: `bind_tools`
    and `with_structured_output` raise `CoDi2CapabilityError` (a NotImplementedError); an agent
    uses CoDi-2 through `CoDi2Toolkit` instead.

    Setup:
        Part of codi2-agent. The shipped ``tiny`` model runs on CPU, offline.

        .. code-block:: bash

            pip install codi2-agent
            export CODI2_AGENT_MODEL=tiny      # optional: the default model (name or folder)

    Instantiate:
        .. code-block:: python

            from codi2_agent.tools import ChatCoDi2

            llm = ChatCoDi2(model="tiny", output="auto", num_inference_steps=20, seed=0)

    Invoke:
        .. code-block:: python

            msg = llm.invoke([("user", "draw a small red star in the snow")], output="image")
            msg.content_blocks
            # [{'type': 'text', 'text': 'Here it is.'},
            #  {'type': 'image', 'base64': 'iVBORw0…', 'mime_type': 'image/png'}]

            from langchain_core.messages import HumanMessage
            llm.invoke([HumanMessage(content=[{"type": "text", "text": "describe this picture."},
                                              msg.content_blocks[1]])]).text
            # 'a small red star in the snow'

    Stream:
        .. code-block:: python

            for chunk in llm.stream("describe this sound."):   # text as it is decoded, media last
                print(chunk.text, end="")

    Async:
        .. code-block:: python

            msg = await llm.ainvoke("draw a blue circle at night", output="image")

    Token usage:
        .. code-block:: python

            msg.usage_metadata          # {'input_tokens': 14, 'output_tokens': 3, 'total_tokens': 17}
            from langchain_core.messages import trim_messages
            trim_messages(history, max_tokens=200, token_counter=llm, strategy="last")

    Args:
        model: a shipped model name (``"tiny"``), a model folder, a `CoDi2Model` or a `Backend`.
            Names and folders load on first use. Default: ``$CODI2_AGENT_MODEL`` or ``"tiny"``.
        artifacts: the `ArtifactStore` (or its root) that ``file_id`` / ``artifact://`` inputs are read
            from and, with ``media_format="artifact"``, outputs are written to. Default: a temporary
            store, removed by `close()` (or ``with ChatCoDi2() as llm:``), else when the chat model is
            garbage-collected.
        output: ``"auto"`` (the model decides), ``"text"``, ``"image"`` or ``"audio"``; per call too.
        media_format: output media as ``"base64"`` blocks or as ``"artifact"`` url blocks.
        seed, num_inference_steps, guidance_scale: diffusion settings (per call too).
        max_tokens: most new text tokens (default 64).
        (per call only) session: a key of the conversation, e.g. ``llm.invoke(messages, session="u42")``;
            a served model (``model="http://…"``) answers one session's calls on one replica, so
            sessions answered together batch together. It changes nothing in the answer.
        temperature, timeout, max_retries: accepted for interface compatibility; the model runs
            locally and decodes greedily, so they change nothing (an ``api_key`` is ignored likewise).
        stop: cut the text at the first of these strings.
        media_roots: folders whose files media blocks may name (``{"type": "image", "url":
            "/data/in/cat.png"}`` or a ``file://`` url); none by default, so a block naming a file is
            refused with `MediaFileRefusedError`, as is one outside these folders.
        device, dtype, device_map, offload: where a model named by ``model`` (a name or folder) runs
            and in what precision, e.g. ``dtype="bfloat16"`` (see `load_model`); unset ones come from
            ``CODI2_DEVICE``, ``CODI2_DTYPE``, … A `CoDi2Model` or `Backend` given as ``model`` is
            already placed, so setting them then is an error.
    """

    model: Any = Field(default_factory=_default_model)
    artifacts: Any = None
    output: OutputKind = "auto"
    media_format: Literal["base64", "artifact"] = "base64"
    seed: int | None = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    media_roots: list[Path] = Field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    device_map: str | dict[str, Any] | None = None
    offload: bool | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        return None if value is None else check_device_name(value)  # refused now, not at first use

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        return None if value is None else check_dtype_name(value)

    _backend: Backend | None = PrivateAttr(default=None)
    _empty_text_tokens: int | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    # The default store's folder. TemporaryDirectory removes it when collected (weakref.finalize),
    # so a chat model that is dropped without close() does not leave it behind either.
    _temporary: tempfile.TemporaryDirectory[str] | None = PrivateAttr(default=None)

    # --- LangChain plumbing -----------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "codi2"

    @property
    def model_name(self) -> str:
        if isinstance(self.model, (str, Path)):
            return f"codi2-{self.model}" if str(self.model) == "tiny" else str(self.model)
        backend = self.model if isinstance(self.model, Backend) else None
        return backend.name if backend is not None else f"codi2-{self.model.config.preset}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "output": self.output,
            "seed": self.seed,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "codi2"
        params["ls_model_name"] = kwargs.get("model", self.model_name)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        return params

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["codi2_agent", "tools"]

    # --- the model, loaded on first use ---------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The backend behind this chat model (loading the model on first use)."""
        with self._lock:
            if self._backend is None:
                from codi2_agent.backends import as_backend

                model = load_placed(
                    self.model, device=self.device, dtype=self.dtype, device_map=self.device_map,
                    offload=self.offload,
                )  # fmt: skip
                self._backend = as_backend(model, self._store())
            return self._backend

    def _store(self) -> ArtifactStore:
        if isinstance(self.model, Backend):
            return self.model.artifacts
        if isinstance(self.artifacts, ArtifactStore):
            return self.artifacts
        if self.artifacts is not None:
            return ArtifactStore(self.artifacts)
        self._temporary = tempfile.TemporaryDirectory(prefix="codi2-chat-")
        return ArtifactStore(self._temporary.name)

    def close(self) -> None:
        """Remove the temporary artifact folder this chat model made, if any (idempotent).

        Media urls it returned (``media_format="artifact"``) stop resolving; a later call starts a
        new temporary store. A store passed as ``artifacts`` is left alone.
        """
        with self._lock:
            if self._temporary is None:
                return
            self._temporary.cleanup()
            self._temporary = None
            self._backend = None

    def __enter__(self) -> ChatCoDi2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- tokens: the model's own tokenizer, through the backend (never a download) ---------------
    def get_num_tokens(self, text: str) -> int:
        """Tokens `text` takes in the model's own tokenizer."""
        if self._empty_text_tokens is None:  # what an answer turn costs without words (BOS, </s>)
            self._empty_text_tokens = self._count([PromptTurn(role="assistant", parts=("",))])
        return self._count([PromptTurn(role="assistant", parts=(text,))]) - self._empty_text_tokens

    def get_token_ids(self, text: str) -> list[int]:
        """The token ids of `text` (the model's own tokenizer; needs the model in this process)."""
        processor = getattr(getattr(self.backend, "model", None), "processor", None)
        if processor is None:
            raise CoDi2CapabilityError(
                f"{self.model_name} runs behind {type(self.backend).__name__}, which counts tokens but does "
                "not hand out token ids; use get_num_tokens / get_num_tokens_from_messages"
            )
        return list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens the conversation takes as the model's prompt: the chat template, N placeholder
        tokens per image or sound, and the answer prefix. Media are counted by kind only: nothing is
        decoded, stored or read. What `trim_messages(..., token_counter=llm)` uses."""
        if tools:
            raise self._no_tools("count tool schemas")
        turns = prompt_turns(counting_stand_ins(messages))
        return self._count(turns) if turns else 0

    def _count(self, turns: Sequence[PromptTurn]) -> int:
        return int(self.backend.count_tokens(turns))

    def _usage(self, request: GenerateRequest, result: GenerateResult) -> UsageMetadata:
        """Prompt tokens as sent, and the answer's text tokens (a medium's marker is not counted)."""
        prompt, answer = self._count(request.prompt), self.get_num_tokens(result.text)
        return UsageMetadata(input_tokens=prompt, output_tokens=answer, total_tokens=prompt + answer)

    # --- what CoDi-2 cannot do ------------------------------------------------------------------
    def _no_tools(self, asked: str) -> CoDi2CapabilityError:
        return CoDi2CapabilityError(
            f"{self.model_name} cannot {asked}: CoDi-2 answers with text, images and sounds, never with "
            "tool calls or JSON. To put CoDi-2 in an agent, let a tool-calling chat model drive it "
            "through CoDi2Toolkit(...).get_tools() (codi2_agent.tools)"
        )

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Refused: CoDi-2 does not call tools (`CoDi2CapabilityError`, a NotImplementedError)."""
        raise self._no_tools("call tools")

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """Refused: CoDi-2 does not produce structured output (`CoDi2CapabilityError`)."""
        raise self._no_tools("produce structured output")

    # --- messages <-> prompt ----------------------------------------------------------------------
    def _prompt(self, messages: Sequence[BaseMessage]) -> list[PromptTurn]:
        # Strict reading: inline bytes and files under media_roots are stored, remote urls and unknown
        # block types refused.
        store = self.backend.artifacts
        turns = prompt_turns(
            read_local_files(messages, MediaAccess(roots=tuple(self.media_roots)), store), store
        )
        if not turns or turns[-1].role != "user":
            raise ValueError("ChatCoDi2 needs the conversation to end with a user message")
        return turns

    def _request(self, messages: Sequence[BaseMessage], **kwargs: Any) -> GenerateRequest:
        return GenerateRequest(
            prompt=tuple(self._prompt(messages)),
            output=kwargs.get("output", self.output),
            seed=kwargs.get("seed", self.seed),
            num_inference_steps=kwargs.get("num_inference_steps", self.num_inference_steps),
            guidance_scale=kwargs.get("guidance_scale", self.guidance_scale),
            max_new_tokens=kwargs.get("max_tokens") or self.max_tokens or 64,
            session=kwargs.get("session"),  # a served model keeps one session's calls on one replica
        )

    def _message_content(self, result: GenerateResult, stop: list[str] | None) -> tuple[str, list[dict]]:
        text = cut_at_stops(result.text, stop or self.stop or [])
        store = self.backend.artifacts
        media = [
            inline_block(r, store) if self.media_format == "base64" else ref_block(r) for r in result.media
        ]
        return text, media

    def _metadata(self, result: GenerateResult) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "codi2",
            "modality": result.modality.value,
            "artifacts": [r.id for r in result.media],
        }

    # --- generation -------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, **kwargs)
        result = self.backend.generate(request)
        text, media = self._message_content(result, stop)
        content: list[Any] = ([{"type": "text", "text": text}] if text else []) + media
        message = AIMessage(
            content=content,
            response_metadata=self._metadata(result),
            usage_metadata=self._usage(request, result),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        """Text chunks as the model decodes them (cut at the stop strings), then one chunk with the
        media and the metadata. A backend without `stream` gives its text in one chunk."""
        request = self._request(messages, **kwargs)
        backend = self.backend
        stream = getattr(backend, "stream", None)
        items: Iterator[str | GenerateResult] = (
            stream(request) if callable(stream) else iter([backend.generate(request)])
        )
        cut = StopCut(stop or self.stop or [])
        try:
            for item in items:
                piece = cut.push(item) if isinstance(item, str) else cut.finish(item.text)
                if piece:
                    block = {"type": "text", "text": piece, "index": 0}
                    yield ChatGenerationChunk(message=AIMessageChunk(content=[block]), text=piece)
                if isinstance(item, GenerateResult):
                    _, media = self._message_content(item, stop)
                    last: list[str | dict[Any, Any]] = [{**b, "index": i + 1} for i, b in enumerate(media)]
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(
                            content=last,
                            response_metadata=self._metadata(item),
                            usage_metadata=self._usage(request, item),  # once, on the last chunk
                            chunk_position="last",
                        )
                    )
        finally:  # a consumer that stops early releases the model now, not when this is collected
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # No on_llm_new_token here: BaseChatModel.stream reports every chunk we yield itself.
        yield from self._chunks(messages, stop, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The model is CPU-bound: run it in a worker thread so the event loop stays free.
        sync_manager = run_manager.get_sync() if run_manager is not None else None
        return await run_in_executor(None, self._generate, messages, stop, sync_manager, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The model is CPU-bound and its stream blocking: one worker thread runs it, chunks come here.
        async for chunk in iterate_in_thread(lambda: self._chunks(messages, stop, **kwargs)):
            yield chunk  # reported to the callbacks by BaseChatModel.astream
