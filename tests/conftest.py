"""Shared fixtures: databases (SQLite and the real Postgres), models, images.

Every database-backed test runs twice, once per backend. Postgres tests get a
fresh database of their own on 127.0.0.1:5432 (``HEMATOVISION_TEST_PG_URL``
overrides the server), so runs never see each other's rows.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("HEMATOVISION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HEMATOVISION_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def shipped_model_dir() -> Path:
    found = sorted(REPO.glob("models/*/manifest.json"))
    assert len(found) == 1, f"expected exactly one shipped model under models/, found {found}"
    return found[0].parent


@pytest.fixture(scope="session")
def model_dir() -> Path:
    override = os.environ.get("HEMATOVISION_TEST_MODEL_DIR")
    return Path(override) if override else shipped_model_dir()


def _pg_create() -> tuple[str, str]:
    import psycopg

    name = "hv_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """An empty database URL, SQLite file or a fresh Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hv.sqlite'}"
        return
    name, url = _pg_create()
    try:
        yield url
    finally:
        _pg_drop(name)


@pytest.fixture
def migrated_url(database_url) -> str:
    from db.migrate import upgrade

    upgrade(database_url)
    return database_url


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (240, 320)) -> bytes:
    """A real JPEG of a synthetic stained-cell-like blob."""
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), (200, 170, 220), np.uint8)
    center = (size[1] // 2 + int(rng.integers(-20, 20)), size[0] // 2 + int(rng.integers(-20, 20)))
    cv2.circle(img, center, int(rng.integers(25, 45)), (140, 40, 90), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression-bomb stand-in)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def pdf_text(pdf: bytes) -> str:
    """The drawn text operators of a ReportLab PDF (its content streams are ASCII85 + Flate encoded)."""
    import base64
    import re
    import zlib

    streams = re.findall(rb"/Filter \[ /ASCII85Decode /FlateDecode \][^>]*>>\s*stream\r?\n(.*?)endstream", pdf, re.S)
    return "\n".join(zlib.decompress(base64.a85decode(s.strip(), adobe=True)).decode("latin-1") for s in streams)


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.fixture
def sample_folder() -> Path:
    return REPO / "samples" / "cells"


def synthetic_field(width: int, height: int, wbc_centers: list[tuple[int, int]], seed: int = 0, rbc: int = 40) -> np.ndarray:
    """A stained-smear-like field (BGR): pale background, pink red cells, violet WBC nuclei at known centres.

    Sizes follow BCCD at 640x480: red cells ~ 90 px, white cells ~ 190 px with a ~ 110 px nucleus.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (228, 226, 232)
    for _ in range(rbc):
        c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, c, int(rng.integers(38, 48)), (178, 168, 226), -1)
        cv2.circle(img, c, int(rng.integers(12, 20)), (200, 192, 232), -1)
    for x, y in wbc_centers:
        cv2.circle(img, (x, y), 92, (214, 196, 222), -1)  # cytoplasm
        for dx, dy in ((-22, -10), (18, -16), (0, 22)):  # a three-lobed nucleus
            cv2.ellipse(img, (x + dx, y + dy), (30, 24), int(rng.integers(0, 180)), 0, 360, (165, 55, 105), -1)
    for _ in range(6):  # platelets: violet but small
        cv2.circle(img, (int(rng.integers(0, width)), int(rng.integers(0, height))), 5, (170, 80, 120), -1)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def bccd_fields(n: int, hue: float = 0.0) -> dict[str, bytes]:
    """The first ``n`` held-out BCCD fields (the odd half of ``training.evaluate_fields``), as JPEG bytes by file name.

    Real in-domain fields: the source photographs of the Kaggle training images.
    ``hue``: every pixel's hue rotated by that many degrees (a synthetic stain shift).
    """
    from training.shifts import hue_rotation

    folder = SHARED / "bccd" / "JPEGImages"
    paths = sorted(folder.glob("*.jpg"))[1::2][:n]
    if len(paths) < n:
        pytest.fail(f"BCCD fields not found at {folder}: ../shared must sit beside the repository")
    if not hue:
        return {p.name: p.read_bytes() for p in paths}
    return {p.name: encode_jpeg(hue_rotation(cv2.imread(str(p)), None, hue)) for p in paths}


def encode_jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def module_app(tmp_path_factory, model_dir):
    """One app per test module on a migrated SQLite file and the in-memory broker (for many generated requests)."""
    from api import create_app
    from db.migrate import upgrade
    from pipeline.settings import Settings

    tmp = tmp_path_factory.mktemp("app")
    url = f"sqlite:///{tmp / 'hv.sqlite'}"
    upgrade(url)
    app = create_app(Settings(var_dir=str(tmp), database_url=url, broker_url="memory://", storage_root=str(tmp / "s"), model_dir=str(model_dir),
                              allowed_folder_root=str(tmp), max_upload_bytes=2_000_000))
    yield app
    app.extensions["hematovision"].db.dispose()
