"""Render the input files of the example pipelines from the tiny world (the same pixels every run).

The pictures and sounds under ``examples/pipelines/inputs/`` come from here: an example edit pair, a
folder of pictures to repeat that edit on, a picture and two sounds. Each avoids the attribute
combinations the tiny model never saw in training (`codi2_agent.data.HELD_OUT`).

Run:
    python examples/pipelines/make_inputs.py                   # (re)writes examples/pipelines/inputs
    python examples/pipelines/make_inputs.py --out /tmp/inputs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codi2_agent.data import world

HERE = Path(__file__).resolve().parent

# file -> (attributes, render seed)
INPUTS: dict[str, tuple[dict[str, str], int]] = {
    # an edit shown by example: the same small blue circle, moved from daylight into the rain
    "pair/before.png": ({"shape": "circle", "colour": "blue", "size": "small", "scene": "day"}, 101),
    "pair/after.png": ({"shape": "circle", "colour": "blue", "size": "small", "scene": "rain"}, 102),
    # a folder of pictures to apply edits to
    "shapes/triangle.png": ({"shape": "triangle", "colour": "red", "size": "large", "scene": "desert"}, 111),
    "shapes/square.png": ({"shape": "square", "colour": "green", "size": "large", "scene": "day"}, 112),
    "shapes/cross.png": ({"shape": "cross", "colour": "yellow", "size": "small", "scene": "snow"}, 113),
    # composition: a picture, and sounds (one with rain in the background)
    "picture.png": ({"shape": "triangle", "colour": "orange", "size": "large", "scene": "day"}, 121),
    "sounds/tone.wav": ({"instrument": "square", "pitch": "440", "ambience": "quiet"}, 131),
    "sounds/rain.wav": ({"instrument": "pluck", "pitch": "330", "ambience": "rain"}, 132),
}


def make_inputs(out: str | Path = HERE / "inputs") -> list[Path]:
    """Write every input file under `out`; returns their paths."""
    out = Path(out)
    paths = []
    for name, (attrs, seed) in INPUTS.items():
        assert not world.is_held_out(attrs), name
        paths.append(world.render(attrs, seed).save(out / name))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "inputs", help="folder to write the files to")
    for path in make_inputs(parser.parse_args().out):
        print(path)
