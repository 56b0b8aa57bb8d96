"""Hostile input gets a 4xx JSON error, never a 500; tokens are named, hashed and see only their own jobs."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import pytest

from api import create_app
from api.auth import InsecureConfiguration, new_token
from api.cli import main
from pipeline.intake import IntakeError, Limits, iter_folder, iter_zip
from pipeline.settings import Settings
from tests.conftest import jpeg_bytes, make_zip
from tests.unit.test_api import upload

LIMITS = Limits(max_total_bytes=10_000_000, max_file_bytes=100_000, max_files=5)


@pytest.fixture
def make_app(migrated_url, tmp_path, model_dir):
    apps = []

    def build(**overrides):
        allowed = tmp_path / "allowed"
        allowed.mkdir(exist_ok=True)
        settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://", storage_root=str(tmp_path / "storage"),
                            allowed_folder_root=str(allowed), model_dir=str(model_dir), max_images_per_job=5, **overrides)
        apps.append(create_app(settings))
        return apps[-1].test_client()

    yield build
    for app in apps:
        app.extensions["hematovision"].db.dispose()


def _error(r, status: int) -> str:
    assert r.status_code == status, r.get_data(as_text=True)[:500]
    return r.get_json()["error"]["message"]


@pytest.mark.parametrize(("name", "message"), [("a\x00b.jpg", "control character"), ("a\x1b[31m.jpg", "control character"),
                                               ("x" * 1100 + ".jpg", "over the limit"), ("d/" + "y" * 300 + ".jpg", "characters")])
def test_bad_file_names_are_400(make_app, name, message):
    assert message in _error(upload(make_app(), {name: jpeg_bytes()}), 400)


def test_bad_job_name_batch_size_and_kind_are_400(make_app):
    client = make_app()
    assert "control character" in _error(upload(client, {"a.jpg": jpeg_bytes()}, name="x\x00y"), 400)
    assert "over the limit" in _error(upload(client, {"a.jpg": jpeg_bytes()}, name="n" * 300), 400)
    assert "between 1 and 1024" in _error(upload(client, {"a.jpg": jpeg_bytes()}, batch_size="4096"), 400)
    assert "kind must be" in _error(client.post("/api/v1/jobs", json={"folder": "x", "kind": ["cells"]}), 400)


def _zip_with_crc_error() -> bytes:
    data = bytearray(make_zip({"a.jpg": jpeg_bytes()}))
    at = data.find(b"PK\x03\x04") + 30 + len("a.jpg")
    data[at + 100] ^= 0xFF  # a stored (uncompressed) byte changed: the CRC no longer matches
    return bytes(data)


def _encrypted_zip() -> bytes:
    data = bytearray(make_zip({"a.jpg": jpeg_bytes()}))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" flag in both headers
        at = data.find(sig)
        flags = struct.unpack("<H", data[at + offset : at + offset + 2])[0] | 1
        data[at + offset : at + offset + 2] = struct.pack("<H", flags)
    return bytes(data)


@pytest.mark.parametrize(("data", "message"), [(_zip_with_crc_error(), "damaged"), (_encrypted_zip(), "encrypted"),
                                               (make_zip({"a.jpg": jpeg_bytes()})[:-30], "not a valid zip")])
def test_zip_errors_are_400_json(make_app, data, message):
    client = make_app()
    r = client.post("/api/v1/jobs", data={"files": [(io.BytesIO(data), "x.zip")]}, content_type="multipart/form-data")
    assert message in _error(r, 400)


def test_zip_entry_count_is_read_from_the_end_record_before_the_directory():
    data = bytearray(make_zip({"a.jpg": b"x"}))
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 12] = struct.pack("<HH", 60_000, 60_000)  # claims 60,000 entries; the directory holds one
    with pytest.raises(IntakeError, match="60000 entries"):
        list(iter_zip(io.BytesIO(bytes(data)), LIMITS))
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(2 * LIMITS.max_files + 101):
            zf.writestr(f"{i}.jpg", b"x")
    with pytest.raises(IntakeError, match="entries"):
        list(iter_zip(io.BytesIO(many.getvalue()), LIMITS))


def test_json_body_is_capped_and_deep_nesting_is_400(make_app):
    client = make_app(max_json_bytes=4096)
    assert "larger than" in _error(client.post("/api/v1/jobs", json={"folder": "x" * 5000}), 413)
    client = make_app()
    deep = "[" * 30_000 + "]" * 30_000
    assert "nested too deeply" in _error(client.post("/api/v1/jobs", data=deep, content_type="application/json"), 400)
    assert "not valid JSON" in _error(client.post("/api/v1/jobs", data="{", content_type="application/json"), 400)
    assert "control character" in _error(client.post("/api/v1/jobs", json={"folder": "a\x00b"}), 400)


def test_folder_reads_regular_files_only_without_following_links(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg_bytes())
    os.mkfifo(root / "pipe.jpg")  # would block a plain open() forever
    os.symlink(root / "a.jpg", root / "link.jpg")  # inside the folder, still not followed
    assert [p for p, _ in iter_folder(root, LIMITS)] == ["a.jpg"]
    (root / "big.jpg").write_bytes(b"\xff" * (LIMITS.max_file_bytes + 1))
    with pytest.raises(IntakeError, match="per-image limit"):
        list(iter_folder(root, LIMITS))


def test_csv_cells_are_escaped_against_formula_injection():
    from pipeline.slides import fields_report_csv, spreadsheet_safe

    assert [spreadsheet_safe(v) for v in ("=HYPERLINK(1)", "+1", "-x", "@SUM", "slide 1", 3)] == ["'=HYPERLINK(1)", "'+1", "'-x", "'@SUM",
                                                                                                  "slide 1", 3]
    part = {"model": "m", "n_fields": 1, "n_fields_without_wbc": 0, "differential": [], "erythroblasts": {"count": 0, "per_100_wbc": 0.0},
            "platelets": {"count": 0}, "white_cell_total": 0, "n_images": 1, "n_failed": 0, "n_low_confidence": 0,
            "low_confidence_threshold": 0.6, "n_classified": 0}
    text = fields_report_csv({"kind": "fields", "slides": [{"slide": "=cmd|' /C calc'!A0", **part}], **part})
    assert "\n'=cmd" in text and "\n=cmd" not in text


def test_tokens_are_named_hashed_and_see_only_their_own_jobs(make_app):
    alice, alice_entry = new_token("alice")
    bob, bob_entry = new_token("bob")
    root, root_entry = new_token("root", admin=True)
    assert alice not in alice_entry  # only the hash is configured
    client = make_app(api_tokens=",".join((alice_entry, bob_entry, root_entry)))

    def as_(token):
        return {"Authorization": f"Bearer {token}"}

    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers=as_("not-a-token")).status_code == 401
    job = client.post("/api/v1/jobs", headers=as_(alice), data={"files": [(io.BytesIO(jpeg_bytes()), "a.jpg")]},
                      content_type="multipart/form-data").get_json()
    assert job["owner"] == "alice"
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=as_(alice)).status_code == 200
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=as_(bob)).status_code == 404
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=as_(bob)).status_code == 404
    assert client.get("/api/v1/jobs", headers=as_(bob)).get_json()["total"] == 0
    assert client.get("/api/v1/jobs", headers=as_(root)).get_json()["total"] == 1


def test_a_non_local_bind_needs_a_token(monkeypatch, tmp_path):
    for name in ("HEMATOVISION_API_TOKEN", "HEMATOVISION_API_TOKENS", "HEMATOVISION_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path))
    with pytest.raises(InsecureConfiguration):
        create_app(Settings(var_dir=str(tmp_path)), bind_host="0.0.0.0")
    assert main(["serve", "--host", "0.0.0.0"]) == 1  # refused before anything is served
    assert not (tmp_path / "hematovision.sqlite").exists()
    for ok in (Settings(var_dir=str(tmp_path), allow_anonymous=1), Settings(var_dir=str(tmp_path), api_token="t")):
        create_app(ok, bind_host="0.0.0.0").extensions["hematovision"].db.dispose()


def test_readiness_reports_an_unreachable_broker(migrated_url, tmp_path, model_dir):
    app = create_app(Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="redis://127.0.0.1:1/0", model_dir=str(model_dir)))
    r = app.test_client().get("/readyz")
    body = r.get_json()
    assert r.status_code == 503 and body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("error")
    app.extensions["hematovision"].db.dispose()


def test_exif_rotated_jpeg_is_decoded_upright():
    import numpy as np
    from PIL import Image

    from pipeline.images import decode_image

    buf, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), 10**7).shape == (60, 40, 3)


def test_openapi_is_json(make_app):
    assert json.loads(make_app().get("/api/v1/openapi.json").get_data())["components"]["schemas"]["Job"]["properties"]["owner"]


def test_the_pages_log_in_with_named_tokens_and_show_only_their_jobs(make_app):
    import re

    alice, alice_entry = new_token("alice")
    bob, bob_entry = new_token("bob")
    client = make_app(api_tokens=f"{alice_entry},{bob_entry}")

    def log_in(token):
        client.post("/logout", data={"csrf_token": _csrf(client)})
        assert client.post("/login", data={"token": token}).status_code == 303

    def _csrf(c):
        found = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").get_data(as_text=True))
        return found.group(1) if found else ""

    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    log_in(alice)
    r = client.post("/upload", data={"files": [(io.BytesIO(jpeg_bytes()), "a.jpg")], "csrf_token": _csrf(client)},
                    content_type="multipart/form-data", headers={"Accept": "application/json"})
    assert r.status_code == 201, r.get_data(as_text=True)[:300]
    job_page = r.get_json()["location"]
    assert client.get(job_page).status_code == 200
    log_in(bob)
    assert client.get(job_page).status_code == 404  # another owner's job is as good as absent
    assert job_page.rsplit("/", 1)[1] not in client.get("/jobs").get_data(as_text=True)
