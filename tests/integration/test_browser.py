"""End to end in a real headless Chromium: upload through the page, a real Celery worker, report, review, sign-off, PDF.

Chromium is Debian's package (``.ci/run`` installs it) driven by Playwright's
Python package; no browser is downloaded. Screenshots of every page go to
``test-artifacts/`` (desktop 1280x800 and tablet 820x1180) for a person to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
DESKTOP, TABLET = {"width": 1280, "height": 800}, {"width": 820, "height": 1180}


@pytest.fixture
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    missing = [p for p in (CHROMIUM, shutil.which("pdftotext"), shutil.which("pdfinfo")) if not p or not Path(p).exists()]
    assert not missing, "install Debian's chromium and poppler-utils (apt-get install chromium poppler-utils; .ci/run does)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not errors, f"JavaScript errors on the pages: {errors}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def table_and_chart(page, table: str) -> dict[str, tuple[int, str, str]]:
    """cell type -> (count in the table, % in the table, % on the chart's bar)."""
    out = {}
    for row in page.locator(f"{table} tbody tr").all():
        cell_type = row.get_attribute("data-cell-type")
        bar = page.locator(f'svg.chart rect[data-cell-type="{cell_type}"]').first
        out[cell_type] = (int(row.locator("td.count").inner_text()), row.locator("td.percent").inner_text(), bar.get_attribute("data-percent"))
    return out


def expected_from(report: dict) -> dict[str, tuple[int, str, str]]:
    return {r["cell_type"]: (r["count"], f"{r['percent']:.1f}", f"{r['percent']:.1f}") for r in report["differential"]}


@pytest.mark.parametrize("stack", ["embedded-sqlite"], indirect=True)
def test_upload_report_review_signoff_pdf_in_a_real_browser(stack, browser_page, sample_folder, tmp_path):
    page, base = browser_page, stack.base_url
    folder = tmp_path / "smear"
    shutil.copytree(sample_folder, folder)
    n_images = sum(1 for _ in folder.rglob("*.jp*g"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not an image")

    page.goto(base + "/")
    page.set_input_files("#files-input", str(tmp_path / "junk" / "notes.txt"))
    page.click("#upload-button")
    page.wait_for_selector("#upload-error:not([hidden])")
    assert "none of the submitted files is a usable image" in page.inner_text("#upload-error")

    page.set_input_files("#folder-input", str(folder))  # a folder with subfolders (slides), as the folder picker sends it
    assert f"{n_images} file(s)" in page.inner_text("#chosen")
    page.check("input[name=kind][value=cells]")
    page.fill("#name", "browser smear")
    shot(page, "upload")
    page.click("#upload-button")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    shot(page, "job-progress")
    page.wait_for_selector("#wbc-total", timeout=120_000)  # the page polls, then reloads once the worker has finished

    api = page.request
    report = api.get(f"{base}/api/v1/jobs/{job_id}/report").json()
    assert report["n_images"] == n_images and report["review"] == {"n_reviewed": 0, "n_changed": 0}
    assert table_and_chart(page, "#all-table") == expected_from(report)
    assert int(page.inner_text("#wbc-total")) == report["white_cell_total"]
    widths = {r.get_attribute("data-cell-type"): r.bounding_box()["width"] for r in page.locator("svg.chart rect.bar").all()}
    top = max(report["differential"], key=lambda r: r["percent"])
    for row in report["differential"]:  # bar lengths are proportional to the percentages
        assert widths[row["cell_type"]] == pytest.approx(widths[top["cell_type"]] * row["percent"] / top["percent"], abs=1.0)
    assert no_horizontal_scroll(page)
    assert report["serving"] and page.inner_text("#serving") == f"Images read by {report['serving']}."
    one_line = page.locator("#wbc-total").bounding_box()["height"]  # a one-line value at the tiles' larger font
    assert page.locator("#model-name").bounding_box()["height"] < 2.5 * one_line  # the Model tile holds the name alone
    shot(page, "report")

    page.click("text=Review cells (least confident first)")
    page.wait_for_selector("#gallery li.cell")
    shot(page, "review")
    page.fill("#reviewer", "E2E Tech")
    cards = page.locator("#gallery li.cell")
    first, second = cards.nth(0), cards.nth(1)
    labels = {first.get_attribute("data-label"), second.get_attribute("data-label")}
    target = next(c for c in ("basophil", "monocyte", "eosinophil") if c not in labels)  # a white-cell class neither has
    options = [o.split(" ", 1)[1] for o in first.locator("select option").all_inner_texts()]
    first.focus()
    page.keyboard.press(str(options.index(target) + 1))  # the class's shortcut key
    page.wait_for_selector("#gallery li.cell.reviewed")
    assert page.locator("#gallery li.cell.reviewed").count() == 1
    second.locator("select").select_option(target)
    second.locator("button").click()
    page.wait_for_function("document.querySelectorAll('#gallery li.cell.reviewed').length === 2")
    assert page.inner_text("#review-counts") == "2 reviewed, 2 changed"
    shot(page, "review-after")

    page.goto(f"{base}/jobs/{job_id}")
    reviewed = api.get(f"{base}/api/v1/jobs/{job_id}/report").json()
    assert reviewed["review"] == {"n_reviewed": 2, "n_changed": 2}
    before = {r["cell_type"]: r["count"] for r in report["differential"]}
    assert {r["cell_type"]: r["count"] for r in reviewed["differential"]}[target] == before[target] + 2
    assert page.inner_text("#n-reviewed") == "2 / 2"
    assert table_and_chart(page, "#all-table") == expected_from(reviewed)

    page.fill("#signoff-reviewer", "Dr E2E Signer")
    page.click("#signoff-form button")
    page.wait_for_selector("#signoff")
    assert "Signed off by Dr E2E Signer" in page.inner_text("#signoff") and page.locator("#signoff-form").count() == 0
    shot(page, "signed-off")
    page.goto(f"{base}/jobs/{job_id}/review")
    assert page.locator(".review-form").count() == 0 and "report is locked" in page.inner_text("main")
    page.goto(f"{base}/jobs/{job_id}")

    with page.expect_download() as download:
        page.click("#pdf-link")
    pdf = tmp_path / "report.pdf"
    download.value.save_as(pdf)
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=30, check=True).stdout
    assert re.search(r"^Pages:\s+1$", info, re.M), info
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert "Signed off by Dr E2E Signer" in text and f"White cells counted {reviewed['white_cell_total']}" in text
    assert "reviewed 2, changed by review 2" in text and job_id in text
    for row in reviewed["differential"]:
        assert re.search(rf"{row['cell_type']}\s+{row['count']}\s+{row['percent']:.1f}\s", text), row

    page.goto(f"{base}/jobs")
    assert "succeeded" in page.inner_text(f'tr[data-job="{job_id}"]')
    shot(page, "jobs")
    page.set_viewport_size(TABLET)
    for name, path in (("tablet-upload", "/"), ("tablet-report", f"/jobs/{job_id}"), ("tablet-review", f"/jobs/{job_id}/cells")):
        page.goto(base + path)
        assert no_horizontal_scroll(page), name
        shot(page, name)


@pytest.fixture
def guarded_server(tmp_path, model_dir):
    """The app alone (no worker: jobs stay queued) with a token set, served over HTTP for the browser."""
    import threading

    from werkzeug.serving import make_server

    from api import create_app
    from db.migrate import upgrade
    from pipeline.settings import Settings

    url = f"sqlite:///{tmp_path / 'hv.sqlite'}"
    upgrade(url)
    app = create_app(Settings(var_dir=str(tmp_path), database_url=url, broker_url="memory://", storage_root=str(tmp_path / "s"),
                              model_dir=str(model_dir), api_token="browser-s3cret"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        app.extensions["hematovision"].db.dispose()


def test_login_drop_a_zip_and_cancel_in_a_real_browser(guarded_server, browser_page, sample_folder, tmp_path):
    import zipfile

    page, base = browser_page, guarded_server
    page.goto(base + "/jobs")
    assert "/login" in page.url
    page.fill("#token", "wrong")
    page.click("button[type=submit]")
    assert "That token is not right" in page.inner_text("main")
    page.fill("#token", "browser-s3cret")
    page.click("button[type=submit]")
    page.wait_for_url(base + "/jobs")
    shot(page, "login-jobs")

    page.goto(base + "/")  # a drop of loose files (the script's fallback when the browser gives no directory entries)
    page.evaluate("""() => {
        const dt = new DataTransfer();
        for (const name of ["a.jpg", "b.jpg"]) dt.items.add(new File([new Uint8Array([255, 216, 255])], name, {type: "image/jpeg"}));
        document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    assert page.inner_text("#chosen").startswith("2 file(s)")

    archive = tmp_path / "slides.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(sample_folder.rglob("*.jp*g"))[:6]:
            zf.write(path, path.relative_to(sample_folder).as_posix())
    page.set_input_files("#files-input", str(archive))
    page.click("#upload-button")  # the script posts with the session's CSRF token
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    assert "0 / 6 images" in page.inner_text("#live")
    page.click("#live button")  # cancel (a plain form post with the CSRF field)
    page.wait_for_selector("text=It has no report")
    assert page.inner_text("#job-status") == "canceled"
    page.goto(base + "/jobs")
    assert "canceled" in page.inner_text("#job-rows")
