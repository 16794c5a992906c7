"""Reading a media file race-free: one descriptor, checked and read (`codi2_agent.media` and the
tools' file access use it).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from codi2_agent._media_errors import MediaNotFoundError, MediaPathError, MediaTooLargeError

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "check_path_text",
    "file_kind",
    "path_error",
    "read_media_file",
    "read_open_file",
    "shorten",
]


# --- reading files --------------------------------------------------------------------------------
NAME_MAX = 255  # bytes in one file name (Linux, macOS and most file systems)
PATH_MAX = 4096  # bytes in a whole path (Linux)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a named pipe swapped in after the check must not block the reader
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def shorten(text: str, keep: int = 120) -> str:
    """`text` cut in the middle to at most about `keep` characters (over-long paths in messages)."""
    return text if len(text) <= keep else f"{text[: keep // 2]}…{text[-keep // 2 :]}"


def file_kind(mode: int) -> str:
    """What a `stat` mode names, in words: "a regular file", "a folder", "a named pipe (FIFO)", …"""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def check_path_text(path: str) -> bytes:
    """The file-system bytes of `path`, if any file could have that name; `MediaPathError` otherwise.

    Said before touching the disk, so the error names the problem instead of an errno.
    """
    where = repr(shorten(path))
    if "\x00" in path:
        raise MediaPathError(f"{where} contains a NUL byte, which no file name can hold")
    try:
        encoded = os.fsencode(path)
    except UnicodeError:
        raise MediaPathError(f"{where} cannot be encoded as a file name on this system") from None
    if len(encoded) > PATH_MAX:
        raise MediaPathError(f"the path {where} is {len(encoded)} bytes; the limit is {PATH_MAX} bytes")
    longest = max(encoded.split(os.fsencode(os.sep)), key=len)
    if len(longest) > NAME_MAX:
        raise MediaPathError(
            f"a file name in {where} is {len(longest)} bytes; the limit is {NAME_MAX} bytes per name"
        )
    return encoded


def path_error(where: str, error: OSError) -> MediaPathError:
    """An `OSError` from opening or reading `where`, as a `MediaPathError` that says what happened."""
    if error.errno == errno.ENOENT:
        return MediaNotFoundError(f"no media file at {where}")
    problem = {
        errno.ELOOP: "is a symlink loop (or a link that changed while it was opened)",
        errno.EACCES: "cannot be read: permission denied",
        errno.EPERM: "cannot be read: permission denied",
        errno.ENOTDIR: "has a part that is not a folder",
        errno.ENAMETOOLONG: f"is too long (names up to {NAME_MAX} bytes, paths up to {PATH_MAX})",
        errno.EISDIR: "is a folder, not a media file",
    }.get(error.errno or 0, f"cannot be read ({error.strerror or error})")
    return MediaPathError(f"{where} {problem}")


def read_open_file(fd: int, max_bytes: int, where: str) -> bytes:
    """The bytes of the regular file open at `fd`, at most `max_bytes`, read from that descriptor.

    Raises:
        MediaPathError: the descriptor is a folder, pipe, device or socket.
        MediaTooLargeError: the file holds (or grows to) more than `max_bytes`.
        OSError: the read itself failed.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise MediaPathError(f"{where} is {file_kind(info.st_mode)}, not a media file")
    if info.st_size > max_bytes:
        raise MediaTooLargeError(f"{where} is {info.st_size} bytes; the limit is {max_bytes}")
    chunks, total = [], 0
    while total <= max_bytes:  # the size can change after fstat: never read more than the cap + 1
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise MediaTooLargeError(f"{where} grew past {max_bytes} bytes while it was read")
    return b"".join(chunks)


def read_media_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of the media file at `path`: opened once, checked and read from that descriptor.

    Raises:
        MediaPathError: a bad path (NUL byte, too long), a folder, pipe or device, permission denied.
        MediaNotFoundError: nothing at `path`.
        MediaTooLargeError: more than `max_bytes`.
    """
    where = shorten(str(path))
    encoded = check_path_text(str(path))
    try:
        # Refuse a device before opening it (opening some has side effects); fstat re-checks after.
        kind = os.stat(encoded).st_mode
        if not stat.S_ISREG(kind):
            raise MediaPathError(f"{where} is {file_kind(kind)}, not a media file")
        fd = os.open(encoded, _OPEN_FLAGS)
    except OSError as e:
        raise path_error(where, e) from None
    try:
        return read_open_file(fd, max_bytes, where)
    except OSError as e:
        raise path_error(where, e) from None
    finally:
        os.close(fd)
