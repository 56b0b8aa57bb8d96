"""The pages, with Flask's test client: every page and form, with and without the page script, and their errors."""

from __future__ import annotations

import io
import re

import pytest
from markupsafe import escape
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from api import create_app
from pipeline.settings import Settings
from tests.conftest import encode_jpeg, jpeg_bytes, synthetic_field
from tests.unit import test_api
from tests.unit.test_api import run_queued, upload
from tests.unit.test_reviews import finished_job, pdf_pages

env = test_api.env  # the API tests' fixture: an app, its settings and an in-process worker context

XHR = {"Accept": "application/json"}


def form_upload(client, files: dict[str, bytes], headers: dict | None = None, **form):
    fields = MultiDict([("files", FileStorage(io.BytesIO(b), filename=name)) for name, b in files.items()])
    for key, value in form.items():
        fields.add(key, value)
    boundary, body = encode_multipart(fields)
    return client.post("/upload", data=body, content_type=f'multipart/form-data; boundary="{boundary}"', headers=headers or {})


def test_upload_form_lands_on_the_job_page_and_shows_progress_then_the_report(env, sample_folder):
    client, _, ctx = env
    page = client.get("/")
    assert page.status_code == 200 and b'webkitdirectory' in page.data and b"app.js" in page.data and b"http" not in page.data.split(b"<body")[0]
    files = {p.relative_to(sample_folder).as_posix(): p.read_bytes() for p in sorted(sample_folder.rglob("*.jp*g"))[:6]}
    r = form_upload(client, files, kind="cells", name="smear A")  # no script: a plain form post, then a redirect
    assert r.status_code == 303
    job_page = r.headers["Location"]
    job_id = job_page.rsplit("/", 1)[1]
    html = client.get(job_page).get_data(as_text=True)
    assert "Analysing" in html and "0 / 6 images" in html and 'http-equiv="refresh"' in html
    assert client.get(f"/jobs/{job_id}/progress.json").get_json()["status"] == "queued"
    jobs = client.get("/jobs").get_data(as_text=True)
    assert "smear A" in jobs and "Cancel" in jobs
    assert "smear A" in client.get("/jobs?fragment=1").get_data(as_text=True)

    run_queued(ctx, job_id)
    html = client.get(job_page).get_data(as_text=True)
    report = client.get(f"/api/v1/jobs/{job_id}/report").get_json()
    assert "<svg" in html and "Analysing" not in html and "fewer than 100" in html
    assert report["serving"] and f'<p class="meta" id="serving">Images read by {escape(report["serving"])}.</p>' in html
    assert f'<dd class="small" id="model-name">{escape(report["model"])}</dd>' in html  # the tile names the model alone
    for row in report["differential"]:  # table and chart say what the API says
        assert re.search(rf'data-cell-type="{row["cell_type"]}" data-count="{row["count"]}" data-percent="{row["percent"]:.1f}"', html)
        assert re.search(rf'<tr data-cell-type="{row["cell_type"]}".*?<td class="num count">{row["count"]}</td>', html, re.S)
    assert client.get(f"/jobs/{job_id}/report.json").get_json()["white_cell_total"] == report["white_cell_total"]
    assert client.get(f"/jobs/{job_id}/report.csv").get_data(as_text=True).startswith("section,cell_type")
    per_image = client.get(f"/jobs/{job_id}/results.csv").get_data(as_text=True).splitlines()
    assert per_image[0].startswith("seq,path,cell,model_label,label,reviewed") and len(per_image) == 7
    pdf = client.get(f"/jobs/{job_id}/report.pdf")
    assert pdf.mimetype == "application/pdf" and pdf_pages(pdf.data) == 1
    assert client.get(f"/jobs/{job_id}/report.xml").status_code == 404


