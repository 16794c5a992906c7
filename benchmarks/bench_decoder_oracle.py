"""How good are the decoders alone, and how much do the sampler's settings move them?

    python benchmarks/bench_decoder_oracle.py --model tiny --modality image --draws 1234,777 --per-draw 200 \
        --settings 20:3.5,40:3.5,20:5.0 --threads 2 --out benchmarks/results/decoder_oracle.txt

`eval`'s `decoder_oracle_*` rows in a larger sample and under other settings: the decoder renders the true
encoder feature C_x of a held-out render, and the attribute probes judge the result. A draw is made as
`codi2-agent eval --seed S --per-task N` makes its own (attributes first, then renders, from one stream),
so `--per-draw 80` at the model's own setting repeats that eval's row; other sizes draw other renders
from the same distribution. A setting is `steps:guidance`. Rows are decoded in batches (`decode_batch`:
each row as `decode` gives it alone). `--round-trip` (audio) adds the ceiling no decoder can pass: each true
render taken to the decoder's log-mel and back through its inversion, no diffusion in between.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import torch

from codi2_agent.data.probes import load_probes
from codi2_agent.evaluation import decoder_oracle_draw
from codi2_agent.media import Media
from codi2_agent.model import load_model

BATCH = 16


def parse_settings(text: str) -> list[tuple[int, float]]:
    """'20:3.5,40:3.5' -> [(20, 3.5), (40, 3.5)]; a malformed item is an error naming it."""
    settings = []
    for item in text.split(","):
        steps, sep, guidance = item.partition(":")
        try:
            settings.append((int(steps), float(guidance)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a setting is STEPS:GUIDANCE, got {item!r}") from None
        if not sep or settings[-1][0] < 1 or settings[-1][1] < 1.0:
            raise argparse.ArgumentTypeError(f"a setting is STEPS>=1:GUIDANCE>=1.0, got {item!r}")
    return settings


def judge(
    predicted: list[dict[str, str]], attrs: list[dict[str, str]], misses: Counter[str]
) -> tuple[list[bool], dict[str, float]]:
    """Per sample: every attribute right? Then the accuracy per attribute; misses are added to `misses`."""
    verdicts = [{k: p[k] == a[k] for k in a} for p, a in zip(predicted, attrs, strict=True)]
    misses.update(
        f"{k} {a[k]}->{p[k]}" + (f" ({a['size']})" if "size" in a else "")
        for p, a in zip(predicted, attrs, strict=True)
        for k in a
        if p[k] != a[k]
    )
    per_attr = {a: float(np.mean([v[a] for v in verdicts])) for a in verdicts[0]}
    return [all(v.values()) for v in verdicts], per_attr


def draw_line(head: str, hits: list[bool], per_attr: dict[str, float]) -> str:
    """One draw's line: `head`, the share of samples right in every attribute, then each attribute's."""
    return f"{head} {np.mean(hits):>6.3f}  " + " ".join(f"{a}={x:.3f}" for a, x in per_attr.items())


def summary(head: str, hits: list[bool], misses: Counter[str]) -> list[str]:
    """A setting's pooled line and its misses, most frequent first."""
    listed = ", ".join(f"{m} x{c}" for m, c in misses.most_common()) or "none"
    return [f"{head} {'all':>6} {np.mean(hits):>6.3f}  (n={len(hits)})", f"{'':>19}misses: {listed}"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--modality", choices=("image", "audio"), default="image")
    parser.add_argument("--draws", default="1234,777", help="eval seeds, comma-separated")
    parser.add_argument("--per-draw", type=int, default=200)
    parser.add_argument("--settings", type=parse_settings, default=None, help="STEPS:GUIDANCE,...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round-trip", action="store_true", help="audio: add the mel -> waveform ceiling")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.round_trip and args.modality != "audio":
        parser.error("--round-trip is for --modality audio (a decoded picture needs no inversion)")
    torch.set_num_threads(args.threads)

    # 1. The model, its own sampler settings first, and the probes that judge the renders.
    model = load_model(args.model)
    decoder = model.decoder(args.modality)
    own = (decoder.cfg.num_inference_steps, decoder.cfg.guidance_scale)  # the tiny decoder's config
    settings = [own] + [s for s in (args.settings or []) if s != own]
    mel = getattr(decoder, "mel", None)
    if args.round_trip and mel is None:
        raise SystemExit(f"--round-trip: the {decoder.cfg.kind} audio decoder has no log-mel inversion")
    probes = load_probes()
    draws = [int(s) for s in args.draws.split(",")]

    # 2. Each draw's true features, encoded once.
    cases = []
    for seed in draws:
        attrs, media = decoder_oracle_draw(args.modality, seed, args.per_draw)
        values = model.processor.media_tensor(media[0].modality, media)
        cases.append((seed, attrs, values, model.encode_media(args.modality, values)))

    # 3. Decode every draw under every setting; the probes judge each attribute.
    lines = [
        f"# bench_decoder_oracle.py, {date.today()}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); model {args.model!r}, {args.modality}; {args.per_draw} per draw; "
        f"the model's own setting first ({own[0]} steps, guidance {own[1]})",
        f"{'steps':>5} {'guid':>5} {'draw':>6} {'all':>6}  per attribute{'':<36} s/sample",
    ]
    for steps, guidance in settings:
        hits_all: list[bool] = []
        misses: Counter[str] = Counter()
        for seed, attrs, _, feats in cases:
            t0 = time.perf_counter()
            decoded = []
            for lo in range(0, len(attrs), BATCH):
                rows = range(lo, min(lo + BATCH, len(attrs)))
                decoded += decoder.decode_batch(
                    feats[rows.start : rows.stop],
                    generators=[torch.Generator().manual_seed(seed + i) for i in rows],
                    prompts=[None] * len(rows),
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                )
            seconds = (time.perf_counter() - t0) / len(attrs)
            hits, per_attr = judge(probes.predict(decoded), attrs, misses)
            hits_all += hits
            line = draw_line(f"{steps:>5} {guidance:>5.1f} {seed:>6}", hits, per_attr)
            lines.append(f"{line:<76} {seconds:.2f}")
        lines += summary(f"{steps:>5} {guidance:>5.1f}", hits_all, misses)
        print("\n".join(lines[-len(cases) - 2 :]), flush=True)

    # 4. The ceiling: true renders through the decoder's log-mel and its inversion, no diffusion.
    if args.round_trip:
        assert mel is not None  # refused in step 1
        lines.append("# mel round trip: true render -> the decoder's log-mel -> its inversion -> the probes")
        hits_all, misses = [], Counter()
        for seed, attrs, values, _ in cases:
            with torch.no_grad():
                wavs = mel.invert(mel(values))
            restored = [Media.from_audio(w.numpy(), mel.sample_rate) for w in wavs]
            hits, per_attr = judge(probes.predict(restored), attrs, misses)
            hits_all += hits
            lines.append(draw_line(f"{'round':>5} {'trip':>5} {seed:>6}", hits, per_attr))
        lines += summary(f"{'round':>5} {'trip':>5}", hits_all, misses)
        print("\n".join(lines[-len(cases) - 3 :]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
