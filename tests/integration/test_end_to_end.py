"""Submit a folder through the HTTP API to real Celery workers and check every result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.client import ApiClient
from db.models import Image, Prediction
from tests.conftest import REPO, jpeg_bytes

pytestmark = pytest.mark.integration


def test_folder_job_through_http_and_real_workers(stack, sample_folder, tmp_path):
    folder = tmp_path / "upload"
    for path in sample_folder.rglob("*.jp*g"):
        dest = folder / path.relative_to(sample_folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    (folder / "bad").mkdir()
    (folder / "bad" / "truncated.jpg").write_bytes(jpeg_bytes()[:1500])
    n_images = sum(1 for _ in folder.rglob("*.*"))

    client = ApiClient(stack.base_url, timeout=60)
    job = client.submit_folder(folder, name="integration")
    assert job["status"] == "queued" and job["images"]["total"] == n_images
    final = client.wait(job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["images"] == {"total": n_images, "done": n_images - 1, "failed": 1, "pending": 0}
    assert final["model"]["version"]

    with stack.db.session() as s:
        per_image = s.execute(select(Image.id, func.count(Prediction.id)).outerjoin(Prediction, Prediction.image_id == Image.id)
                              .where(Image.job_id == job["id"]).group_by(Image.id)).all()
    counts = sorted(c for _, c in per_image)
    assert len(per_image) == n_images
    assert counts == [0] + [1] * (n_images - 1)  # exactly one prediction per good image, none for the bad one

    report = json.loads(client.report(job["id"]))
    classified = sum(r["count"] for r in report["differential"]) + report["erythroblasts"]["count"] + report["platelets"]["count"]
    assert classified == report["n_classified"] == n_images - 1
    assert report["n_failed"] == 1
    assert abs(sum(r["percent"] for r in report["differential"]) - 100.0) < 1e-6
    csv_text = client.report(job["id"], "csv")
    assert f"summary,images_total,{n_images}" in csv_text


def test_two_jobs_share_the_workers(stack, sample_folder):
    client = ApiClient(stack.base_url, timeout=60)
    ids = [client.submit_folder(sample_folder / sub)["id"] for sub in ("pbc", "kaggle")]
    finals = [client.wait(i, timeout=240) for i in ids]
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"]
    assert all(f["images"]["done"] == f["images"]["total"] > 0 for f in finals)


def _analyze(folder: Path, tmp_path: Path, model_dir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`hematovision analyze FOLDER -o OUT` with nothing but the defaults (and the model under test); fails on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMATOVISION_")}
    env.update({"HEMATOVISION_VAR_DIR": str(tmp_path / "var"), "HEMATOVISION_MODEL_DIR": str(model_dir)})
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "api.cli", "analyze", str(folder), "-o", str(out), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_cli_analyze_runs_the_embedded_default(tmp_path, sample_folder, model_dir):
    """README command 1's path: `hematovision analyze` with nothing but the defaults."""
    proc, out = _analyze(sample_folder, tmp_path, model_dir)
    assert "white cells" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    n = sum(1 for _ in Path(sample_folder).rglob("*.jp*g"))
    assert report["n_images"] == n and report["n_failed"] == 0
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == n + 1
    assert (out / "report.csv").read_text().startswith("section,")
    # read as served by default (2.4.3): the 8 views where one view is unsure, for a model that carries a gate
    gate = (json.loads((model_dir / "manifest.json").read_text()).get("tta") or {}).get("gate")
    assert report["serving"].startswith("LiteRT fp32")
    assert f"below {gate:g}" in report["serving"] if gate is not None else "below" not in report["serving"]
    assert f"model {report['model']} ({report['serving']})" in proc.stdout


