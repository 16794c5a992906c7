"""`codi2-agent chat` driven through its stdin: turns, attachments, undo, history, threads, errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from codi2_agent.data import world

STEPS = "2"  # diffusion steps: the decoders run, quickly


def test_chat_session_through_stdin(cli: Any, model_arg: str, tmp_path: Path) -> None:
    world.render({"shape": "square", "colour": "green", "size": "large", "scene": "day"}, 1).save(
        tmp_path / "sq.png"
    )
    world.render({"instrument": "sine", "pitch": "440", "ambience": "quiet"}, 2).save(tmp_path / "tone.wav")
    script = "\n".join([
        "draw a small red star in the snow",
        "/image sq.png",
        "make it blue",
        "/history",
        "/undo",
        "/history",
        "/thread sounds",
        "/audio tone.wav",
        "raise the pitch to 660 Hz",
        "/image missing.png",
        "/image tone.wav",
        "/bogus",
        "/fork what-if",
        "what do you hear?",
        "/quit",
        "this line is never read",
    ])  # fmt: skip
    proc = cli(
        "chat", "--model", model_arg, "--root", "session", "--out", "out", "--steps", STEPS, input=script
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    # Media are saved under out/<thread>/ and each path is printed.
    saved = re.findall(r"saved to (\S+)", out)
    assert [Path(p).parent.name for p in saved] == ["chat", "chat", "sounds", "what-if"]
    assert all((tmp_path / p).is_file() for p in saved)
    assert [Path(p).suffix for p in saved] == [".png", ".png", ".wav", ".txt"]
    assert "attached image sq.png" in out and "attached audio tone.wav" in out
    # /history before and after /undo
    assert out.count("turn 2: 'make it blue' -> image @m:") == 1
    assert "undone; thread 'chat' is back at turn 1" in out
    assert out.count("turn 1: 'draw a small red star in the snow' -> image @m:") == 2
    # Errors are one line each, and the chat goes on.
    assert "error: no media file at missing.png" in out
    assert "error: tone.wav is audio, not image" in out
    assert "error: unknown command /bogus (try /help)" in out
    assert "thread 'what-if' (1 turns)" in out and out.rstrip().endswith("bye")
    assert "never read" not in out

    # The session folder keeps the threads: a second chat continues where the first stopped.
    again = cli("chat", "--model", model_arg, "--root", "session", "--thread", "sounds", input="/history\n")
    assert again.returncode == 0, again.stderr
    assert (
        "thread 'sounds' (1 turns)" in again.stdout
        and "'raise the pitch to 660 Hz' -> audio @m:" in again.stdout
    )


def test_chat_without_a_model_is_a_one_line_error(cli: Any, user_error: Any) -> None:
    user_error(cli("chat", "--model", "missing/model/folder", input="hi\n"), 1, "missing/model/folder")


def _chat_on_a_terminal(model_arg: str, cwd: Path, keys: list[bytes]) -> str:
    """Run `codi2-agent chat` on a pseudo-terminal, type `keys` one prompt at a time; return the screen."""
    import os
    import sys

    from terminal import run_on_a_terminal

    pending = list(keys)

    def type_at_each_prompt(screen: bytes) -> bytes | None:
        fresh_prompt = pending and screen.count(b"you>") > len(keys) - len(pending)
        return pending.pop(0) if fresh_prompt else None

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    _, screen = run_on_a_terminal(
        [sys.executable, "-m", "codi2_agent.cli", "chat", "--model", model_arg, "--root", "s"],
        env=env,
        cwd=cwd,
        respond=type_at_each_prompt,
    )
    return screen


def test_empty_line_on_a_terminal_prompts_again(model_arg: str, tmp_path: Path) -> None:
    # On a terminal the prompt returns "" for an empty line; that must not read as end of input.
    screen = _chat_on_a_terminal(model_arg, tmp_path, [b"\r", b"/history\r", b"/quit\r"])
    assert "thread 'chat' has no turns yet" in screen, screen[-2000:]
    assert screen.count("you>") == 3 and "bye" in screen


def test_ctrl_d_on_a_terminal_leaves(model_arg: str, tmp_path: Path) -> None:
    screen = _chat_on_a_terminal(model_arg, tmp_path, [b"\x04"])
    assert "bye" in screen and "Traceback" not in screen, screen[-2000:]
