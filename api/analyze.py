"""The embedded one-shot path: ``hematovision analyze FOLDER``.

Runs the real system on one machine with nothing to start by hand: migrates
the SQLite database, stores the folder as a job through the same intake as
the API, starts a real Celery worker process on the embedded (SQLite) broker,
waits for the job, and writes the report files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from api.progress import ProgressLine
from api.state import AppState
from api.submission import accept_job
from db import repository as repo
from db.migrate import upgrade
from db.models import JobStatus
from pipeline.intake import Limits, iter_folder
from pipeline.settings import PREFIX, Settings
from pipeline.slides import spreadsheet_safe, summary_csv


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process exactly these settings (every field, paths resolved)."""
    env = dict(os.environ)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value != "":
            env[PREFIX + f.name.upper()] = str(value)
    env.update({"HEMATOVISION_VAR_DIR": str(Path(settings.var_dir).resolve()),
                "HEMATOVISION_DATABASE_URL": settings.resolved_database_url,
                "HEMATOVISION_BROKER_URL": settings.resolved_broker_url,
                "HEMATOVISION_STORAGE_ROOT": str(settings.resolved_storage_root),
                "HEMATOVISION_MODEL_DIR": str(Path(settings.model_dir).resolve())})
    return env


class AnalyzeError(RuntimeError):
    """The embedded run could not produce a report; the message says why and where to look."""


class DeadlineExceeded(AnalyzeError):
    """The job did not finish within the deadline."""


class Interrupted(AnalyzeError):
    """Ctrl-C or SIGTERM: the worker was stopped and the job left as it was."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM if the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_worker(settings: Settings, concurrency: int = 1, log_path: Path | None = None, extra_env: dict[str, str] | None = None,
                 tie_to_parent: bool = False) -> subprocess.Popen:
    """A real Celery worker process with the same settings (passed via the environment), in its own process group."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.make_celery", "worker", "--loglevel=INFO" if log_path else "--loglevel=WARNING",
           f"--concurrency={concurrency}", "--without-gossip", "--without-mingle", "--without-heartbeat",
           f"--hostname=hv-{uuid.uuid4().hex[:8]}@%h"]
    cwd = Path(__file__).resolve().parent.parent
    env = {**worker_environment(settings), **(extra_env or {})}
    options = {"env": env, "cwd": cwd, "start_new_session": True, "preexec_fn": _die_with_parent if tie_to_parent else None}
    if log_path is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **options)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **options)


def stop_worker(worker: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL to the worker's whole process group after ``grace`` seconds."""
    if worker.poll() is None:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)  # pool processes left behind, if any
    worker.wait()


@contextlib.contextmanager
def _sigterm_interrupts():
    """Turn SIGTERM into an exception in the main thread, so cleanup runs as for Ctrl-C."""
    def handler(signum, _frame):
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def analyze(folder: str, out_dir: str, settings: Settings, progress: bool = True, kind: str = "auto") -> dict:
    """Classify every image under ``folder``, write report.json, report.csv, results.csv; return the summary.

    Waits at most ``settings.analyze_deadline`` seconds; the worker it starts is stopped however this ends.
    """
    target = Path(folder).resolve()
    if not target.is_dir():
        raise AnalyzeError(f"{folder} is not a directory")
    upgrade(settings.resolved_database_url)
    st = AppState.create(settings)
    limits = Limits(settings.max_upload_bytes, settings.max_image_bytes, settings.max_images_per_job)
    job_id = accept_job(st, iter_folder(target, limits), "folder", target.name, None, kind)
    with st.db.session() as session:
        job = repo.get_job(session, job_id)
        print(f"job {job_id}: {target} queued as '{job.kind}' ({job.kind_source})", flush=True)
    log_path = Path(settings.var_dir) / "worker.log"
    with _sigterm_interrupts():
        worker = start_worker(settings, log_path=log_path, tie_to_parent=True)
        try:
            status = _wait(st, job_id, worker, progress, settings.analyze_deadline, log_path)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; job {job_id} is left {_status(st, job_id)} in {settings.resolved_database_url}") from None
        finally:
            stop_worker(worker)
    if status != JobStatus.SUCCEEDED:
        with st.db.session() as session:
            job = repo.get_job(session, job_id)
            raise AnalyzeError(f"job {job_id} ended {status} ({job.error_code}): {job.error} (worker log: {log_path})")
    with st.db.session() as session:
        summary = repo.get_summary(session, job_id)
        rows = repo.results_page(session, job_id, 10**9, 0)
        cells = repo.cells_of_images(session, job_id, [img.id for img, _ in rows]) if summary.get("kind") == "fields" else None
        if cells is None:
            header = ["path", "label", "confidence", "white_cell_found", "ood_score", "blur_effect", "error"]
            results = [[img.path, pred.label if pred else "", f"{pred.confidence:.4f}" if pred else "",
                        ("yes" if pred.cell_found else "no") if pred else "", "" if not pred or pred.ood_score is None else pred.ood_score,
                        "" if not pred or pred.focus is None else pred.focus, img.error or ""] for img, pred in rows]
        else:
            header = ["path", "cell", "x0", "y0", "x1", "y1", "label", "confidence", "ood_score", "blur_effect", "error"]
            results = [[img.path, c.idx, c.x0, c.y0, c.x1, c.y1, c.label, f"{c.confidence:.4f}", "" if c.ood_score is None else c.ood_score,
                        "" if c.focus is None else c.focus, ""] for img, _ in rows for c in cells[img.id]]
            results += [[img.path, "", "", "", "", "", "", "", "", "", img.error] for img, _ in rows if img.error]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.csv").write_text(summary_csv(summary))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([spreadsheet_safe(cell) for cell in row] for row in results)
    st.db.dispose()
    return summary


def _status(st: AppState, job_id: str) -> str | None:
    with st.db.session() as session:
        return repo.job_status(session, job_id)


def _wait(st: AppState, job_id: str, worker: subprocess.Popen, progress: bool, deadline: float, log_path: Path) -> str:
    with st.db.session() as session:
        total = repo.progress(session, job_id).total
    line = ProgressLine(total, enabled=progress)
    give_up = time.monotonic() + deadline
    try:
        while True:
            with st.db.session() as session:
                status = repo.job_status(session, job_id)
                prog = repo.progress(session, job_id)
            line.update(prog.done + prog.failed)
            if status in JobStatus.FINISHED:
                return status
            if worker.poll() is not None:
                raise AnalyzeError(f"the worker exited with code {worker.returncode} before job {job_id} finished (log: {log_path})")
            if time.monotonic() > give_up:
                raise DeadlineExceeded(f"job {job_id} did not finish within {deadline:.0f} s ({prog.done + prog.failed} of {total} "
                                       f"images done); raise HEMATOVISION_ANALYZE_DEADLINE or see {log_path}")
            time.sleep(0.3)
    finally:
        line.close()
