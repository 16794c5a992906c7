"""The tiny CoDi-2 training recipe: five stages on the tiny world, each resumable.

1. `encoders`       — image and audio CNN encoders learn the world's attributes (linear heads on C_x),
                      giving an aligned, attribute-separating feature space.
2. `image_decoder`  — the diffusion decoders learn to invert frozen C_x features (the paper's
3. `audio_decoder`    "decoder as an autoencoder of encoder features"): L_DM conditioned on C_x(x).
4. `align`          — projector + Llama + output heads on paired data only (captioning and
                      text-to-image/audio, both directions of media <-> text), as LLaVA's and
                      CoDi-2's alignment pre-training does, with `alpha * MSE(c_MLLM, C_x(target)) + L_t`.
5. `lm`             — the same parts on in-context samples of every task of `codi2_agent.data`
                      (text-only variants included), the alignment tasks replayed at a higher weight.

Stages 2-3 and 4-5 only read the frozen encoders, so they can run as separate processes at once
(`--stages image_decoder`, `--stages audio_decoder,align,lm`); a final run with every stage done
assembles the model. Usage: `codi2-agent train --preset tiny --out DIR`.
The reasoning stages (4-5 and `tune`) are in `codi2_agent.training.reasoning`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from codi2_agent.media import Modality
from codi2_agent.model import CoDi2Config, CoDi2Model, build_tokenizer
from codi2_agent.training.loop import StageConfig, run_stage
from codi2_agent.training.reasoning import train_reasoning_stage
from codi2_agent.training.stages import PERCEPTION_STAGES, REASONING_STAGES, RETRAINABLE, STAGES

__all__ = [
    "PERCEPTION_FILE",
    "PERCEPTION_STAGES",
    "REASONING_STAGES",
    "STAGES",
    "TinyRecipe",
    "adopt_perception",
    "adopt_reasoning",
    "perception_config",
    "train",
]

# A workdir's perception shapes: the config fields its encoder and decoder stages were trained with,
# written when its model is first built (or its perception adopted) and read back on every build, so a
# workdir keeps loading after the recipe's defaults change (a deeper audio decoder, say).
PERCEPTION_FILE = "perception.json"
_STAGE_FIELDS = {
    "encoders": (
        "image_size",
        "sample_rate",
        "audio_num_samples",
        "n_mels",
        "mel_frames",
        "image_encoder",
        "audio_encoder",
    ),
    "image_decoder": ("image_decoder",),
    "audio_decoder": ("audio_decoder",),
}


# Recipe fields that are a rate or a share of something: a value of 1 or more is an error.
_BELOW_ONE = frozenset({"lm_dropout", "decoder_feature_mix"})
_AT_LEAST_ONE = frozenset({"lm_layers"})


@dataclass
class TinyRecipe:
    """Step counts and sizes: the recipe of the shipped `tiny` weights (its REPRODUCE.md says which stages
    were run from which starting point)."""

    seed: int = 0
    threads: int = 2
    vocab_size: int = 1024
    encoder_steps: int = 500
    encoder_batch: int = 64
    # v1-v7's image decoder took 3,500 steps and rendered true held-out features right 0.968 of 400 times,
    # every miss the shape of a small shape; more sampler steps or guidance did not help. 7,000 steps
    # (47 min alone on two threads of a 2-core CPU): 0.995 (benchmarks/results/decoder_oracle.txt). v8 on.
    image_decoder_steps: int = 7000
    audio_decoder_steps: int = 1500
    decoder_batch: int = 32
    decoder_lr: float = 1e-3
    # The decoders keep a bias-corrected EMA of their weights (`StageConfig.ema_debias`). Up to v8 the EMA
    # started from the random init and kept 0.999**1500 = 22 % of it in a 1,500-step audio decoder: seed 1's
    # renders 0.935 of 400 held-out sounds right, the same weights bias-corrected 0.973 (v8's 0.973).
    decoder_ema: float = 0.999
    # Noise on the decoders' training condition: each sample's C_x(x) gets Gaussian noise whose standard
    # deviation is drawn per sample uniformly from [0, decoder_feature_noise], then the encoder's
    # normalisation again (what generation does to c_MLLM), so a decoder learns to render the LM's
    # imperfect predictions and not only exact features (unCLIP's noise augmentation). 0: exact C_x. At
    # 0.4 (the LM's error is about 0.23 per element) two runs' audio decoders rendered their LM's sound
    # answers worse, not better (benchmarks/results/renorm_c_mllm.txt).
    decoder_feature_noise: float = 0.0
    # Mixing of the decoders' training conditions: each sample's C_x(x) moved towards another sample's
    # C_x(y) by a fraction drawn per sample uniformly from [0, decoder_feature_mix], then normalised again,
    # while the target stays x, so a decoder learns to render the nearer medium when its condition lies
    # part of the way to another one (where the LM's answers to unseen combinations lie), not only
    # exact features. 0: exact C_x, as every shipped version was made. At 0.4 on the seed-2 run of v8's
    # recipe: the nine held-out sound cells' mean 0.908 -> 0.918, five up and three down, within the noise
    # of 80 samples a cell (benchmarks/results/tiny_decoder_feature_mix.txt).
    decoder_feature_mix: float = 0.0
    # Measured with a fresh LM on the frozen encoders (nearest-class-mean read-out of c_MLLM, caption
    # parsing; held-out combinations): at lr 2e-3 every mixture of four or more tasks loses the scene
    # (0.15-0.35) while shape/colour/size stay near 1.0, and even text-to-image + text-to-audio alone
    # reaches scene 0.33; at 5e-4 the same pair reaches 1.0 on held-out combinations. Straight into the
    # 13-task mixture at 5e-4, 1000 steps: caption scene 0.40, held-out text-to-image scene 0.21.
    # `align` first (500 steps), then the mixture (1000): held-out captions 0.95 (image) / 1.00
    # (audio), text-to-image 1.00, edit 0.83-0.96, compose 0.96-1.00 per attribute. This recipe in full
    # (eval on 40 held-out samples per task): analogies answering "Here it is." reached analogy_image
    # 0.075 (lm feature MSE 0.23); answering with the edit they infer first (`analogy_reply`), 0.55
    # (feature MSE 0.06).
    align_steps: int = 800
    lm_steps: int = 6000  # of each branch when `lm_branches` > 1
    # `lm` trained as this many branches from `align`'s weights, on their own sample draws, and averaged
    # (a "model soup"); 1 is a single run, as every version up to v6 was made. Two 3,000-step branches
    # (v6's compute) make two runs agree on held-out sound features (0.060 / 0.063 against 0.051-0.099)
    # but lose the relational picture tasks: concepts 0.71 / 0.70, image analogies 0.76 / 0.73, because
    # a 3,000-step branch has not learnt them yet and the average lands near the weaker branch. Two
    # 6,000-step branches (twice v6's compute) keep them (0.95-0.99); three runs score 8.71 / 8.45 / 8.70
    # over the nine media tasks (v6's recipe 8.66 / 7.96 / 8.51) and agree within 0.05 on every task but
    # one sound task per held-out draw (0.137, 0.088; v6's runs spread 0.25 on sounds). v7 is made so
    # (benchmarks/results/tiny_lm_soup.txt).
    lm_branches: int = 2
    # Decoder layers of the tiny Llama (the projectors and heads do not change). Every shipped version has
    # 4. Screened with one `lm` branch on v8's perception: 2 layers halves the seed-2 run's held-out sound
    # feature error (0.089-0.102 -> 0.046-0.062) and is never below 4 layers on the nine paired held-out
    # sound cells, but it leaves seed 1 missing every sound target (benchmarks/results/tiny_lm_depth.txt).
    lm_layers: int = 4
    align_replay: int = 1  # extra copies of ALIGN_TASKS in the `lm` stage's task draw (no forgetting)
    # Extra copies of `concept_image` in the `lm` and `tune` draws. Drawn as often as any other task, the
    # concept stayed unlearnt for shapes: v3 named a colour for every shape concept, on train-split
    # samples too, though C_x separates shapes perfectly. Screened on v3 (read-out of c_MLLM, 200
    # held-out samples per task, 1,500 `tune` steps at 3 extra copies): concept 0.700 -> 0.990, shape
    # concepts learnt, no other task lower (benchmarks/results/tiny_concept_weight.txt).
    concept_replay: int = 3
    # Extra copies of each analogy task (`analogy_image`, `analogy_audio`) in the `lm` and `tune` draws.
    # v4's two runs missed the image analogy's shape relation (0.875 / 0.688 held-out); 1,500 `tune` steps
    # with 2 extra copies: 0.925 / 0.887, the runs' spread 0.19 -> 0.04, no other task lower by more than
    # two samples in 80 (benchmarks/results/eval_tiny_runs_v5.txt). v4 and earlier were made with 0.
    analogy_replay: int = 2
    lm_batch: int = 16
    lm_lr: float = 5e-4
    # AdamW weight decay of the reasoning stages (align, lm, tune): `lm_weight_decay` for the LM and the
    # projectors, `head_weight_decay` for the output feature heads (None: the LM's). Every version up to
    # v5 used 0.01 for all. On the align tasks alone (two seeds, 3,000 steps at a constant 5e-4) 1.0 on
    # everything lowers the LM's held-out text-to-audio feature error from 0.060-0.073 to 0.044-0.046,
    # but through the whole recipe it flattens the choice of which attribute to name to "size" ("what
    # changed?" 0.16 in one run, analogies and concepts 0.26-0.29 in another). 1.0 on the heads alone
    # gives half that gain; with 0.1 on the rest, three runs of the whole recipe kept every attribute
    # decision. One of them is v6 (every target met); the other two are no better than 0.01 runs on sounds,
    # so this split is not better on average (benchmarks/results/tiny_weight_decay.txt). It is the default
    # because it made the shipped weights.
    lm_weight_decay: float = 0.1
    head_weight_decay: float | None = 1.0
    # Dropout in the `lm` stage only, on the LM's attention weights and on the hidden states the output
    # heads read at the gen positions (training only; generation never drops). 0: none, as every shipped
    # version was made. Tried against the LM's memorising of attribute combinations (its error on held-out
    # sound combinations is 10-30 times that on trained ones): at 0.1, two branches from the seed-2 run's
    # `align`, each on its no-dropout twin's sample draw, ended at 0.071 / 0.096 held-out against 0.069 /
    # 0.057 (benchmarks/results/tiny_lm_branches.txt).
    lm_dropout: float = 0.0
    # `tune`: the `lm` diet again, from `lm`'s weights, with a fresh warm-up to a lower rate and an EMA of
    # the weights kept. Screened on the two finished v2 runs (read-out of c_MLLM, 200 held-out samples
    # per task): concept 0.485 / 0.540 -> 0.755 / 0.765 with concept answers that name the shared value
    # (`concept_reply`), every other task unchanged or better (benchmarks/results/tiny_concept_reply.txt).
    tune_steps: int = 1500
    tune_lr: float = 2e-4
    tune_ema: float | None = 0.998
    # Extra copies of each sound task (`SOUND_TASKS`: audio analogy, audio editing, text-to-audio) in the
    # `tune` draw only; 0 draws them as often as in `lm`. At 2, on the seed-1 run of v8's recipe, every
    # held-out sound row fell or stayed (up to -0.038; benchmarks/results/tiny_tune_sound_replay.txt).
    tune_sound_replay: int = 0
    # Steps between kept weight snapshots in the reasoning stages (`<stage>/step<N>.pt` in the workdir),
    # to measure where along a run its held-out behaviour is decided; 0 keeps none. Not used by the
    # shipped weights, and it does not change what a run trains.
    keep_every: int = 0
    pool_images: int = 20000
    pool_audio: int = 6000
    # Encoders and decoders are the perception/rendering backbone (ImageBind and SD in the paper,
    # pretrained on everything); they learn the world's whole media distribution, held-out combinations
    # included, with train-range seeds. The reasoning model (projector + LM + heads) trains on the
    # train split only, so the held-out eval measures whether it composes unseen combinations.
    # Measured (probes): a CNN trained on train-split combinations learns conjunctions ("purple, so
    # not a circle") and reads held-out shapes at 0.57; trained on all combinations, 1.0.
    perception_split: str = "all"

    @classmethod
    def from_json_file(cls, path: str | Path, *, base: TinyRecipe | None = None) -> TinyRecipe:
        """`base` (default: today's defaults) with the fields a JSON object file sets, e.g. a shipped
        model's `recipe.json`: how an older checkpoint's recipe is run again with newer code. A field
        the file leaves out keeps `base`'s value; an unknown field or a value of the wrong type is an
        error naming it, so a typo never trains silently with a default."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"recipe file {path}: cannot read it as JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"recipe file {path}: expected a JSON object of TinyRecipe fields")
        return cls.from_fields(data, base=base, source=f"recipe file {path}")

    @classmethod
    def from_fields(
        cls, data: dict[str, Any], *, base: TinyRecipe | None = None, source: str = "recipe"
    ) -> TinyRecipe:
        """`base` with `data`'s fields set, each checked (see `from_json_file`); `source` names where
        they came from in the errors."""
        known = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if "None" in str(f.type)}  # annotated `float | None`
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}; expected some of {sorted(known)}")
        recipe = replace(base or cls())
        for name, value in data.items():
            default = getattr(recipe, name)
            kinds: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
            if name in optional:
                kinds = (int, float, type(None))
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(
                    f"{source}: {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
                )
            if isinstance(value, int | float):
                if value < 0:  # steps, sizes, rates, replays: never negative
                    raise ValueError(f"{source}: {name} must not be negative, got {value!r}")
                if name in _BELOW_ONE and value >= 1:  # a rate or share: checked before hours of training
                    raise ValueError(f"{source}: {name} must be below 1, got {value!r}")
                if name in _AT_LEAST_ONE and value < 1:
                    raise ValueError(f"{source}: {name} must be 1 or more, got {value!r}")
            setattr(recipe, name, value)
        return recipe

    @classmethod
    def smoke(cls) -> TinyRecipe:
        """Minutes-scale settings for tests and CI: the same code, far fewer steps."""
        return cls(
            encoder_steps=30,
            image_decoder_steps=20,
            audio_decoder_steps=10,
            align_steps=40,
            lm_steps=10,
            tune_steps=5,
            lm_batch=8,
            pool_images=256,
            pool_audio=64,
            decoder_batch=16,
        )


