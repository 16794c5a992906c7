"""`generate_batch` for `CoDi2Model` (mixed into `GenerationMixin`): many conversations answered at once,
their prompts read and their text decoded together on one KV cache, their media decoded one batch
per modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from codi2_agent.media import Media, Modality, OutputKind
from codi2_agent.model._answer_repair import MODALITIES, AnswerRepairMixin
from codi2_agent.model._generation_types import GenerationOutput, _output_kind, _seeded_generator
from codi2_agent.model._lm_cache import cache_kwargs, cache_of
from codi2_agent.model.configuration_codi2 import check_sampling_arguments
from codi2_agent.model.consistency import contradiction
from codi2_agent.model.processing_codi2 import GEN, MARKER
from codi2_agent.model.verification import agreement, candidate_seeds, check_verify_arguments, choose

if TYPE_CHECKING:
    from codi2_agent.model._generation_types import _TextRules
    from codi2_agent.model.decoders import MediaDecoder

__all__ = ["BatchGenerationMixin"]


def _per_row(value: Any, n: int, name: str) -> list[Any]:
    """`generate_batch`'s arguments: one value for every row, or a sequence of exactly one per row."""
    if value is None or isinstance(value, (str, Modality, int, float)):
        return [value] * n
    if not isinstance(value, Sequence) or len(value) != n:
        got = f"{len(value)} values" if isinstance(value, Sequence) else repr(value)
        raise ValueError(f"{name} must be one value or one per conversation ({n}), got {got}")
    return list(value)