def test_upload_errors_are_readable(env):
    client, _, _ = env
    r = client.post("/upload", data={"kind": "auto"}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"choose a folder" in r.data and b"<html" in r.data
    r = form_upload(client, {"a.txt": b"not an image"}, headers=XHR)
    assert r.status_code == 422 and "none of the submitted files" in r.get_json()["error"]["message"]
    r = form_upload(client, {"a.jpg": jpeg_bytes()}, headers=XHR, kind="slides")
    assert r.status_code == 400 and "kind" in r.get_json()["error"]["message"]
    r = form_upload(client, {"a.jpg": jpeg_bytes()}, headers=XHR)
    assert r.status_code == 201 and r.get_json()["location"].startswith("/jobs/")
    missing = client.get("/jobs/0123")
    assert missing.status_code == 404 and b"there is no job" in missing.data and b"<html" in missing.data


def test_gallery_review_forms_and_signoff_lock(env, sample_folder):
    client, _, _ = env
    job_id = finished_job(env, sample_folder, n=12)
    gallery = client.get(f"/jobs/{job_id}/cells").get_data(as_text=True)
    assert gallery.count('<li class="cell') == 12 and "review-form" not in gallery
    img = client.get(f"/jobs/{job_id}/images/1")
    assert img.status_code == 200 and img.data[:2] == b"\xff\xd8"
    assert client.get(f"/jobs/{job_id}/images/13").status_code == 404  # the text file: refused at intake, nothing stored
    confidences = [float(c) for c in re.findall(r"confidence (\d\.\d\d)", client.get(f"/jobs/{job_id}/review").get_data(as_text=True))]
    assert len(confidences) == 12 and confidences == sorted(confidences)
    label = re.search(r'data-seq="1" data-cell=""\s+data-label="(\w+)"', gallery).group(1)
    only = client.get(f"/jobs/{job_id}/cells?label={label}").get_data(as_text=True)
    assert set(re.findall(r'data-label="(\w+)"', only)) == {label}
    results = client.get(f"/api/v1/jobs/{job_id}/results").get_json()["items"]
    expected = sum(1 for i in results if i["confidence"] is not None and i["confidence"] <= 0.95)
    assert client.get(f"/jobs/{job_id}/cells?max=0.95").get_data(as_text=True).count('<li class="cell') == expected

    new = "basophil" if label != "basophil" else "monocyte"
    r = client.post(f"/jobs/{job_id}/review", data={"seq": 1, "cell": "", "label": new, "reviewer": "", "back": f"/jobs/{job_id}/review"})
    assert r.status_code == 303 and "error=" in r.headers["Location"] and "reviewer" in r.headers["Location"]
    r = client.post(f"/jobs/{job_id}/review", data={"seq": 1, "cell": "", "label": new, "reviewer": "A. Tech", "back": f"/jobs/{job_id}/review"})
    assert r.status_code == 303 and r.headers["Location"] == f"/jobs/{job_id}/review" and "hv_reviewer=" in r.headers["Set-Cookie"]
    r = client.post(f"/jobs/{job_id}/review", data={"seq": 2, "label": new, "reviewer": "A. Tech"}, headers={"X-Requested-With": "fetch"})
    assert r.status_code == 200 and r.get_json()["review"]["n_reviewed"] == 2 and r.get_json()["label"] == new
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert re.search(r'id="n-reviewed">2 / [12]<', page) and f"was {label}" in client.get(f"/jobs/{job_id}/cells").get_data(as_text=True)

    r = client.post(f"/jobs/{job_id}/signoff", data={"reviewer": "Dr Signer"})
    assert r.status_code == 303
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Signed off by <strong>Dr Signer</strong>" in page and "signoff-form" not in page
    assert "review-form" not in client.get(f"/jobs/{job_id}/review").get_data(as_text=True)
    r = client.post(f"/jobs/{job_id}/review", data={"seq": 3, "label": new, "reviewer": "late"}, headers={"X-Requested-With": "fetch"})
    assert r.status_code == 409
    assert client.post(f"/jobs/{job_id}/signoff", data={"reviewer": "again"}, headers={"X-Requested-With": "fetch"}).status_code == 409


def test_cancel_from_the_jobs_page(env):
    client, _, _ = env
    job_id = upload(client, {"a.jpg": jpeg_bytes()}).get_json()["id"]
    r = client.post(f"/jobs/{job_id}/cancel", data={"back": "/jobs"})
    assert r.status_code == 303 and r.headers["Location"] == "/jobs"
    assert "canceled" in client.get("/jobs").get_data(as_text=True)
    assert "no report" in client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert client.get(f"/jobs/{job_id}/report.pdf").status_code == 409


def test_fields_gallery_shows_cell_crops_and_the_box_on_its_field(env):
    client, _, ctx = env
    files = {"slide1/f1.jpg": encode_jpeg(synthetic_field(640, 480, [(200, 200), (450, 300)], seed=1)),
             "slide2/f2.jpg": encode_jpeg(synthetic_field(640, 480, [(320, 240)], seed=3))}
    job_id = upload(client, files).get_json()["id"]
    run_queued(ctx, job_id)
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Per slide" in page and "slide1" in page and page.count("<svg") == 3
    gallery = client.get(f"/jobs/{job_id}/cells").get_data(as_text=True)
    assert gallery.count('<li class="cell') == 3 and f"/jobs/{job_id}/images/1/cells/0.jpg" in gallery
    assert client.get(f"/jobs/{job_id}/cells?slide=slide2").get_data(as_text=True).count('<li class="cell') == 1
    thumb = client.get(f"/jobs/{job_id}/images/1/cells/0.jpg")
    boxed = client.get(f"/jobs/{job_id}/images/1?box=0")
    assert thumb.data[:2] == boxed.data[:2] == b"\xff\xd8" and boxed.data != client.get(f"/jobs/{job_id}/images/1").data
    assert client.get(f"/jobs/{job_id}/images/1?box=9").status_code == 404
    r = client.post(f"/api/v1/jobs/{job_id}/reviews", json={"seq": 1, "cell": 1, "label": "eosinophil", "reviewer": "x"})
    assert r.status_code == 201 and r.get_json()["cell"] == 1
    assert client.get(f"/api/v1/jobs/{job_id}/report").get_json()["review"]["n_reviewed"] == 1


@pytest.fixture
def guarded(migrated_url, tmp_path, model_dir):
    app = create_app(Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://",
                              storage_root=str(tmp_path / "s"), model_dir=str(model_dir), api_token="s3cret"))
    yield app.test_client()
    app.extensions["hematovision"].db.dispose()


