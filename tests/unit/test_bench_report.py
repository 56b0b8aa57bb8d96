"""The benchmark's CPU-sharing bound: what preparation and the model sharing the cores allow, and the share reached."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bench.report import Report
from pipeline.settings import Settings


def _report(budget: int) -> Report:
    settings = dataclasses.replace(Settings.from_env(), threads=budget)
    report = Report(argparse.Namespace(), settings)
    report.rates.update({"litert": 400.0, "litert-int8": 600.0})
    report.add("decode", "read + decode + preprocess alone (1 thread; recipe r)", 400.0)
    report.add("classifier", "read + decode + preprocess + classifier in one process (640 images)", 260.0, ref=400.0, ref_name="fp32")
    report.add("whole", "whole path, folder job, 1 worker process", 200.0, ref=400.0, ref_name="litert")
    report.add("whole", "whole path, folder job, 1 worker process, batch 16", 100.0, ref=400.0, ref_name="litert")
    report.add("whole", "whole path, folder job, 1 worker process, LiteRT int8", 250.0, ref=625.0, ref_name="litert-int8")
    return report


def test_the_bound_is_the_share_of_the_cores_left_to_the_model_and_each_figure_is_measured_against_it():
    bounds = {what: (bound, share) for what, bound, share in _report(2).sharing_bounds()}
    # 1/400 core-s of preparation + 2/400 core-s of model per image on 2 cores: at best 2/3 of the model's rate
    assert bounds["in-process loop, no database, broker or API"] == pytest.approx((2 / 3, 0.65 / (2 / 3)))
    assert bounds["whole path, folder job, 1 worker process"] == pytest.approx((2 / 3, 0.5 / (2 / 3)))  # not the batch-16 row
    assert bounds["whole path, int8, 1 worker process"] == pytest.approx((1 / (1 + 600 / 800), 0.4 / (1 / (1 + 600 / 800))))
    assert "whole path, upload, 1 worker process" not in bounds  # not measured in this run: no row invented
    # one core: preparation and model take turns, so the bound is lower
    assert _report(1).sharing_bounds()[0][1] == pytest.approx(0.5)
    assert "CPU-sharing bound" in _report(2).render("header")


def test_tta_table_gives_each_setting_its_ratio_to_the_mean_of_the_one_view_runs(model_dir):
    from bench.tta import render

    text = render({0: [100.0, 90.0], 2: [86.0, 76.0], 1: [19.0]}, 1344, "val", str(model_dir), "embedded")
    assert "| one view | 100.0, 90.0 | 1.00 |" in text
    assert "| 8 views where unsure (HEMATOVISION_TTA=2) | 86.0, 76.0 | 0.85 |" in text
    assert "| 8 views, every image (HEMATOVISION_TTA=1) | 19.0 | 0.20 |" in text
    assert "= 0.85 (needs >= 0.85): met" in text
    assert render({0: [100.0], 2: [84.0]}, 10, "val", str(model_dir), "embedded").endswith("(needs >= 0.85): MISSED")
