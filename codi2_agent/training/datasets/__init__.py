"""Datasets for paper-scale training: readers of the formats people have, streamed as `Sample`s.

- `open_dataset(path, format="auto") -> Iterator[Sample]`: every sample of a dataset folder
  (webdataset shards, image–caption JSONL, audio–caption CSV/JSONL, edit triplets, subject sets),
  read one record at a time, with the tiny recipe's task names (``caption_image``,
  ``text_to_image``, ``caption_audio``, ``text_to_audio``, ``edit_image``, ``edit_audio``,
  ``subject_image``);
- `InContextBuilder`: k exemplars of the same task in front of each sample, and the paper's
  text-only trick; `mix`: several streams interleaved with weights;
- `check_dataset`: counts and problems of a folder (``codi2-agent data check DIR``);
- ``defer_decoding=True``: media come as `DeferredMedia`, decoded on first use (`load_media`
  decodes a sample's), so reading past a sample costs no decoding (resumed training);
- untrusted input: `UnsafePathError`, `BadRecordError`, `CorruptShardError`, the media errors of
  `codi2_agent.media`; lenient by default (counted in a `ProblemLog` and skipped), or strict.

Example:
    >>> from codi2_agent.training.datasets import InContextBuilder, mix, open_dataset
    >>> # pairs = open_dataset("data/laion-shards", sample_rate=16000)
    >>> # edits = open_dataset("data/ip2p", tasks={"edit_image"})
    >>> # stream = InContextBuilder(shots=(1, 2), text_only_p=0.3)(mix({"p": pairs, "e": edits}, [3, 1]))
"""

from codi2_agent.training.datasets._deferred import DeferredMedia, load_media
from codi2_agent.training.datasets._errors import (
    BadRecordError,
    CorruptShardError,
    DatasetError,
    DatasetFormatError,
    DatasetProblem,
    ProblemLog,
    UnsafePathError,
)
from codi2_agent.training.datasets._samples import EDIT_TASKS, PAIR_TASKS, SUBJECT_TASK
from codi2_agent.training.datasets._source import ReadOptions
from codi2_agent.training.datasets.check import CheckReport, check_dataset
from codi2_agent.training.datasets.formats import FORMATS, Source, detect_manifest, find_sources, open_dataset
from codi2_agent.training.datasets.in_context import InContextBuilder
from codi2_agent.training.datasets.mixing import mix

__all__ = [
    "EDIT_TASKS",
    "FORMATS",
    "PAIR_TASKS",
    "SUBJECT_TASK",
    "BadRecordError",
    "CheckReport",
    "CorruptShardError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetProblem",
    "DeferredMedia",
    "InContextBuilder",
    "ProblemLog",
    "ReadOptions",
    "Source",
    "UnsafePathError",
    "check_dataset",
    "detect_manifest",
    "find_sources",
    "load_media",
    "mix",
    "open_dataset",
]
