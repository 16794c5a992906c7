"""`CoDi2Processor`: interleaved conversations -> token ids with expanded media placeholders.

Each input medium becomes `num_media_tokens` copies of `<image>` / `<audio>`; the model later
checks the counts and writes projected features into those positions with `masked_scatter`.
An assistant answer that *is* media is written `<boi>` + K x `<image_gen>` (or `<boa>` +
K x `<audio_gen>`): the model predicts the marker, and the hidden states at the K gen positions
become `c_MLLM`. Media the assistant produced in earlier turns are shown again as *inputs*
(placeholders), so later turns can see what was made.

Example:
    >>> from codi2_agent.media import Media
    >>> import numpy as np
    >>> proc = CoDi2Processor(build_tokenizer(), image_size=32, num_media_tokens=2)
    >>> enc = proc.encode([Turn("user", ["Describe", Media.from_image(np.zeros((32, 32, 3), np.uint8))])])
    >>> int((enc.input_ids == proc.token_id("<image>")).sum())
    2
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from codi2_agent.media import Media, MediaError, Modality

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "CoDi2Processor",
    "EncodedSample",
    "Turn",
    "build_tokenizer",
]

IGNORE_INDEX = -100
IMAGE_TOKEN, AUDIO_TOKEN = "<image>", "<audio>"
BOI_TOKEN, BOA_TOKEN = "<boi>", "<boa>"
IMAGE_GEN_TOKEN, AUDIO_GEN_TOKEN = "<image_gen>", "<audio_gen>"
SPECIAL_TOKENS = [IMAGE_TOKEN, AUDIO_TOKEN, BOI_TOKEN, BOA_TOKEN, IMAGE_GEN_TOKEN, AUDIO_GEN_TOKEN]
PLACEHOLDER = {Modality.IMAGE: IMAGE_TOKEN, Modality.AUDIO: AUDIO_TOKEN}
MARKER = {Modality.IMAGE: BOI_TOKEN, Modality.AUDIO: BOA_TOKEN}
GEN = {Modality.IMAGE: IMAGE_GEN_TOKEN, Modality.AUDIO: AUDIO_GEN_TOKEN}
USER_PREFIX, ASSISTANT_PREFIX = "USER:", "ASSISTANT:"

_DEFAULT_CORPUS = (
    "USER: ASSISTANT: draw make generate render create show play describe what changed edit apply "
    "the same to this one a an image picture photo sound audio clip of in on with the and it its "
    "now please turn change replace into from to colour color shape size scene background pitch "
    "instrument ambience red green blue yellow purple orange white black small large big circle "
    "square triangle star cross day night snow rain desert forest sine saw pluck tone note quiet "
    "wind birds crickets waves fire high low Hz here is Here it is. 0 1 2 3 4 5 6 7 8 9 ? ! , ."
)


class TokenizerLike(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...
    def convert_tokens_to_ids(self, tokens: str) -> Any: ...
    def decode(self, ids: Any, skip_special_tokens: bool = ...) -> str: ...


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer (any text is encodable) trained on `corpus`, with our special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", *SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = list(corpus) if corpus is not None else [_DEFAULT_CORPUS]
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS,
    )
    return fast


@dataclass
class Turn:
    """One message of a conversation: `role` and interleaved text/media `content`."""

    role: Literal["user", "assistant"]
    content: list[str | Media]


@dataclass
class EncodedSample:
    """One tokenised conversation with its media, ready to collate."""

    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,) IGNORE_INDEX except the assistant's answer
    input_media: dict[Modality, list[Media]] = field(default_factory=dict)  # in placeholder order
    output_media: dict[Modality, list[Media]] = field(default_factory=dict)  # in gen-block order


class CoDi2Processor:
    """Turns conversations into token ids and media tensors for `CoDi2Model`."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_size: int = 32,
        sample_rate: int = 16000,
        audio_num_samples: int = 16128,
        num_media_tokens: int = 2,
        num_output_tokens: dict[Modality, int] | None = None,
        max_length: int = 1024,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size, self.sample_rate, self.audio_num_samples = image_size, sample_rate, audio_num_samples
        self.num_media_tokens = num_media_tokens
        self.num_output_tokens = num_output_tokens or {Modality.IMAGE: 1, Modality.AUDIO: 1}
        self.max_length = max_length
        missing = [
            t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)
        ]
        if missing:
            raise ValueError(f"tokenizer lacks CoDi-2 special tokens {missing}; add them before use")

    def token_id(self, token: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(token))

    # --- text ---------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _content_ids(self, content: Sequence[str | Media], media: dict[Modality, list[Media]]) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                ids += self._ids((" " if i else "") + part)
            elif isinstance(part, Media):
                if part.modality is Modality.TEXT:
                    ids += self._ids((" " if i else "") + part.text)
                    continue
                ids += [self.token_id(PLACEHOLDER[part.modality])] * self.num_media_tokens
                media.setdefault(part.modality, []).append(part)
            else:
                raise MediaError(f"conversation content must be str or Media, got {type(part).__name__}")
        return ids

    def gen_block(self, modality: Modality) -> list[int]:
        """`<boi>` + K x `<image_gen>` (or the audio equivalents)."""
        return [self.token_id(MARKER[modality])] + [self.token_id(GEN[modality])] * self.num_output_tokens[
            modality
        ]

    # --- conversations ------------------------------------------------------------------------------
    def encode(
        self,
        turns: Sequence[Any],
        *,
        answer_text: str | None = None,
        answer_media: Media | None = None,
    ) -> EncodedSample:
        """Tokenise `turns` (objects with `.role` and `.content`), the last being the user's.

        With no answer, the ids end with the assistant prefix (a generation prompt). With an answer
        (`answer_text` and/or `answer_media`), it is appended and labelled, ending in `</s>`.
        """
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        ids: list[int] = [] if bos is None else [bos]  # Qwen2-style tokenizers have no BOS token
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        input_media: dict[Modality, list[Media]] = {}
        for turn in turns:
            if turn.role == "user":
                piece = self._ids(USER_PREFIX + " ") + self._content_ids(turn.content, input_media)
                piece += self._ids("\n" + ASSISTANT_PREFIX)
            elif turn.role == "assistant":
                # An earlier answer: its media come back as inputs, so the model can read them.
                piece = [*self._content_ids(turn.content, input_media), eos]
            else:
                raise ValueError(f"unknown role {turn.role!r}; expected 'user' or 'assistant'")
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
        output_media: dict[Modality, list[Media]] = {}
        if answer_text is not None or answer_media is not None:
            answer = self._ids(" " + answer_text) if answer_text else []
            answer_labels = list(answer)
            if answer_media is not None:
                if answer_media.modality is Modality.TEXT:
                    raise MediaError("an answer's media must be an image or audio; put text in answer_text")
                block = self.gen_block(answer_media.modality)
                answer += block
                answer_labels += [block[0]] + [IGNORE_INDEX] * (len(block) - 1)  # predict the marker only
                output_media[answer_media.modality] = [answer_media]
            answer += [eos]
            answer_labels += [eos]
            ids += answer
            labels += answer_labels
        if len(ids) > self.max_length:
            raise ValueError(f"conversation is {len(ids)} tokens; the model's limit is {self.max_length}")
        return EncodedSample(torch.tensor(ids), torch.tensor(labels), input_media, output_media)

    def encode_sample(self, sample: Any) -> EncodedSample:
        """A training sample from `codi2_agent.data` (`messages`, `target_text`, `target`)."""
        return self.encode(
            sample.messages, answer_text=sample.target_text or None, answer_media=sample.target
        )

    # --- media ------------------------------------------------------------------------------------
    def image_tensor(self, media: Sequence[Media]) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1]."""
        arrs = [m.resized(self.image_size).image_array() for m in media]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).mul(2.0).sub(1.0)

    def audio_tensor(self, media: Sequence[Media]) -> torch.Tensor:
        """(N, audio_num_samples) at the model's sample rate, zero-padded or cropped."""
        out = np.zeros((len(media), self.audio_num_samples), dtype=np.float32)
        for i, m in enumerate(media):
            wav = m.resampled(self.sample_rate).audio[: self.audio_num_samples]
            out[i, : wav.size] = wav
        return torch.from_numpy(out)

    def media_tensor(self, modality: Modality, media: Sequence[Media]) -> torch.Tensor:
        for m in media:
            if m.modality is not modality:
                raise MediaError(f"expected {modality.value} media, got {m.modality.value}")
        return self.image_tensor(media) if modality is Modality.IMAGE else self.audio_tensor(media)

    # --- batches ----------------------------------------------------------------------------------
    def collate(self, samples: Sequence[EncodedSample]) -> dict[str, Any]:
        """Right-padded batch: ids, mask, labels, and media tensors in placeholder / gen-block order."""
        if not samples:
            raise ValueError("cannot collate an empty batch")
        length = max(s.input_ids.numel() for s in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = s.input_ids.numel()
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = s.input_ids, s.labels, 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for modality in (Modality.IMAGE, Modality.AUDIO):
            inputs = [m for s in samples for m in s.input_media.get(modality, [])]
            outputs = [m for s in samples for m in s.output_media.get(modality, [])]
            if inputs:
                batch[f"{modality.value}_values"] = self.media_tensor(modality, inputs)
            if outputs:
                batch[f"output_{modality.value}_values"] = self.media_tensor(modality, outputs)
        return batch

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()