def test_cli_analyze_flags_an_out_of_focus_job_by_its_focus_and_not_the_sharp_samples(tmp_path, sample_folder, model_dir):
    """The focus check (2.4.2) through the whole embedded path (prepare, store per prediction, report): the bundled
    samples are measured and not called blurry; the same images blurred (sigma 4, the robustness suite's defocus)
    are `shifted` with the focus reason, printed and in the CSV."""
    import cv2
    import numpy as np

    from tests.conftest import encode_jpeg
    from training.shifts import FAMILIES

    if not json.loads((model_dir / "manifest.json").read_text()).get("ood", {}).get("focus"):
        pytest.skip("the model under test carries no focus check (before 2.4.2)")
    (tmp_path / "sharp").mkdir()
    proc, out = _analyze(sample_folder, tmp_path / "sharp", model_dir)
    sharp = json.loads((out / "report.json").read_text())["domain_check"]
    n = sum(1 for _ in Path(sample_folder).rglob("*.jp*g"))
    assert sharp["focus"]["measured"] == n and not sharp["focus"]["unlike_all"]
    assert not any("blurrier" in r for r in sharp["reasons"])
    folder = tmp_path / "blurred" / "images"
    folder.mkdir(parents=True)
    defocus = dict(FAMILIES["blur"])["sigma4"]
    for path in sorted(Path(sample_folder).rglob("*.jp*g")):
        (folder / f"{path.parent.name}_{path.name}").write_bytes(encode_jpeg(defocus(cv2.imread(str(path)), np.random.default_rng(0))))
    proc, out = _analyze(folder, tmp_path / "blurred", model_dir)
    check = json.loads((out / "report.json").read_text())["domain_check"]
    assert check["status"] == "shifted" and check["focus"]["unlike_all"]
    assert check["focus"]["deficit"] > check["focus"]["threshold"] > 0
    reason = next(r for r in check["reasons"] if "blurrier" in r)
    assert reason in proc.stdout and f"blur deficit {check['focus']['deficit']}" in proc.stdout
    assert "domain_blur_deficit," in (out / "report.csv").read_text()
    assert check["focus"]["n_blurry"] >= 10 and f"blurry images ({check['focus']['n_blurry']}, blurriest first)" in proc.stdout
    # which images are blurred: each one's blur effect in results.csv, beside the sharp run's
    import csv

    with open(out / "results.csv", newline="") as fh:
        blurred = [float(r["blur_effect"]) for r in csv.DictReader(fh)]
    with open(tmp_path / "sharp" / "report" / "results.csv", newline="") as fh:
        sharp = [float(r["blur_effect"]) for r in csv.DictReader(fh)]
    assert len(blurred) == len(sharp) == n and min(blurred) > float(np.median(sharp))


def test_cli_analyze_fields_writes_and_prints_the_domain_check(tmp_path, model_dir):
    """`hematovision analyze` on real BCCD fields: the domain check in the printed table and report.json, a score per cell."""
    import csv

    from tests.conftest import bccd_fields

    folder = tmp_path / "fields"
    folder.mkdir()
    for name, data in bccd_fields(16).items():
        (folder / name).write_bytes(data)
    proc, out = _analyze(folder, tmp_path, model_dir)
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "fields" and report["domain_check"]["status"] in ("ok", "shifted")  # scored, not "unavailable"
    check = report["domain_check"]
    stain = check["stain"]  # the shipped model checks the red cells' stain too (2.3.1): BCCD fields have red cells
    assert stain["measured"] >= 10 and stain["laboratory"] in ("kaggle", "pbc")
    focus = check["focus"]  # and each cell's focus (2.4.2, rule F2): in-domain fields are not blurrier than the training images
    assert focus["measured"] >= 10 and not focus["unlike_all"]
    assert (f"domain check: {check['status']} (score {check['score']}, mean distance {check['mean_distance']}, "
            f"stain distance {stain['distance']} to {stain['laboratory']} (alarm above {stain['threshold']}), "
            f"blur deficit {focus['deficit']} to {focus['laboratory']} (alarm above {focus['threshold']}))") in proc.stdout
    with open(out / "results.csv", newline="") as fh:
        cells = list(csv.DictReader(fh))
    assert len(cells) >= 10 and all(float(c["ood_score"]) > 0 for c in cells)
    assert f"ALL,domain_check,{report['domain_check']['status']}," in (out / "report.csv").read_text()
    assert not any("red cells measure" in r for r in check["reasons"])  # in-domain magnification


