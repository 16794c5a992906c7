"""Example tests: `model_arg` / `model` (tests/conftest.py) are what the examples run on.

The shipped ``tiny`` once its weights exist, else a seeded random tiny model saved to a folder (same
architecture and cost), so every example runs either way.
"""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere
