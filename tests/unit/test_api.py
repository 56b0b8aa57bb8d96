"""API tests with Flask's test client; jobs are run by the worker's own code in-process.

The broker is kombu's in-memory transport here; the integration tests run the
same flow through real Celery workers, Redis and Postgres.
"""

from __future__ import annotations

import io

import pytest

from api import create_app
from db.models import JobStatus
from pipeline.settings import Settings
from tests.conftest import jpeg_bytes, make_zip, png_header_only
from worker import jobs
from worker.context import WorkerContext


@pytest.fixture
def env(migrated_url, tmp_path, model_dir):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://",
                        storage_root=str(tmp_path / "storage"), allowed_folder_root=str(allowed),
                        model_dir=str(model_dir), batch_size=4, max_upload_bytes=5_000_000)
    app = create_app(settings)
    ctx = WorkerContext(settings)
    yield app.test_client(), settings, ctx
    ctx.db.dispose()
    app.extensions["hematovision"].db.dispose()


def run_queued(ctx: WorkerContext, job_id: str) -> None:
    """Do what the Celery tasks do, in-process: fan out, then run every batch."""
    batches: list[list[int]] = []
    jobs.start_job(ctx, job_id, batches.append)
    for ids in batches:
        jobs.run_batch(ctx, job_id, ids)


def upload(client, files: dict[str, bytes], **form):
    """POST files as multipart, encoded in memory (Werkzeug's test client would spool
    a large body to a temporary file it never closes)."""
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    fields = MultiDict([("files", FileStorage(io.BytesIO(b), filename=name)) for name, b in files.items()])
    for key, value in form.items():
        fields.add(key, value)
    boundary, body = encode_multipart(fields)
    return client.post("/api/v1/jobs", data=body, content_type=f'multipart/form-data; boundary="{boundary}"')


def test_submit_poll_results_report(env, sample_folder):
    client, settings, ctx = env
    files = {p.relative_to(sample_folder).as_posix(): p.read_bytes() for p in sorted(sample_folder.rglob("*.jp*g"))[:10]}
    files["notes/readme.txt"] = b"not an image"
    files["broken/truncated.jpg"] = jpeg_bytes()[:2000]
    r = upload(client, files, name="smear 1")
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["images"] == {"total": 12, "done": 0, "failed": 1, "pending": 11}

    r = client.get(f"/api/v1/jobs/{job['id']}/report")
    assert r.status_code == 409 and r.get_json()["error"]["status"] == "queued"

    run_queued(ctx, job["id"])
    status = client.get(job["links"]["self"]).get_json()
    assert status["status"] == "succeeded"
    assert status["images"] == {"total": 12, "done": 10, "failed": 2, "pending": 0}
    assert status["model"]["name"] and status["timings"]["running_seconds"] is not None

    results = client.get(f"/api/v1/jobs/{job['id']}/results?limit=5&offset=10").get_json()
    assert results["total"] == 12 and len(results["items"]) == 2
    errors = {i["path"]: i["error"] for i in results["items"]}
    assert "truncated" in errors["broken/truncated.jpg"] and "not a recognised image" in errors["notes/readme.txt"]
    first = client.get(f"/api/v1/jobs/{job['id']}/results?limit=1").get_json()["items"][0]
    assert first["label"] in first["probabilities"]
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "blur_effect" in first and errors and all(i["blur_effect"] is None for i in results["items"] if i["error"])
    if ctx.classifier.manifest.checks_focus:  # the focus check's per-image measure (2.4.2)
        assert 0.0 < first["blur_effect"] < 1.0

    report = client.get(f"/api/v1/jobs/{job['id']}/report").get_json()
    assert report["kind"] == "cells" and report["n_images"] == 12 and report["n_failed"] == 2
    counted = sum(r["count"] for r in report["differential"]) + report["erythroblasts"]["count"] + report["platelets"]["count"]
    assert counted == report["n_classified"] == 10
    csv_text = client.get(f"/api/v1/jobs/{job['id']}/report?format=csv").get_data(as_text=True)
    assert csv_text.startswith("section,cell_type") and "images_failed,2" in csv_text
    from pipeline.classifier import describe

    assert report["serving"] == describe(ctx.classifier)  # how the images were read (backend, networks, views)
    gate = (ctx.classifier.manifest.extra.get("tta") or {}).get("gate")
    assert report["serving"].startswith("LiteRT fp32, ") and (gate is None or f"top probability is below {gate:g}" in report["serving"])
    import csv
    import io

    assert ["model", report["model"], report["serving"], "", "", ""] in list(csv.reader(io.StringIO(csv_text)))


