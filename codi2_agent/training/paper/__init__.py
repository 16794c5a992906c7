"""Paper-scale CoDi-2 training: LoRA on any causal LM, accelerate for 1 to N GPUs, servable checkpoints.

`train_paper(model_dir, out, data)` (or `codi2-agent train --preset paper`) trains an assembled
paper folder in three stages (`bridge`, `align`, then `instruct`); `load_model(checkpoint)` serves
the result with its adapter attached or merged; `export_merged` / `codi2-agent export` writes a
standalone folder.
"""

from codi2_agent.training.paper.checkpoint import (
    CheckpointMismatchError,
    IncompleteCheckpointError,
    export_merged,
    is_adapter_checkpoint,
    load_adapter_checkpoint,
)
from codi2_agent.training.paper.data import BatchStream, DataSource, EmptyDataError
from codi2_agent.training.paper.lora import attach_lora, attention_targets
from codi2_agent.training.paper.settings import PAPER_STAGES, LoraSettings, PaperTrainingConfig
from codi2_agent.training.paper.trainer import PaperTrainer, UnsupportedLaunchError, train_paper

__all__ = [
    "PAPER_STAGES",
    "BatchStream",
    "CheckpointMismatchError",
    "DataSource",
    "EmptyDataError",
    "IncompleteCheckpointError",
    "LoraSettings",
    "PaperTrainer",
    "PaperTrainingConfig",
    "UnsupportedLaunchError",
    "attach_lora",
    "attention_targets",
    "export_merged",
    "is_adapter_checkpoint",
    "load_adapter_checkpoint",
    "train_paper",
]
