"""Turning what a client sends into (relative path, bytes) items, safely.

User file names are only ever *labels* (kept for the report); they are never
used as paths on disk. Zip members with absolute paths, ``..`` parts or
symlink modes are refused, as is a zip that would expand past the size limit.
Server-side folders must resolve inside the configured allowed root and are
read with O_NOFOLLOW, regular files only, each under the per-image limit.
Names with control characters or over the length limits are refused. A zip's
entry count is read from its end-of-central-directory record before the
directory itself is parsed.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IGNORED_PARTS = ("__MACOSX",)
MAX_PATH_CHARS = 1024  # a client's relative path, as stored and shown in reports
MAX_PART_CHARS = 255  # one path component (NAME_MAX on common file systems)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class IntakeError(ValueError):
    """The submission as a whole is unacceptable; the message says why."""


class FolderNotAllowed(IntakeError):
    """A server-side folder outside the allowed root, or server-side folders switched off."""


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int
    max_file_bytes: int
    max_files: int


def check_text(label: str, value: str, max_chars: int) -> str:
    """Refuse control characters (NUL included) and over-long values in client-supplied text."""
    if _CONTROL.search(value):
        raise IntakeError(f"{label} contains a control character: {value[:80]!r}")
    if len(value) > max_chars:
        raise IntakeError(f"{label} is {len(value)} characters long, over the limit of {max_chars}")
    return value


def clean_relative_path(name: str) -> str:
    """Normalise a client-supplied name to a safe POSIX relative path or raise IntakeError."""
    check_text("file name", name, MAX_PATH_CHARS)
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise IntakeError(f"absolute path not allowed: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise IntakeError(f"path escapes the job folder: {name!r}")
    if not parts:
        raise IntakeError(f"empty file name: {name!r}")
    if any(len(p) > MAX_PART_CHARS for p in parts):
        raise IntakeError(f"a part of {name[:80]!r}... is over {MAX_PART_CHARS} characters")
    return "/".join(parts)


def _skipped(relpath: str) -> bool:
    parts = relpath.split("/")
    return any(p in IGNORED_PARTS or p.startswith(".") for p in parts)


#: Errors the zipfile module raises for damaged, encrypted or unsupported members.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, OSError,
              ValueError, struct.error)


def zip_entry_count(fh) -> int | None:
    """The entry count from the end-of-central-directory record (ZIP64 aware), without parsing the directory.

    None when no such record is found (then the file is not a zip).
    """
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_start = max(0, size - (22 + 65_535))
    fh.seek(tail_start)
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    if entries == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":  # ZIP64 locator before the record
        offset = struct.unpack("<Q", tail[at - 12 : at - 4])[0]
        fh.seek(offset)
        record = fh.read(56)
        if record[:4] == b"PK\x06\x06":
            entries = struct.unpack("<Q", record[32:40])[0]
    return entries


def iter_zip(path_or_file, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Yield image candidates from a zip, refusing the whole zip on any unsafe or damaged member."""
    try:
        entries = zip_entry_count(path_or_file)
    except ZIP_ERRORS:
        entries = None
    if entries is not None and entries > 2 * limits.max_files + 100:  # room for folder entries and skipped junk
        raise IntakeError(f"zip holds {entries} entries, over the limit of {limits.max_files} files")
    try:
        path_or_file.seek(0)
        archive = zipfile.ZipFile(path_or_file)
    except ZIP_ERRORS:
        raise IntakeError("the upload is not a valid zip file") from None
    with archive:
        yield from _zip_members(archive, limits)


def _zip_members(archive: zipfile.ZipFile, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Check every member from the parsed directory (symlinks, paths, counts, sizes), then read them."""
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
        if member.flag_bits & 0x1:
            raise IntakeError(f"zip member {relpath!r} is encrypted")
        try:
            with archive.open(member) as fh:
                data = fh.read(limits.max_file_bytes + 1)
        except ZIP_ERRORS as exc:
            raise IntakeError(f"zip member {relpath!r} is damaged ({exc.__class__.__name__})") from None
        if len(data) > limits.max_file_bytes:  # header lied about the size
            raise IntakeError(f"{relpath} expands past the per-image limit")
        yield relpath, data


def resolve_allowed_folder(folder: str, allowed_root: str) -> Path:
    """Resolve ``folder`` and check it lies under ``allowed_root`` (symlinks resolved)."""
    if not allowed_root:
        raise FolderNotAllowed("server-side folders are disabled (HEMATOVISION_ALLOWED_FOLDER_ROOT is not set)")
    check_text("folder", folder, MAX_PATH_CHARS)
    root = Path(allowed_root).resolve()
    candidate = Path(folder)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if target != root and root not in target.parents:
        raise FolderNotAllowed(f"folder {folder!r} is outside the allowed root")
    if not target.is_dir():
        raise IntakeError(f"folder {folder!r} does not exist or is not a directory")
    return target


def _read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None if it is a symlink or not a regular file (FIFO, device, socket); never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # ELOOP: a symlink; or gone / unreadable
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > max_bytes:
            raise IntakeError(f"{path.name} is {info.st_size} bytes, over the per-image limit of {max_bytes}")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read it
        raise IntakeError(f"{path.name} is over the per-image limit of {max_bytes}")
    return data


def iter_folder(target: Path, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Yield regular files under an already-resolved folder; symlinks and special files are skipped."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            relpath = path.relative_to(target).as_posix()
            if _skipped(relpath):
                continue
            data = _read_regular_file(path, limits.max_file_bytes)
            if data is None:
                continue
            count += 1
            if count > limits.max_files:
                raise IntakeError(f"folder holds more than {limits.max_files} files")
            yield clean_relative_path(relpath), data
