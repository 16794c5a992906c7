"""Run a command on a pseudo-terminal, as a person at a terminal would, and read its screen.

For the checks that differ between a terminal and a pipe: prompts, progress bars.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def run_on_a_terminal(
    args: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    streams: Sequence[str] = ("stdin", "stdout", "stderr"),
    respond: Callable[[bytes], bytes | None] | None = None,
    timeout: float = 300,
) -> tuple[int, str]:
    """Run `args` with `streams` on a 24x100 pseudo-terminal (the others to /dev/null).

    `respond(screen so far)` may return keys to type. Returns (exit code, screen); the process is
    killed after `timeout` seconds (exit code then negative).
    """
    leader, follower = pty.openpty()
    # A size, as a real terminal has: tqdm and rich fit their bars to it (0 columns draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))

    def wire(stream: str) -> int:
        return follower if stream in streams else subprocess.DEVNULL

    proc = subprocess.Popen(
        list(args), stdin=wire("stdin"), stdout=wire("stdout"), stderr=wire("stderr"), cwd=cwd, env=env
    )
    os.close(follower)
    screen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            keys = respond(screen) if respond is not None else None
            if keys:
                os.write(leader, keys)
            if proc.poll() is not None and not ready:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        os.close(leader)
    return code, screen.decode(errors="replace")
