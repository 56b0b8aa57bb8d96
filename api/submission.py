"""Accepting a job: store every file, commit the job, then enqueue it.

Order matters for "nothing accepted is lost": files are stored first (atomic
renames), then the job and image rows are committed in one transaction, and
only then is the work enqueued. A failure before the commit removes the
job's stored files; nothing is enqueued for a job that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from api.errors import ApiError
from api.state import AppState
from db import repository as repo
from pipeline.images import ACCEPTED_FORMATS, ImageRejected, sniff_format
from pipeline.intake import IntakeError


def accept_job(st: AppState, items: Iterable[tuple[str, bytes]], source: str, name: str | None, batch_size: int | None) -> str:
    """Store ``(relative path, bytes)`` items as a new job and enqueue it; returns the job id."""
    settings = st.settings
    job_id = uuid.uuid4().hex
    images: list[repo.NewImage] = []
    try:
        for seq, (relpath, data) in enumerate(items, start=1):
            if seq > settings.max_images_per_job:
                raise IntakeError(f"a job holds at most {settings.max_images_per_job} images")
            try:
                fmt, _, _ = sniff_format(data, settings.max_image_pixels)
            except ImageRejected as exc:
                images.append(repo.NewImage(seq, relpath, None, str(exc)))
                continue
            key = st.store.key_for(job_id, seq, ACCEPTED_FORMATS[fmt])
            st.store.put(key, data)
            images.append(repo.NewImage(seq, relpath, key))
        if not images:
            raise ApiError(400, "the submission contains no files")
        if all(i.error for i in images):
            raise ApiError(422, "none of the submitted files is a usable image",
                           files=[{"path": i.path, "error": i.error} for i in images[:100]])
        with st.db.session() as session, session.begin():
            repo.create_job(session, job_id, source, name, batch_size or settings.batch_size, images, None, None)
    except IntakeError as exc:
        st.store.delete_job(job_id)
        raise ApiError(400, str(exc)) from None
    except BaseException:
        st.store.delete_job(job_id)
        raise
    try:
        st.enqueue_job(job_id)
    except Exception as exc:  # job and files are safe; say so and how to retry
        raise ApiError(503, f"job {job_id} is stored but the broker is unreachable: {exc.__class__.__name__}",
                       job_id=job_id) from None
    return job_id