class BatchGenerationMixin(AnswerRepairMixin):
    """The batched generation path of `CoDi2Model`; `GenerationMixin` builds on it."""

    # Provided by `CoDi2Model`.
    lm: Any
    processor: Any
    tokenizer: Any
    _ids: dict[str, int]
    training: bool

    if TYPE_CHECKING:

        def eval(self) -> Any: ...
        def decoder(self, modality: Modality | str) -> MediaDecoder: ...
        def embed(
            self,
            input_ids: torch.Tensor,
            media_values: dict[Modality, torch.Tensor] | None = None,
            *,
            media_features: dict[Modality, torch.Tensor] | None = None,
        ) -> torch.Tensor: ...

        # Provided by `GenerationMixin`: the steps `generate` and `generate_batch` share.
        @property
        def _input_device(self) -> torch.device: ...
        def _prompt(self, inputs: Sequence[Any]) -> tuple[torch.Tensor, dict[Modality, torch.Tensor]]: ...
        def _text_rules(self, kind: str, max_new_tokens: int) -> _TextRules: ...
        def _marker(self, token_id: int) -> Modality | None: ...
        def _num_gen(self, modality: Modality) -> int: ...
        def _c_mllm(self, modality: Modality, hidden: torch.Tensor) -> torch.Tensor: ...
        def _output_features(self, modality: Modality, media: Sequence[Media]) -> list[torch.Tensor]: ...

    @torch.no_grad()
    def generate_batch(
        self,
        conversations: Sequence[Sequence[str | Media] | Sequence[Any]],
        output: OutputKind | Modality | Sequence[OutputKind | Modality] = "auto",
        *,
        seeds: int | Sequence[int | None] | None = None,
        num_inference_steps: int | Sequence[int | None] | None = None,
        guidance_scale: float | Sequence[float | None] | None = None,
        max_new_tokens: int | Sequence[int] = 64,
        return_media_features: bool = False,
        verify: int | Sequence[int | None] | None = None,
        verify_threshold: float | Sequence[float | None] | None = None,
    ) -> list[GenerationOutput]:
        """`generate` for several prompts at once: result i is `generate(conversations[i], output[i],
        seed=seeds[i], ...)`, up to float rounding in the media.

        Each argument but `conversations` is one value for every row or a sequence of one per row.
        The prompts are left-padded and read together, then decoded together with one KV cache (one
        LM step per token for the batch; a row that has stopped is fed pads that nothing attends to).
        The media are decoded one batch per modality (and per steps/guidance pair), each row with its
        own seeded generator, so each row's noise is the noise it gets alone. Texts equal the
        unbatched ones; the media differ only by the float rounding of batched matrix products
        (tests/model/test_batch_generate.py bounds it). A row with `verify=n` adds its n candidates to
        its modality's batch; with a threshold all n are decoded (one loop) and the kept one is the
        one `generate` keeps: candidate 0 if it reaches the threshold, else the best.

        Example:
            >>> from codi2_agent.model import CoDi2Config, CoDi2Model
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> outs = model.generate_batch([["draw"], ["play a tone"]], ["image", "audio"], seeds=[0, 1],
            ...                             num_inference_steps=2)
            >>> [o.modality.value for o in outs]
            ['image', 'audio']
        """
        n = len(conversations)
        kinds = [_output_kind(o) for o in _per_row(output, n, "output")]
        row_seeds = _per_row(seeds, n, "seeds")
        row_steps = _per_row(num_inference_steps, n, "num_inference_steps")
        row_scales = _per_row(guidance_scale, n, "guidance_scale")
        row_budgets = _per_row(max_new_tokens, n, "max_new_tokens")
        row_verify = _per_row(verify, n, "verify")
        row_thresholds = _per_row(verify_threshold, n, "verify_threshold")
        for steps, scale in zip(row_steps, row_scales, strict=True):
            check_sampling_arguments(steps, scale)
        for candidates, threshold in zip(row_verify, row_thresholds, strict=True):
            check_verify_arguments(candidates, threshold)
        if n == 0:
            return []
        if self.training:  # eval() walks every submodule: a measurable share of a short text turn
            self.eval()
        prompts = [self._prompt(c) for c in conversations]
        rules = [self._text_rules(k, m) for k, m in zip(kinds, row_budgets, strict=True)]
        texts, targets, c_mllm = self._answers_together(prompts, rules)
        results = [GenerationOutput(text=text) for text in texts]
        # Decode the media, one batch per (modality, steps, guidance)
        groups: dict[tuple[Modality, int | None, float | None], list[int]] = {}
        for i, target in enumerate(targets):
            if target is not None:
                groups.setdefault((target, row_steps[i], row_scales[i]), []).append(i)
        for (modality, steps, scale), rows in groups.items():
            # each row's candidates (one unless it verifies), side by side in one decoder batch
            seeds_of = {i: candidate_seeds(row_seeds[i], row_verify[i] or 1) for i in rows}
            slots = [(i, s) for i in rows for s in seeds_of[i]]
            media = self.decoder(modality).decode_batch(
                torch.stack([c_mllm[i] for i, _ in slots]),
                generators=[_seeded_generator(s) for _, s in slots],
                prompts=[texts[i] or None for i, _ in slots],
                num_inference_steps=steps,
                guidance_scale=scale,
            )
            verifying = any(row_verify[i] is not None for i in rows)
            features = self._output_features(modality, media) if return_media_features or verifying else []
            start = 0
            for i in rows:
                end = start + len(seeds_of[i])
                kept, scores = start, None
                if row_verify[i] is not None:
                    scores = agreement(c_mllm[i], torch.stack(features[start:end])).tolist()
                    kept = start + choose(scores, row_thresholds[i])
                results[i] = GenerationOutput(
                    text=texts[i],
                    media=[media[kept]],
                    features=c_mllm[i],
                    modality=modality,
                    media_features=[features[kept]] if return_media_features else [],
                    agreement=scores[kept - start] if scores is not None else None,
                    candidate_agreements=scores or [],
                )
                start = end
        return results

    def _answers_together(
        self,
        prompts: Sequence[tuple[torch.Tensor, dict[Modality, torch.Tensor]]],
        rules: Sequence[_TextRules],
    ) -> tuple[list[str], list[Modality | None], dict[int, torch.Tensor]]:
        """`_decode_texts_together`, then a self-contradicting answer decoded again, row by row, as
        `generate` does (its step 3b): everything of an answer but its media (the ablation tool's
        read-out stops here too)."""
        texts, targets, c_mllm = self._decode_texts_together(prompts, rules)
        for i, text in enumerate(texts):
            if contradiction(text) is not None:
                greedy = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
                answer = self._consistent_answer(*prompts[i], rules[i], greedy)
                texts[i], targets[i] = (
                    self.processor.decode(answer.ids),
                    self._answer_target(answer, rules[i]),
                )
                c_mllm.pop(i, None)
                target = targets[i]
                if target is not None:
                    c_mllm[i] = self._c_mllm_after(*prompts[i], list(answer.ids), target)[0]
        return texts, targets, c_mllm

    def _decode_texts_together(
        self,
        prompts: Sequence[tuple[torch.Tensor, dict[Modality, torch.Tensor]]],
        rules: Sequence[_TextRules],
    ) -> tuple[list[str], list[Modality | None], dict[int, torch.Tensor]]:
        """`generate`'s steps 2-4 for a batch: each row's text, its medium (None: text only) and, for
        rows with a medium, c_MLLM (K, D)."""
        n, device = len(prompts), self._input_device
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        # 2. Read the prompts, left-padded so that every row's next token goes in the last column
        width = max(len(ids) for ids, _ in prompts)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, (row, _) in enumerate(prompts):
            ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
        ids, mask = ids.to(device), mask.to(device)
        feats = {  # row-major, the order `embed` scatters placeholders in
            m: torch.cat([f[m] for _, f in prompts if m in f])
            for m in MODALITIES
            if any(m in f for _, f in prompts)
        }
        out = self.lm(
            inputs_embeds=self.embed(ids, media_features=feats),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
        )
        past, logits = cache_of(out), out.logits[:, -1].float()
        next_position = mask.sum(-1)  # (n,): real tokens so far = the next token's position
        # 3. Decode greedily, each row by its own rules (see `_decode_steps`)
        banned = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        for i, r in enumerate(rules):
            banned[i, r.banned] = True
        targets = [r.target for r in rules]
        text_ids: list[list[int]] = [[] for _ in range(n)]
        marker_fed = [False] * n
        active = [r.budget > 0 for r in rules]
        while any(active):
            choices = logits.masked_fill(banned, float("-inf")).argmax(-1).tolist()
            feed, fed = [pad] * n, [False] * n
            for i in (i for i in range(n) if active[i]):
                nxt = choices[i]
                if nxt == eos:
                    active[i] = False
                    continue
                feed[i], fed[i] = nxt, True
                marker = self._marker(nxt)
                if marker is not None:
                    targets[i], marker_fed[i], active[i] = marker, True, False
                    continue
                text_ids[i].append(nxt)
                active[i] = len(text_ids[i]) < rules[i].budget
            if not any(fed):
                break
            past, logits, mask, next_position = self._feed(
                [[t] for t in feed], [[f] for f in fed], past, mask, next_position
            )
            logits = logits[:, -1]
        texts = [self.processor.decode(t) for t in text_ids]
        # 4. Feed each medium's marker (where the budget ran out first) and K gen tokens, all rows at once
        tails = {
            i: [self._ids[MARKER[t]]] * (not marker_fed[i]) + [self._ids[GEN[t]]] * self._num_gen(t)
            for i, t in enumerate(targets)
            if t is not None
        }
        if not tails:
            return texts, targets, {}
        longest = max(len(tail) for tail in tails.values())
        feed_rows = [tails.get(i, []) + [pad] * (longest - len(tails.get(i, []))) for i in range(n)]
        fed_rows = [[j < len(tails.get(i, [])) for j in range(longest)] for i in range(n)]
        hidden = self._feed(feed_rows, fed_rows, past, mask, next_position, output_hidden_states=True)[1]
        c_mllm: dict[int, torch.Tensor] = {}
        for modality in MODALITIES:
            rows = [i for i in tails if targets[i] is modality]
            if rows:
                k = self._num_gen(modality)
                gen_hidden = torch.stack([hidden[i, len(tails[i]) - k : len(tails[i])] for i in rows])
                c_mllm.update(zip(rows, self._c_mllm(modality, gen_hidden), strict=True))  # (K, D) each
        return texts, targets, c_mllm

    def _feed(
        self,
        tokens: list[list[int]],
        real: list[list[bool]],
        past: Any,
        mask: torch.Tensor,
        next_position: torch.Tensor,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LM step of a batch on its KV cache: `tokens` (n, L), of which only `real` ones are
        attended to later and take positions. Returns the cache, the fp32 logits (or, with
        `output_hidden_states`, the last hidden states) (n, L, ·), the mask and the next positions."""
        device = mask.device
        real_t = torch.tensor(real, dtype=torch.long, device=device)
        positions = next_position[:, None] + (real_t.cumsum(-1) - real_t).clamp(min=0)
        mask = torch.cat([mask, real_t], dim=-1)
        step = self.lm(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=device),
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(past),
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )
        out = step.hidden_states[-1] if output_hidden_states else step.logits.float()
        return cache_of(step), out, mask, next_position + real_t.sum(-1)
