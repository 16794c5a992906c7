"""Training: a resumable accelerate loop and the tiny recipe (`codi2-agent train --preset tiny`)."""

from codi2_agent.training.loop import StageConfig, run_stage
from codi2_agent.training.recipe import STAGES, TinyRecipe, train

__all__ = ["STAGES", "StageConfig", "TinyRecipe", "run_stage", "train"]
