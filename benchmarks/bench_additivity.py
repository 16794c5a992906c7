"""How compositional are the tiny model's features? Encoder C_x and LM c_MLLM against an additive model.

Run: `.venv/bin/python benchmarks/bench_additivity.py [--model tiny|PATH ...] [--workdir WORK ...] [--layers]
[--modality audio|image|both] [--renders 4] [--threads 2] [--out FILE] [--note TEXT ...]`. Prints a table
and writes it to FILE (default benchmarks/results/additivity.txt); each `--note` becomes a comment line at
its head.

The tiny world holds out attribute *pairs* (`codi2_agent.data.world.HELD_OUT`): the reasoning model
never sees, say, a sine tone at 880 Hz, yet must produce its features. If the encoder's features were
a sum of one vector per attribute value, a least-squares fit of those vectors on the train
combinations would predict every held-out combination. This script measures, per model:

1. the encoder: mean C_x per combination (train-range render seeds), its spread across renders, and
   how well an additive fit on the train combinations predicts the held-out ones (the best a
   compositional reasoner could do with these features);
2. the LM: c_MLLM for one plain text-to-media prompt per combination ("let me hear <caption>"),
   its error against the true mean C_x on train and held-out combinations, and how far its held-out
   answers lie from the additive extrapolation of its *own* train-combination answers (near zero: the
   LM composes additively; large: it does something else on unseen pairs);
3. with two or more models, the error of their averaged c_MLLM (variance across runs vs a bias they share).

`--workdir WORK` (repeatable) measures a training run instead of a finished model: the LM's c_MLLM after
each reasoning checkpoint in WORK (`align`, every `lm` branch, the `lm` soup, `tune`), each against the
run's own encoder, to show which stage sets a run's held-out error; with two or more `lm` branches, also
whether a branch's error on half of the held-out pairs tells which branch is better on the other half
(what choosing a branch on validation pairs would rely on). With `--layers` as well, each checkpoint's
hidden state at the gen position after every LM layer, the final norm and the head's hidden layer, each
against an additive fit on the train combinations: where in the network the answers to unseen
combinations stop being a sum of one part per attribute value.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codi2_agent.data import world

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "additivity.txt"


def one_hot_design(combos: Sequence[Mapping[str, str]], schema: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(C, 1 + sum of values) design matrix: an intercept and one indicator per attribute value."""
    columns = [(attribute, value) for attribute, values in schema.items() for value in values]
    return np.array([[1.0] + [float(c[a] == v) for a, v in columns] for c in combos])


def additive_fit(table: np.ndarray, design: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Least-squares additive model fitted on the rows not `held`, evaluated on every row: (C, D)."""
    weights, *_ = np.linalg.lstsq(design[~held], table[~held], rcond=None)
    return design @ weights


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error per feature."""
    return float(((a - b) ** 2).mean())


def encoder_means(
    model, kind: str, combos: Sequence[Mapping[str, str]], renders: int
) -> tuple[np.ndarray, float]:
    """Mean C_x per combination (C, D) over `renders` train-range renders, and the within-combination MSE."""
    from codi2_agent.media import Modality
    from codi2_agent.training.ablation_readout import _encode

    rng = np.random.default_rng([5, renders])
    media = [world.render(c, world.render_seed(rng, "train")) for c in combos for _ in range(renders)]
    features = _encode(model, Modality(kind), media).numpy().reshape(len(combos), renders, -1)
    means = features.mean(1)
    return means, mse(features, means[:, None])


def lm_features(model, kind: str, combos: Sequence[Mapping[str, str]]) -> np.ndarray:
    """c_MLLM (C, D) for one plain text-to-media prompt per combination, as `generate` would predict it."""
    import torch

    from codi2_agent.data.tasks import Message, Sample
    from codi2_agent.training.ablation_readout import predict_answers

    verb = "let me hear" if kind == "audio" else "draw"
    samples = [
        Sample(
            f"text_to_{kind}",
            [Message("user", [f"{verb} {world.caption(c)}"])],
            "Here it is.",
            world.render(c, 0),
            dict(c),
            {"split": "train", "modality": kind, "seed": 0},
        )
        for c in combos
    ]
    _, features = predict_answers(model, samples)
    return torch.stack([f.float().flatten() for f in features if f is not None]).numpy()


def world_table(
    model, kind: str, renders: int
) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray, np.ndarray, float]:
    """Every combination of `kind`, which are held out, their additive design, and `model`'s encoder truth."""
    combos = list(world.all_attrs(kind))
    held = np.array([world.is_held_out(c) for c in combos])
    design = one_hot_design(combos, world.ATTRIBUTES[kind])
    truth, within = encoder_means(model, kind, combos, renders)
    return combos, held, design, truth, within


