"""Turning what a client sends into (relative path, bytes) items, safely.

User file names are only ever *labels* (kept for the report); they are never
used as paths on disk. Zip members with absolute paths, ``..`` parts or
symlink modes are refused, as is a zip that would expand past the size limit.
Server-side folders must resolve inside the configured allowed root.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IGNORED_PARTS = ("__MACOSX",)


class IntakeError(ValueError):
    """The submission as a whole is unacceptable; the message says why."""


class FolderNotAllowed(IntakeError):
    """A server-side folder outside the allowed root, or server-side folders switched off."""


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int
    max_file_bytes: int
    max_files: int


def clean_relative_path(name: str) -> str:
    """Normalise a client-supplied name to a safe POSIX relative path or raise IntakeError."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise IntakeError(f"absolute path not allowed: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise IntakeError(f"path escapes the job folder: {name!r}")
    if not parts:
        raise IntakeError(f"empty file name: {name!r}")
    return "/".join(parts)


def _skipped(relpath: str) -> bool:
    parts = relpath.split("/")
    return any(p in IGNORED_PARTS or p.startswith(".") for p in parts)


def iter_zip(path_or_file, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Yield image candidates from a zip, refusing the whole zip on any unsafe member."""
    try:
        archive = zipfile.ZipFile(path_or_file)
    except zipfile.BadZipFile:
        raise IntakeError("the upload is not a valid zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = 0
        for member in members:
            mode = member.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise IntakeError(f"zip member is a symlink: {member.filename!r}")
            clean_relative_path(member.filename)
            total += member.file_size
        if len(members) > limits.max_files:
            raise IntakeError(f"zip holds {len(members)} files, over the limit of {limits.max_files}")
        if total > limits.max_total_bytes:
            raise IntakeError(f"zip expands to {total} bytes, over the limit of {limits.max_total_bytes}")
        for member in members:
            relpath = clean_relative_path(member.filename)
            if _skipped(relpath):
                continue
            if member.file_size > limits.max_file_bytes:
                raise IntakeError(f"{relpath} is {member.file_size} bytes, over the per-image limit of {limits.max_file_bytes}")
            with archive.open(member) as fh:
                data = fh.read(limits.max_file_bytes + 1)
            if len(data) > limits.max_file_bytes:  # header lied about the size
                raise IntakeError(f"{relpath} expands past the per-image limit")
            yield relpath, data


def resolve_allowed_folder(folder: str, allowed_root: str) -> Path:
    """Resolve ``folder`` and check it lies under ``allowed_root`` (symlinks resolved)."""
    if not allowed_root:
        raise FolderNotAllowed("server-side folders are disabled (HEMATOVISION_ALLOWED_FOLDER_ROOT is not set)")
    root = Path(allowed_root).resolve()
    candidate = Path(folder)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if target != root and root not in target.parents:
        raise FolderNotAllowed(f"folder {folder!r} is outside the allowed root")
    if not target.is_dir():
        raise IntakeError(f"folder {folder!r} does not exist or is not a directory")
    return target


def iter_folder(target: Path, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Yield files under an already-resolved folder; symlinks leaving it are skipped."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            relpath = path.relative_to(target).as_posix()
            if _skipped(relpath):
                continue
            real = path.resolve()
            if target not in real.parents:
                continue
            count += 1
            if count > limits.max_files:
                raise IntakeError(f"folder holds more than {limits.max_files} files")
            size = real.stat().st_size
            if size > limits.max_file_bytes:
                raise IntakeError(f"{relpath} is {size} bytes, over the per-image limit of {limits.max_file_bytes}")
            yield relpath, real.read_bytes()
