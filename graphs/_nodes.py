"""The session graph's nodes, one method per step of a turn, and the routers between them.

Every node is a pure function of (state, config) plus the shared backend, memory and artifact store,
and is safe to run twice: artifact ids are content hashes, memory ids hash (tenant, thread, turn,
role, artifact), and seeds derive from (tenant, thread, turn), so a retried or resumed turn writes
exactly what the first attempt would have — no duplicates, no orphans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_store, get_stream_writer
from langgraph.types import interrupt

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import Backend, GenerateRequest
from codi2_agent.media import MediaError, MediaRef
from codi2_agent.messages import MEDIA_BLOCK_TYPES, block_ref, message_text, ref_block

from ._log import ThreadLog, TurnEntry
from ._planner import Planner
from ._prompt import ContextPolicy, PromptTooLongError, compose_memory, compose_window
from ._references import resolve
from ._remember import MemoryWriter
from ._retrieve import RetrieveStep
from ._state import Clarification, MediaRecord, Request, SessionState, TurnOptions
from ._words import clean_instruction

if TYPE_CHECKING:
    from codi2_agent.memory import Memory

__all__ = ["NodeSettings", "SessionNodes"]


@dataclass(frozen=True)
class NodeSettings:
    """Behaviour switches of a session graph (see `build_session_graph` for each)."""

    tenant: str = "default"
    context: ContextPolicy = "memory"
    window_k: int = 3
    shots: int = 0
    analogy_shots: int = 1
    max_prompt_tokens: int | None = None
    caption_outputs: bool = True
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_new_tokens: int = 64
    verify: int | None = None  # candidates per medium, the best-agreeing kept (None: one, unchecked)
    verify_threshold: float | None = None
    review: bool = False
    planner: Planner | None = None  # a chat model that reads requests before the rules do
    keep_messages: int = 16  # messages kept in state; the whole transcript is in the thread log


def _config_value(config: RunnableConfig | None, key: str, default: Any = None) -> Any:
    return ((config or {}).get("configurable") or {}).get(key, default)


def _last_human(messages: Sequence[BaseMessage]) -> HumanMessage | None:
    for m in reversed(messages):
        if isinstance(m, AIMessage):
            return None
        if isinstance(m, HumanMessage):
            return m
    return None


class SessionNodes(RetrieveStep):
    """The nodes of one session graph, bound to its backend, memory and store."""

    def __init__(
        self, backend: Backend, memory: Memory | None, artifacts: ArtifactStore, settings: NodeSettings
    ):
        self.backend = backend
        self.memory = memory
        self.artifacts = artifacts
        self.settings = settings
        self.vocabulary = backend.vocabulary
        self._logs: dict[int, ThreadLog] = {}
        self._memory_writer = MemoryWriter()

    def log(self) -> ThreadLog:
        """The thread log in this run's LangGraph store (the graph's own, or the server's)."""
        store = get_store()
        if store is None:
            raise RuntimeError(
                "the session graph keeps its media log in a LangGraph store: compile it with one "
                "(build_session_graph(store=...)) or run it where the server provides one"
            )
        log = self._logs.get(id(store))
        if log is None:
            log = self._logs[id(store)] = ThreadLog(store)
        return log

    def media_log(self, state: SessionState, config: RunnableConfig, upto: int) -> list[MediaRecord]:
        """The thread's media up to turn `upto`."""
        return self.log().media(self.tenant(config), self.thread(config), upto)

    # --- helpers --------------------------------------------------------------------------------
    def tenant(self, config: RunnableConfig | None) -> str:
        return str(_config_value(config, "tenant", self.settings.tenant))

    def store(self, config: RunnableConfig | None) -> ArtifactStore:
        """The tenant's view of the artifact store: only media this tenant stored or was given."""
        return self.artifacts.for_tenant(self.tenant(config))

    @staticmethod
    def thread(config: RunnableConfig | None) -> str:
        return str(_config_value(config, "thread_id", "default"))

    def seed(self, config: RunnableConfig | None, turn: int, options: TurnOptions | None) -> int:
        if options is not None and options.seed is not None:
            return options.seed
        if self.settings.seed is not None:
            return self.settings.seed + turn
        # Same place in the same thread -> same seed: a retried turn reproduces its media exactly.
        key = f"{self.tenant(config)}\x1f{self.thread(config)}\x1f{turn}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")

    def session_key(self, config: RunnableConfig | None) -> str:
        """The thread's routing key for a served model: a hash, so neither name leaves this process."""
        key = f"{self.tenant(config)}\x1f{self.thread(config)}".encode()
        return hashlib.sha256(key).hexdigest()[:32]

    def budget(self, max_new_tokens: int) -> int:
        limit = self.backend.context_limit
        if self.settings.max_prompt_tokens is not None:
            limit = min(limit, self.settings.max_prompt_tokens)
        return limit - max_new_tokens - 16  # room for the answer and a generation block

    def _remember(self, config: RunnableConfig, records: Sequence[MediaRecord]) -> None:
        if self.memory is None or not records:
            return
        tenant, thread = self.tenant(config), self.thread(config)
        self._memory_writer.remember(self.memory, self.log(), self.store(config), tenant, thread, records)

    # =============================================================================================
    # 1. ingest: the message's media -> ArtifactStore -> MediaRefs; inputs -> memory
    # =============================================================================================
    def ingest(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        turn = int(state.get("turn") or 0) + 1
        update: dict[str, Any] = {
            "turn": turn,
            "request": None,
            "clarification": None,
            "exemplars": [],
            "prompt": None,
            "result": None,
            "verdict": None,
            "found": [],
            "turn_media": [],
            "answer": None,
            "intent": None,
        }
        human = _last_human(state.get("messages", []))
        options = state.get("options")
        if human is None:
            if options is None:
                update["clarification"] = Clarification(question="What would you like me to do?")
                return update
            human = HumanMessage(options.instruction or options.query or "")
            update["messages"] = [human]
        # Media blocks carrying bytes are stored and replaced by references; the message keeps its
        # id, so the reducer swaps it in place and no later checkpoint holds the bytes.
        store = self.store(config)  # an artifact:// another tenant stored is unknown here
        content: list[Any] = []
        refs: list[MediaRef] = []
        problems: list[str] = []
        changed = False
        for block in human.content_blocks:
            if block.get("type") in MEDIA_BLOCK_TYPES:
                try:
                    ref = block_ref(block, store, turn=turn)
                except MediaError as e:
                    problems.append(str(e))
                    changed = True
                    continue
                refs.append(ref)
                new_block = ref_block(ref)
                changed = changed or new_block != block
                content.append(new_block)
            else:
                content.append(block)
        if changed:
            update["messages"] = [HumanMessage(content=content, id=human.id)]
        if problems:
            update["clarification"] = Clarification(
                question="I couldn't use the media you sent: "
                + "; ".join(problems)
                + ". Could you send it again?"
            )
            return update
        # Media sent again keep their place in an edit chain (subject).
        tenant, thread = self.tenant(config), self.thread(config)
        self.log().adopt(tenant, thread, dict(state))  # a pre-log thread
        earlier = self.media_log(state, config, turn - 1)
        known = {r.id: r for r in earlier}
        cut_short = self.log().start_turn(tenant, thread, turn)
        if cut_short and self.memory is not None and hasattr(self.memory, "reconcile_thread"):
            # A turn of this number was cut short (a crash, in this process or another) or rewound:
            # its log rows are gone, so its exemplars go too. The log is written before the memory,
            # so no exemplar of a dead turn exists without its rows.
            self.memory.reconcile_thread(tenant, thread, {(r.id, r.turn) for r in earlier})
        records = [
            MediaRecord(
                ref=ref,
                role="input",
                turn=turn,
                subject=known[ref.id].subject if ref.id in known else ref.short_id,
            )
            for ref in refs
        ]
        self.log().add_media(tenant, thread, records)  # the log first: see start_turn above
        self._remember(config, records)
        update["turn_media"] = records
        return update

    # =============================================================================================
    # 2. resolve: references -> MediaRecords, and what is asked (or a question back)
    # =============================================================================================
    def resolve(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        turn = int(state["turn"])
        options = state.get("options") or TurnOptions()
        human = _last_human(state.get("messages", []))
        text = message_text(human) if human is not None else ""
        attached = [r for r in state.get("turn_media") or [] if r.turn == turn and r.role == "input"]
        log = self.media_log(state, config, turn - 1)
        tenant = self.tenant(config)

        def lookup(token: str) -> MediaRecord | None:
            if self.memory is None:
                return None
            from codi2_agent.memory import AmbiguousReferenceError, UnknownReferenceError

            try:
                return self._record(self.memory.reference(tenant, "@m:" + token))
            except UnknownReferenceError:
                return None
            except AmbiguousReferenceError as e:
                raise ValueError(str(e)) from None

        if options.task == "recall":
            query = options.query or options.instruction or text
            req = Request(text=text, task="recall", output="text", instruction=query)
            return {"request": req}
        planned = self._planned(text, options, [*log, *attached])
        if planned is not None:
            return planned
        res = resolve(
            text or options.instruction or "",
            attached=attached,
            log=log,
            lookup=lookup,
            task=options.task,
            output=options.output,
            extra_sources=options.sources,
            example=options.example,
            example_fallback=self.memory is not None and self.settings.context == "memory",
            vocabulary=self.vocabulary,
            # Embedding similarity only for an open vocabulary: a closed one's captions hold every
            # word the model knows, and nearest neighbours always exist ("the dragon" would match).
            similar=(lambda words: self._similar(tenant, words)) if self.vocabulary.open else None,
            turn=turn,
        )
        if res.clarification is not None:
            return {"clarification": res.clarification}
        if res.intent == "chat" and self.vocabulary.open:  # a model that can talk: let it answer
            req = Request(text=text, task="generate", output="text", instruction=text)
            return {"request": req}
        if res.intent != "media":  # small talk, or something the model cannot make: words, no media
            return {"answer": res.answer or "", "intent": res.intent}
        instruction = options.instruction or res.instruction or clean_instruction(text, res.mentions) or text
        # A medium's caption is what the model reads back from it (persist), never the request's
        # words, unless the caller names one explicitly.
        caption = options.caption
        output = res.output
        if res.task == "generate" and output == "auto":
            output = "image"
        req = Request(
            text=text or instruction,
            task=res.task,  # type: ignore[arg-type]
            output=output,  # type: ignore[arg-type]
            instruction=instruction,
            sources=tuple(res.sources),
            example=tuple(res.example),
            caption=caption,
        )
        return {"request": req}

    def _planned(self, text: str, options: TurnOptions, log: list[MediaRecord]) -> dict[str, Any] | None:
        """The planner's reading of a message (None: no planner, a tool's exact options, or a plan
        that did not check out — the rules then decide)."""
        planner = self.settings.planner
        exact = options.task is not None or options.sources or options.example
        if planner is None or exact or not text:
            return None
        attributes = self.vocabulary.attributes.values()
        words = sorted({word for by_name in attributes for values in by_name.values() for word in values})
        outcome = planner.plan(text, log, vocabulary=", ".join(words))
        if outcome is None:
            return None
        if outcome.clarification is not None:
            return {"clarification": outcome.clarification}
        if outcome.answer is not None:
            if not outcome.answer and self.vocabulary.open:  # a model that can talk answers itself
                return {"request": Request(text=text, task="generate", output="text", instruction=text)}
            return {"answer": outcome.answer, "intent": "chat"}
        assert outcome.request is not None
        return {"request": outcome.request.model_copy(update={"caption": options.caption})}

    def _similar(self, tenant: str, description: str) -> list[str]:
        """Artifact ids the memory finds for a description (the resolver keeps this thread's only):
        how "the picture with the red car" finds a medium whose caption lacks those words."""
        if self.memory is None:
            return []
        return [item.artifact_id for item in self.memory.search(tenant, description, k=8)]

    # =============================================================================================
    # 4. compose: one interleaved prompt within the context budget
    # =============================================================================================
    def compose(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        req = state["request"]
        assert req is not None
        options = state.get("options") or TurnOptions()
        budget = self.budget(options.max_new_tokens or self.settings.max_new_tokens)
        try:
            if self.settings.context == "window":
                prompt = compose_window(
                    state.get("messages", []),
                    req,
                    k=self.settings.window_k,
                    budget=budget,
                    count=self.backend.count_tokens,
                    vocab=self.vocabulary,
                )
            else:
                prompt = compose_memory(
                    req,
                    state.get("exemplars", []),
                    budget=budget,
                    count=self.backend.count_tokens,
                    vocab=self.vocabulary,
                )
        except PromptTooLongError as e:
            return {"clarification": Clarification(question=f"That request is too long for the model: {e}.")}
        return {"prompt": prompt}

    # =============================================================================================
    # 5. generate: the backend, with progress streamed (stream_mode="custom")
    # =============================================================================================
    def generate(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        req, prompt, turn = state["request"], state["prompt"], int(state["turn"])
        assert req is not None and prompt
        options = state.get("options") or TurnOptions()
        writer = get_stream_writer()
        writer({"event": "start", "node": "generate", "turn": turn, "task": req.task, "output": req.output})

        def progress(step: int, total: int) -> None:
            writer({"event": "progress", "node": "generate", "turn": turn, "step": step, "total": total})

        steps = options.num_inference_steps or _config_value(config, "num_inference_steps")
        request = GenerateRequest(
            prompt=tuple(prompt),
            output=req.output,
            seed=self.seed(config, turn, options),
            num_inference_steps=steps or self.settings.num_inference_steps,
            guidance_scale=options.guidance_scale or self.settings.guidance_scale,
            max_new_tokens=options.max_new_tokens or self.settings.max_new_tokens,
            turn=turn,
            captions=(req.caption,) if req.caption else (),
            caption_outputs=self.settings.caption_outputs,  # read back in the same call: no second decode
            verify=_config_value(config, "verify", self.settings.verify),
            verify_threshold=_config_value(config, "verify_threshold", self.settings.verify_threshold),
            session=self.session_key(config),  # a served model keeps this thread on one replica
        )
        result = self.backend.generate(request, progress=progress)
        writer({"event": "end", "node": "generate", "turn": turn, "seconds": result.seconds,
                "media": [r.id for r in result.media]})  # fmt: skip
        return {"result": result}

    # =============================================================================================
    # review (optional): a person accepts or rejects the output
    # =============================================================================================
    def review(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        result = state["result"]
        assert result is not None
        answer = interrupt(
            {
                "question": "Keep this output? Resume with 'accept' or 'reject'.",
                "turn": state["turn"],
                "text": result.text,
                "media": [ref.model_dump(mode="json") for ref in result.media],
            }
        )
        return {"verdict": "accepted" if _accepted(answer) else "rejected"}

    def discard(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        """A rejected output: never an exemplar, and its new artifacts are removed again."""
        result = state["result"]
        assert result is not None
        live = {r.id for r in self.media_log(state, config, int(state["turn"]))}
        for artifact_id in result.created:
            # Only files this turn created and nothing else points at (content addressing shares files).
            if (
                artifact_id not in live
                and not self._remembered(config, artifact_id)
                and artifact_id in self.artifacts
            ):
                self.artifacts.delete(artifact_id)
        return {}

    def _remembered(self, config: RunnableConfig, artifact_id: str) -> bool:
        if self.memory is None:
            return False
        from codi2_agent.memory import UnknownReferenceError

        try:
            self.memory.reference(self.tenant(config), artifact_id)
        except UnknownReferenceError:
            return False
        return True

    # =============================================================================================
    # 6. persist: outputs -> memory (linked to their sources) and the thread's media log
    # =============================================================================================
    def persist(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        req, result, turn = state["request"], state["result"], int(state["turn"])
        assert req is not None and result is not None
        if not result.media:
            return {}
        store = self.store(config)
        for ref in result.media:  # the backend wrote them; from now on they are this tenant's
            store.grant(ref)
        sources = list(req.sources)
        parents = tuple(s.id for s in (sources[-1:] if req.task == "analogy" else sources))
        subject = sources[-1 if req.task == "analogy" else 0].subject if sources else None
        records = []
        for ref in result.media:
            records.append(
                MediaRecord(
                    ref=ref,
                    role="output",
                    turn=turn,
                    parents=parents,
                    instruction=req.instruction,
                    task=req.task,
                    subject=subject or ref.short_id,
                )
            )
        self.log().add_media(self.tenant(config), self.thread(config), records)  # the log first
        self._remember(config, records)
        return {
            "turn_media": [*(state.get("turn_media") or []), *records],
            "result": result.model_copy(update={"media": tuple(r.ref for r in records)}),
        }

    # =============================================================================================
    # 7. respond: an AIMessage whose media are artifact references
    # =============================================================================================
    def respond(self, state: SessionState, config: RunnableConfig) -> dict[str, Any]:
        turn = int(state.get("turn") or 0)
        req, result = state.get("request"), state.get("result")
        meta: dict[str, Any] = {"turn": turn}
        clarification = state.get("clarification")
        if clarification is not None:
            meta["clarification"] = True
            content: list[Any] = [{"type": "text", "text": clarification.question}]
        elif state.get("answer") is not None:  # small talk or out of vocabulary: words only
            content = [{"type": "text", "text": state["answer"]}]
            meta["intent"] = state.get("intent")
        elif req is not None and req.task == "recall":
            found = state.get("found", [])
            lines = [
                f"@m:{r.short_id} ({r.modality.value}{', ' + repr(r.caption) if r.caption else ''})"
                for r in found
            ]
            text = ("Found: " + "; ".join(lines)) if found else f"I found nothing like {req.instruction!r}."
            content = [{"type": "text", "text": text}, *(ref_block(r) for r in found)]
            meta["task"] = "recall"
        elif state.get("verdict") == "rejected":
            content = [{"type": "text", "text": "Discarded, as you asked; I won't use it as an example."}]
            meta["rejected"] = True
        else:
            assert req is not None and result is not None
            text = result.text or (self.vocabulary.reply if result.media else "")
            content = [{"type": "text", "text": text}] if text else []
            content += [ref_block(r) for r in result.media]
            meta.update(task=req.task, artifacts=[r.id for r in result.media])
            if result.agreement is not None:  # the self-check's score of the kept medium
                meta["agreement"] = result.agreement
        answer = AIMessage(content=content, response_metadata=meta)
        messages = state.get("messages", [])
        human = _last_human(messages)
        entry = TurnEntry(turn, message_text(human) if human is not None else "", content, meta)
        self.log().add_turn(self.tenant(config), self.thread(config), entry)
        # State keeps a window of the conversation; the transcript is in the log (flat checkpoints).
        old = messages[: max(0, len(messages) + 1 - self.settings.keep_messages)]
        drop = [RemoveMessage(id=m.id) for m in old if m.id]
        return {"messages": [*drop, answer], "options": None}

    # =============================================================================================
    # routers
    # =============================================================================================
    @staticmethod
    def route_after_ingest(state: SessionState) -> Literal["resolve", "respond"]:
        return "respond" if state.get("clarification") else "resolve"

    @staticmethod
    def route_after_resolve(state: SessionState) -> Literal["retrieve", "respond"]:
        return "respond" if state.get("clarification") or state.get("answer") is not None else "retrieve"

    @staticmethod
    def route_after_retrieve(state: SessionState) -> Literal["compose", "respond"]:
        req = state.get("request")
        return (
            "respond"
            if state.get("clarification") or (req is not None and req.task == "recall")
            else "compose"
        )

    @staticmethod
    def route_after_compose(state: SessionState) -> Literal["generate", "respond"]:
        return "respond" if state.get("clarification") else "generate"

    def route_after_generate(self, state: SessionState) -> Literal["review", "persist"]:
        result = state.get("result")
        return "review" if self.settings.review and result is not None and result.media else "persist"

    @staticmethod
    def route_after_review(state: SessionState) -> Literal["persist", "discard"]:
        return "persist" if state.get("verdict") == "accepted" else "discard"


def _accepted(answer: Any) -> bool:
    """Read a review answer: True / "accept" / {"accept": True} / {"action": "accept"} mean yes."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, dict):
        if "accept" in answer:
            return bool(answer["accept"])
        answer = answer.get("action", answer.get("verdict", ""))
    return str(answer).strip().lower() in {
        "accept",
        "accepted",
        "yes",
        "y",
        "ok",
        "keep",
        "approve",
        "approved",
    }
