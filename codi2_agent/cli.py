"""`codi2-agent`: the command line. Bad input exits non-zero with a one-line reason, never a traceback.

Commands: ``demo`` (the scripted session), ``chat`` (talk to the model in the terminal), ``run``
(a YAML pipeline; see `codi2_agent.pipelines`), ``train``, ``eval``, ``bench`` and ``info``.
Results go to stdout; progress bars and spinners go to the terminal only (nothing when piped).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # ours replace transformers' loading bars

if TYPE_CHECKING:
    from codi2_agent.model import CoDi2Model
    from codi2_agent.session import Session, TurnResult

app = typer.Typer(
    help="CoDi-2-style any-to-any generation for agents, pipelines and notebooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_out = Console(highlight=False, soft_wrap=True)  # results
_err = Console(stderr=True, highlight=False, soft_wrap=True)

MODEL_HELP = "'tiny' (the shipped weights) or a model folder."
STEPS_HELP = "Diffusion steps (default: the model's)."
# Options several commands share, declared once.
ModelOption = Annotated[str, typer.Option(help=MODEL_HELP)]
StepsOption = Annotated[int | None, typer.Option(help=STEPS_HELP, min=1)]


def _show_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("codi2-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from codi2_agent import __version__ as number
    typer.echo(f"codi2-agent {number}")
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    # Options before the command; the app's help text comes from `app` above.
    return None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(code)


def _say(text: str = "") -> None:
    """Print a result line to stdout, as is (no markup, no wrapping inside paths)."""
    _out.print(text, markup=False, highlight=False)


def _threads() -> int:
    """torch CPU threads: $OMP_NUM_THREADS when set, else up to 2."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return min(2, os.cpu_count() or 1)


@contextlib.contextmanager
def _progress(description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on the terminal (stdout's when it is one, else stderr's; none if neither).

    Yields ``update(advance=1, description=None)``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    console = _out if _out.is_terminal else _err
    if not console.is_terminal:  # piped or captured: no bar (rich would still print blank lines)
        yield lambda advance=1, description=None: None
        return
    with Progress(
        *columns, console=console, transient=True, redirect_stdout=False, redirect_stderr=False
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(advance: float = 1, description: str | None = None) -> None:
            bar.update(task, advance=advance, description=description)

        yield update


def _load(model: str) -> CoDi2Model:
    """Load a model with a spinner; a missing or broken model is a one-line error."""
    import torch

    from codi2_agent.model import WeightsNotFoundError, load_model

    torch.set_num_threads(_threads())
    with _progress(f"loading model {model}"):
        try:
            return load_model(model)
        except (WeightsNotFoundError, ValueError, OSError) as e:
            raise _fail(str(e)) from None


# =================================================================================================
# demo
# =================================================================================================
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for every input and output of the session.")] = Path(
        "outputs/demo"
    ),
    model: ModelOption = "tiny",
    steps: StepsOption = None,
    seed: Annotated[int, typer.Option(help="Seed for the diffusion noise.")] = 0,
) -> None:
    """Run the scripted multi-round session and write its outputs to OUT."""
    from codi2_agent.demo import run_demo

    loaded = _load(model)
    with _progress("demo", total=7) as update:

        def log(line: str) -> None:
            _say(line)
            update()

        turns = run_demo(loaded, out, num_inference_steps=steps, seed=seed, log=log)
    _say(f"\n{len(turns)} turns; outputs and summary.json in {out}")


# =================================================================================================
# chat
# =================================================================================================
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


@app.command()
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
) -> None:
    """Talk to CoDi-2 turn by turn in the terminal; attach media with /image and /audio.

    Every answer's media are saved under OUT/THREAD and their paths printed. Lines come from stdin,
    so a script can drive it: `printf 'draw a red star\\n/history\\n' | codi2-agent chat`.

    In the chat: `/image PATH`, `/audio PATH` (attach to the next message), `/undo`, `/history`,
    `/thread NAME`, `/fork NAME`, `/help`, `/quit`.
    """
    from codi2_agent.session import Session

    loaded = _load(model)
    with _progress(f"opening session {root}"):
        try:
            session = Session(
                loaded, thread=thread, root=root, progress=False, num_inference_steps=steps, seed=seed
            )
        except (ValueError, OSError) as e:
            raise _fail(f"cannot open the session in {root}: {e}") from None
    try:
        _chat_loop(session, out)
    finally:
        session.close()


