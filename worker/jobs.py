"""What the tasks do: fan a job out into batches, classify a batch, finalize.

Kept free of Celery so it can be tested and reused directly; the tasks in
``worker.tasks`` only pass ids in and call these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from db import repository as repo
from db.models import JobStatus
from pipeline.batch import classify_batch
from pipeline.fields import FieldSettings, analyze_fields
from pipeline.localize import LocaliserConfig
from pipeline.report import CellPrediction, build_report
from pipeline.slides import build_fields_report
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def start_job(ctx: WorkerContext, job_id: str, enqueue: Callable[[list[int]], None]) -> int:
    """Mark the job running and enqueue one batch task per ``batch_size`` pending images."""
    manifest = ctx.manifest
    with ctx.db.session() as session, session.begin():
        job = repo.get_job(session, job_id)
        if job is None or job.status not in JobStatus.ACTIVE:
            return 0
        repo.mark_running(session, job_id, manifest.name, manifest.version)
        pending = repo.pending_image_ids(session, job_id)
        batch_size = job.batch_size
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    for ids in batches:
        enqueue(ids)
    if not batches:  # every image was refused at intake
        finalize(ctx, job_id)
    return len(batches)


def run_batch(ctx: WorkerContext, job_id: str, image_ids: list[int]) -> int:
    """Process the still-pending images of one batch; returns how many were written."""
    with ctx.db.session() as session:
        job = repo.get_job(session, job_id)
        if job is None or job.status not in JobStatus.ACTIVE:
            return 0
        kind = job.kind
        images = [(img.id, img.seq, img.storage_key) for img in repo.images_for_batch(session, job_id, image_ids)]
    if not images:
        finalize(ctx, job_id)
        return 0
    items: list[tuple[int, bytes]] = []
    missing: list[repo.ResultRow] = []
    for image_id, _, key in images:
        try:
            items.append((image_id, ctx.store.get(key)))
        except (OSError, ValueError) as exc:
            missing.append(repo.ResultRow(image_id, None, None, None, f"stored file unreadable: {exc.__class__.__name__}"))
    if kind == "fields":
        written = _run_field_batch(ctx, job_id, items, missing, {image_id: seq for image_id, seq, _ in images})
        finalize(ctx, job_id)
        return written
    results = classify_batch(ctx.classifier, items, ctx.settings.max_image_pixels)
    rows = missing + [repo.ResultRow(r.key, r.label, r.confidence, r.probabilities, r.error, r.cell_found, r.ood_score) for r in results]
    with ctx.db.session() as session, session.begin():
        if repo.job_status(session, job_id) in JobStatus.ACTIVE:
            repo.record_results(session, job_id, rows, ctx.manifest.version)
    finalize(ctx, job_id)
    return len(rows)


def _run_field_batch(ctx: WorkerContext, job_id: str, items: list[tuple[int, bytes]], missing: list[repo.ResultRow],
                     seq_of: dict[int, int]) -> int:
    """Localise and classify the white cells of each field; store thumbnails and cell rows."""
    s = ctx.settings
    settings = FieldSettings(LocaliserConfig(cell_diameter_px=s.cell_diameter_px), tile=s.field_tile, max_pixels=s.max_field_pixels)
    results = analyze_fields(ctx.classifier, items, settings, s.batch_size)
    rows: list[tuple[int, list[repo.CellRow], str | None]] = [(m.image_id, [], m.error) for m in missing]
    for field in results:
        cells = []
        for cell in field.cells:
            key = ctx.store.cell_key_for(job_id, seq_of[field.key], cell.index)
            ctx.store.put(key, cell.thumbnail_jpeg)
            cells.append(repo.CellRow(cell.index, cell.box, cell.score, cell.label, cell.confidence, cell.probabilities, key))
        rows.append((field.key, cells, field.error))
    with ctx.db.session() as session, session.begin():
        if repo.job_status(session, job_id) in JobStatus.ACTIVE:
            for image_id, cells, error in rows:
                repo.record_field(session, job_id, image_id, cells, error)
    return len(rows)


def summarize(ctx: WorkerContext, session, job_id: str) -> dict:
    manifest = ctx.manifest
    if repo.get_job(session, job_id).kind == "fields":
        out = repo.field_outcomes(session, job_id)
        report = build_fields_report(out.fields, out.cells, out.failed, manifest.classes, manifest.white_cells, manifest.label,
                                     ctx.settings.low_confidence)
        return {"job_id": job_id, **report}
    outcomes = [CellPrediction(*row) for row in repo.all_outcomes(session, job_id)]
    report = build_report(outcomes, manifest.classes, manifest.white_cells, manifest.label, ctx.settings.low_confidence,
                          domain=ctx.classifier.domain)
    return {"job_id": job_id, "kind": "cells", **report.to_dict()}


def finalize(ctx: WorkerContext, job_id: str) -> bool:
    """Store the summary and mark the job succeeded once nothing is pending (one winner)."""
    with ctx.db.session() as session, session.begin():
        won = repo.finalize_if_complete(session, job_id, lambda: summarize(ctx, session, job_id))
    if won:
        log.info("job %s finalized", job_id)
    return won


def fail(ctx: WorkerContext, job_id: str, error: str) -> None:
    with ctx.db.session() as session, session.begin():
        repo.fail_job(session, job_id, error)
