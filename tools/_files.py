"""Opening a file under a media root in one pass, so a symlink swapped in after the check is never followed.

Resolving a path, checking it lies under a root and then reading it *by path* is a check-then-use
race: whoever can write inside the root can re-point a link (or swap a folder for a link) between
the check and the read, and the read follows it out of the root. Here the checked path is instead
walked down from the root's own descriptor, one name at a time (``dir_fd=``), each opened with
``O_NOFOLLOW``: a link that appears after the check makes the open fail rather than be followed.
The file is opened with ``O_NONBLOCK`` (a named pipe must not block the reader), refused unless it
is a regular file, and its bytes are then read from that same descriptor. Where the kernel can name
an open descriptor's path (``/proc/self/fd`` on Linux), that path is checked under the root too,
which also catches a folder renamed out of the root in the middle of the walk.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePath

from codi2_agent._media_files import file_kind
from codi2_agent.media import MediaPathError

__all__ = ["descriptor_path", "open_beneath"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | _CLOEXEC
_PROC_FD = Path("/proc/self/fd")


def _symlink_appeared(name: str) -> OSError:
    return OSError(errno.ELOOP, "a symbolic link is in the way", name)


def open_beneath(root: Path, relative: PurePath) -> int:
    """A read-only descriptor of the regular file `root / relative`, reached without following a link.

    `root` must be a resolved folder and `relative` a resolved path inside it (no ``..``, no links).

    Raises:
        MediaPathError: the file is a folder, pipe, device or socket (refused before it is opened).
        OSError: a name is missing, is a link (``ELOOP``: a loop, or a link swapped in), is not a
            folder, or cannot be opened; or the opened file is not under `root` after all.
    """
    parts = relative.parts
    if not parts:
        raise MediaPathError(f"{str(root)!r} is a folder, not a media file")
    if os.open not in os.supports_dir_fd:  # no openat (Windows): the resolved path is all we have
        return os.open(root.joinpath(*parts), _FILE_FLAGS | getattr(os, "O_BINARY", 0))
    folder = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            try:
                inner = os.open(name, _DIR_FLAGS, dir_fd=folder)
            except OSError as e:
                # O_NOFOLLOW | O_DIRECTORY on a link fails with ENOTDIR on Linux: say what it was.
                if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EMLINK) and _is_link(name, folder):
                    raise _symlink_appeared(name) from None
                raise
            os.close(folder)
            folder = inner
        name = parts[-1]
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise _symlink_appeared(name)
        if not stat.S_ISREG(mode):  # refuse a device before opening it: some opens have side effects
            raise MediaPathError(f"{str(root.joinpath(*parts))!r} is {file_kind(mode)}, not a media file")
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
    finally:
        os.close(folder)
    opened = descriptor_path(fd)
    if opened is not None and not opened.is_relative_to(root):
        os.close(fd)
        raise OSError(errno.EXDEV, f"the file opened is {opened}, outside {root}")
    return fd


def descriptor_path(fd: int) -> Path | None:
    """The path the kernel holds for an open descriptor, where it says (Linux), else None."""
    try:
        return Path(os.readlink(_PROC_FD / str(fd)))
    except OSError:
        return None


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False