def _chat_loop(first: Session, out: Path) -> None:
    from codi2_agent.media import Media, MediaError, Modality
    from codi2_agent.session import Session

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
                if command == "/fork":
                    session = session.fork(arg)
                else:
                    session = first.open_thread(arg)
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


# =================================================================================================
# run
# =================================================================================================
@app.command("run")
def run_cmd(
    pipeline: Annotated[
        Path, typer.Argument(help="The pipeline YAML file.", show_default=False, metavar="PIPELINE.yaml")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the file's out:, else outputs/NAME).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=MODEL_HELP + " Default: the file's model:, else tiny.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Diffusion steps for turns that set none.", min=1)] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for turns that set none (default: the file's).")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Forget an earlier run in OUT and start over.")] = False,
    limit: Annotated[
        int | None, typer.Option(help="Run at most this many turns now; the next run resumes.", min=0)
    ] = None,
    check: Annotated[bool, typer.Option(help="Only validate the file and print the plan.")] = False,
) -> None:
    """Run a YAML pipeline of turns (and loops over files); re-running resumes where it stopped.

    Writes the media, report.md and report.json to OUT. A malformed pipeline exits with code 2 and
    names the line and field of each problem.
    """
    from codi2_agent.pipelines import (
        PipelineBusyError,
        PipelineError,
        PipelineRunError,
        load_pipeline,
        run_pipeline,
    )

    # 1. Validate (cheap: no model)
    try:
        plan = load_pipeline(pipeline)
    except PipelineError as e:
        for problem in e.problems:
            typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(2) from None
    if check:
        _say(plan.describe())
        _say("ok: the pipeline is valid")
        return

    # 2. Run, with a bar over the planned turns
    where = out or plan.default_out()
    model = model or plan.model
    loaded = _load(model)
    counts = {"reused": 0, "done": 0}
    with _progress(plan.name, total=len(plan.turns)) as update:

        def on_event(kind: str, record: Any) -> None:
            if kind == "start":
                update(0, description=f"{plan.name}: {record.key}")
            elif kind in counts:
                counts[kind] += 1
                update()
                shown = ", ".join(m.path for m in record.outputs if m.path) or repr(record.text)
                _say(
                    f"{record.key}: {shown}"
                    + (" (done earlier)" if kind == "reused" else f" ({record.seconds:.2f} s)")
                )

        try:
            report = run_pipeline(
                plan,
                where,
                model=loaded,
                model_id=model,
                diffusion_steps=steps,
                seed=seed,
                fresh=fresh,
                limit=limit,
                on_event=on_event,
            )
        except (PipelineRunError, PipelineBusyError) as e:
            raise _fail(f"{e} (report: {where / 'report.md'})") from None
        except KeyboardInterrupt:
            raise _fail(f"interrupted; run the same command again to resume ({where})", 130) from None
    c = report.counts
    _say(
        f"\n{report.status}: {c['done']}/{c['planned']} turns done ({c['reused']} from an earlier run, "
        f"{c['ran']} now); report: {where / 'report.md'}"
    )
    if report.status != "complete":
        _say("run the same command again to continue")


# =================================================================================================
# train / eval
# =================================================================================================
@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write the trained model to.")],
    preset: Annotated[str, typer.Option(help="Model preset (tiny).")] = "tiny",
    workdir: Annotated[Path | None, typer.Option(help="Checkpoints and loss logs (resumable).")] = None,
    stages: Annotated[
        str, typer.Option(help="Comma-separated stages to run.")
    ] = "encoders,image_decoder,audio_decoder,align,lm",  # training.STAGES (kept literal: fast --help)
    smoke: Annotated[bool, typer.Option(help="Minutes-scale settings (a check, not a model).")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
) -> None:
    """Train (or resume training) a model; the tiny preset reproduces the shipped weights."""
    from codi2_agent.training import TinyRecipe, train

    recipe = TinyRecipe.smoke() if smoke else TinyRecipe()
    recipe.threads = threads
    try:
        result = train(
            out,
            preset=preset,
            workdir=workdir,
            recipe=recipe,
            stages=[s.strip() for s in stages.split(",") if s.strip()],
        )
    except (ValueError, RuntimeError) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"model written to {result}" if result else "stages done; run the remaining stages to assemble"
    )


