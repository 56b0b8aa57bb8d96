"""Image pipeline: decoding, preprocessing, batched classification, reports.

Pure Python + NumPy/OpenCV: no Flask, Celery or SQL here.
"""

from pipeline.batch import ImageResult, classify_batch
from pipeline.classifier import Classifier, load_classifier
from pipeline.report import CellPrediction, DifferentialReport, build_report
from pipeline.settings import Settings

__all__ = [
    "CellPrediction",
    "Classifier",
    "DifferentialReport",
    "ImageResult",
    "Settings",
    "build_report",
    "classify_batch",
    "load_classifier",
]