def pair_rows(combos: Sequence[Mapping[str, str]], kind: world.WorldModality) -> dict[str, np.ndarray]:
    """Each held-out pair of `kind`, named by its values ("sine+880"), and the combinations holding it."""
    return {
        "+".join(v for _, v in sorted(pair)): np.array([pair <= c.items() for c in combos])
        for pair in world.HELD_OUT[kind]
    }


def pair_errors(answer: np.ndarray, truth: np.ndarray, pairs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The answers' error on the combinations of each held-out pair (`pair_rows`)."""
    return {name: mse(answer[rows], truth[rows]) for name, rows in pairs.items()}


def per_pair_line(errors: Mapping[str, float]) -> str:
    return "   per held-out pair: " + ", ".join(f"{name} {error:.3f}" for name, error in errors.items())


def pick_agreement(branches: Sequence[Mapping[str, float]]) -> tuple[int, int]:
    """How often the branch with the lower mean error on one half of the held-out pairs also has the lower
    mean error on the other half: (agreeing, all) over every split of the pairs into two equal halves
    (each split once) and every two branches. About half agree when a branch's errors on unseen pairs are
    idiosyncratic; all of them when one branch is better across the board."""
    names = list(branches[0])
    agree = total = 0
    for half in itertools.combinations(names, len(names) // 2):
        if names[0] not in half:  # {A, B} and {B, A} are one split
            continue
        other = [name for name in names if name not in half]
        for a, b in itertools.combinations(branches, 2):
            on_half = np.mean([a[n] for n in half]) < np.mean([b[n] for n in half])
            on_other = np.mean([a[n] for n in other]) < np.mean([b[n] for n in other])
            agree += on_half == on_other
            total += 1
    return agree, total


def run(models: Mapping[str, Any], kind: world.WorldModality, renders: int) -> list[str]:
    """The table's lines for one modality; `models`: label -> loaded model, all on one perception."""
    combos, held, design, truth, within = world_table(next(iter(models.values())), kind, renders)
    fitted = additive_fit(truth, design, held)
    lines = [
        f"# {kind}: {len(combos)} combinations, {int(held.sum())} held out; "
        f"features per combination: mean C_x of {renders} renders",
        "## 1. encoder C_x (MSE per feature; features have unit variance)",
        f"spread across renders of one combination        {within:.4f}",
        f"additive fit on train combinations: train rows   {mse(fitted[~held], truth[~held]):.4f}",
        f"additive fit on train combinations: held-out     {mse(fitted[held], truth[held]):.4f}",
        "## 2. LM c_MLLM, one text-to-media prompt per combination",
        "model                         train  held-out  held vs own additive  own additive vs truth",
    ]
    pairs = pair_rows(combos, kind)
    answers = []
    for index, (label, model) in enumerate(models.items()):
        answer = lm_features(model, kind, combos)
        own = additive_fit(answer, design, held)
        answers.append(answer)
        lines.append(
            f"{index}: {label:26s} {mse(answer[~held], truth[~held]):.4f}  "
            f"{mse(answer[held], truth[held]):8.4f}  {mse(answer[held], own[held]):20.4f}  "
            f"{mse(own[held], truth[held]):21.4f}"
        )
        lines.append(per_pair_line(pair_errors(answer, truth, pairs)))
    if len(answers) >= 2:
        mean = np.mean(answers, 0)
        lines += [
            "## 3. the models' c_MLLM averaged",
            f"held-out error of the average {mse(mean[held], truth[held]):.4f}; "
            f"between models {mse(answers[0][held], answers[1][held]):.4f}",
        ]
    return lines


def layer_additivity(
    model,
    kind: world.WorldModality,
    combos: Sequence[Mapping[str, str]],
    design: np.ndarray,
    held: np.ndarray,
) -> list[str]:
    """For every LM layer, the final norm and the output head's hidden and output layers: how far the state
    at the gen position lies from an additive fit on the train combinations, on train and on held-out
    combinations, as a share of that state's variance across combinations (0: a sum of one vector per
    attribute value; the encoder's own features: about 0.02 held out)."""
    head = model.output_heads[kind].net
    taps = {f"layer {i}": layer for i, layer in enumerate(model.lm.model.layers)}
    taps |= {"final norm": model.lm.model.norm, "head hidden": head[1], "head output": head[2]}
    seen: dict[str, Any] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:
            state = output[0] if isinstance(output, tuple) else output
            seen[name] = state.detach().reshape(-1, state.shape[-1])[-1].float().numpy()  # the last position

        return hook

    hooks = [module.register_forward_hook(keep(name)) for name, module in taps.items()]
    try:
        states: dict[str, list[np.ndarray]] = {name: [] for name in taps}
        for combo in combos:  # one at a time: the gen position is then the last one of the last LM call
            lm_features(model, kind, [combo])
            for name in taps:
                states[name].append(seen[name])
    finally:
        for hook in hooks:
            hook.remove()
    lines = []
    for name, rows in states.items():
        table = np.stack(rows)
        table = table - table.mean(0)
        fitted = additive_fit(table, design, held)
        variance = float((table**2).mean())
        lines.append(
            f"   {name:12s} off additive, train {mse(fitted[~held], table[~held]) / variance:.3f}  "
            f"held-out {mse(fitted[held], table[held]) / variance:.3f}"
        )
    return lines


def reasoning_checkpoints(workdir: Path) -> list[Path]:
    """The reasoning weights a training workdir holds, in the order the recipe makes them."""
    branches = sorted(
        (p for p in (workdir / "lm").glob("branch*/final.pt") if p.parent.name[6:].isdigit()),
        key=lambda p: int(p.parent.name[6:]),  # branch10 after branch9
    )
    names = [
        workdir / "align" / "final.pt",
        *branches,
        workdir / "lm" / "final.pt",
        workdir / "tune" / "final.pt",
    ]
    return [path for path in names if path.is_file()]


def load_workdir(workdir: Path):
    """A training run's model: its own encoders and decoders (the reasoning is set per checkpoint)."""
    from codi2_agent.training.ablation import base_recipe
    from codi2_agent.training.recipe import _build_model, _restore_done

    model = _build_model(base_recipe(workdir), workdir)
    _restore_done(model, workdir)
    return model.eval()


def checkpoint_run(
    model, workdir: Path, kind: world.WorldModality, renders: int, layers: bool = False
) -> list[str]:
    """The table's lines for one training run (`model`: `load_workdir(workdir)`): c_MLLM after each of its
    reasoning checkpoints, all measured against the run's own encoder (every run trains its own encoders, so
    runs share no perception)."""
    import torch

    from codi2_agent.training.reasoning import _reasoning_parts

    combos, held, design, truth, _ = world_table(model, kind, renders)
    pairs = pair_rows(combos, kind)
    lines = [
        f"## {kind}: LM c_MLLM after each reasoning checkpoint of {workdir}",
        "checkpoint                    train  held-out  held vs own additive",
    ]
    branches = []
    for path in reasoning_checkpoints(workdir):
        _reasoning_parts(model).load_state_dict(torch.load(path, map_location="cpu"))
        answer = lm_features(model, kind, combos)
        own = additive_fit(answer, design, held)
        name = str(path.parent.relative_to(workdir))
        lines.append(
            f"{name:26s} {mse(answer[~held], truth[~held]):8.4f}  {mse(answer[held], truth[held]):8.4f}  "
            f"{mse(answer[held], own[held]):20.4f}"
        )
        errors = pair_errors(answer, truth, pairs)
        lines.append(per_pair_line(errors))
        if layers:
            lines += layer_additivity(model, kind, combos, design, held)
        if name.startswith("lm/branch"):
            branches.append(errors)
    if len(branches) >= 2:
        agree, total = pick_agreement(branches)
        lines.append(
            f"branch picked on half of the held-out pairs is the better on the other half: {agree} of {total}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="tiny or a model folder; repeat for several")
    parser.add_argument(
        "--workdir", action="append", type=Path, default=[], help="a training workdir; repeat for several"
    )
    parser.add_argument("--modality", choices=("audio", "image", "both"), default="both")
    parser.add_argument("--renders", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[], help="a comment line for the table's head")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="with --workdir: how additive each layer's state is",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent.model import load_model

    kinds: tuple[world.WorldModality, ...] = (
        ("audio", "image") if args.modality == "both" else (args.modality,)
    )
    lines = []
    if args.model or not args.workdir:
        models = {"/".join(Path(path).parts[-2:]): load_model(path).eval() for path in args.model or ["tiny"]}
        lines += [line for kind in kinds for line in run(models, kind, args.renders)]
    for workdir in args.workdir:
        model = load_workdir(workdir)
        lines += [
            line for kind in kinds for line in checkpoint_run(model, workdir, kind, args.renders, args.layers)
        ]
    head = [f"# {note}" for note in args.note]
    head.append(f"# machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    lines = head + lines
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
