"""The scripted multi-round demo behind `codi2-agent demo` (and `make demo`).

Seven turns on one model, each answer fed back into the conversation where the next turn refers
to it: text -> image, two edits of that image, an edit learned from an example pair applied to a
new image, a sound edit, an image rendered in the ambience of a sound, and "what changed?".
Every input and output is written to `out/`, and a summary (with paths) is returned and printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codi2_agent.media import Media, OutputKind
from codi2_agent.model import CoDi2Model, Turn

__all__ = ["DemoTurn", "run_demo"]


@dataclass
class DemoTurn:
    name: str
    prompt: str
    output: str  # "image" | "audio" | "text"
    text: str
    files: list[str] = field(default_factory=list)  # outputs
    inputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_demo(
    model: CoDi2Model,
    out: str | Path,
    *,
    num_inference_steps: int | None = None,
    seed: int = 0,
    log: Any = print,
) -> list[DemoTurn]:
    """Run the scripted session; write media and `summary.json` under `out`."""
    from codi2_agent.data import world

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    turns: list[DemoTurn] = []

    def save(media: Media, name: str) -> str:
        return str(media.save(out / name))

    def step(
        name: str, conversation: list[Turn], output: OutputKind, inputs: dict[str, Media] | None = None
    ) -> Media | None:
        t0 = time.perf_counter()
        result = model.generate(
            conversation, output=output, seed=seed, num_inference_steps=num_inference_steps
        )
        seconds = time.perf_counter() - t0
        prompt = " ".join(
            p if isinstance(p, str) else f"[{p.modality.value}]" for p in conversation[-1].content
        )
        turn = DemoTurn(name, prompt, output, result.text, seconds=round(seconds, 3))
        turn.inputs = [
            save(m, f"{len(turns) + 1:02d}_{name}_input_{key}") for key, m in (inputs or {}).items()
        ]
        turn.files = [save(m, f"{len(turns) + 1:02d}_{name}") for m in result.media]
        turns.append(turn)
        shown = ", ".join(turn.files) if turn.files else repr(result.text)
        if turn.files and result.text:  # the reply that came with the medium, e.g. the analogy's edit
            shown += f" {result.text!r}"
        log(f"[{len(turns)}] {name}: {prompt!r} -> {shown} ({seconds:.2f} s)")
        return result.media[0] if result.media else None

    # 1-3. A picture from text, then two edits; each answer goes back into the conversation.
    chat = [Turn("user", ["draw a large red star in the desert"])]
    first = step("text_to_image", chat, "image")
    assert first is not None
    chat += [Turn("assistant", [first]), Turn("user", ["make it blue"])]
    second = step("edit_colour", chat, "image")
    assert second is not None
    chat += [Turn("assistant", [second]), Turn("user", ["now put it in the snow"])]  # world phrasings
    step("edit_scene", chat, "image")

    # 4. In-context exemplar: A -> A' shows an edit; apply it to B.
    a = {"shape": "circle", "colour": "green", "size": "small", "scene": "day"}
    b = {"shape": "square", "colour": "yellow", "size": "large", "scene": "night"}
    ex_a, ex_a2 = world.render(a, 11), world.render(world.edit(a, "colour", "purple"), 12)
    query = world.render(b, 13)
    step(
        "analogy",
        [
            Turn(
                "user",
                ["here is an example of an edit:", ex_a, "becomes", ex_a2, "do the same to this:", query],
            )
        ],
        "image",
        {"example_before": ex_a, "example_after": ex_a2, "query": query},
    )

    # 5. Audio editing.
    sound = world.render({"instrument": "sine", "pitch": "440", "ambience": "quiet"}, 21)
    step("edit_audio", [Turn("user", ["raise the pitch to 880 Hz", sound])], "audio", {"sound": sound})

    # 6. Cross-modal composition: this picture in the ambience of that sound.
    picture = world.render({"shape": "triangle", "colour": "orange", "size": "large", "scene": "day"}, 31)
    rain = world.render({"instrument": "pluck", "pitch": "330", "ambience": "rain"}, 32)
    step(
        "compose",
        [
            Turn(
                "user",
                [
                    "here is a picture",
                    picture,
                    "and a sound",
                    rain,
                    "show this picture in the ambience of this sound.",
                ],
            )
        ],
        "image",
        {"picture": picture, "sound": rain},
    )

    # 7. Reasoning over media: what changed?
    before = world.render({"shape": "cross", "colour": "red", "size": "small", "scene": "forest"}, 41)
    after = world.render({"shape": "cross", "colour": "blue", "size": "small", "scene": "forest"}, 42)
    step(
        "what_changed",
        [Turn("user", ["what changed between", before, "and", after, "what changed?"])],
        "text",
        {"before": before, "after": after},
    )

    (out / "summary.json").write_text(json.dumps([t.__dict__ for t in turns], indent=2))
    return turns
