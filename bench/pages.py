"""Page render times for a large job: ``python -m bench.pages [--images 2000] [--database-url URL]``.

Builds a finished "cells" job of N images straight in the database (random but
plausible predictions; no model, no worker: this measures the pages, not the
classifier), then times each page through the Flask app (test client, no
network) and prints the median and worst of ``--repeat`` renders. Then adds
50 reviews (the report is recounted over reviewed labels from then on) and
times the report pages again. Default database: SQLite in a temporary
directory; pass a Postgres URL to measure that instead. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from api import create_app
from db import repository as repo
from db import reviews as rv
from db.migrate import upgrade
from pipeline.manifest import ModelManifest
from pipeline.report import CellPrediction, build_report
from pipeline.settings import Settings


def make_job(settings: Settings, n: int, seed: int = 0) -> str:
    """A succeeded job of ``n`` cell images with predictions and its stored summary."""
    manifest = ModelManifest.load(settings.model_dir, verify=False)
    rng = np.random.default_rng(seed)
    job_id = uuid.uuid4().hex
    app = create_app(settings)
    st = app.extensions["hematovision"]
    images = [repo.NewImage(i, f"slide{i % 4}/cell_{i:05d}.jpg", st.store.key_for(job_id, i, ".jpg")) for i in range(1, n + 1)]
    with st.db.session() as s, s.begin():
        repo.create_job(s, job_id, "upload", f"bench {n}", settings.batch_size, images)
        repo.mark_running(s, job_id, manifest.name, manifest.version)
        ids = repo.pending_image_ids(s, job_id)
        rows = []
        for image_id in ids:
            p = rng.dirichlet(np.full(len(manifest.classes), 0.3))
            probs = {c: round(float(v), 4) for c, v in zip(manifest.classes, p, strict=True)}
            label = max(probs, key=probs.get)
            rows.append(repo.ResultRow(image_id, label, probs[label], probs, None))
        repo.record_results(s, job_id, rows, manifest.version)
        outcomes = [CellPrediction(*row) for row in repo.all_outcomes(s, job_id)]
        report = build_report(outcomes, manifest.classes, manifest.white_cells, manifest.label, settings.low_confidence)
        repo.finalize_if_complete(s, job_id, lambda: {"job_id": job_id, "kind": "cells", **report.to_dict()})
    st.db.dispose()
    return job_id


def time_pages(client, paths: list[str], repeat: int) -> list[tuple[str, float, float, int]]:
    out = []
    for path in paths:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, (path, r.status_code)
        out.append((path, statistics.median(times) * 1000, max(times) * 1000, len(r.data)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hv-bench-pages-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'hv.sqlite'}"
        settings = Settings(var_dir=tmp, database_url=url, broker_url="memory://", storage_root=str(Path(tmp) / "storage"))
        upgrade(url)
        job_id = make_job(settings, args.images)
        app = create_app(settings)
        client = app.test_client()
        pages = [f"/jobs/{job_id}", f"/jobs/{job_id}/cells", f"/jobs/{job_id}/review", f"/jobs/{job_id}/cells?label=neutrophil&page=2",
                 "/jobs", "/", f"/jobs/{job_id}/report.pdf", f"/api/v1/jobs/{job_id}/report"]
        print(f"{args.images} images, {url.split(':', 1)[0]}, median and worst of {args.repeat} renders")
        print(f"{'page':<58}{'median ms':>10}{'worst ms':>10}{'bytes':>10}")
        for path, med, worst, size in time_pages(client, pages, args.repeat):
            print(f"{path.replace(job_id, '<job>'):<58}{med:>10.1f}{worst:>10.1f}{size:>10}")
        st = app.extensions["hematovision"]
        with st.db.session() as s, s.begin():
            for seq in range(1, 51):
                rv.add_review(s, job_id, seq, None, "lymphocyte", "bench")
        print("after 50 reviews (report recounted over reviewed labels):")
        for path, med, worst, size in time_pages(client, pages[:3] + pages[6:], args.repeat):
            print(f"{path.replace(job_id, '<job>'):<58}{med:>10.1f}{worst:>10.1f}{size:>10}")
        st.db.dispose()


if __name__ == "__main__":
    main()
