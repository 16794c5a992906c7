"""The tiny recipe's stages, in training order, and how they group (perception, reasoning)."""

from __future__ import annotations

__all__ = ["PERCEPTION_STAGES", "REASONING_STAGES", "RETRAINABLE", "STAGES"]

STAGES = ("encoders", "image_decoder", "audio_decoder", "align", "lm", "tune")
# The stages that make the perception (encoders C_x and the decoders); a run may adopt them from a
# finished model and retrain decoders on the adopted encoders, never the encoders themselves.
PERCEPTION_STAGES = ("encoders", "image_decoder", "audio_decoder")
RETRAINABLE = PERCEPTION_STAGES[1:]
# The stages that make the reasoning (projectors, LM, output heads) before `tune` continues it: a run may
# adopt them, with the perception, from a finished model (`continue_from`) and train `tune` alone.
REASONING_STAGES = ("align", "lm")
