"""JSON shapes of jobs and results (no business logic, no SQL)."""

from __future__ import annotations

from datetime import datetime

from flask import url_for

from db.models import Cell, Image, Job, Prediction
from db.repository import Progress


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    if (a.tzinfo is None) != (b.tzinfo is None):  # SQLite returns naive datetimes
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return round((b - a).total_seconds(), 3)


def job_json(job: Job, progress: Progress) -> dict:
    return {
        "id": job.id,
        "status": job.status,
        "kind": job.kind,
        "kind_source": job.kind_source,
        "source": job.source,
        "name": job.name,
        "owner": job.owner,
        "batch_size": job.batch_size,
        "images": {"total": progress.total, "done": progress.done, "failed": progress.failed, "pending": progress.pending},
        "model": {"name": job.model_name, "version": job.model_version},
        "error": job.error,
        "error_code": job.error_code,
        "timings": {
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "queued_seconds": _seconds(job.created_at, job.started_at),
            "running_seconds": _seconds(job.started_at, job.finished_at),
        },
        "links": {
            "self": url_for("jobs.get_job", job_id=job.id),
            "results": url_for("jobs.get_results", job_id=job.id),
            "report": url_for("jobs.get_report", job_id=job.id),
        },
    }


def cell_json(image: Image, cell: Cell) -> dict:
    return {"index": cell.idx, "box": [cell.x0, cell.y0, cell.x1, cell.y1], "score": cell.score, "label": cell.label,
            "confidence": cell.confidence, "probabilities": cell.probabilities, "ood_score": cell.ood_score,
            "blur_effect": cell.focus,
            "thumbnail": url_for("jobs.cell_thumbnail", job_id=image.job_id, seq=image.seq, idx=cell.idx)}


def result_json(image: Image, prediction: Prediction | None, cells: list[Cell] | None = None) -> dict:
    if cells is not None:  # a field image of a "fields" job
        return {"seq": image.seq, "path": image.path, "status": image.status, "cells": [cell_json(image, c) for c in cells],
                "error": image.error, "error_code": image.error_code}
    return {
        "seq": image.seq,
        "path": image.path,
        "status": image.status,
        "label": prediction.label if prediction else None,
        "confidence": prediction.confidence if prediction else None,
        "probabilities": prediction.probabilities if prediction else None,
        "cell_found": prediction.cell_found if prediction else None,
        "ood_score": prediction.ood_score if prediction else None,
        "blur_effect": prediction.focus if prediction else None,  # the focus check's measure (models from 2.4.2)
        "error": image.error,
        "error_code": image.error_code,
    }
