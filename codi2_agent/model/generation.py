"""Generation for `CoDi2Model` (mixed in, as transformers' `GenerationMixin` is): `generate` for one
conversation, `generate_batch` for many decoded together (its own mixin, `_batch_generation`),
`generate_stream` for text as it is decoded, and the steps they share — prompt, greedy text
decoding with the KV cache, the K gen tokens whose last hidden states become c_MLLM, and the
diffusion decoders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from codi2_agent.media import Media, Modality, OutputKind
from codi2_agent.model._answer_repair import MODALITIES
from codi2_agent.model._batch_generation import BatchGenerationMixin
from codi2_agent.model._generation_types import (
    GenerationOutput,
    _output_kind,
    _seeded_generator,
    _TextRules,
)
from codi2_agent.model._lm_cache import cache_kwargs, cache_of, drop_last
from codi2_agent.model.configuration_codi2 import CoDi2Config, check_sampling_arguments
from codi2_agent.model.consistency import clause_start, contradiction, opens_clause
from codi2_agent.model.decoders import ProgressCallback
from codi2_agent.model.drafts import TextDrafts
from codi2_agent.model.processing_codi2 import GEN, MARKER, PLACEHOLDER, Turn
from codi2_agent.model.streaming import TextPieceDecoder
from codi2_agent.model.verification import check_verify_arguments, decode_verified

if TYPE_CHECKING:
    from codi2_agent.model.encoders import MediaEncoder

__all__ = ["MAX_REPLY_TOKENS", "GenerationMixin", "GenerationOutput"]


# Text allowed before a forced medium's marker: replies in the tiny world are under 20 tokens, and an
# untrained model that never writes the marker must not spend `max_new_tokens` LM steps first.
MAX_REPLY_TOKENS = 32


class GenerationMixin(BatchGenerationMixin):
    """The generation methods of `CoDi2Model` (see the module docstring)."""

    # Provided by `CoDi2Model` (with those `BatchGenerationMixin` declares).
    config: CoDi2Config
    output_heads: Any
    encoder_calls: int

    if TYPE_CHECKING:

        def encoder(self, modality: Modality | str) -> MediaEncoder: ...
        def encode_media(self, modality: Modality | str, values: torch.Tensor) -> torch.Tensor: ...
        def media_features(self, modality: Modality | str, media: Sequence[Media]) -> torch.Tensor: ...

    # --- generation -------------------------------------------------------------------------------
    def _turns(self, inputs: Sequence[Any]) -> list[Any]:
        if not inputs:
            raise ValueError("generate needs at least one input (text or media)")
        if all(hasattr(x, "role") and hasattr(x, "content") for x in inputs):
            return list(inputs)  # already a conversation
        return [Turn("user", list(inputs))]

    @torch.no_grad()
    def generate(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality = "auto",
        *,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        max_new_tokens: int = 64,
        callback: ProgressCallback | None = None,
        return_media_features: bool = False,
        verify: int | None = None,
        verify_threshold: float | None = None,
        draft_texts: Sequence[str] = (),
    ) -> GenerationOutput:
        """Answer an interleaved prompt (or a conversation of turns) with text and/or media.

        `output="auto"` follows the model: it writes text and, if it emits a generation marker
        (`<boi>` / `<boa>`), the medium that follows. `"text"` forbids markers; `"image"` /
        `"audio"` make the answer end in that medium: the model's reply text comes first (at most
        `MAX_REPLY_TOKENS`), then the marker, forced if the model does not write it. Decoding is
        greedy; `seed` fixes the diffusion noise, so equal inputs and seed give equal outputs. An
        answer that names the same value on both sides of "from … to …" is decoded again as the most
        probable one that does not (`codi2_agent.model.consistency`).
        `return_media_features` also encodes each produced medium once (C_x, for memory and captions).
        `verify=n` checks the medium against the model itself: up to n candidates are decoded from
        the one c_MLLM (seeds derived from `seed`), re-encoded with C_x, and the one closest to c_MLLM
        (cosine) is kept; `agreement` / `candidate_agreements` report the scores. `verify=1` is the
        plain answer, scored. With `verify_threshold`, candidate 0 is kept without decoding the others
        when its agreement reaches the threshold (`codi2_agent.model.verification`).
        `draft_texts`: texts the answer probably copies (a caption of an edited image repeats its
        source's): their tokens are proposed and checked several per LM call, so a copying answer
        takes fewer calls; what is chosen stays the greedy choice (`codi2_agent.model.drafts`).
        `generate_stream` gives the same answer with its text as it is decoded; `generate_batch`
        answers several prompts at once.

        Example:
            >>> from codi2_agent.model import CoDi2Config, CoDi2Model
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> model.generate(["draw a red star"], output="image", num_inference_steps=2).image.image.size
            (32, 32)
        """
        steps = self._generation_steps(
            inputs,
            output,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_new_tokens=max_new_tokens,
            callback=callback,
            return_media_features=return_media_features,
            verify=verify,
            verify_threshold=verify_threshold,
            draft_texts=draft_texts,
        )
        return next(step for step in steps if isinstance(step, GenerationOutput))

    def generate_stream(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality = "auto",
        *,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        max_new_tokens: int = 64,
        callback: ProgressCallback | None = None,
        return_media_features: bool = False,
        verify: int | None = None,
        verify_threshold: float | None = None,
    ) -> Iterator[str | GenerationOutput]:
        """`generate`, streamed: text pieces (`str`) as the LM decodes them, then the `GenerationOutput`.

        The pieces join to the output's `text`, and all of them come before the medium (if any) is
        decoded, which is most of a turn's time. Text from the word "from" on is held back until the
        answer is complete: an answer that names the same value on both sides ("from forest to
        forest") is decoded again, and a stream can only redo what it has not sent, so there its
        answer may differ from `generate`'s (which may redo the whole answer). The arguments are
        checked and the prompt's media encoded when this is called; the answer is generated as the
        iterator is consumed.

        Example:
            >>> from codi2_agent.model import CoDi2Config, CoDi2Model
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> *pieces, out = model.generate_stream(["draw"], output="image", num_inference_steps=2)
            >>> "".join(pieces) == out.text and out.image is not None
            True
        """
        steps = self._generation_steps(
            inputs,
            output,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_new_tokens=max_new_tokens,
            callback=callback,
            return_media_features=return_media_features,
            verify=verify,
            verify_threshold=verify_threshold,
            keep_streamed=True,
        )
        return self._text_pieces(steps)

    def _text_pieces(
        self, steps: Iterator[int | list[int] | GenerationOutput]
    ) -> Iterator[str | GenerationOutput]:
        """Text pieces as tokens come, except from the word "from" on: that clause is held back until
        the answer is complete, since a contradicting one is decoded again (`_consistent_answer`)."""
        pieces = TextPieceDecoder(self.processor.decode)
        decoded: list[int] = []
        sent = 0  # tokens pushed to `pieces`
        for step in steps:
            if isinstance(step, GenerationOutput):
                yield step
                return
            if isinstance(step, list):  # the answer's final ids; they begin with the ones sent
                rest = "".join(pieces.push(t) for t in step[sent:]) + pieces.finish()
                if rest:
                    yield rest
                continue
            decoded.append(step)
            if sent == len(decoded) - 1 and not opens_clause(self.processor.decode(decoded)):
                sent += 1
                piece = pieces.push(step)
                if piece:
                    yield piece

    def _generation_steps(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality,
        *,
        seed: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        max_new_tokens: int,
        callback: ProgressCallback | None,
        return_media_features: bool,
        verify: int | None,
        verify_threshold: float | None,
        keep_streamed: bool = False,
        draft_texts: Sequence[str] = (),
    ) -> Iterator[int | list[int] | GenerationOutput]:
        """`generate` step by step. The arguments are checked and the prompt read now; the iterator
        then yields each text token id as it is chosen, the answer's final ids once the text is
        complete (a self-contradicting answer is decoded again: `_consistent_answer`), and last the
        `GenerationOutput`. `keep_streamed`: such a repair keeps the ids before the word "from"."""
        # 1. Check inputs and build the prompt
        kind = _output_kind(output)
        check_sampling_arguments(num_inference_steps, guidance_scale)  # not a ZeroDivisionError later
        check_verify_arguments(verify, verify_threshold)
        if self.training:  # eval() walks every submodule: a measurable share of a short text turn
            self.eval()
        prompt_ids, feats = self._prompt(inputs)
        return self._decode_steps(
            prompt_ids,
            feats,
            self._text_rules(kind, max_new_tokens),
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
            return_media_features=return_media_features,
            verify=verify,
            verify_threshold=verify_threshold,
            keep_streamed=keep_streamed,
            drafts=TextDrafts.from_texts(self.tokenizer, draft_texts) if draft_texts else None,
        )

    @torch.no_grad()
    def _decode_steps(
        self,
        prompt_ids: torch.Tensor,
        feats: dict[Modality, torch.Tensor],
        rules: _TextRules,
        *,
        seed: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        callback: ProgressCallback | None,
        return_media_features: bool,
        verify: int | None = None,
        verify_threshold: float | None = None,
        keep_streamed: bool = False,
        drafts: TextDrafts | None = None,
    ) -> Iterator[int | list[int] | GenerationOutput]:
        # 2. Read the prompt (and a first draft of the answer: `codi2_agent.model.drafts`)
        ids = prompt_ids[None].to(self._input_device)  # (1, T)
        target = rules.target
        draft = drafts.propose([], rules.budget) if drafts else []
        first = torch.cat([ids, ids.new_tensor([draft])], dim=1) if draft else ids
        out = self.lm(inputs_embeds=self.embed(first, media_features=feats), use_cache=True)
        # rows[i]: the logits after the prompt and draft[:i]; greedy choice in fp32: no bf16 ties
        past, rows = cache_of(out), out.logits[0, -len(draft) - 1 :].float()
        # 3. Decode text greedily until </s>, a generation marker or the budget (see `_text_rules`).
        # A draft token the greedy choice equals is already in the cache: no LM call for it.
        eos = self.tokenizer.eos_token_id
        text_ids: list[int] = []
        marker: Modality | None = None
        for _ in range(rules.budget):
            logits = rows[0]
            logits[rules.banned] = float("-inf")
            nxt = int(logits.argmax(-1))
            if nxt == eos:
                break
            marker = self._marker(nxt)
            if draft and nxt == draft[0]:
                draft, rows = draft[1:], rows[1:]
            else:
                drop_last(past, len(draft))  # the draft's tokens from here on were not chosen
                draft = (
                    []
                    if marker is not None or not drafts
                    else drafts.propose([*text_ids, nxt], rules.budget - len(text_ids) - 1)
                )
                step_ids = ids.new_tensor([[nxt, *draft]])
                step = self.lm(input_ids=step_ids, **cache_kwargs(past), use_cache=True)
                past, rows = cache_of(step), step.logits[0].float()
            if marker is not None:
                target = marker
                break
            text_ids.append(nxt)
            yield nxt
        drop_last(past, len(draft))  # the cache holds the prompt and the answer, nothing proposed
        # 3b. An answer that names the same value on both sides ("from forest to forest") is decoded
        # again: the most probable answer that does not (docs: codi2_agent/model/consistency.py)
        repaired = contradiction(self.processor.decode(text_ids)) is not None
        if repaired:
            keep = clause_start(self.processor.decode, text_ids) if keep_streamed else 0
            answer = self._consistent_answer(prompt_ids, feats, rules, text_ids, keep=keep)
            text_ids, target = list(answer.ids), self._answer_target(answer, rules)
        yield list(text_ids)
        text = self.processor.decode(text_ids)
        if target is None:
            yield GenerationOutput(text=text)
            return
        # 4. Feed the K gen tokens; their last hidden states are c_MLLM's source
        if repaired:  # the cache holds the greedy answer: read the repaired one afresh
            c_mllm = self._c_mllm_after(prompt_ids, feats, text_ids, target)
        else:
            if marker is None:  # a forced modality whose reply ran out of budget
                marker_ids = ids.new_tensor([[self._ids[MARKER[target]]]])
                past = cache_of(self.lm(input_ids=marker_ids, **cache_kwargs(past), use_cache=True))
            k = self.encoder(target).num_feature_tokens
            gen_ids = ids.new_full((1, k), self._ids[GEN[target]])
            step = self.lm(input_ids=gen_ids, **cache_kwargs(past), use_cache=True, output_hidden_states=True)
            c_mllm = self._c_mllm(target, step.hidden_states[-1])  # (1, K, D)
        # 5. Decode the medium (with `verify`: the candidate the model agrees with most)
        if verify is not None:
            kept = decode_verified(
                self.decoder(target),
                self._output_features,
                c_mllm[0],
                n=verify,
                seed=seed,
                threshold=verify_threshold,
                prompt=text or None,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                callback=callback,
            )
            yield GenerationOutput(
                text=text,
                media=[kept.media],
                features=c_mllm[0],
                modality=target,
                media_features=[kept.features] if return_media_features else [],  # encoded by the check
                agreement=kept.agreement,
                candidate_agreements=kept.agreements,
            )
            return
        media = self.decoder(target).decode(
            c_mllm,
            generator=_seeded_generator(seed),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
            prompt=text or None,
        )
        # 6. C_x of the result, once: what the memory stores and a caption reads
        media_features = self._output_features(target, media) if return_media_features else []
        yield GenerationOutput(
            text=text, media=media, features=c_mllm[0], modality=target, media_features=media_features
        )

    # --- the steps generate and generate_batch share ------------------------------------------------
    @property
    def _input_device(self) -> torch.device:
        return cast(torch.device, self.lm.get_input_embeddings().weight.device)

    def _prompt(self, inputs: Sequence[Any]) -> tuple[torch.Tensor, dict[Modality, torch.Tensor]]:
        """A prompt's token ids (T,) and the C_x features (N, K, D) of its media, per modality."""
        enc = self.processor.encode(self._turns(inputs))
        return enc.input_ids, {m: self.media_features(m, media) for m, media in enc.input_media.items()}

    def _text_rules(self, kind: str, max_new_tokens: int) -> _TextRules:
        """How the answer's text is decoded for `output=kind`.

        Greedy until </s> or a generation marker. A forced modality keeps the answer's text (a reply
        that may state what the medium will be, e.g. the edit an analogy implies) but must end in its
        marker: </s> and the other markers are banned, and the marker is fed when the reply budget
        runs out.
        """
        if kind in ("auto", "text"):
            return _TextRules(None, self._banned_ids(MODALITIES if kind == "auto" else ()), max_new_tokens)
        target = Modality(kind)
        banned = [*self._banned_ids((target,)), self.tokenizer.eos_token_id]
        return _TextRules(target, banned, min(max_new_tokens, MAX_REPLY_TOKENS))

    def _marker(self, token_id: int) -> Modality | None:
        """The modality whose generation marker `token_id` is, if it is one."""
        return next((m for m in MODALITIES if token_id == self._ids[MARKER[m]]), None)

    def _num_gen(self, modality: Modality) -> int:
        return int(self.encoder(modality).num_feature_tokens)

    def _c_mllm(self, modality: Modality, hidden: torch.Tensor) -> torch.Tensor:
        """Last hidden states at the gen positions (B, K, H) -> c_MLLM (B, K, D), on the encoder's scale
        when `config.renorm_c_mllm` (what the decoders were trained on)."""
        head = self.output_heads[modality.value]
        # with a device map the LM's last layer may sit on another device than the head
        c_mllm = cast(torch.Tensor, head(hidden.to(next(head.parameters()).device)))
        if self.config.renorm_c_mllm:
            c_mllm = self.encoder(modality).onto_features(c_mllm)
        return c_mllm

    def _output_features(self, modality: Modality, media: Sequence[Media]) -> list[torch.Tensor]:
        """C_x (K, D) of each produced medium, in one encoder pass."""
        values = self.processor.media_tensor(modality, media).to(self._input_device)
        self.encoder_calls += len(media)
        return list(self.encode_media(modality, values))

    def _banned_ids(self, allowed_markers: Sequence[Modality]) -> list[int]:
        banned = [self._ids[t] for t in (*PLACEHOLDER.values(), *GEN.values())]
        # pad and BOS never start an answer; a tokenizer may lack BOS or pad with EOS (Qwen2), and EOS
        # must stay allowed: it ends the answer
        eos = self.tokenizer.eos_token_id
        banned += [
            t for t in (self.tokenizer.pad_token_id, self.tokenizer.bos_token_id) if t not in (None, eos)
        ]
        banned += [self._ids[MARKER[m]] for m in MODALITIES if m not in allowed_markers]
        return banned
