"""The named errors of dataset reading, and the log that counts problems instead of raising them.

Every reader meets the same untrusted input: paths that leave the dataset folder, lines that are
not JSON, records without a caption, media that do not decode. Each case is an exception class
(so strict mode raises something a caller can catch by name) and, in the default lenient mode, a
`DatasetProblem` in a `ProblemLog`: counted by kind, kept with its file and line, logged, skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from codi2_agent._media_errors import MediaError

__all__ = [
    "BadRecordError",
    "CorruptShardError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetProblem",
    "ProblemLog",
    "UnsafePathError",
    "located",
]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Base class for a dataset that cannot be read as asked."""


class DatasetFormatError(DatasetError):
    """The folder (or file) is no dataset format we read, or not the one asked for."""


class UnsafePathError(DatasetError):
    """A record names a file outside the dataset folder: absolute, ``..``, or a link pointing out."""


class BadRecordError(DatasetError):
    """A record that cannot be used: not JSON, not an object, a missing or empty field, too long."""


class CorruptShardError(DatasetError):
    """A tar shard that cannot be read to its end (truncated or not a tar)."""


@dataclass(frozen=True)
class DatasetProblem:
    """One skipped record: where it is, what kind of problem (an error class name), and the reason."""

    file: str
    line: int | None  # 1-based line of a JSONL/CSV record; None for tar members and folders
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class ProblemLog:
    """Problems met while reading: raised at once when `strict`, else counted, kept and skipped.

    Only the first `keep` problems are kept in full (a broken million-line file must not fill
    memory); `counts` and `total` count them all. Each skipped problem is logged at `log_level`
    (a warning by default; `check_dataset`, which reports them itself, logs them at debug level).
    """

    strict: bool = False
    keep: int = 1000
    log_level: int = logging.WARNING
    problems: list[DatasetProblem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, error: Exception, file: str, line: int | None = None) -> None:
        """Record `error` met at `file`(:`line`); in strict mode raise it again, located.

        The raised error keeps its class (an `UnsafePathError` stays one, a media error stays its
        `MediaError` subclass), with the location in front of its message.
        """
        problem = DatasetProblem(file, line, type(error).__name__, str(error))
        if self.strict:
            raise located(error, file, line) from error
        self.counts[problem.kind] += 1
        if len(self.problems) < self.keep:
            self.problems.append(problem)
        logger.log(self.log_level, "skipped %s", problem)


def located(error: Exception, file: str, line: int | None = None) -> Exception:
    """`error`'s class with its location (`file`:`line`) in front of the message."""
    where = f"{file}:{line}" if line is not None else file
    if isinstance(error, (DatasetError, MediaError)):
        try:
            return type(error)(f"{where}: {error}")
        except TypeError:  # a subclass with another constructor: keep the family at least
            pass
    return DatasetError(f"{where}: {type(error).__name__}: {error}")
