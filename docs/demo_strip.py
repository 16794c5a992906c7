"""Draw README's demo strip from a `codi2-agent demo` folder: per turn, its input images, then its output.

    python docs/demo_strip.py outputs/demo docs/demo_strip.png

Sounds are not drawn; a thin gap separates images of one turn, a wide gap separates turns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

TILE, GAP, TURN_GAP = 128, 4, 16


def demo_strip(demo_dir: Path) -> Image.Image:
    turns = json.loads((demo_dir / "summary.json").read_text())
    groups = []
    for turn in turns:
        paths = [Path(p) for p in turn["inputs"] + turn["files"] if p.endswith(".png")]
        if paths:
            groups.append([Image.open(p).convert("RGB").resize((TILE, TILE), Image.NEAREST) for p in paths])
    width = sum(len(g) * TILE + (len(g) - 1) * GAP for g in groups) + TURN_GAP * (len(groups) - 1)
    strip = Image.new("RGB", (width, TILE), "white")
    x = 0
    for group in groups:
        for tile in group:
            strip.paste(tile, (x, 0))
            x += TILE + GAP
        x += TURN_GAP - GAP
    return strip


if __name__ == "__main__":
    demo_strip(Path(sys.argv[1])).save(sys.argv[2])
