"""What the tasks do: fan a job out into leased batches, classify a batch, finalize.

Kept free of Celery so it can be tested and reused directly; the tasks in
``worker.tasks`` only pass ids in and call these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from functools import partial

from db import TransientDatabaseError, leases
from db import repository as repo
from db.models import BatchStatus, ErrorCode, JobStatus, utcnow
from pipeline.batch import BatchLimits, classify_stream
from pipeline.classifier import describe
from pipeline.fields import FieldSettings, analyze_fields
from pipeline.localize import LocaliserConfig
from pipeline.parallel import prefetched
from pipeline.report import CellPrediction, build_report
from pipeline.settings import MAX_BATCH_SIZE
from pipeline.slides import build_fields_report
from pipeline.storage import StorageUnavailable
from worker import faults
from worker.context import WorkerContext
from worker.lease import Heartbeat, worker_identity

log = logging.getLogger(__name__)

#: model batches classified ahead of the one being written to the database
RESULTS_AHEAD = 1


def start_job(ctx: WorkerContext, job_id: str, send_batch: Callable[[int], None], resend_queued: bool = False) -> int:
    """Mark the job running, plan its batches once, and send those not in flight; returns how many were sent.

    A batch held by a live lease is never re-sent. ``resend_queued`` (``POST /enqueue``) also re-sends
    batches still queued, in case the broker lost them: a duplicate costs one refused claim, never work.

    A cells batch holds ``task_batches`` model batches, so that a worker decodes the next
    model batch while the model runs on the current one (a fields batch: one model batch of fields).
    """
    manifest = ctx.manifest
    with ctx.db.session() as session, session.begin():
        job = repo.get_job(session, job_id)
        if job is None or job.status not in JobStatus.ACTIVE:
            return 0
        repo.mark_running(session, job_id, manifest.name, manifest.version)
        batch_size = min(job.batch_size, MAX_BATCH_SIZE)
        new = leases.plan_batches(session, job_id, batch_size * (ctx.settings.task_batches if job.kind == "cells" else 1))
        lost = [b for _, b in leases.batches_to_send(session, job_id, utcnow() if resend_queued else None) if b not in new]
        leases.mark_sent(session, lost)
    for batch_id in new + lost:
        send_batch(batch_id)
    if not new and not lost:  # every image was refused at intake, or is already done
        finalize(ctx, job_id)
    return len(new) + len(lost)


def run_batch(ctx: WorkerContext, job_id: str, batch_id: int) -> int:
    """Claim one batch, process its still-pending images under a heartbeat, close it; returns how many were written."""
    holder = worker_identity()
    s = ctx.settings
    with ctx.db.session() as session, session.begin():
        job = repo.get_job(session, job_id)
        if job is None or job.status not in JobStatus.ACTIVE:
            leases.close_batch(session, batch_id, BatchStatus.FAILED)
            return 0
        claim = leases.claim_batch(session, batch_id, holder, s.lease_seconds, s.max_deliveries)
    if claim.outcome == "poison":
        log.error("batch %s of job %s: its worker died %d times; failing its images", batch_id, job_id, claim.deliveries)
        fail_batch(ctx, job_id, batch_id, ErrorCode.POISON, f"the worker processing this image died {claim.deliveries} times")
        return 0
    if claim.outcome != "claimed":
        return 0
    with Heartbeat(ctx.db, batch_id, holder, s.lease_seconds):
        written = _process(ctx, job_id, batch_id)
    with ctx.db.session() as session, session.begin():
        leases.close_batch(session, batch_id)
    finalize(ctx, job_id)
    return written


def release(ctx: WorkerContext, batch_id: int) -> None:
    """Give the batch back after a transient error (best effort: if the database is away, the lease expires)."""
    try:
        with ctx.db.session() as session, session.begin():
            leases.release_batch(session, batch_id, worker_identity())
    except TransientDatabaseError:
        pass


def fail_batch(ctx: WorkerContext, job_id: str, batch_id: int, code: str, message: str) -> None:
    """Mark a batch's pending images failed with a reason code; the rest of the job goes on."""
    with ctx.db.session() as session, session.begin():
        leases.fail_batch_images(session, batch_id, code, message)
    finalize(ctx, job_id)


def _process(ctx: WorkerContext, job_id: str, batch_id: int) -> int:
    with ctx.db.session() as session:
        job = repo.get_job(session, job_id)
        kind, batch_size = job.kind, min(job.batch_size, MAX_BATCH_SIZE)
        image_ids = leases.batch_image_ids(session, batch_id)
        images = [(img.id, img.seq, img.storage_key, img.path) for img in repo.images_for_batch(session, job_id, image_ids)]
    if not images:
        return 0
    faults.inject([path for *_, path in images])
    if kind != "fields":
        return _run_cell_batches(ctx, job_id, images, batch_size)
    items: list[tuple[int, bytes]] = []
    missing: list[repo.ResultRow] = []
    for image_id, _, key, _ in images:
        try:
            items.append((image_id, ctx.store.get(key)))
        except StorageUnavailable:
            raise
        except (OSError, ValueError) as exc:
            missing.append(repo.ResultRow(image_id, None, None, None, f"stored file unreadable: {exc.__class__.__name__}",
                                          code=ErrorCode.MISSING_FILE))
    return _run_field_batch(ctx, job_id, items, missing, {image_id: seq for image_id, seq, *_ in images})


