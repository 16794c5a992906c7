"""LoRA on any transformers causal LM, plus trainable rows for CoDi-2's new tokens (peft).

Which modules: the official CoDi-2 code puts LoRA on the attention's q/k/v/o projections. Their
names differ per family (`q_proj` ... `o_proj` in Llama, Mistral and Qwen2; `qkv_proj` in Phi-3;
`query_key_value` / `dense` in GPT-NeoX and Falcon; `c_attn` / `c_proj` in GPT-2), so they are
found in the model: the linear layers that sit directly in a module whose class name says
"Attention" (`attention_targets`).

The new tokens (`<image>`, `<boi>`, `<image_gen>`, ...) were added by `assemble_paper_model` with
rows at the mean of the pretrained ones; they must learn. We train exactly those rows with peft's
`trainable_token_indices` (a `TrainableTokensLayer` holds a delta for the listed rows only), on the
input embeddings and, when they are not tied, on the output layer too. The alternative,
`modules_to_save=["embed_tokens", "lm_head"]` with a gradient mask, would train and store two full
copies of 32000 x 4096 matrices (0.5 GB in bf16, 2 GB more of Adam state) to change 6 rows of
each, and a mask would still let weight decay move the other rows. Token rows are saved in the
peft adapter beside the LoRA weights, and merged into the embeddings by `merge_and_unload`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from codi2_agent.model.processing_codi2 import SPECIAL_TOKENS
from codi2_agent.training.paper.settings import LoraSettings

__all__ = ["attach_lora", "attention_targets", "new_token_ids"]

logger = logging.getLogger(__name__)

# Leaf modules of an attention block that are not its projections (rotary tables, norms, dropout).
_LINEAR_TYPES = ("Linear", "Conv1D")  # GPT-2 writes its projections as transformers' Conv1D


def attention_targets(lm: nn.Module) -> list[str]:
    """The names (last path component) of the linear projections inside `lm`'s attention blocks.

    Raises:
        ValueError: `lm` has no module whose class name contains "Attention" with linear children
            (pass `LoraSettings.target_modules` for such a model).
    """
    names: set[str] = set()
    for module in lm.modules():
        if "attention" not in type(module).__name__.lower():
            continue
        for child_name, child in module.named_children():
            if type(child).__name__ in _LINEAR_TYPES:
                names.add(child_name)
    if not names:
        raise ValueError(
            f"found no attention projections in {type(lm).__name__}; name them with "
            "--lora-targets (LoraSettings.target_modules)"
        )
    return sorted(names)


def new_token_ids(tokenizer: Any) -> list[int]:
    """The ids of CoDi-2's tokens (placeholders, generation markers, gen tokens) in `tokenizer`."""
    return sorted(int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS)


def _embedding_names(lm: nn.Module) -> tuple[str, str | None]:
    """Module names (last component) of the input embeddings and, if not tied to them, the output layer."""
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in lm.named_modules()}
    embed = lm.get_input_embeddings()  # type: ignore[operator]
    out = lm.get_output_embeddings()  # type: ignore[operator]
    tied = out is None or out.weight is embed.weight
    return names[id(embed)], None if tied else names[id(out)]


def attach_lora(lm: nn.Module, settings: LoraSettings, token_ids: Sequence[int]) -> Any:
    """Wrap `lm` in a peft `PeftModelForCausalLM`: LoRA on the attention projections, trainable rows
    `token_ids` on the embeddings (and untied output layer). Returns the peft model."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = settings.target_modules or attention_targets(lm)
    embed, out = _embedding_names(lm)
    tokens: dict[str, list[int]] = {embed: list(token_ids)}
    if out is not None:
        tokens[out] = list(token_ids)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        trainable_token_indices=tokens,
    )
    logger.info(
        "LoRA r=%d on %s; trainable token rows %s in %s", settings.rank, targets, list(token_ids), tokens
    )
    return get_peft_model(lm, config)
