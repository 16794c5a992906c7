"""Running a planned pipeline through `Session`s: `run_pipeline`, resuming, and the folder lock.

Every turn has a fingerprint (its definition, its input files' content, the model and settings, and
the fingerprint of the turn before it in its thread). A re-run reuses each finished turn whose
fingerprint is unchanged (its answer read back from the thread's checkpoints), and redoes a changed
turn and everything after it in its thread, after rewinding the thread to just before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codi2_agent.media import Media, MediaError, MediaRef, Modality

from .plan import Pipeline, PlannedTurn
from .report import REPORT_JSON, REPORT_MD, MediaEntry, PipelineReport, TurnRecord, atomic_write, now
from .spec import SESSION_DIR, PipelineBusyError, PipelineRunError

if TYPE_CHECKING:
    from codi2_agent.backends import Backend
    from codi2_agent.model import CoDi2Model
    from codi2_agent.session import Session, TurnResult

__all__ = ["run_pipeline"]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _TurnFailed(Exception):
    pass


def run_pipeline(
    pipeline: Pipeline,
    out: str | Path | None = None,
    *,
    model: str | Path | CoDi2Model | Backend | None = None,
    model_id: str | None = None,
    diffusion_steps: int | None = None,
    seed: int | None = None,
    fresh: bool = False,
    limit: int | None = None,
    on_event: Callable[[str, TurnRecord], None] | None = None,
) -> PipelineReport:
    """Run (or resume) `pipeline`, writing media and the report into `out`.

    Args:
        pipeline: from `load_pipeline` / `parse_pipeline`.
        out: the output folder (default: `Pipeline.default_out`).
        model: ``"tiny"``, a model folder, a `CoDi2Model` or a `Backend` (default: the file's
            ``model:``, else ``"tiny"``).
        model_id: how the report names a loaded `model` (its name or folder); a different model
            means different answers, so a resumed run redoes the turns another model made.
        diffusion_steps, seed: override the file's defaults (turns' own values still win).
        fresh: forget an earlier run in `out` (its session and the outputs its report lists).
        limit: run at most this many turns now (finished ones do not count); the rest next time.
        on_event: called with ``("start" | "reused" | "done" | "failed", record)`` for each turn.

    Raises:
        PipelineRunError: a turn failed (the report, written first, says which and why).
        PipelineBusyError: another run is writing to `out`.
    """
    from codi2_agent.session import Session

    # 1. Settings, and a fingerprint per turn: what it asks, its inputs' content, and its thread so far
    out = Path(out) if out is not None else pipeline.default_out()
    model = model if model is not None else pipeline.model
    model_id = model_id or (str(model) if isinstance(model, (str, Path)) else "in-memory model")
    settings = {
        "seed": seed if seed is not None else pipeline.spec.seed,
        "diffusion_steps": diffusion_steps if diffusion_steps is not None else pipeline.spec.diffusion_steps,
        "guidance_scale": pipeline.spec.guidance_scale,
    }
    prints = _fingerprints(pipeline, model_id, settings)
    event = on_event or (lambda kind, record: None)

    # 2. The output folder: a lock, the earlier run's report, the session
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if fresh:
            _forget(out)
        previous = _previous(out)
        report = PipelineReport(
            name=pipeline.name,
            source=str(pipeline.source) if pipeline.source else None,
            out=out,
            model=model_id,
            status="incomplete",
            turns=[_pending(t) for t in pipeline.turns],
            settings=settings,
            bases=dict(previous.get("bases", {})) if previous else {},
            started_at=now(),
        )
        old = {r.key: r for r in (TurnRecord.from_json(t) for t in (previous or {}).get("turns", []))}
        t0 = time.perf_counter()
        main = Session(model, thread=pipeline.thread, root=out / SESSION_DIR, progress=False)
        runner = _Runner(pipeline, main, out, settings)
        ran = 0
        try:
            # 3. The plan, in order: reuse what is finished, run the rest
            for i, planned in enumerate(pipeline.turns):
                if (
                    limit is not None
                    and ran >= limit
                    and not runner.finished(planned, old.get(planned.key), prints[planned.key])
                ):
                    break
                record = report.turns[i]
                record.fingerprint = prints[planned.key]
                event("start", record)
                if planned.base_thread is not None and planned.position == 1:
                    runner.ensure_base(planned, prints, report)
                done = runner.reuse(planned, old.get(planned.key), record)
                if done is not None:
                    report.turns[i] = done
                    event("reused", done)
                    continue
                try:
                    runner.run(planned, record)
                except _TurnFailed as e:
                    record.status, record.error, record.finished_at = "failed", str(e), now()
                    report.status = "failed"
                    event("failed", record)
                    raise PipelineRunError(f"turn {planned.key} ({planned.label}) failed: {e}") from None
                ran += 1
                report.seconds = time.perf_counter() - t0
                report.write()
                event("done", record)
            else:
                report.status = "complete"
        except KeyboardInterrupt:
            report.status = "interrupted"
            raise
        except BaseException:
            if report.status != "failed":
                report.status = "failed"
            raise
        finally:
            report.finished_at = now()
            report.seconds = time.perf_counter() - t0
            report.write()
            main.close()
    return report


def _fingerprints(pipeline: Pipeline, model_id: str, settings: dict[str, Any]) -> dict[str, str]:
    prints: dict[str, str] = {}
    last: dict[str, str] = {}  # thread -> fingerprint of its latest turn
    for t in pipeline.turns:
        if t.position == 1 and t.base_thread is not None:
            prev = prints.get(t.base_after or "", "")
        else:
            prev = last.get(t.thread, "")
        spec = t.spec.model_dump(mode="json")
        for key in ("image", "audio"):  # files count by their content (the digests), not their path
            spec[key] = [m if m.startswith("@") else "file" for m in spec[key]]
        if spec.get("example"):
            spec["example"] = {
                k: (v if v is None or v.startswith("@") else "file") for k, v in spec["example"].items()
            }
        refs = [prints.get(key, key) for _, key in t.refs]
        prints[t.key] = _fingerprint(prev, spec, t.digests, refs, model_id, settings)
        last[t.thread] = prints[t.key]
    return prints


def _pending(t: PlannedTurn) -> TurnRecord:
    return TurnRecord(
        key=t.key,
        label=t.label,
        thread=t.thread,
        position=t.position,
        request=t.spec.say,
        file=str(t.file) if t.file else None,
        loop=t.loop,
        task=t.spec.effective_task,
    )


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    import fcntl

    handle = (out / ".lock").open("w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineBusyError(
                f"another run is writing to {out}; wait for it or pick another --out"
            ) from None
        yield
    finally:
        handle.close()


def _previous(out: Path) -> dict[str, Any] | None:
    path = out / REPORT_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a damaged report: the session's checkpoints still hold the finished turns
    return data if isinstance(data, dict) else None


def _forget(out: Path) -> None:
    """Remove an earlier run: its session, its report, and the outputs that report lists (only those)."""
    previous = _previous(out) or {}
    for turn in previous.get("turns", []):
        for m in turn.get("outputs", []):
            if m.get("path"):
                (out / m["path"]).unlink(missing_ok=True)
    shutil.rmtree(out / SESSION_DIR, ignore_errors=True)
    for name in (REPORT_JSON, REPORT_MD):
        (out / name).unlink(missing_ok=True)


class _Runner:
    """Runs planned turns in their threads and keeps what later turns refer to (``@name``)."""

    def __init__(self, pipeline: Pipeline, main: Session, out: Path, settings: dict[str, Any]) -> None:
        self.pipeline, self.main, self.out, self.settings = pipeline, main, out, settings
        self.sessions: dict[str, Session] = {main.thread: main}
        self.outputs: dict[str, list[MediaRef]] = {}  # turn key -> output refs

    def session(self, thread: str) -> Session:
        if thread not in self.sessions:
            self.sessions[thread] = self.main.open_thread(thread)
        return self.sessions[thread]

    # --- threads --------------------------------------------------------------------------------
    def ensure_base(self, planned: PlannedTurn, prints: dict[str, str], report: PipelineReport) -> None:
        """A loop's threads start as copies of a base thread: the main thread where the loop stands."""
        assert planned.base_thread is not None
        want = prints.get(planned.base_after or "", "")
        base = self.session(planned.base_thread)
        if report.bases.get(planned.base_thread) == want and base.turn == planned.offset:
            return
        self.main.copy(base.thread, at_turn=planned.offset)
        report.bases[planned.base_thread] = want
        report.write()

    # --- resuming -------------------------------------------------------------------------------
    def finished(self, planned: PlannedTurn, old: TurnRecord | None, fingerprint: str) -> bool:
        return old is not None and old.status == "done" and old.fingerprint == fingerprint

    def reuse(self, planned: PlannedTurn, old: TurnRecord | None, record: TurnRecord) -> TurnRecord | None:
        """The earlier run's record when that turn is finished and unchanged; else None, after making
        its thread end just before it."""
        session = self.session(planned.thread)
        n = planned.thread_turn
        history = session.history() if session.turn >= n else []
        if self.finished(planned, old, record.fingerprint) and history:
            assert old is not None
            got = history[n - 1]
            if [f"@m:{r.short_id}" for r in got.refs] == [m.id for m in old.outputs if m.id] and all(
                (self.out / m.path).is_file() for m in old.outputs if m.path
            ):
                self.outputs[planned.key] = list(got.refs)
                old.reused = True
                return old
        unrecorded = old is None or (old.status == "pending" and old.fingerprint in ("", record.fingerprint))
        if len(history) == n and unrecorded:
            # Finished, but the run stopped before it wrote the record: keep that answer.
            got = history[-1]
            if got.request == planned.spec.say.strip() and not got.clarification:
                self.outputs[planned.key] = list(got.refs)
                self.save(planned, got, record, seconds=0.0)
                record.reused = True
                return record
        if planned.base_thread is not None and planned.position == 1:
            self.session(planned.base_thread).copy(session.thread)
        elif session.turn > n - 1:
            session.rewind(n - 1)
        return None

    # --- running --------------------------------------------------------------------------------
    def run(self, planned: PlannedTurn, record: TurnRecord) -> None:
        from codi2_agent.graphs import TurnOptions
        from codi2_agent.messages import user_message

        session = self.session(planned.thread)
        spec, refs = planned.spec, dict(planned.refs)
        # 1. Media: example files first and the turn's own media last (an analogy's target is last)
        attachments: list[MediaRef] = []
        example: list[str] = []
        try:
            if spec.example is not None:
                for source in (spec.example.before, spec.example.after):
                    if source is None:
                        continue
                    ref = self.medium(source, None, refs, session)
                    if not source.startswith("@"):  # a file must come with the message to be known
                        attachments.append(ref)
                    record.example.append(self.entry(source, ref))
                    example.append(f"@m:{ref.short_id}")
            for modality, sources in ((Modality.IMAGE, spec.image), (Modality.AUDIO, spec.audio)):
                for source in sources:
                    ref = self.medium(source, modality, refs, session)
                    attachments.append(ref)
                    record.inputs.append(self.entry(source, ref))
            # 2. The turn
            settings = self.settings
            output = spec.output if spec.output != "auto" else None
            if output is None and spec.effective_task in ("edit", "analogy") and attachments:
                output = attachments[-1].modality.value  # the medium being edited: the last one
            options = TurnOptions(
                task=spec.effective_task,
                output=output,
                example=tuple(example),
                seed=spec.seed if spec.seed is not None else settings["seed"],
                num_inference_steps=spec.diffusion_steps or settings["diffusion_steps"],
                guidance_scale=spec.guidance_scale
                if spec.guidance_scale is not None
                else settings["guidance_scale"],
                max_new_tokens=spec.max_new_tokens,
            )
            t0 = time.perf_counter()
            result = session.run(user_message(spec.say.strip(), attachments), options)
            seconds = time.perf_counter() - t0
        except (MediaError, ValueError, OSError) as e:
            raise _TurnFailed(str(e)) from e
        if result.clarification:
            record.text = result.text
            raise _TurnFailed(f"CoDi-2 asked back: {result.text}")
        self.outputs[planned.key] = list(result.refs)
        self.save(planned, result, record, seconds=seconds)

    def medium(
        self, source: str, modality: Modality | None, refs: dict[str, str], session: Session
    ) -> MediaRef:
        """A ``@name`` (an earlier turn's output) or a file (stored), as a reference."""
        if source.startswith("@"):
            made = [r for r in self.outputs.get(refs[source[1:]], []) if modality in (None, r.modality)]
            if not made:
                raise _TurnFailed(f"{source} made no {modality.value if modality else 'medium'}")
            return made[0]
        media = Media.open(source)
        if modality is not None and media.modality is not modality:
            raise _TurnFailed(f"{source} is {media.modality.value}, not {modality.value}")
        return session.artifacts.put(media)

    def entry(self, source: str, ref: MediaRef) -> MediaEntry:
        named = source.startswith("@")
        return MediaEntry(
            modality=ref.modality.value,
            id=f"@m:{ref.short_id}",
            path=None if named else source,
            source=source if named else _shown(source, self.pipeline.base_dir),
            caption=ref.caption,
        )

    def save(self, planned: PlannedTurn, result: TurnResult, record: TurnRecord, *, seconds: float) -> None:
        """Write the turn's media (and a text-only answer) under the output folder; fill the record."""
        from codi2_agent.media import MIME_TO_EXT

        record.outputs = []
        for i, (media, ref) in enumerate(zip(result.media, result.refs, strict=True)):
            name = planned.out_stem + (f"-{i + 1}" if i else "") + MIME_TO_EXT.get(ref.mime, "")
            path = self.out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(media.to_bytes()[0])
            os.replace(tmp, path)
            record.outputs.append(
                MediaEntry(
                    modality=ref.modality.value, id=f"@m:{ref.short_id}", path=name, caption=ref.caption
                )
            )
        if not result.refs and result.text:
            atomic_write(self.out / f"{planned.out_stem}.txt", result.text + "\n")
            record.outputs.append(MediaEntry(modality="text", id="", path=f"{planned.out_stem}.txt"))
        record.text, record.task = result.text, result.task or record.task
        record.seconds, record.finished_at, record.status = round(seconds, 3), now(), "done"


def _shown(path: str, base: Path) -> str:
    """A file path as the pipeline's author knows it (relative to the pipeline folder when inside it)."""
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return path