@app.command("eval")
def eval_cmd(
    model: ModelOption = "tiny",
    per_task: Annotated[int, typer.Option(help="Held-out samples per task.", min=1)] = 40,
    steps: StepsOption = None,
    out: Annotated[Path, typer.Option(help="Folder for the table (.txt) and its .json.")] = Path(
        "outputs/eval"
    ),
    name: Annotated[str, typer.Option(help="File name stem for the results.")] = "eval_tiny",
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw.")] = 1234,
    split: Annotated[
        str, typer.Option(help="'test' (held-out combinations) or 'train' (seen ones).")
    ] = "test",
) -> None:
    """Score a model on the tiny world's held-out split (unseen seeds and attribute combinations)."""
    if split not in ("test", "train"):
        raise _fail(f"--split must be 'test' or 'train', not {split!r}")
    from codi2_agent.evaluation import evaluate, format_columns, write_results

    loaded = _load(model)
    setting = f"# codi2-agent eval: model={model}, {split} split, {per_task} samples/task, seed {seed}"
    _say(setting)
    _say(format_columns())
    t0 = time.perf_counter()
    with _progress("evaluating") as update:

        def show_row(line: str) -> None:  # each row once, as soon as its task is scored
            _say(line)
            update()

        rows = evaluate(
            loaded, per_task=per_task, seed=seed, num_inference_steps=steps, split=split, progress=show_row
        )
    took = f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d')})"
    txt, js = write_results(rows, out, name, f"{setting}, {took}")
    _say(f"\n{len(rows)} rows in {took}; written to {txt} and {js}")


# =================================================================================================
# bench
# =================================================================================================
BENCHMARKS = ("model", "memory", "session")


def _check_bench_model(model: str) -> None:
    """Refuse (exit 2) a --model that names no shipped model and no model folder.

    bench_model.py falls back to random weights when a model cannot be loaded; for an unknown name
    that would publish figures of random weights under that name.
    """
    from codi2_agent.model import SHIPPED_MODELS

    if model in SHIPPED_MODELS or (Path(model).expanduser() / "config.json").is_file():
        return
    raise _fail(
        f"--model {model!r} is neither a shipped model ({', '.join(SHIPPED_MODELS)}) "
        "nor a model folder (no config.json in it)",
        2,
    )


def _bench_args(name: str, quick: bool, model: str, out: Path | None) -> list[str]:
    """Command-line arguments of benchmarks/bench_<name>.py (quick: a smoke-sized run)."""
    target = ["--out", str(out / f"{name}.txt")] if out is not None else []
    if name == "model":
        return ["--model", model, "--threads", str(_threads())] + (["--repeats", "2"] if quick else [])
    if name == "memory":
        return (["--dims", "64", "--sizes", "1000", "--queries", "20"] if quick else []) + target
    from codi2_agent.model import SHIPPED_MODELS, shipped_model_path

    missing = model in SHIPPED_MODELS and not (shipped_model_path(model) / "config.json").is_file()
    quick_args = ["--probes", "quick", "--sessions", "1", "--turns", "6", "--steps", "2"]
    return ["--model", "random" if quick and missing else model] + (quick_args if quick else []) + target


@app.command()
def bench(
    only: Annotated[
        str, typer.Option(help="Comma-separated benchmarks to run: model, memory, session.")
    ] = "model,memory,session",
    quick: Annotated[
        bool, typer.Option(help="Smoke-sized runs (seconds to a minute each), not figures.")
    ] = False,
    model: ModelOption = "tiny",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the result tables (default: benchmarks/results, or a temp folder with --quick)."
        ),
    ] = None,
) -> None:
    """Run the benchmark scripts in benchmarks/ (a source checkout) and print their tables."""
    import tempfile

    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise _fail(f"unknown benchmark(s) {unknown or only!r}; choose from {', '.join(BENCHMARKS)}")
    _check_bench_model(model)
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        raise _fail(f"the benchmark scripts live in a source checkout (no {folder}); clone the repository")
    if quick and out is None:
        out = Path(tempfile.mkdtemp(prefix="codi2-bench-"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads())}
    with _progress("benchmarks", total=len(names)) as update:
        for name in names:
            script = folder / f"bench_{name}.py"
            update(0, description=f"bench_{name}.py")
            args = _bench_args(name, quick, model, out)
            cmd = [sys.executable, str(script), *args]
            if name == "model" and out is not None:  # bench_model.py has no --out: point its RESULTS there
                launch = (
                    "import importlib.util, sys; from pathlib import Path; "
                    f"spec = importlib.util.spec_from_file_location('bench_model', {str(script)!r}); "
                    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                    f"m.RESULTS = Path({str(out / 'model.txt')!r}); m.main()"
                )
                cmd = [sys.executable, "-c", launch, *args]
            _say(f"== bench_{name}.py {' '.join(args)}")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                _say(line.rstrip("\n"))
            if proc.wait() != 0:
                raise _fail(f"bench_{name}.py failed (exit {proc.returncode})")
            update()
    _say(f"\nresult tables in {out or folder / 'results'}")