def test_zip_submission_keeps_relative_paths(env):
    client, _, ctx = env
    body = make_zip({"slide_a/1.jpg": jpeg_bytes(1), "slide_b/2.jpg": jpeg_bytes(2)})
    r = client.post("/api/v1/jobs", data={"files": [(io.BytesIO(body), "batch.zip")]}, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    run_queued(ctx, r.get_json()["id"])
    items = client.get(f"/api/v1/jobs/{r.get_json()['id']}/results").get_json()["items"]
    assert [i["path"] for i in items] == ["slide_a/1.jpg", "slide_b/2.jpg"]
    assert all(i["status"] == "done" for i in items)


def test_server_side_folder(env):
    client, settings, ctx = env
    folder = settings.allowed_folder_root + "/slide7"
    import os

    os.makedirs(folder)
    for i in range(3):
        with open(f"{folder}/c{i}.jpg", "wb") as fh:
            fh.write(jpeg_bytes(i))
    r = client.post("/api/v1/jobs", json={"folder": "slide7"})
    assert r.status_code == 202, r.get_json()
    run_queued(ctx, r.get_json()["id"])
    assert client.get(f"/api/v1/jobs/{r.get_json()['id']}").get_json()["images"]["done"] == 3


def _files(name: str, data: bytes, **form) -> dict:
    return {"data": {"files": [(io.BytesIO(data), name)], **form}, "content_type": "multipart/form-data"}


BAD_SUBMISSIONS = {
    "no files": (lambda: {"data": {}, "content_type": "multipart/form-data"}, 400, "multipart"),
    "folder outside root": (lambda: {"json": {"folder": "/etc"}}, 403, "outside the allowed root"),
    "folder escaping root": (lambda: {"json": {"folder": "../.."}}, 403, "outside the allowed root"),
    "json without folder": (lambda: {"json": {"nofolder": 1}}, 400, "folder"),
    "zero-byte file": (lambda: _files("empty.jpg", b""), 422, "none of the submitted"),
    "decompression bomb": (lambda: _files("bomb.png", png_header_only(50_000, 50_000)), 422, "none of the submitted"),
    "zip with ../": (lambda: _files("evil.zip", make_zip({"../x.jpg": jpeg_bytes()})), 400, "escapes"),
    "zip with absolute path": (lambda: _files("abs.zip", make_zip({"/tmp/x.jpg": jpeg_bytes()})), 400, "absolute"),
    "zip with symlink": (lambda: _files("link.zip", make_zip({"a.jpg": jpeg_bytes()}, {"l.jpg": "/etc/passwd"})), 400, "symlink"),
    "corrupt zip": (lambda: _files("bad.zip", b"PK\x03\x04garbage"), 400, "not a valid zip"),
    "over the size limit": (lambda: {"data": b"\x00" * 6_000_000, "content_type": "multipart/form-data; boundary=x"},
                            413, "larger than"),
    "bad batch size": (lambda: _files("a.jpg", jpeg_bytes(), batch_size="lots"), 400, "batch_size"),
}


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submissions_get_json_errors_and_store_nothing(env, case):
    client, settings, _ = env
    make_kwargs, status, message = BAD_SUBMISSIONS[case]
    r = client.post("/api/v1/jobs", **make_kwargs())
    assert r.status_code == status, r.get_data(as_text=True)
    assert message in r.get_json()["error"]["message"]
    assert client.get("/api/v1/jobs").get_json()["total"] == 0
    jobs_dir = settings.resolved_storage_root / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.rglob("*.*"))


def test_stored_files_never_use_client_names(env):
    client, settings, _ = env
    r = upload(client, {"../../etc/x.jpg": jpeg_bytes()})
    assert r.status_code == 400
    r = upload(client, {"weird name; rm -rf.jpg": jpeg_bytes()})
    assert r.status_code == 202
    stored = [p.name for p in (settings.resolved_storage_root / "jobs").rglob("*") if p.is_file()]
    assert stored == ["0000001.jpg"]