def _run_cell_batches(ctx: WorkerContext, job_id: str, images: list[tuple[int, int, str, str]], batch_size: int) -> int:
    """Classify a batch's images model batch by model batch; one write per model batch.

    The classification runs one model batch ahead in a background thread (``prefetched``), so a
    batch's database write overlaps the next batch's inference instead of leaving the model idle
    (the write was ~9 % of the worker's busy main thread). A cancel is still noticed at the next
    write; the model batches classified meanwhile (at most three, one before) are discarded.
    """
    s = ctx.settings
    limits = BatchLimits(size=batch_size, pixels=s.batch_pixels, max_image_pixels=s.max_image_pixels)
    readers = [(image_id, partial(ctx.store.get, key)) for image_id, _, key, _ in images]
    written = 0
    stream = classify_stream(ctx.classifier, readers, limits, threads=s.thread_budget)
    with closing(prefetched(stream, RESULTS_AHEAD, name="hematovision-classify")) as batches:
        for results in batches:
            rows = [repo.ResultRow(r.key, r.label, r.confidence, r.probabilities, r.error, r.cell_found, r.ood_score,
                                   code=ErrorCode.MISSING_FILE if r.unreadable else None, stain_od=r.stain_od,
                                   red_cell_px=r.red_cell_px, focus=r.focus) for r in results]
            with ctx.db.session() as session, session.begin():
                if repo.job_status(session, job_id) not in JobStatus.ACTIVE:
                    break  # canceled or failed meanwhile: stop decoding too
                repo.record_results(session, job_id, rows, ctx.manifest.version)
            written += len(rows)
    return written


def _run_field_batch(ctx: WorkerContext, job_id: str, items: list[tuple[int, bytes]], missing: list[repo.ResultRow],
                     seq_of: dict[int, int]) -> int:
    """Localise and classify the white cells of each field; store thumbnails and cell rows."""
    s = ctx.settings
    settings = FieldSettings(LocaliserConfig(cell_diameter_px=s.cell_diameter_px), tile=s.field_tile, max_pixels=s.max_field_pixels)
    results = analyze_fields(ctx.classifier, items, settings, s.batch_size, threads=s.thread_budget)
    # (image id, cells, error, its code, red-cell diameter): a missing stored file keeps its own code
    rows: list[tuple[int, list[repo.CellRow], str | None, str | None, float | None]] = [
        (m.image_id, [], m.error, m.code, None) for m in missing]
    for field in results:
        cells = []
        for cell in field.cells:
            key = ctx.store.cell_key_for(job_id, seq_of[field.key], cell.index)
            ctx.store.put(key, cell.thumbnail_jpeg)
            cells.append(repo.CellRow(cell.index, cell.box, cell.score, cell.label, cell.confidence, cell.probabilities, key,
                                      cell.ood_score, cell.stain_od, cell.focus))
        rows.append((field.key, cells, field.error, None, field.red_cell_px))
    with ctx.db.session() as session, session.begin():
        if repo.job_status(session, job_id) in JobStatus.ACTIVE:
            for image_id, cells, error, code, red_cell_px in rows:
                repo.record_field(session, job_id, image_id, cells, error, red_cell_px, code)
    return len(rows)


def summarize(ctx: WorkerContext, session, job_id: str) -> dict:
    manifest = ctx.manifest
    if repo.get_job(session, job_id).kind == "fields":
        out = repo.field_outcomes(session, job_id)
        report = build_fields_report(out.fields, out.cells, out.failed, manifest.classes, manifest.white_cells, manifest.label,
                                     ctx.settings.low_confidence, domain=ctx.classifier.domain, red_cells=out.red_cells,
                                     cell_diameter_px=ctx.settings.cell_diameter_px)
        serving = describe(ctx.classifier)
        return {"job_id": job_id, **report, "serving": serving, "slides": [{**s, "serving": serving} for s in report["slides"]]}
    outcomes = [CellPrediction(*row) for row in repo.all_outcomes(session, job_id)]
    report = build_report(outcomes, manifest.classes, manifest.white_cells, manifest.label, ctx.settings.low_confidence,
                          domain=ctx.classifier.domain)
    return {"job_id": job_id, "kind": "cells", **report.to_dict(), "serving": describe(ctx.classifier)}


def finalize(ctx: WorkerContext, job_id: str) -> bool:
    """Once nothing is pending: store the summary and mark the job succeeded, or failed if no image
    could be processed (one winner either way)."""
    with ctx.db.session() as session, session.begin():
        progress = repo.progress(session, job_id)
        if progress.pending:
            return False
        if progress.total and not progress.done:
            codes = ", ".join(f"{n} {code}" for code, n in sorted(repo.failure_codes(session, job_id).items()))
            won = repo.fail_job(session, job_id, f"none of the {progress.total} images could be processed ({codes})",
                                ErrorCode.NOTHING_USABLE)
        else:
            won = repo.finalize_if_complete(session, job_id, lambda: summarize(ctx, session, job_id))
    if won:
        log.info("job %s finished", job_id)
    return won


def fail(ctx: WorkerContext, job_id: str, code: str, message: str) -> None:
    with ctx.db.session() as session, session.begin():
        repo.fail_job(session, job_id, message, code)
