"""c_MLLM as the output head predicts it against c_MLLM put on the encoder's scale (`renorm_c_mllm`),
decoded side by side on the same held-out samples, noise and probes.

Run: `.venv/bin/python benchmarks/bench_renorm.py --model tiny --model OTHER [--draws 1234,777]
[--per-task 80] [--tasks analogy_audio,edit_audio,text_to_audio] [--threads 1] [--out FILE]`.

Each sample is the one `codi2-agent eval --seed DRAW` draws for its task, answered as `generate` would
(greedy reply, the K gen tokens; `predict_answers`), its medium decoded with the noise `generate(...,
seed=DRAW + i)` uses, and judged by the same probes: the `raw` column repeats an eval made with
`renorm_c_mllm` off, the `renorm` column one made with it on (today's default). Only the decoder's input
differs between the columns, so the difference is the normalisation's alone. Beside them, what the raw
c_MLLM says before any decoding: `read-out`, the share whose every attribute is read right by the nearest
mean C_x of clean renders per attribute value (the ablation tool's ruler), and `|c|`, its mean norm per
vector (a C_x of the tiny encoders has norm 8).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH = 16  # rows per decoder call: each row keeps its own generator, so the batch size changes nothing


def judged(
    model: Any, probes: Any, items: list[Any], features: Any, draw: int, steps: int | None
) -> list[bool]:
    """Decode `features` (N, K, D) with sample i's eval noise and judge each medium against its target."""
    from codi2_agent.model.generation import _seeded_generator

    decoder = model.decoder(items[0].target.modality)
    hits = []
    for start in range(0, len(items), BATCH):
        rows = range(start, min(len(items), start + BATCH))
        media = decoder.decode(
            features[rows.start : rows.stop],
            generator=[_seeded_generator(draw + i) for i in rows],
            num_inference_steps=steps,
        )
        hits += [
            all(probes.score(m, items[i].target_attrs).values()) for m, i in zip(media, rows, strict=True)
        ]
    return hits


def compare(
    model: Any, probes: Any, readout: Any, task: str, draw: int, per_task: int, steps: int | None
) -> tuple[float, float, float, float]:
    """One task on one draw, for a `model` whose config has `renorm_c_mllm` off: (read-out accuracy of the
    raw c_MLLM, its mean norm per vector, raw accuracy, renormalised accuracy)."""
    import torch

    from codi2_agent.training.ablation_readout import eval_samples, predict_answers

    items = eval_samples([task], per_task, draw)[task]  # the samples `evaluate` draws for this seed
    if items[0].target is None:
        raise ValueError(f"{task} answers with text: nothing is decoded, so nothing to compare")
    _, predicted = predict_answers(model, items)
    raw = torch.stack(predicted).float()  # (N, K, D): the heads' predictions
    modality = items[0].target.modality
    verdicts = readout.verdicts(modality, raw.flatten(1), [s.target_attrs for s in items])
    read_right = sum(all(v.values()) for v in verdicts) / per_task
    onto = model.encoder(modality).onto_features(raw)  # what generation decodes with the setting on
    scores = [judged(model, probes, items, f, draw, steps) for f in (raw, onto)]
    return read_right, float(raw.norm(dim=-1).mean()), sum(scores[0]) / per_task, sum(scores[1]) / per_task


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="a model name or folder (repeat to compare)")
    parser.add_argument("--draws", default="1234,777", help="eval seeds, comma-separated")
    parser.add_argument("--per-task", type=int, default=80)
    parser.add_argument("--tasks", default=None, help="tasks with a medium answer (default: the sound tasks)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the decoder's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    from codi2_agent.data.probes import load_probes
    from codi2_agent.data.tasks import TASKS
    from codi2_agent.model import load_model
    from codi2_agent.training.ablation_readout import ClassMeanReadout
    from codi2_agent.training.reasoning import SOUND_TASKS

    torch.set_num_threads(args.threads)
    models = args.model or ["tiny"]
    draws = [int(d) for d in args.draws.split(",")]
    tasks = args.tasks.split(",") if args.tasks else list(SOUND_TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or args.per_task < 1:
        parser.error(f"unknown tasks {unknown}" if unknown else "--per-task must be at least 1")
    probes = load_probes()
    t0 = time.perf_counter()
    lines = [
        f"# c_MLLM raw against renormalised (renorm_c_mllm), {args.per_task} held-out samples per task"
        " and draw",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s); {args.steps or 'the decoder'}'s DDIM steps",
        "",
        f"{'model':<28} {'task':<20} {'draw':>5} {'read-out':>8} {'|c|':>5} {'raw':>7} {'renorm':>7}"
        f" {'change':>7}",
    ]
    for name in models:
        model = load_model(name).eval()
        model.config = model.config.replace(renorm_c_mllm=False)  # raw predictions; `compare` renormalises
        readout = ClassMeanReadout.fit(model)
        sums = [0.0, 0.0]
        for task in tasks:
            for draw in draws:
                read, norm, raw, renorm = compare(
                    model, probes, readout, task, draw, args.per_task, args.steps
                )
                sums[0], sums[1] = sums[0] + raw, sums[1] + renorm
                lines.append(
                    f"{name:<28} {task:<20} {draw:>5} {read:8.3f} {norm:5.2f} {raw:7.3f} {renorm:7.3f} "
                    f"{renorm - raw:+7.3f}"
                )
                print(lines[-1], flush=True)
        lines.append(
            f"{name:<28} {'sum of the rows':<41} {sums[0]:7.2f} {sums[1]:7.2f} {sums[1] - sums[0]:+7.2f}"
        )
    lines.append(f"\n{len(models) * len(tasks) * len(draws)} rows in {time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
