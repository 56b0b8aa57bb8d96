"""Accepting a job: store every file, commit the job, then enqueue it.

Order matters for "nothing accepted is lost": files are stored first (atomic
renames), then the job and image rows are committed in one transaction, and
only then is the work enqueued. A failure before the commit removes the
job's stored files; nothing is enqueued for a job that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from api.state import AppState
from db import repository as repo
from pipeline.fields import looks_like_fields
from pipeline.images import ACCEPTED_FORMATS, ImageRejected, sniff_format
from pipeline.intake import IntakeError

KINDS = ("cells", "fields", "auto")


class NothingUsable(IntakeError):
    """Every submitted file was refused: a job with nothing usable is never created."""

    def __init__(self, message: str, files: list[dict]) -> None:
        super().__init__(message)
        self.files = files


class BrokerUnavailable(RuntimeError):
    """The job is stored but could not be sent to the workers; ``POST /enqueue`` (or the reaper) sends it later."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} is stored but the broker is unreachable ({reason}); "
                         f"retry with POST /api/v1/jobs/{job_id}/enqueue")
        self.job_id = job_id


def accept_job(st: AppState, items: Iterable[tuple[str, bytes]], source: str, name: str | None, batch_size: int | None,
               kind: str = "auto", owner: str | None = None) -> str:
    """Store ``(relative path, bytes)`` items as a new job and enqueue it; returns the job id.

    ``kind`` is "cells" (one cell per image), "fields" (field/slide images) or
    "auto": fields when the images are microscope-field sized.
    """
    settings = st.settings
    if kind not in KINDS:
        raise IntakeError(f"kind must be one of {', '.join(KINDS)}")
    job_id = uuid.uuid4().hex
    images: list[repo.NewImage] = []
    pixels: dict[int, tuple[int, int]] = {}
    try:
        for seq, (relpath, data) in enumerate(items, start=1):
            if seq > settings.max_images_per_job:
                raise IntakeError(f"a job holds at most {settings.max_images_per_job} images")
            try:
                fmt, width, height = sniff_format(data, max(settings.max_image_pixels, settings.max_field_pixels))
            except ImageRejected as exc:
                images.append(repo.NewImage(seq, relpath, None, str(exc)))
                continue
            key = st.store.key_for(job_id, seq, ACCEPTED_FORMATS[fmt])
            st.store.put(key, data, durable=False)  # made durable together by sync() below
            images.append(repo.NewImage(seq, relpath, key))
            pixels[seq] = (width, height)
        kind_source = "client" if kind != "auto" else "auto"
        if kind == "auto":
            kind = "fields" if looks_like_fields(list(pixels.values())) else "cells"
        images = _apply_pixel_limit(st, images, pixels, settings.max_field_pixels if kind == "fields" else settings.max_image_pixels)
        if not images:
            raise IntakeError("the submission contains no files")
        if all(i.error for i in images):
            raise NothingUsable("none of the submitted files is a usable image",
                                [{"path": i.path, "error": i.error} for i in images[:100]])
        st.store.sync()  # every stored file is on disk before the job that names it is committed
        with st.db.session() as session, session.begin():
            repo.create_job(session, job_id, source, name, batch_size or settings.batch_size, images, kind, kind_source, owner)
    except BaseException:
        st.store.delete_job(job_id)
        raise
    try:
        st.enqueue_job(job_id)
    except Exception as exc:  # job and files are safe; say so and how to retry
        raise BrokerUnavailable(job_id, exc.__class__.__name__) from None
    return job_id


def _apply_pixel_limit(st: AppState, images: list[repo.NewImage], pixels: dict[int, tuple[int, int]], limit: int) -> list[repo.NewImage]:
    """Turn images over the job kind's pixel limit into error rows (their stored files removed)."""
    out = []
    for image in images:
        size = pixels.get(image.seq)
        if size and size[0] * size[1] > limit:
            st.store.delete(image.storage_key)
            image = repo.NewImage(image.seq, image.path, None,
                                  f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of {limit}")
        out.append(image)
    return out
