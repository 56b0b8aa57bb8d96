import csv
import io

import pytest

from pipeline.report import CellPrediction, DifferentialReport, build_report, clopper_pearson

CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
WHITE = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.30850), (10, 10, 0.69150, 1.0), (5, 10, 0.18709, 0.81291), (1, 100, 0.00025, 0.05446)],
)
def test_clopper_pearson_matches_published_values(k, n, low, high):
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def _preds():
    rows = [("n", "neutrophil", 0.99)] * 6 + [("l", "lymphocyte", 0.95)] * 3 + [("m", "monocyte", 0.4)]
    rows += [("e", "erythroblast", 0.9)] * 2 + [("p", "platelet", 0.8)] * 4
    preds = [CellPrediction(f"{p}{i}.jpg", label, conf) for i, (p, label, conf) in enumerate(rows)]
    preds.append(CellPrediction("broken.jpg", None, None, "truncated JPEG"))
    return preds


def test_differential_is_over_white_cells_only():
    report = build_report(_preds(), CLASSES, WHITE, "m@1", low_confidence=0.5)
    assert report.white_cell_total == 10
    by = {r.cell_type: r for r in report.differential}
    assert by["neutrophil"].count == 6 and by["neutrophil"].percent == pytest.approx(60.0)
    assert sum(r.percent for r in report.differential) == pytest.approx(100.0)
    assert report.erythroblasts == {"count": 2, "per_100_wbc": pytest.approx(20.0)}
    assert report.platelets == {"count": 4}
    assert (report.n_images, report.n_classified, report.n_failed) == (17, 16, 1)
    assert report.n_low_confidence == 1 and report.low_confidence_cells[0]["label"] == "monocyte"
    low, high = clopper_pearson(6, 10)
    assert by["neutrophil"].ci95_low == pytest.approx(100 * low) and by["neutrophil"].ci95_high == pytest.approx(100 * high)


def test_four_class_model_has_no_erythroblast_or_platelet_section():
    four = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
    report = build_report([CellPrediction("a", "eosinophil", 0.9)], four, four, "m@1", 0.5)
    assert report.erythroblasts is None and report.platelets is None


def test_csv_and_dict_round_trip():
    report = build_report(_preds(), CLASSES, WHITE, "m@1", low_confidence=0.5)
    again = DifferentialReport.from_dict({"job_id": "x", **report.to_dict()})
    assert again == report
    rows = list(csv.reader(io.StringIO(report.to_csv())))
    assert rows[0][0] == "section"
    diff = [r for r in rows if r[0] == "differential"]
    assert sum(int(r[2]) for r in diff) == 10
    assert ["summary", "images_failed", "1", "", "", ""] in rows
    assert "neutrophil" in report.to_table()


def test_the_report_says_how_the_images_were_read():
    import dataclasses

    report = dataclasses.replace(build_report(_preds(), CLASSES, WHITE, "m@1", low_confidence=0.5), serving="LiteRT fp32, one network")
    assert DifferentialReport.from_dict(report.to_dict()).serving == "LiteRT fp32, one network"
    assert ["model", "m@1", "LiteRT fp32, one network", "", "", ""] in list(csv.reader(io.StringIO(report.to_csv())))
    assert "model m@1 (LiteRT fp32, one network)" in report.to_table()
    assert DifferentialReport.from_dict({k: v for k, v in report.to_dict().items() if k != "serving"}).serving == ""  # older reports


def test_empty_job_report_has_zero_counts():
    report = build_report([CellPrediction("x", None, None, "not an image")], CLASSES, WHITE, "m@1", 0.5)
    assert report.white_cell_total == 0 and all(r.percent == 0 for r in report.differential)


def test_clopper_pearson_is_exactly_the_beta_quantiles():
    """The light scipy.special call gives the very numbers of scipy.stats' beta.ppf (the textbook form)."""
    from scipy.stats import beta

    from pipeline.report import clopper_pearson

    alpha = 1.0 - 0.95
    for n in (1, 7, 50, 333, 1000):
        for k in range(n + 1):
            low, high = clopper_pearson(k, n)
            assert low == (0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1)))
            assert high == (1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k)))