def test_cli_field_job_at_another_magnification_is_flagged_with_the_setting_to_change(tmp_path, model_dir):
    """Real BCCD fields magnified 2x: the localiser's configured scale no longer fits; the red cells say so."""
    import cv2
    import numpy as np

    from tests.conftest import SHARED, encode_jpeg
    from training.shifts import FAMILIES

    folder = tmp_path / "fields"
    folder.mkdir()
    magnify = dict(FAMILIES["scale"])["x2"]
    for path in sorted((SHARED / "bccd" / "JPEGImages").glob("*.jpg"))[1::2][:8]:
        (folder / path.name).write_bytes(encode_jpeg(magnify(cv2.imread(str(path)), np.random.default_rng(0))))
    proc, out = _analyze(folder, tmp_path, model_dir)
    check = json.loads((out / "report.json").read_text())["domain_check"]
    assert check["status"] == "shifted"
    reason = next(r for r in check["reasons"] if "red cells measure" in r)
    assert "HEMATOVISION_CELL_DIAMETER_PX" in reason and reason in proc.stdout


def test_fields_job_through_http_and_real_workers(stack, tmp_path):
    """Whole field images: auto-detected, cells found and classified by real workers, report per slide."""
    import numpy as np

    from tests.conftest import encode_jpeg, synthetic_field

    folder = tmp_path / "fields"
    layout = {"patient1/field1.jpg": [(200, 200), (450, 300)], "patient1/field2.jpg": [(320, 240)],
              "patient2/field3.jpg": [], "patient2/big.jpg": None}
    for rel, centers in layout.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = synthetic_field(2400, 1800, [(300, 300), (1200, 900), (2100, 1500)], seed=9, rbc=250) if centers is None \
            else synthetic_field(640, 480, centers, seed=len(rel))
        path.write_bytes(encode_jpeg(image))
    (folder / "patient2" / "black.jpg").write_bytes(encode_jpeg(np.zeros((480, 640, 3), np.uint8)))

    client = ApiClient(stack.base_url, timeout=60)
    job = client.submit_folder(folder)
    assert job["kind"] == "fields" and job["kind_source"] == "auto"
    final = client.wait(job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    report = json.loads(client.report(job["id"]))
    slides = {s["slide"]: s for s in report["slides"]}
    found = {name: s["white_cell_total"] + s["erythroblasts"]["count"] + s["platelets"]["count"] for name, s in slides.items()}
    assert found == {"patient1": 3, "patient2": 3}
    assert slides["patient2"]["n_fields_without_wbc"] == 2 and report["n_fields"] == 5
    check = report["domain_check"]  # every found cell was scored by the workers; six are too few for the check
    assert check["status"] == "unavailable" and check["reasons"] == ["only 6 scored cells; the check needs 10"]


def test_cli_submit_wait_status_report(stack, sample_folder, tmp_path):
    """The `hematovision` client commands against a running API and real workers."""
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "api.cli", "--api", stack.base_url, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    done = cli("submit", str(sample_folder / "kaggle"), "--wait")
    assert done.returncode == 0, done.stderr[-2000:]
    job_id = done.stdout.split()[1]
    assert "succeeded" in done.stdout and "white cells" in done.stdout
    status = json.loads(cli("status", job_id).stdout)
    assert status["status"] == "succeeded" and status["images"]["done"] == status["images"]["total"]
    out = tmp_path / "r.csv"
    assert cli("report", job_id, "--format", "csv", "-o", str(out)).returncode == 0
    assert out.read_text().startswith("section,cell_type")
    missing = cli("status", "0" * 32)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
