"""A racing symlink writer cannot make the tools read a file outside the media roots.

The attacker controls a media root's contents and, as fast as it can, re-points a name there
between a legitimate file under the root and a secret picture outside every root, while the tool
side keeps reading that name. Checking a path and then reading it by path again leaks the secret
whenever the flip lands between the two; checking the opened descriptor cannot. Two flips:

- ``link``: a symlink to the file itself, atomically replaced by one to the secret;
- ``folder``: a real folder atomically exchanged (``renameat2(RENAME_EXCHANGE)``) with a symlink
  to the secrets folder, so even the *resolved* path names the secret after the swap.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media
from codi2_agent.tools import MediaAccess, MediaAccessError

logger = logging.getLogger(__name__)

MAX_TRIES = 10_000
MAX_SECONDS = 15.0
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _picture(colour: tuple[int, int, int]) -> Media:
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :] = colour
    arr[4:12, 4:12] = (255 - colour[0], 255 - colour[1], 255 - colour[2])
    return Media.from_image(arr)


LEGIT, SECRET = _picture((20, 180, 40)), _picture((230, 10, 10))


@dataclass
class Counts:
    tries: int = 0
    reads: int = 0
    refusals: int = 0
    leaks: int = 0
    crashes: int = 0  # anything but a MediaAccessError: it would end an agent's run


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a))


def _link_flipper(root: Path, secrets: Path) -> tuple[Path, Callable[[int], None]]:
    legit_file = LEGIT.save(root / "legit.png")
    secret_file = SECRET.save(secrets / "secret.png")
    link, spare = root / "photo.png", root / "photo.png.next"
    link.symlink_to(legit_file)

    def flip(i: int) -> None:
        spare.unlink(missing_ok=True)
        spare.symlink_to(secret_file if i % 2 == 0 else legit_file)
        os.replace(spare, link)

    return link, flip


def _folder_flipper(root: Path, secrets: Path) -> tuple[Path, Callable[[int], None]]:
    (root / "album").mkdir()
    LEGIT.save(root / "album" / "photo.png")
    SECRET.save(secrets / "photo.png")
    (root / "album.swap").symlink_to(secrets, target_is_directory=True)
    return root / "album" / "photo.png", lambda i: _exchange(root / "album", root / "album.swap")


def _race(tmp_path: Path, make_flipper: Callable[[Path, Path], tuple[Path, Callable[[int], None]]]) -> Counts:
    root, secrets = tmp_path / "inputs", tmp_path / "secrets"
    root.mkdir()
    secrets.mkdir()
    target, flip = make_flipper(root, secrets)
    access = MediaAccess(roots=[root])
    store = ArtifactStore(tmp_path / "artifacts")
    stop = threading.Event()

    def attacker() -> None:
        i = 0
        while not stop.is_set():
            flip(i)
            i += 1

    writer = threading.Thread(target=attacker, daemon=True)
    writer.start()
    counts = Counts()
    deadline = time.monotonic() + MAX_SECONDS
    try:
        while counts.tries < MAX_TRIES and time.monotonic() < deadline:
            counts.tries += 1
            try:
                ref = access.load(str(target), store)
            except MediaAccessError:
                counts.refusals += 1
                continue
            except Exception as e:
                counts.crashes += 1
                logger.warning("crash: %r", e)
                continue
            assert ref is not None
            got = store.get(ref)
            if got == SECRET:
                counts.leaks += 1
            else:
                assert got == LEGIT
                counts.reads += 1
    finally:
        stop.set()
        writer.join()
    return counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2(RENAME_EXCHANGE) is Linux-only")
@pytest.mark.parametrize("flipper", [_link_flipper, _folder_flipper], ids=["link", "folder"])
def test_a_racing_symlink_never_leaks_a_file_outside_the_roots(
    tmp_path: Path, flipper: Callable[[Path, Path], tuple[Path, Callable[[int], None]]]
) -> None:
    c = _race(tmp_path, flipper)
    logger.warning("symlink race: %s", c)
    assert c.crashes == 0, f"{c.crashes} of {c.tries} reads raised something other than MediaAccessError"
    assert c.leaks == 0, f"{c.leaks} of {c.tries} reads returned the file outside the roots"
    assert c.reads > 0, (
        f"no legitimate read in {c.tries} tries ({c.refusals} refusals): it refuses everything"
    )
    assert c.refusals > 0, "the link never pointed outside during a read: the race did not run"