def test_unknown_job_and_pagination_and_cancel(env):
    client, _, ctx = env
    assert client.get("/api/v1/jobs/nope").status_code == 404
    assert client.get("/api/v1/jobs/nope/report").get_json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/jobs?limit=0").status_code == 400
    ids = [upload(client, {"a.jpg": jpeg_bytes(i)}).get_json()["id"] for i in range(3)]
    page = client.get("/api/v1/jobs?limit=2").get_json()
    assert page["total"] == 3 and len(page["items"]) == 2
    r = client.post(f"/api/v1/jobs/{ids[0]}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == JobStatus.CANCELED
    run_queued(ctx, ids[0])  # a canceled job's tasks do nothing
    assert client.get(f"/api/v1/jobs/{ids[0]}").get_json()["images"]["done"] == 0
    assert client.post(f"/api/v1/jobs/{ids[0]}/cancel").status_code == 409
    assert client.get(f"/api/v1/jobs/{ids[0]}/report").status_code == 409


def test_health_and_readiness(env):
    client, _, _ = env
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readiness_reports_an_unreachable_database(tmp_path, model_dir):
    settings = Settings(var_dir=str(tmp_path), database_url="postgresql://nobody@127.0.0.1:1/none", broker_url="memory://",
                        model_dir=str(model_dir))
    r = create_app(settings).test_client().get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["database"].startswith("error")


def test_openapi_matches_routes(env):
    client, _, _ = env
    spec = client.get("/api/v1/openapi.json").get_json()
    app = client.application
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("web."):  # the HTML pages are not part of the API
            continue
        path = rule.rule.replace("<job_id>", "{job_id}").replace("<int:seq>", "{seq}").replace("<int:idx>", "{idx}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented


def test_fields_job_auto_detected_with_per_slide_report(env):
    from tests.conftest import encode_jpeg, synthetic_field

    client, settings, ctx = env
    files = {
        "slide1/f1.jpg": encode_jpeg(synthetic_field(640, 480, [(200, 200), (450, 300)], seed=1)),
        "slide1/f2.jpg": encode_jpeg(synthetic_field(640, 480, [], seed=2)),
        "slide2/f3.jpg": encode_jpeg(synthetic_field(640, 480, [(320, 240)], seed=3)),
        "slide2/black.jpg": encode_jpeg(__import__("numpy").zeros((480, 640, 3), "uint8")),
        "slide2/cut.jpg": encode_jpeg(synthetic_field(640, 480, [(320, 240)], seed=4))[:3000],
        "slide3/huge.png": png_header_only(20_000, 20_000),  # over the field pixel limit: refused at intake
    }
    r = upload(client, files)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert (job["kind"], job["kind_source"]) == ("fields", "auto")
    run_queued(ctx, job["id"])
    status = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert status["status"] == "succeeded" and status["images"]["failed"] == 2
    items = {i["path"]: i for i in client.get(f"/api/v1/jobs/{job['id']}/results").get_json()["items"]}
    assert len(items["slide1/f1.jpg"]["cells"]) == 2 and items["slide1/f2.jpg"]["cells"] == []
    assert "truncated" in items["slide2/cut.jpg"]["error"] and "over the limit" in items["slide3/huge.png"]["error"]
    box = items["slide2/f3.jpg"]["cells"][0]["box"]
    assert box[0] < 320 < box[2] and box[1] < 240 < box[3]
    report = client.get(f"/api/v1/jobs/{job['id']}/report").get_json()
    assert report["kind"] == "fields" and report["white_cell_total"] + report["erythroblasts"]["count"] + report["platelets"]["count"] == 3
    slides = {s["slide"]: s for s in report["slides"]}
    assert slides["slide1"]["n_fields"] == 2 and slides["slide1"]["n_fields_without_wbc"] == 1
    assert slides["slide2"]["n_fields_failed"] == 1 and slides["slide2"]["n_fields_without_wbc"] == 1
    thumbs = list((settings.resolved_storage_root / "jobs" / job["id"] / "cells").glob("*.jpg"))
    assert len(thumbs) == 3
    thumb = client.get(items["slide2/f3.jpg"]["cells"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg" and thumb.data[:2] == b"\xff\xd8"
    assert client.get(f"/api/v1/jobs/{job['id']}/images/1/cells/99/thumbnail.jpg").status_code == 404
    csv_text = client.get(f"/api/v1/jobs/{job['id']}/report?format=csv").get_data(as_text=True)
    assert csv_text.startswith("slide,section") and "slide2,summary,fields,3" in csv_text


def test_fields_jobs_carry_the_domain_check_in_every_report_form(env, capsys):
    """Real held-out BCCD fields (in-domain: the training photographs' source) pass the check; the same fields with
    their hue rotated by 60 degrees alarm: in report.json, the per-cell results, the CSV, the CLI table, the page and the PDF."""
    from api.cli import print_summary
    from tests.conftest import bccd_fields, pdf_text

    client, _, ctx = env
    threshold = ctx.classifier.domain.job_threshold
    outcomes = {}
    for name, fields in (("bccd", bccd_fields(80)), ("elsewhere", bccd_fields(40, hue=-60))):
        job = upload(client, {f"{name}/{file}": data for file, data in fields.items()}, name=name).get_json()
        assert job["kind"] == "fields"
        run_queued(ctx, job["id"])
        report = client.get(f"/api/v1/jobs/{job['id']}/report").get_json()
        cells = [c for item in client.get(f"/api/v1/jobs/{job['id']}/results?limit=100").get_json()["items"] for c in item["cells"]]
        assert len(cells) >= 20 and all(isinstance(c["ood_score"], float) for c in cells)
        if ctx.classifier.manifest.checks_focus:  # each cell's blur effect, where the model checks focus (2.4.2)
            assert all(0.0 < c["blur_effect"] < 1.0 for c in cells)
        assert report["slides"][0]["domain_check"] == report["domain_check"]  # one slide: the same cells
        csv_text = client.get(f"/api/v1/jobs/{job['id']}/report?format=csv").get_data(as_text=True)
        print_summary(report)
        outcomes[name] = (report["domain_check"], csv_text, capsys.readouterr().out, client.get(f"/jobs/{job['id']}").get_data(as_text=True),
                          pdf_text(client.get(f"/jobs/{job['id']}/report.pdf").data))
    check, csv_text, table, page, pdf = outcomes["bccd"]
    assert check["status"] == "ok" and check["score"] <= threshold and check["reasons"] == []
    assert "ALL,domain_check,ok," in csv_text and "bccd,domain_check,ok," in csv_text and "domain check: ok (score" in table
    assert 'id="domain-check">ok<' in page and "do not look like" not in page and "Domain check ok" in pdf
    check, csv_text, table, page, pdf = outcomes["elsewhere"]
    assert check["status"] == "shifted" and check["score"] > threshold and "unlike the training laboratories" in check["reasons"][0]
    assert "ALL,domain_check,shifted," in csv_text and "elsewhere,domain_check,shifted," in csv_text
    assert "domain check: shifted" in table and "! " in table
    assert 'id="domain-check">shifted<' in page and "these images do not look like" in page and "domain shifted</strong>" in page
    assert "Domain check shifted" in pdf and "domain shifted" in pdf


def test_client_can_force_the_kind_and_bad_kind_is_refused(env):
    client, _, _ = env
    r = upload(client, {"a.jpg": jpeg_bytes()}, kind="fields")
    assert r.status_code == 202 and (r.get_json()["kind"], r.get_json()["kind_source"]) == ("fields", "client")
    r = upload(client, {"a.jpg": jpeg_bytes()}, kind="slides")
    assert r.status_code == 400 and "kind" in r.get_json()["error"]["message"]


def test_broker_down_keeps_the_job_and_enqueue_recovers_it(migrated_url, tmp_path, model_dir):
    """A 503 at submission loses nothing: the job and its files stay, and /enqueue sends it later."""
    down = Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="redis://127.0.0.1:1/0",
                    storage_root=str(tmp_path / "storage"), model_dir=str(model_dir))
    app = create_app(down)
    app.extensions["hematovision"].celery.conf.broker_connection_max_retries = 0
    app.extensions["hematovision"].celery.conf.broker_transport_options = {"max_retries": 0}
    client = app.test_client()
    r = upload(client, {"a.jpg": jpeg_bytes()})
    assert r.status_code == 503 and "enqueue" in r.get_json()["error"]["message"]
    job_id = r.get_json()["error"]["job_id"]
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "queued"
    assert len(list((tmp_path / "storage" / "jobs" / job_id).iterdir())) == 1

    up = create_app(Settings(**{**down.__dict__, "broker_url": "memory://"}))
    r = up.test_client().post(f"/api/v1/jobs/{job_id}/enqueue")
    assert r.status_code == 202 and r.get_json()["id"] == job_id
    assert up.test_client().post("/api/v1/jobs/nope/enqueue").status_code == 404
    ctx = WorkerContext(up.extensions["hematovision"].settings)
    run_queued(ctx, job_id)
    assert up.test_client().get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    ctx.db.dispose()
    app.extensions["hematovision"].db.dispose()
    up.extensions["hematovision"].db.dispose()


def test_many_files_in_one_upload_and_the_file_count_limit(env, migrated_url, tmp_path, model_dir):
    client, _, _ = env
    small = jpeg_bytes(size=(40, 40))
    r = upload(client, {f"cells/{i:05d}.jpg": small for i in range(1200)})  # more parts than Werkzeug's default 1000
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["images"]["total"] == 1200
    capped = create_app(Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://",
                                 storage_root=str(tmp_path / "s2"), model_dir=str(model_dir), max_images_per_job=5))
    r = upload(capped.test_client(), {f"{i}.jpg": small for i in range(6)})
    assert r.status_code == 400 and "at most 5" in r.get_json()["error"]["message"]
    capped.extensions["hematovision"].db.dispose()


def test_api_token_guards_job_routes_only(migrated_url, tmp_path, model_dir):
    app = create_app(Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://",
                              storage_root=str(tmp_path / "s"), model_dir=str(model_dir), api_token="s3cret"))
    client = app.test_client()
    r = client.get("/api/v1/jobs")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/api/v1/openapi.json").status_code == 200
    app.extensions["hematovision"].db.dispose()
