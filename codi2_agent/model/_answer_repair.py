"""Answers that never contradict themselves: a "what changed?" answer naming one value on both sides
of "from … to …" is decoded again by a beam search over the LM's own scores (`consistency.search`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from codi2_agent.media import Modality
from codi2_agent.model._lm_cache import cache_kwargs, cache_of
from codi2_agent.model.consistency import Hypothesis, cut_before_contradiction, search
from codi2_agent.model.processing_codi2 import GEN, MARKER

if TYPE_CHECKING:
    from codi2_agent.model.generation import _TextRules

logger = logging.getLogger(__name__)

MODALITIES = (Modality.IMAGE, Modality.AUDIO)


class AnswerRepairMixin:
    """Mixed into `GenerationMixin`: the steps that decode a contradicting answer again."""

    def _consistent_answer(
        self: Any,
        prompt_ids: torch.Tensor,
        feats: dict[Modality, torch.Tensor],
        rules: _TextRules,
        greedy_ids: Sequence[int],
        *,
        keep: int = 0,
    ) -> Hypothesis:
        """The most probable answer under `rules` that begins with `greedy_ids[:keep]` and never names
        the same value on both sides of "from … to …" (`consistency.search`, a beam search on the LM's
        own log-probabilities); if none is found, the greedy answer cut before the clause."""
        device = self._input_device
        prompt = self.lm(
            inputs_embeds=self.embed(prompt_ids[None].to(device), media_features=feats), use_cache=True
        )
        prompt_cache, first = cache_of(prompt), prompt.logits[:, -1].float().log_softmax(-1)

        def log_probs(answers: Sequence[Sequence[int]]) -> torch.Tensor:
            # Every beam grows by one token a step, so the answers are equally long: they are read
            # together on copies of the prompt's KV cache (the prompt is read once per search).
            n, length = len(answers), len(answers[0])
            if any(len(a) != length for a in answers):
                raise ValueError("beam answers must be equally long")
            if length == 0:
                return first.expand(n, -1)
            past = copy.deepcopy(prompt_cache)
            past.batch_repeat_interleave(n)
            tokens = torch.tensor([list(a) for a in answers], dtype=torch.long, device=device)
            out = self.lm(input_ids=tokens, **cache_kwargs(past), use_cache=True)
            return out.logits[:, -1].float().log_softmax(-1)

        banned = set(rules.banned)
        ends = [self.tokenizer.eos_token_id, *(self._ids[MARKER[m]] for m in MODALITIES)]
        found = search(
            log_probs,
            self.processor.decode,
            prefix=greedy_ids[:keep],
            budget=rules.budget,
            banned=sorted(banned),
            ends=[t for t in ends if t not in banned],
        )
        if found is not None:
            return found
        logger.warning("no answer without a contradiction found; the contradicting clause is cut")
        cut = cut_before_contradiction(self.processor.decode, greedy_ids)
        return Hypothesis(tuple(cut), None, float("-inf"))

    def _answer_target(self: Any, answer: Hypothesis, rules: _TextRules) -> Modality | None:
        """The medium an answer ends in: the marker that ended it, else the one `rules` force (or none)."""
        marker = self._marker(answer.end) if answer.end is not None else None
        return marker or rules.target

    def _c_mllm_after(
        self: Any,
        prompt_ids: torch.Tensor,
        feats: dict[Modality, torch.Tensor],
        answer_ids: Sequence[int],
        target: Modality,
    ) -> torch.Tensor:
        """c_MLLM (1, K, D) after prompt + answer text + `target`'s marker and K gen tokens, in one pass."""
        k = self._num_gen(target)
        tail = [*answer_ids, self._ids[MARKER[target]], *[self._ids[GEN[target]]] * k]
        ids = torch.cat([prompt_ids, torch.tensor(tail, dtype=torch.long)])[None].to(self._input_device)
        out = self.lm(inputs_embeds=self.embed(ids, media_features=feats), output_hidden_states=True)
        return self._c_mllm(target, out.hidden_states[-1][:, -k:])
