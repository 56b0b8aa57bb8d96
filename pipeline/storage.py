"""Job image storage shared by the API (writer) and the workers (readers).

Keys are built from job id and image sequence number only, never from user
file names. Writes go through a temporary file and an atomic rename, so a
reader never sees half a file. A writer of many files (job intake) skips the
per-file fsync and makes them all durable with one ``sync()`` before it
commits the job: one flush instead of thousands (each fsync costs more than
classifying the image).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

_KEY = re.compile(r"^jobs/[0-9a-f]{32}/([0-9]{7}|cells/[0-9]{7}_[0-9]{5})\.[a-z]{3,4}$")


class StorageUnavailable(OSError):
    """The store cannot be read right now (volume not mounted, I/O error): retry later, the images are not at fault."""


class ImageStore:
    """Files under one root directory, addressed by keys like ``jobs/<job>/0000001.jpg``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key_for(job_id: str, seq: int, suffix: str) -> str:
        return f"jobs/{job_id}/{seq:07d}{suffix}"

    @staticmethod
    def cell_key_for(job_id: str, seq: int, index: int) -> str:
        """Thumbnail of the ``index``-th white cell found in field image ``seq``."""
        return f"jobs/{job_id}/cells/{seq:07d}_{index:05d}.jpg"

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, durable: bool = True) -> None:
        """Store ``data`` under ``key``; with ``durable=False`` it is on disk only after ``sync()``."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def sync(self) -> None:
        """Make every file written so far durable: syncfs(2) on the storage's filesystem (Linux), else sync(2)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        """The stored bytes; FileNotFoundError when only this file is gone, StorageUnavailable when the store is."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not path.parent.is_dir():  # the job's whole folder is missing: an unmounted or wrong volume
                raise StorageUnavailable(f"storage folder for {key!r} is missing under {self.root}") from None
            raise
        except OSError as exc:
            raise StorageUnavailable(f"storage read failed for {key!r}: {exc.strerror or exc.__class__.__name__}") from None

    def job_folders_older_than(self, seconds: float) -> list[str]:
        """Job ids whose storage folder was last changed more than ``seconds`` ago (candidates for the orphan sweep)."""
        jobs = self.root / "jobs"
        if not jobs.is_dir():
            return []
        cutoff = time.time() - seconds
        out = []
        for entry in os.scandir(jobs):
            if re.fullmatch(r"[0-9a-f]{32}", entry.name) and entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                out.append(entry.name)
        return out

    def delete_job(self, job_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        shutil.rmtree(self.root / "jobs" / job_id, ignore_errors=True)
