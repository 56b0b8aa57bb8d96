"""The embedded one-shot path: ``hematovision analyze FOLDER``.

Runs the real system on one machine with nothing to start by hand: migrates
the SQLite database, stores the folder as a job through the same intake as
the API, starts a real Celery worker process on the embedded (SQLite) broker,
waits for the job, and writes the report files.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from api.state import AppState
from api.submission import accept_job
from db import repository as repo
from db.migrate import upgrade
from db.models import JobStatus
from pipeline.intake import Limits, iter_folder
from pipeline.settings import Settings
from pipeline.slides import summary_csv


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process exactly these settings."""
    env = dict(os.environ)
    env.update({"HEMATOVISION_VAR_DIR": str(Path(settings.var_dir).resolve()),
                "HEMATOVISION_DATABASE_URL": settings.resolved_database_url,
                "HEMATOVISION_BROKER_URL": settings.resolved_broker_url,
                "HEMATOVISION_STORAGE_ROOT": str(settings.resolved_storage_root),
                "HEMATOVISION_MODEL_DIR": str(Path(settings.model_dir).resolve()),
                "HEMATOVISION_BACKEND": settings.backend,
                "HEMATOVISION_QUEUE": settings.queue,
                "HEMATOVISION_BATCH_SIZE": str(settings.batch_size)})
    return env


def start_worker(settings: Settings, concurrency: int = 1, log_path: Path | None = None) -> subprocess.Popen:
    """A real Celery worker process with the same settings (passed via the environment)."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.make_celery", "worker", "--loglevel=INFO" if log_path else "--loglevel=WARNING",
           f"--concurrency={concurrency}", "--without-gossip", "--without-mingle", "--without-heartbeat",
           f"--hostname=hv-{uuid.uuid4().hex[:8]}@%h"]
    cwd = Path(__file__).resolve().parent.parent
    if log_path is None:
        return subprocess.Popen(cmd, env=worker_environment(settings), cwd=cwd, stdout=subprocess.DEVNULL)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=worker_environment(settings), cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def analyze(folder: str, out_dir: str, settings: Settings, progress: bool = True, kind: str = "auto") -> dict:
    """Classify every image under ``folder``, write report.json, report.csv, results.csv; return the summary."""
    target = Path(folder).resolve()
    if not target.is_dir():
        raise SystemExit(f"error: {folder} is not a directory")
    upgrade(settings.resolved_database_url)
    st = AppState.create(settings)
    limits = Limits(settings.max_upload_bytes, settings.max_image_bytes, settings.max_images_per_job)
    job_id = accept_job(st, iter_folder(target, limits), "folder", target.name, None, kind)
    with st.db.session() as session:
        job = repo.get_job(session, job_id)
        print(f"job {job_id}: {target} queued as '{job.kind}' ({job.kind_source})", flush=True)
    log_path = Path(settings.var_dir) / "worker.log"
    worker = start_worker(settings, log_path=log_path)
    try:
        status = _wait(st, job_id, worker, progress)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    if status != JobStatus.SUCCEEDED:
        with st.db.session() as session:
            raise SystemExit(f"error: job {job_id} ended {status}: {repo.get_job(session, job_id).error} (worker log: {log_path})")
    with st.db.session() as session:
        summary = repo.get_summary(session, job_id)
        rows = repo.results_page(session, job_id, 10**9, 0)
        cells = repo.cells_of_images(session, job_id, [img.id for img, _ in rows]) if summary.get("kind") == "fields" else None
        if cells is None:
            header = ["path", "label", "confidence", "white_cell_found", "ood_score", "error"]
            results = [[img.path, pred.label if pred else "", f"{pred.confidence:.4f}" if pred else "",
                        ("yes" if pred.cell_found else "no") if pred else "", "" if not pred or pred.ood_score is None else pred.ood_score,
                        img.error or ""] for img, pred in rows]
        else:
            header = ["path", "cell", "x0", "y0", "x1", "y1", "label", "confidence", "error"]
            results = [[img.path, c.idx, c.x0, c.y0, c.x1, c.y1, c.label, f"{c.confidence:.4f}", ""] for img, _ in rows for c in cells[img.id]]
            results += [[img.path, "", "", "", "", "", "", "", img.error] for img, _ in rows if img.error]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.csv").write_text(summary_csv(summary))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(results)
    st.db.dispose()
    return summary


def _wait(st: AppState, job_id: str, worker: subprocess.Popen, progress: bool) -> str:
    from tqdm import tqdm

    with st.db.session() as session:
        total = repo.progress(session, job_id).total
    bar = tqdm(total=total, unit="img", disable=not progress, desc="classifying")
    while True:
        with st.db.session() as session:
            status = repo.job_status(session, job_id)
            prog = repo.progress(session, job_id)
        bar.update(prog.done + prog.failed - bar.n)
        if status in JobStatus.FINISHED:
            bar.close()
            return status
        if worker.poll() is not None:
            bar.close()
            raise SystemExit(f"error: the worker exited with code {worker.returncode} before job {job_id} finished")
        time.sleep(0.3)
