"""Encoders the memory embeds with: the `Embedder` protocol, a deterministic fallback, and a registry.

The memory never computes meaning itself. Media and text are mapped into *one* vector space by an
`Embedder` — in production the CoDi-2 model's own encoders, so that what the memory finds similar is
what the model finds similar. `HashingEmbedder` is a dependency-free stand-in for tests and for use
before a model is loaded: seeded random projections of pixels / log-power spectra plus hashed words.

Embedders are registered by `name` so that Chroma, which stores only a collection's embedding
function *config*, can find the live encoder again in this process (see `_chroma_ef.py`).

Example:
    >>> import numpy as np
    >>> from codi2_agent.media import Media
    >>> emb = HashingEmbedder(dim=32)
    >>> star = Media.from_image(np.zeros((8, 8, 3), np.uint8), caption="a blue star at night")
    >>> v_img, v_txt = emb.embed_media([star]), emb.embed_text(["blue star"])
    >>> v_img.shape, v_img.dtype, bool((v_img @ v_txt.T)[0, 0] > 0.3)
    ((1, 32), dtype('float32'), True)
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from codi2_agent.media import Media, Modality

from ._errors import EncoderUnavailableError

__all__ = ["Embedder", "HashingEmbedder", "get_embedder", "register_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Maps media and text into one vector space (the model's encoder space).

    Attributes:
        name: identity of the encoder and its weights, e.g. ``"codi2-tiny@3f2a…"``. Collections record
            it; vectors from encoders with different names are never mixed.
        dim: length of every vector.
    """

    name: str
    dim: int

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        """(N, dim) float32 vectors for images / audio (text media may be accepted too)."""
        ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 vectors for text, in the same space as `embed_media`."""
        ...


# --- registry: encoder name -> live embedder ------------------------------------------------------
_REGISTRY: dict[str, Embedder] = {}
_REGISTRY_LOCK = threading.Lock()
_HASHING_NAME = re.compile(r"^hashing-v1:d(?P<dim>\d+):s(?P<seed>\d+)$")


def register_embedder(embedder: Embedder) -> Embedder:
    """Make `embedder` findable by its `name` (what Chroma's `build_from_config` looks up)."""
    if not isinstance(embedder, Embedder):
        raise TypeError(f"{type(embedder).__name__} does not implement the Embedder protocol")
    if not isinstance(embedder.dim, int) or embedder.dim <= 0:
        raise ValueError(f"embedder {embedder.name!r} has an invalid dim {embedder.dim!r}")
    with _REGISTRY_LOCK:
        _REGISTRY[embedder.name] = embedder
    return embedder


def get_embedder(name: str) -> Embedder:
    """The registered embedder called `name`; `HashingEmbedder` names are rebuilt on demand."""
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(name)
    if found is not None:
        return found
    m = _HASHING_NAME.match(name)
    if m:  # deterministic, so it can always be rebuilt from its name alone
        return register_embedder(HashingEmbedder(dim=int(m["dim"]), seed=int(m["seed"])))
    raise EncoderUnavailableError(
        f"no embedder named {name!r} is registered in this process; create the model's embedder "
        "(or pass it to ExemplarMemory, which registers it) before using a collection built with it"
    )


# --- the deterministic fallback -------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Deterministic, download-free embedder: seeded random projections and hashed word features.

    - images: downsampled to ``image_size``² RGB, centred, projected by a seeded Gaussian matrix;
    - audio: mean log-power spectrum pooled into ``n_bands`` log-spaced bands (so the sample rate does
      not change the features), projected by another seeded matrix;
    - text: each word and word bigram maps to a seeded pseudo-random unit vector ("random indexing");
      the sum is normalised.

    A medium's caption, when it has one, is mixed into its vector, so free-text queries find captioned
    media — the paper's text-only trick of captions standing in for media. Without captions, only
    near-duplicate content is similar. All vectors are L2-normalised float32.

    Setup:
        Nothing to install; numpy and PIL only.

    Instantiate:
        .. code-block:: python

            from codi2_agent.memory import HashingEmbedder
            embedder = HashingEmbedder(dim=64, seed=0)
            embedder.name  # 'hashing-v1:d64:s0'

    Use:
        .. code-block:: python

            vecs = embedder.embed_text(["a red circle on snow"])  # (1, 64) float32
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        seed: int = 0,
        image_size: int = 16,
        n_bands: int = 48,
        caption_weight: float = 1.0,
    ) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.dim = dim
        self.seed = seed
        self.image_size = image_size
        self.n_bands = n_bands
        self.caption_weight = caption_weight
        # The name encodes everything `get_embedder` needs to rebuild it; non-default feature settings
        # give different vectors, so they get a distinct (non-rebuildable) name.
        defaults = (image_size, n_bands, caption_weight) == (16, 48, 1.0)
        self.name = f"hashing-v1:d{dim}:s{seed}" + (
            "" if defaults else f":i{image_size}b{n_bands}c{caption_weight}"
        )
        rng = np.random.default_rng([seed, dim, 0xC0D12])
        self._w_image = (rng.standard_normal((3 * image_size * image_size, dim)) / np.sqrt(dim)).astype(
            np.float32
        )
        self._w_audio = (rng.standard_normal((n_bands, dim)) / np.sqrt(dim)).astype(np.float32)

    def __repr__(self) -> str:
        return f"HashingEmbedder(name={self.name!r})"

    # --- Embedder protocol ----------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_text takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._text_vector(str(text))
        return out

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        out = np.zeros((len(media), self.dim), dtype=np.float32)
        for i, m in enumerate(media):
            if not isinstance(m, Media):
                raise TypeError(f"embed_media takes Media objects, item {i} is {type(m).__name__}")
            if m.modality is Modality.TEXT:
                out[i] = self._text_vector(m.text)
                continue
            content = self._image_vector(m) if m.modality is Modality.IMAGE else self._audio_vector(m)
            if m.caption:
                content = content + self.caption_weight * self._text_vector(m.caption)
            out[i] = _unit(content)
        return out

    # --- features -------------------------------------------------------------------------------
    def _text_vector(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        if not grams:
            return np.zeros(self.dim, dtype=np.float32)
        vec = np.zeros(self.dim, dtype=np.float32)
        for g in grams:
            vec += _token_vector(g, self.dim, self.seed)
        return _unit(vec)

    def _image_vector(self, media: Media) -> np.ndarray:
        small = media.resized(self.image_size).image_array()  # (S, S, 3) in [0, 1]
        return _unit((small.reshape(-1) - 0.5) @ self._w_image)

    def _audio_vector(self, media: Media) -> np.ndarray:
        wav, sr = media.audio, float(media.sample_rate or 16000)
        n_fft = 1024
        if wav.size < n_fft:
            wav = np.pad(wav, (0, n_fft - wav.size))
        hop = n_fft // 2
        n_frames = 1 + (wav.size - n_fft) // hop
        frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop][:n_frames]
        power = (np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2).mean(axis=0)  # (n_fft/2+1,)
        freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
        # Bands on a fixed Hz grid (30 Hz .. 8 kHz), so 16 kHz and 44.1 kHz copies of a sound agree.
        edges = np.geomspace(30.0, 8000.0, self.n_bands + 1)
        idx = np.clip(np.searchsorted(edges, freqs) - 1, -1, self.n_bands)
        bands = np.zeros(self.n_bands, dtype=np.float64)
        valid = (idx >= 0) & (idx < self.n_bands)
        np.add.at(bands, idx[valid], power[valid])
        feats = np.log1p(bands / (bands.sum() + 1e-12) * self.n_bands)
        feats = feats - feats.mean()
        return _unit(feats.astype(np.float32) @ self._w_audio)


@lru_cache(maxsize=65536)
def _token_vector(token: str, dim: int, seed: int) -> np.ndarray:
    # blake2b, not hash(): Python's str hash is salted per process, and vectors must match across processes.
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    vec = rng.standard_normal(dim).astype(np.float32)
    vec /= np.linalg.norm(vec)
    vec.setflags(write=False)  # cached and shared: nobody may change it in place
    return vec


def _unit(vec: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return (vec / norm).astype(np.float32) if norm > 0 else vec.astype(np.float32)
