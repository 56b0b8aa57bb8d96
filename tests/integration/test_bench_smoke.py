"""The benchmark still runs end to end (a smoke test so it cannot rot; no speed is asserted here)."""

from __future__ import annotations

import pytest

from bench import throughput
from tests.conftest import PG_ADMIN_URL, REDIS_URL, REPO

pytestmark = pytest.mark.integration


def test_quick_benchmark_prints_every_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEMATOVISION_BENCH_PG", PG_ADMIN_URL)
    monkeypatch.setenv("HEMATOVISION_BENCH_REDIS", REDIS_URL)
    out = tmp_path / "bench.txt"
    assert throughput.main(["--quick", "--images", "24", "--concurrency", "1", "--stack", "redis-postgres",
                            "--source", str(REPO / "samples" / "cells"), "--out", str(out),
                            "--compare-model", str(REPO / "models" / "hematovision-mnv2-cc-160")]) == 0
    text = out.read_text()
    for figure in ("classifier alone, LiteRT fp32, batch 64", "classifier alone, LiteRT fp32, batch 128",
                   "read + decode + preprocess alone", "whole path, folder job, 1 worker process",
                   "read + decode + preprocess + classifier in one process",
                   "whole path, upload, 1 worker process", "whole path, folder job, 1 worker process, batch 16",
                   "whole path, folder job, 1 worker process, LiteRT int8", "worker cold start, 1 process",
                   "peak RSS per worker process, 1 worker process (after a batch of 8 4000x3000 images)",
                   "GET /api/v1/jobs/<id> at 50 req/s", "during a job, asyncio client", "during a job, threaded requests client",
                   "no job running, asyncio client", "finalise a 1,000-image job", "GET /report of the 1,000-image job",
                   "predictions/s the database accepts, 4 writer processes", "targets (issue 12)",
                   "whole path, folder job, 1 worker process, model hematovision-mnv2-cc-160@",
                   "whole path, folder job, 1 process: shipped / model hematovision-mnv2-cc-160@"):
        assert figure in text, figure
    assert "nan" not in text.split("targets")[0]
    assert "0 errors" in text


def test_tta_benchmark_times_each_setting_through_its_own_worker(tmp_path, capsys, monkeypatch):
    """``bench.tta`` end to end on a model carrying a gate: one view around the gated run, the ratio printed."""
    import json
    import shutil

    from bench import tta

    model = tmp_path / "model"
    shutil.copytree(REPO / "models" / "hematovision-mnv2-cc-160", model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["tta"] = {"gate": 0.9, "chosen_by": "test"}
    (model / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("HEMATOVISION_MODEL_DIR", str(model))
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HEMATOVISION_BENCH_PG", PG_ADMIN_URL)
    monkeypatch.setenv("HEMATOVISION_BENCH_REDIS", REDIS_URL)
    rates, n = tta.run(REPO / "samples" / "cells", 16, "redis-postgres", order=(0, 2))
    assert n == 16 and set(rates) == {0, 2} and all(r > 0 for runs in rates.values() for r in runs)
    text = tta.render(rates, n, REPO / "samples" / "cells", str(model), "redis-postgres")
    assert "TTA gate 0.9" in text and "rule G (g3): where unsure / one view" in text