# --- stage 1: encoders ------------------------------------------------------------------------------
class _EncoderProbe(nn.Module):
    """An encoder plus one linear head per attribute: trains C_x to separate the world's attributes."""

    def __init__(self, encoder: nn.Module, attributes: dict[str, tuple[str, ...]], dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(v)) for a, v in attributes.items()})

    def forward(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(values)[:, 0]  # (B, D)
        return {a: head(feats) for a, head in self.heads.items()}


class _Pool:
    """Pre-rendered training media of one modality (train-range seeds), with their attribute indices."""

    def __init__(self, model: CoDi2Model, modality: Modality, size: int, seed: int, split: str) -> None:
        from codi2_agent.data import world

        rng = np.random.default_rng(seed)
        self.attributes = world.IMAGE_ATTRIBUTES if modality is Modality.IMAGE else world.AUDIO_ATTRIBUTES
        kind: world.WorldModality = "image" if modality is Modality.IMAGE else "audio"
        attrs = [world.random_attrs(kind, rng, split) for _ in range(size)]  # type: ignore[arg-type]
        media = [world.render(a, world.render_seed(rng, "train")) for a in attrs]
        self.values = model.processor.media_tensor(modality, media)
        self.labels = {
            a: torch.tensor([vals.index(x[a]) for x in attrs]) for a, vals in self.attributes.items()
        }
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.from_numpy(self.rng.integers(0, len(self.values), n))
        return self.values[idx], {a: y[idx] for a, y in self.labels.items()}


def _train_encoders(
    model: CoDi2Model,
    pools: dict[Modality, _Pool],
    recipe: TinyRecipe,
    workdir: Path,
    progress: bool | None,
) -> None:
    probes = nn.ModuleDict(
        {
            m.value: _EncoderProbe(model.encoder(m), pools[m].attributes, model.encoder(m).feature_dim)
            for m in pools
        }
    )

    def batch_fn(step: int) -> dict[Modality, Any]:
        return {m: pools[m].batch(recipe.encoder_batch) for m in pools}

    def loss_fn(batch: dict[Modality, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        total, logs = torch.zeros(()), {}
        for m, (values, labels) in batch.items():
            logits = probes[m.value](values)
            for a, y in labels.items():
                total = total + nn.functional.cross_entropy(logits[a], y, label_smoothing=0.05)
                logs[f"{m.value}_{a}_acc"] = float((logits[a].argmax(-1) == y).float().mean())
        return total, logs

    cfg = StageConfig("encoders", recipe.encoder_steps, lr=2e-3, weight_decay=1e-4, warmup=50)
    trained = run_stage(
        cfg, probes, probes.parameters(), batch_fn, loss_fn, workdir, seed=recipe.seed, progress=progress
    )
    for m in pools:
        model.encoder(m).load_state_dict(
            cast(_EncoderProbe, cast(nn.ModuleDict, trained)[m.value]).encoder.state_dict()
        )


# --- stages 2-3: decoders as autoencoders of C_x --------------------------------------------------
def _train_decoder(
    model: CoDi2Model,
    modality: Modality,
    pool: _Pool,
    steps: int,
    recipe: TinyRecipe,
    workdir: Path,
    progress: bool | None,
) -> None:
    decoder, encoder = model.decoder(modality), model.encoder(modality).eval()
    generator = torch.Generator().manual_seed(recipe.seed)

    def batch_fn(step: int) -> torch.Tensor:
        return pool.batch(recipe.decoder_batch)[0]

    def loss_fn(values: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            feats = encoder(values)  # (B, K, D)
            if recipe.decoder_feature_noise > 0:
                scale = torch.rand(feats.shape[0], 1, 1, generator=generator) * recipe.decoder_feature_noise
                noise = torch.randn(feats.shape, generator=generator) * scale
                feats = encoder.onto_features(feats + noise.to(feats))
            if recipe.decoder_feature_mix > 0:
                share = torch.rand(feats.shape[0], 1, 1, generator=generator) * recipe.decoder_feature_mix
                share = share.to(feats)
                feats = encoder.onto_features((1 - share) * feats + share * feats.roll(1, dims=0))
        return decoder.loss(values, feats, generator), {}

    cfg = StageConfig(
        f"{modality.value}_decoder",
        steps,
        lr=recipe.decoder_lr,
        warmup=100,
        ema=recipe.decoder_ema,
        ema_debias=True,
    )
    trained = run_stage(
        cfg, decoder, decoder.parameters(), batch_fn, loss_fn, workdir, seed=recipe.seed, progress=progress
    )
    decoder.load_state_dict(trained.state_dict())


# --- the whole recipe ---------------------------------------------------------------------------------
def _build_model(recipe: TinyRecipe, workdir: Path) -> CoDi2Model:
    from transformers import AutoTokenizer

    from codi2_agent.data.phrasing import corpus, tiny_vocabulary

    tok_dir = workdir / "tokenizer"
    if tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        tokenizer = build_tokenizer(corpus(), vocab_size=recipe.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    config = with_lm_layers(
        CoDi2Config.tiny(vocabulary=tiny_vocabulary(), **perception_config(workdir)), recipe.lm_layers
    )
    if not (workdir / PERCEPTION_FILE).exists():  # a fresh workdir: its perception gets today's shapes
        _record_perception(workdir, dict.fromkeys(PERCEPTION_STAGES, config))
    return CoDi2Model.from_config(config, tokenizer, seed=recipe.seed)


def with_lm_layers(config: CoDi2Config, layers: int) -> CoDi2Config:
    """`config` with its Llama `layers` deep (a recipe's `lm_layers`); nothing else changes."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"lm_layers must be an integer of 1 or more, got {layers!r}")
    if config.lm.get("num_hidden_layers") == layers:
        return config
    return config.replace(lm={**config.lm, "num_hidden_layers": layers})


def perception_config(workdir: str | Path) -> dict[str, Any]:
    """The CoDi2Config fields `workdir`'s perception stages have ({} for a workdir that predates them)."""
    path = Path(workdir) / PERCEPTION_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    known = {f for names in _STAGE_FIELDS.values() for f in names}
    if not isinstance(data, dict) or set(data) - known:
        raise ValueError(f"{path} must be a JSON object of perception fields ({sorted(known)})")
    return data


def _record_perception(workdir: Path, configs: dict[str, CoDi2Config]) -> None:
    """Write each perception stage's fields, taken from the config that stage's weights belong to."""
    fields = {f: configs[stage].to_dict()[f] for stage in PERCEPTION_STAGES for f in _STAGE_FIELDS[stage]}
    (workdir / PERCEPTION_FILE).write_text(json.dumps(fields, indent=2) + "\n")


def _load_stage(part: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        part.load_state_dict(state)
    except RuntimeError as e:  # torch lists every mismatched tensor; the first line names the problem
        raise ValueError(
            f"{path} does not fit the model built for its workdir ({str(e).splitlines()[0]}): the stage "
            f"ran with other shapes than {PERCEPTION_FILE} (or the recipe's defaults) give"
        ) from None


def _restore_done(model: CoDi2Model, workdir: Path) -> None:
    """Load every finished stage's weights into `model` (stages are loaded in pipeline order)."""
    enc = workdir / "encoders" / "final.pt"
    if enc.exists():
        state = torch.load(enc, map_location="cpu")
        for m in ("image", "audio"):
            prefix = f"{m}.encoder."
            _load_stage(
                model.encoders[m],
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
                enc,
            )
    for m in ("image", "audio"):
        path = workdir / f"{m}_decoder" / "final.pt"
        if path.exists():
            _load_stage(model.decoders[m], torch.load(path, map_location="cpu"), path)
    for stage in ("align", "lm", "tune"):  # in order: each continues from (and overrides) the one before
        path = workdir / stage / "final.pt"
        if path.exists():
            state = torch.load(path, map_location="cpu")
            for name, part in (
                ("lm", model.lm),
                ("projectors", model.projectors),
                ("heads", model.output_heads),
            ):
                part_state = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
                try:
                    part.load_state_dict(part_state)
                except RuntimeError as e:  # e.g. a 4-layer LM's weights under a recipe of `lm_layers` 2
                    depth = model.config.lm.get("num_hidden_layers")
                    raise ValueError(
                        f"{path} does not fit the model built for its workdir ({str(e).splitlines()[0]}): "
                        f"its {name} has other shapes than the model this recipe builds (lm_layers={depth}); "
                        f"run it with the recipe that made it, or in a fresh workdir"
                    ) from None


def _check_retrain(retrain: Sequence[str]) -> None:
    wrong = sorted(set(retrain) - set(RETRAINABLE))
    if wrong:
        raise ValueError(
            f"cannot retrain {wrong} on an adopted perception (the decoders and the LM read the encoders' "
            f"features); retrainable: {list(RETRAINABLE)}, or train every stage without --perception-from"
        )


def _adopted(workdir: Path, stages: Sequence[str], marker: str) -> bool:
    """Whether every one of `stages` is already done in `workdir`, adopted as `marker` says."""
    done = [workdir / s / "done" for s in stages]
    return all(flag.is_file() and flag.read_text() == marker for flag in done)


def adopt_perception(
    workdir: Path,
    model_dir: str | Path,
    *,
    retrain: Sequence[str] = (),
    load: Callable[[], CoDi2Model] | None = None,
) -> None:
    """Take the encoders, decoders and tokenizer of a finished tiny model as this run's perception.

    Writes them where their stages would have (`<stage>/final.pt` + `done`), so the run trains only
    the reasoning stages (`align`, `lm`) on top — how a paper-scale CoDi-2 reuses pretrained
    ImageBind and diffusion models. `retrain`: decoder stages left out, to be trained anew (with the
    recipe's current shapes) on the adopted encoders. The source's shapes go to `perception.json`.
    A workdir whose perception stages already ran is refused: mixing two perception backbones would
    train the LM against features its decoders never saw.
    """
    from codi2_agent.model import load_model

    _check_retrain(retrain)
    adopted = [s for s in PERCEPTION_STAGES if s not in retrain]
    claim: dict[str, Any] = {"adopted_from": str(model_dir)}
    if retrain:
        claim["retrained"] = sorted(retrain)
    marker = json.dumps(claim)
    if _adopted(workdir, adopted, marker):
        return  # a resumed run: adopted from the same folder, with the same stages left out, before
    started = [s for s in PERCEPTION_STAGES if (workdir / s).exists()]
    if started or (workdir / "tokenizer").exists():
        raise ValueError(
            f"workdir {workdir} already has its own perception stages or tokenizer "
            f"({started or ['tokenizer']}); adopt a model's perception into a fresh workdir"
        )
    source = load() if load is not None else load_model(model_dir)  # checks the integrity manifest first
    source.processor.tokenizer.save_pretrained(workdir / "tokenizer")
    encoders = {
        f"{m}.encoder.{k}": v for m in ("image", "audio") for k, v in source.encoders[m].state_dict().items()
    }
    parts: dict[str, dict[str, torch.Tensor]] = {"encoders": encoders}
    parts |= {f"{m}_decoder": source.decoders[m].state_dict() for m in ("image", "audio")}
    for stage in adopted:
        (workdir / stage).mkdir(parents=True)
        torch.save(parts[stage], workdir / stage / "final.pt")
        (workdir / stage / "done").write_text(marker)
    today = CoDi2Config.tiny()
    _record_perception(workdir, {s: source.config if s in adopted else today for s in PERCEPTION_STAGES})


def adopt_reasoning(
    workdir: Path,
    model_dir: str | Path,
    *,
    load: Callable[[], CoDi2Model] | None = None,
    with_tune: bool = False,
) -> None:
    """Take the projectors, LM and output heads of a finished tiny model as this run's `align` and
    `lm` stages (after `adopt_perception` from the same model), so the run trains `tune` alone.
    `with_tune`: `tune` is adopted too (marked done), so the model's reasoning is kept exactly as it
    is: a run that only retrains a decoder. `load`: returns that model already loaded (both adoptions
    share one load)."""
    from codi2_agent.model import load_model

    marker = json.dumps({"adopted_from": str(model_dir)})
    if not _adopted(workdir, REASONING_STAGES, marker):  # else a resumed run
        started = [s for s in REASONING_STAGES if (workdir / s).exists()]
        if started:
            raise ValueError(
                f"workdir {workdir} already has its own {started}; continue a model in a fresh workdir"
            )
        source = load() if load is not None else load_model(model_dir)
        parts = {"lm": source.lm, "projectors": source.projectors, "heads": source.output_heads}
        state = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
        (workdir / "align").mkdir(parents=True)
        (workdir / "align" / "done").write_text(marker)  # `lm` holds the adopted weights (align's in them)
        (workdir / "lm").mkdir(parents=True)
        torch.save(state, workdir / "lm" / "final.pt")
        (workdir / "lm" / "done").write_text(marker)
    if with_tune and not (workdir / "tune").exists():
        # A `tune` already started here is left alone: it goes on when a run names it again.
        (workdir / "tune").mkdir()
        (workdir / "tune" / "done").write_text(marker)  # no final.pt: the model is `lm`'s weights


def train(
    out: str | Path,
    *,
    preset: str = "tiny",
    workdir: str | Path | None = None,
    recipe: TinyRecipe | None = None,
    stages: Sequence[str] = STAGES,
    progress: bool | None = None,
    perception_from: str | Path | None = None,
    retrain: Sequence[str] = (),
    continue_from: str | Path | None = None,
) -> Path | None:
    """Run (or resume) the recipe's `stages`; when every stage is done, save the model to `out`.

    Returns `out` when the model was written, None when stages remain (run them, then call again).
    `progress`: tqdm bars per stage; None (default) draws them only when stderr is a terminal.
    `perception_from`: a finished tiny model folder whose encoders and decoders this run adopts
    (`adopt_perception`); the run then trains `align` and `lm` only, plus the decoder stages named in
    `retrain` (trained anew on the adopted encoders, with the recipe's current shapes).
    `continue_from`: a finished tiny model folder whose every stage this run adopts (perception and
    reasoning), so only `tune` trains, on top of that model; with `retrain`, the decoders named there
    are trained anew instead of adopted, and when `stages` leaves `tune` out it is adopted too, so the
    model written is the source with new decoders and nothing else changed.
    """
    if preset != "tiny":
        raise ValueError(
            f"the {preset!r} preset is trained from pretrained components on GPUs: build it with "
            "CoDi2Model.from_pretrained(folder) and drive `run_stage` with an accelerate config; "
            "`train` reproduces the tiny preset"
        )
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; expected some of {list(STAGES)}")
    if continue_from is not None and perception_from is not None:
        raise ValueError(
            "continue_from adopts the whole model, perception included: give it without perception_from"
        )
    if retrain and perception_from is None and continue_from is None:
        raise ValueError(
            "retrain names decoder stages to train anew on an adopted perception "
            "(--perception-from or --continue-from)"
        )
    _check_retrain(retrain)
    recipe = recipe or TinyRecipe()
    out = Path(out)
    workdir = Path(workdir) if workdir is not None else out.parent / f".{out.name}-work"
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    if perception_from is not None:
        adopt_perception(workdir, perception_from, retrain=retrain)
        stages = [s for s in stages if s not in PERCEPTION_STAGES or s in retrain]
    if continue_from is not None:
        from codi2_agent.model import load_model

        source = functools.cache(lambda: load_model(continue_from))  # loaded once, and only if needed
        adopt_perception(workdir, continue_from, retrain=retrain, load=source)
        adopt_reasoning(workdir, continue_from, load=source, with_tune="tune" not in stages)
        stages = [s for s in stages if s not in PERCEPTION_STAGES + REASONING_STAGES or s in retrain]
    model = _build_model(recipe, workdir)
    _restore_done(model, workdir)  # finished stages that do not fit this recipe stop the run here
    (workdir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    pools: dict[Modality, _Pool] = {}

    def pool(m: Modality) -> _Pool:
        if m not in pools:
            size = recipe.pool_images if m is Modality.IMAGE else recipe.pool_audio
            seed = recipe.seed + (1 if m is Modality.IMAGE else 2)
            pools[m] = _Pool(model, m, size, seed, recipe.perception_split)
        return pools[m]

    if "encoders" in stages:
        _train_encoders(
            model, {m: pool(m) for m in (Modality.IMAGE, Modality.AUDIO)}, recipe, workdir, progress
        )
    if not (workdir / "encoders" / "done").exists():
        raise RuntimeError(f"stage 'encoders' must finish first (workdir {workdir})")
    if "image_decoder" in stages:
        _train_decoder(
            model, Modality.IMAGE, pool(Modality.IMAGE), recipe.image_decoder_steps, recipe, workdir, progress
        )
    if "audio_decoder" in stages:
        _train_decoder(
            model, Modality.AUDIO, pool(Modality.AUDIO), recipe.audio_decoder_steps, recipe, workdir, progress
        )
    if "align" in stages:
        train_reasoning_stage(model, recipe, workdir, progress, stage="align")
    if "lm" in stages:
        if not (workdir / "align" / "done").exists():
            raise RuntimeError(f"stage 'align' must finish before 'lm' (workdir {workdir})")
        _restore_done(model, workdir)
        train_reasoning_stage(model, recipe, workdir, progress, stage="lm")
    if "tune" in stages:
        if not (workdir / "lm" / "done").exists():
            raise RuntimeError(f"stage 'lm' must finish before 'tune' (workdir {workdir})")
        _restore_done(model, workdir)
        if recipe.tune_steps > 0:
            train_reasoning_stage(model, recipe, workdir, progress, stage="tune")
        else:  # a recipe without the stage: done, with nothing to load
            (workdir / "tune").mkdir(exist_ok=True)
            (workdir / "tune" / "done").write_text("0 steps")
    if all((workdir / s / "done").exists() for s in STAGES):
        _restore_done(model, workdir)
        return model.save_pretrained(out)
    return None