def test_with_a_token_the_pages_need_a_login_and_forms_need_the_csrf_token(guarded):
    client = guarded
    r = client.get("/jobs")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=/jobs")
    with client.get("/static/web/app.css") as css:  # static files are open without a login
        assert css.status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    r = client.post("/login", data={"token": "s3cret", "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["Location"] == "/"
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Lax" in r.headers["Set-Cookie"]
    page = client.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert form_upload(client, {"a.jpg": jpeg_bytes()}, headers=XHR).status_code == 400  # no CSRF token
    r = form_upload(client, {"a.jpg": jpeg_bytes()}, headers={**XHR, "X-CSRF-Token": token})
    assert r.status_code == 201
    assert client.get("/api/v1/jobs").status_code == 401  # the API still wants its bearer token
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/jobs").status_code == 302


def test_forms_never_redirect_off_site_and_a_too_large_upload_is_explained(env):
    client, _, _ = env
    job_id = upload(client, {"a.jpg": jpeg_bytes()}).get_json()["id"]
    for back in ("https://evil.example/", "//evil.example/", "/\\\\evil.example"):
        r = client.post(f"/jobs/{job_id}/cancel", data={"back": back})
        assert r.status_code == 303 and r.headers["Location"] == f"/jobs/{job_id}", back
    r = client.post("/upload", data=b"\x00" * 6_000_000, content_type="multipart/form-data; boundary=x")
    assert r.status_code == 413 and b"larger than the limit of 4 MB" in r.data and b"<html" in r.data
