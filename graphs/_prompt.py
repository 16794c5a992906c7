"""Composing the interleaved prompt for one turn, within the model's context budget.

Prompts follow the shapes the model was trained on, in the words of its `Vocabulary`: an edit is
``[medium, instruction]``, an analogy ``"here is an example of an edit:" A "becomes" A′ "do the same
to this:" B``, earlier solved requests are earlier user/assistant turns. Required parts go in first;
optional exemplars are added most relevant first while they fit, falling back to their captions
(the paper's text-only trick) when the media would not.

Two policies:
- ``"memory"``: the request's resolved media plus exemplars retrieved from memory;
- ``"window"``: the last k turns of the conversation verbatim (the plain chat baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage

from codi2_agent.backends import PromptTurn
from codi2_agent.media import MediaRef, Modality
from codi2_agent.messages import prompt_turns
from codi2_agent.model.vocabulary import Vocabulary

from ._state import Exemplar, Request
from ._words import is_what_changed, looks_like_generation

__all__ = ["ContextPolicy", "PromptTooLongError", "compose_memory", "compose_window"]

ContextPolicy = Literal["memory", "window"]
Counter = Callable[[Sequence[PromptTurn]], int]


class PromptTooLongError(ValueError):
    """The request alone does not fit the model's context."""


def _user(*parts: str | MediaRef) -> PromptTurn:
    return PromptTurn(role="user", parts=tuple(p for p in parts if p != ""))


def _assistant(*parts: str | MediaRef) -> PromptTurn:
    return PromptTurn(role="assistant", parts=tuple(p for p in parts if p != ""))


def describe_question(vocab: Vocabulary, modality: Modality) -> str:
    """How the model was taught to be asked for a caption."""
    return vocab.prompt("caption_image" if modality is Modality.IMAGE else "caption_audio")


def _text_only(ref: MediaRef) -> str | MediaRef:
    return ref.caption or ref


def _analogy(
    vocab: Vocabulary, pairs: Sequence[tuple[str | MediaRef, str | MediaRef]], target: MediaRef
) -> PromptTurn:
    arrow = vocab.prompt("analogy_arrow")
    parts: list[str | MediaRef] = [vocab.prompt("analogy_intro" if len(pairs) == 1 else "analogy_intro_many")]
    for i, (a, b) in enumerate(pairs):
        if len(pairs) > 1:
            parts.append(vocab.prompt("analogy_numbered").format(n=i + 1))
        parts += [a, arrow, b]
    parts += [vocab.prompt("analogy_query"), target]
    return _user(*parts)


def _generation(vocab: Vocabulary, request: Request) -> str:
    """A generation request in the shape the model learned ("draw …" / "play …")."""
    if request.output == "text" or looks_like_generation(request.instruction):
        return request.instruction
    template = "text_to_audio" if request.output == "audio" else "text_to_image"
    return vocab.prompt(template).format(c=request.instruction)


def _core(vocab: Vocabulary, request: Request) -> list[PromptTurn]:
    """The prompt without optional exemplars."""
    src = [s.ref for s in request.sources]
    if request.task == "generate":
        return [_user(_generation(vocab, request))]
    if request.task == "edit":
        return [_user(src[0], request.instruction)]
    if request.task == "compose":
        image = next(r for r in src if r.modality is Modality.IMAGE)
        sound = next(r for r in src if r.modality is Modality.AUDIO)
        return [_user(image, sound, vocab.prompt("compose"))]
    if request.task == "describe":
        if len(src) >= 2 and is_what_changed(request.text):
            before, after, ask = (vocab.prompt(f"what_changed_{p}") for p in ("before", "after", "ask"))
            return [_user(before, src[0], after, src[1], ask)]
        return [_user(src[0], describe_question(vocab, src[0].modality))]
    if request.task == "analogy":
        a, b = request.example[0].ref, request.example[1].ref
        return [_analogy(vocab, [(a, b)], src[-1])]
    raise ValueError(f"no prompt for task {request.task!r}")


def compose_memory(
    request: Request, exemplars: Sequence[Exemplar], *, budget: int, count: Counter, vocab: Vocabulary
) -> list[PromptTurn]:
    """The request's prompt plus as many exemplars as fit in `budget` tokens (most relevant first).

    Raises:
        PromptTooLongError: the request alone is over budget.
    """
    prompt = _core(vocab, request)
    used = count(prompt)
    if used > budget:
        raise PromptTooLongError(f"the request takes {used} tokens; the model reads at most {budget}")
    if request.task == "analogy":
        # More pairs of the same edit: the analogy turn grows; each pair in media, else in captions.
        pairs: list[tuple[str | MediaRef, str | MediaRef]] = [
            (request.example[0].ref, request.example[1].ref)
        ]
        for ex in exemplars:
            if ex.kind != "pair":
                continue
            for a, b in ((ex.refs[0], ex.refs[1]), (_text_only(ex.refs[0]), _text_only(ex.refs[1]))):
                trial = [_analogy(vocab, [*pairs, (a, b)], request.sources[-1].ref)]
                if count(trial) <= budget:
                    pairs.append((a, b))
                    prompt = trial
                    break
        return prompt
    # Other tasks: solved examples as earlier turns, in front of the request.
    shots: list[PromptTurn] = []
    reply = vocab.reply
    for ex in exemplars:
        ask = ex.instruction or ""
        forms = []
        if ex.kind == "pair" and len(ex.refs) == 2:
            forms = [
                [_user(ex.refs[0], ask), _assistant(reply, ex.refs[1])],
                [_user(_text_only(ex.refs[0]), ask), _assistant(reply, _text_only(ex.refs[1]))],
            ]
        elif ex.kind == "shot" and ex.refs and ask:
            forms = [[_user(ask), _assistant(reply, ex.refs[0])]]
        for form in forms:
            trial = [*form, *shots, *prompt]
            if all(t.parts for t in form) and count(trial) <= budget:
                shots = [*form, *shots]
                break
    return [*shots, *prompt]


def compose_window(
    messages: Sequence[BaseMessage],
    request: Request,
    *,
    k: int,
    budget: int,
    count: Counter,
    vocab: Vocabulary,
) -> list[PromptTurn]:
    """The plain chat baseline: the last `k` exchanges verbatim, then this message as it was sent.

    No references are resolved for the model: what the window does not show, it cannot use.
    Older exchanges are dropped until the prompt fits.
    """
    history, current = list(messages[:-1]), messages[-1]
    now = prompt_turns([current]) or [_user(request.text)]
    if request.task == "describe" and not any(isinstance(p, str) for p in now[-1].parts):
        now = [_user(*now[-1].parts, describe_question(vocab, request.sources[0].modality))]
    # Exchanges start at a human message.
    starts = [i for i, m in enumerate(history) if isinstance(m, HumanMessage)]
    for n in range(min(k, len(starts)), -1, -1):
        window = history[starts[len(starts) - n] :] if n else []
        prompt = [*prompt_turns(window), *now]
        # A window must alternate user / assistant and end with the user; clarifications are kept too.
        if count(prompt) <= budget:
            return prompt
    raise PromptTooLongError(f"the message alone takes {count(now)} tokens; the model reads at most {budget}")
