"""Database-side figures: predictions/s the shared database accepts, and the report of a large job.

Both go through the same repository functions the workers use (one upsert and
one status update per batch, counters on the job row), so the write rate is
the ceiling that N worker hosts sharing this database cannot exceed.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import uuid

import numpy as np

from db import repository as repo
from db.engine import Database


def _job_with_images(db: Database, n: int, batch_size: int) -> tuple[str, list[int]]:
    job_id = uuid.uuid4().hex
    images = [repo.NewImage(i, f"bench/{i:06d}.jpg", f"jobs/{job_id}/{i:07d}.jpg") for i in range(1, n + 1)]
    with db.session() as s, s.begin():
        repo.create_job(s, job_id, "folder", "bench", batch_size, images)
        repo.mark_running(s, job_id, "bench", "0")
    with db.session() as s:
        return job_id, repo.pending_image_ids(s, job_id)


def _rows(ids: list[int], classes: list[str], seed: int) -> list[repo.ResultRow]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(classes)) * 0.3, size=len(ids))
    return [repo.ResultRow(i, classes[int(p.argmax())], float(p.max()), {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}, None)
            for i, p in zip(ids, probs, strict=True)]


def write_job(db: Database, job_id: str, ids: list[int], classes: list[str], batch_size: int) -> None:
    """Write a job's predictions as workers do: one transaction per batch."""
    for start in range(0, len(ids), batch_size):
        with db.session() as s, s.begin():
            repo.record_results(s, job_id, _rows(ids[start : start + batch_size], classes, start), "0")


def _writer(url: str, n: int, batch_size: int, classes: list[str], barrier, out) -> None:
    db = Database(url)
    job_id, ids = _job_with_images(db, n, batch_size)
    barrier.wait()
    t0 = time.time()
    write_job(db, job_id, ids, classes, batch_size)
    out.put((t0, time.time(), n))
    db.dispose()


def write_rate(url: str, writers: int, n_per_writer: int, batch_size: int, classes: list[str]) -> float:
    """Predictions/s accepted with ``writers`` concurrent writer processes (one job each)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, n_per_writer, batch_size, classes, barrier, out)) for _ in range(writers)]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for _, _, n in spans) / (max(t1 for _, t1, _ in spans) - min(t0 for t0, _, _ in spans))


def large_job(url: str, n: int, batch_size: int, classes: list[str]) -> str:
    """A running job of ``n`` images with every prediction written (ready to be finalised)."""
    db = Database(url)
    job_id, ids = _job_with_images(db, n, batch_size)
    write_job(db, job_id, ids, classes, batch_size)
    db.dispose()
    return job_id


def median_ms(call, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)
