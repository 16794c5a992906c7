"""`codi2-agent chat`: talk to the model turn by turn in the terminal (or from a piped script)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codi2_agent.cli._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    StepsOption,
    _fail,
    _load,
    _out,
    _placement,
    _progress,
    _say,
)

if TYPE_CHECKING:
    from codi2_agent.session import Session, TurnResult

CHAT_HELP = """\
Type a message and press Enter. Commands:
  /image PATH    attach an image to your next message (several are fine)
  /audio PATH    attach a sound to your next message
  /undo          forget the last turn
  /history       list the turns of this thread
  /thread NAME   switch to thread NAME (a new one starts empty); /thread alone shows the current one
  /fork NAME     copy this thread into a new thread NAME and switch to it
  /help          this text
  /quit          leave (so do Ctrl-D and Ctrl-C; an empty line does not)"""


def chat(
    model: ModelOption = "tiny",
    root: Annotated[
        Path, typer.Option(help="Session folder: artifacts, memory and checkpoints (kept between chats).")
    ] = Path("codi2-session"),
    thread: Annotated[
        str, typer.Option(help="Conversation thread to start in (continues if it exists).")
    ] = "chat",
    out: Annotated[
        Path, typer.Option(help="Folder for the media of each turn (a subfolder per thread).")
    ] = Path("outputs/chat"),
    steps: StepsOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed for every turn (default: varies).")] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Talk to CoDi-2 turn by turn in the terminal; attach media with /image and /audio.

    Every answer's media are saved under OUT/THREAD and their paths printed. Lines come from stdin,
    so a script can drive it: `printf 'draw a red star\\n/history\\n' | codi2-agent chat`.

    In the chat: `/image PATH`, `/audio PATH` (attach to the next message), `/undo`, `/history`,
    `/thread NAME`, `/fork NAME`, `/help`, `/quit`.
    """
    from codi2_agent.session import Session

    loaded = _load(model, device=device, dtype=dtype)
    with _progress(f"opening session {root}"):
        try:
            session = Session(
                loaded, thread=thread, root=root, progress=False, num_inference_steps=steps, seed=seed
            )
        except (ValueError, OSError) as e:
            raise _fail(f"cannot open the session in {root}: {e}") from None
    try:
        _say(f"model {model} ({_placement(loaded)})")
        _chat_loop(session, out)
    finally:
        session.close()


def _chat_loop(first: Session, out: Path) -> None:
    from codi2_agent.media import Media, MediaError, Modality

    session = first
    pending: list[tuple[Path, Media]] = []
    tty = sys.stdin.isatty()
    _say(f"codi2-agent chat: thread {session.thread!r} ({session.turn} turns) in {session.root}.")
    _say("Type a message, or /help for commands.")
    while True:
        read = _read_line(tty)
        if read is None:  # end of input (Ctrl-D, or the piped script ran out) or Ctrl-C
            break
        line = read.strip()
        if not line:  # an empty line is not a way out: prompt again
            continue
        command, _, arg = line.partition(" ") if line.startswith("/") else ("", "", "")
        arg = arg.strip()
        try:
            if command in ("/quit", "/exit", "/q"):
                break
            elif command == "/help":
                _say(CHAT_HELP)
            elif command in ("/image", "/audio"):
                if not arg:
                    raise ValueError(f"{command} needs a file path")
                path = Path(shlex.split(arg)[0] if arg[:1] in "'\"" else arg).expanduser()
                media = Media.open(path)
                want = Modality.IMAGE if command == "/image" else Modality.AUDIO
                if media.modality is not want:
                    raise ValueError(f"{path} is {media.modality.value}, not {want.value}")
                pending.append((path, media))
                _say(f"attached {want.value} {path} (goes with your next message)")
            elif command == "/undo":
                if pending:
                    _say(f"dropped {len(pending)} attachment(s) not sent yet")
                    pending.clear()
                else:
                    back = session.undo()
                    _say(f"undone; thread {session.thread!r} is back at turn {back.turn if back else 0}")
            elif command == "/history":
                turns = session.history()
                if not turns:
                    _say(f"thread {session.thread!r} has no turns yet")
                for t in turns:
                    made = ", ".join(f"{r.modality.value} @m:{r.short_id}" for r in t.refs)
                    _say(f"turn {t.turn}: {t.request!r} -> " + (made or repr(t.text)))
            elif command in ("/thread", "/fork"):
                if not arg:
                    if command == "/fork":
                        raise ValueError("/fork needs a new thread name")
                    _say(f"thread {session.thread!r} ({session.turn} turns)")
                    continue
                session = session.fork(arg) if command == "/fork" else first.open_thread(arg)
                pending.clear()
                _say(f"thread {session.thread!r} ({session.turn} turns)")
            elif command:
                raise ValueError(f"unknown command {command} (try /help)")
            else:
                with _progress(f"turn {session.turn + 1}"):
                    result = session.say(line, *(m for _, m in pending))
                pending.clear()
                _show_turn(result, out / session.thread)
        except (MediaError, ValueError, FileNotFoundError, OSError) as e:
            _say(f"error: {e}")
    _say("bye")


def _read_line(tty: bool) -> str | None:
    """The next chat line, or None when the user is done (end of input or Ctrl-C).

    On a terminal the prompt returns "" for an empty line, so only EOFError marks the end; piped
    stdin keeps its newline, so readline's "" is the end and "\n" an empty line.
    """
    try:
        if tty:
            return _out.input("[bold]you>[/bold] ")
        line = sys.stdin.readline()
        return line if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def _show_turn(result: TurnResult, folder: Path) -> None:
    """Print a turn's answer; save its media (or a text-only answer) under `folder`, printing the paths."""
    prefix = f"turn {result.turn}"
    if result.clarification:
        _say(f"{prefix} (a question): {result.text}")
        return
    if not result.refs:
        path = folder / f"turn{result.turn:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.text + "\n", encoding="utf-8")
        _say(f"{prefix}: {result.text}")
        _say(f"{prefix}: text saved to {path}")
        return
    if result.text and result.text != "Here it is.":
        _say(f"{prefix}: {result.text}")
    for media, ref in zip(result.media, result.refs, strict=True):
        path = media.save(folder / f"turn{result.turn:03d}-{ref.short_id}")
        caption = f" ({ref.caption})" if ref.caption else ""
        _say(f"{prefix}: {ref.modality.value} @m:{ref.short_id}{caption} saved to {path}")
