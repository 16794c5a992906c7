"""The adversarial suite: real SQLite checkpoints and real embedded Chroma, with the seeded random
tiny model of tests/conftest.py (`tiny_model`, `tiny_model_dir`) at few diffusion steps."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

STEPS = 2