# =================================================================================================
# info
# =================================================================================================
def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under `path`."""
    if path.is_file():
        return 1, path.stat().st_size
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _memory_info(path: Path) -> dict[str, Any]:
    """Tenants and item counts of an embedded Chroma memory, read without an encoder."""
    try:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
        try:
            tenants = {
                str((c.metadata or {}).get("tenant", c.name)): c.count()
                for c in client.list_collections()
                if (c.metadata or {}).get("codi2_memory")
            }
        finally:
            client.close() if hasattr(client, "close") else None
        return {"tenants": tenants}
    except Exception as e:  # a damaged or foreign folder: report it, do not fail `info`
        return {"error": f"unreadable ({type(e).__name__}: {e})"}


def _checkpoint_info(path: Path) -> dict[str, Any]:
    import sqlite3

    from codi2_agent.graphs import checkpoint_summary

    try:
        return dict(checkpoint_summary(path))
    except sqlite3.Error as e:
        return {"error": f"unreadable ({e})"}


@app.command()
def info(
    model: ModelOption = "tiny",
    root: Annotated[
        Path, typer.Option(help="Session folder to describe (chat's and Session's default).")
    ] = Path("codi2-session"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show where the model, the session's artifacts, memory and checkpoints live, and their sizes."""
    from codi2_agent.graphs import CHECKPOINT_FILE
    from codi2_agent.model import SHIPPED_MODELS, shipped_model_path

    # 1. The model
    path = shipped_model_path(model) if model in SHIPPED_MODELS else Path(model).expanduser()
    found = (path / "config.json").is_file()
    files, size = _size(path)
    model_info: dict[str, Any] = {
        "name": model,
        "path": str(path.resolve()),
        "found": found,
        "files": files,
        "bytes": size,
    }
    if found:
        with contextlib.suppress(OSError, ValueError):
            model_info["preset"] = json.loads((path / "config.json").read_text()).get("preset")

    # 2. The session folder: artifacts, memory, checkpoints
    root = root.expanduser()
    parts: dict[str, Any] = {}
    for key, sub in (("artifacts", "artifacts"), ("memory", "memory"), ("checkpoints", CHECKPOINT_FILE)):
        p = root / sub
        n, b = _size(p)
        entry: dict[str, Any] = {"path": str(p.resolve()), "exists": p.exists(), "files": n, "bytes": b}
        if key == "memory" and p.is_dir():
            entry.update(_memory_info(p))
        if key == "checkpoints" and p.is_file():
            entry.update(_checkpoint_info(p))
        parts[key] = entry
    report = {"model": model_info, "session": {"root": str(root.resolve()), "exists": root.is_dir(), **parts}}

    # 3. Show
    if as_json:
        _say(json.dumps(report, indent=2))
    else:
        m = report["model"]
        _say(f"{'model':<15}{model}" + (f" (preset {m['preset']})" if m.get("preset") else ""))
        _say(f"{'  path':<15}{m['path']}")
        _say(f"{'  size':<15}" + (f"{_mb(size)} in {files} files" if found else "(not found)"))
        _say(f"{'session':<15}{report['session']['root']}" + ("" if root.is_dir() else " (not created yet)"))
        for key, e in parts.items():
            line = f"  {key:<12} {e['path']}  " + (
                f"{_mb(e['bytes'])} in {e['files']} files" if e["exists"] else "(none yet)"
            )
            if "tenants" in e:
                line += "; " + (
                    ", ".join(f"tenant {t!r}: {n} items" for t, n in e["tenants"].items()) or "empty"
                )
            if "threads" in e:
                line += f"; {e['threads']} threads, {e['checkpoints']} checkpoints"
            if "error" in e:
                line += f"; {e['error']}"
            _say(line)
    if not found:
        hint = (
            f"; reproduce it with `codi2-agent train --preset {model} --out {path}`"
            if model in SHIPPED_MODELS
            else ""
        )
        raise _fail(f"no model at {path}{hint}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
