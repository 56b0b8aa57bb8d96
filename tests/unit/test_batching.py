"""Batched, prefetched classification: same predictions as one image at a time, bounded memory and threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.batch import BatchLimits, classify_batch, classify_stream, prefetched, prepare_batches
from pipeline.classifier import load_classifier, prepare_batch
from pipeline.images import decode_image
from pipeline.settings import Settings
from tests.conftest import encode_jpeg, jpeg_bytes


def _samples(sample_folder: Path) -> list[Path]:
    return sorted(sample_folder.rglob("*.jp*g"))


def _one_at_a_time(clf, paths: list[Path]) -> list[tuple[np.ndarray, float | None]]:
    """The plain sequential reference: decode, preprocess and classify each image alone (probabilities, domain score)."""
    out = []
    for p in paths:
        probs, features = clf.predict_with_features(prepare_batch([decode_image(p.read_bytes(), 10**8)], clf.manifest))
        score = clf.domain.score(features)[0] if clf.domain is not None and features is not None else None
        out.append((probs[0], None if score is None else round(float(score), 4)))
    return out


@pytest.mark.parametrize("backend", ["litert", "litert-int8"])
def test_prefetched_batches_give_the_same_predictions_as_one_image_at_a_time(model_dir, sample_folder, backend):
    clf = load_classifier(model_dir, backend, threads=2)
    paths = _samples(sample_folder)
    reference = _one_at_a_time(clf, paths)
    # batches of 8, and a pixel budget that closes some batches early
    limits = BatchLimits(size=8, pixels=5 * 360 * 363, max_image_pixels=10**8)
    streamed = {r.key: r for batch in classify_stream(clf, [(i, p.read_bytes) for i, p in enumerate(paths)], limits) for r in batch}
    assert sorted(streamed) == list(range(len(paths)))
    for i, (row, score) in enumerate(reference):
        expected = {c: round(float(p), 6) for c, p in zip(clf.manifest.classes, row, strict=True)}
        assert streamed[i].probabilities == expected, paths[i]
        assert streamed[i].label == clf.manifest.classes[int(np.argmax(row))]
        assert streamed[i].ood_score == score
    whole = classify_batch(clf, [(i, p.read_bytes()) for i, p in enumerate(paths)], 10**8)
    assert [r.probabilities for r in whole] == [streamed[i].probabilities for i in range(len(paths))]


@pytest.mark.tensorflow
def test_keras_backend_runs_the_same_batching(model_dir, sample_folder):
    paths = _samples(sample_folder)[:12]
    items = [(i, p.read_bytes) for i, p in enumerate(paths)]
    limits = BatchLimits(size=5)
    keras_results = [r for b in classify_stream(load_classifier(model_dir, "keras", threads=2), items, limits) for r in b]
    lite_results = [r for b in classify_stream(load_classifier(model_dir, "litert"), items, limits) for r in b]
    assert [r.label for r in keras_results] == [r.label for r in lite_results]
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(keras_results, lite_results, strict=True)
               for c in a.probabilities) <= 1e-4


def test_batches_close_at_the_image_count_or_the_pixel_budget(model_dir):
    small, big = jpeg_bytes(1), encode_jpeg(np.full((2000, 3000, 3), 180, np.uint8))  # 76,800 and 6,000,000 pixels

    def unreadable() -> bytes:
        raise FileNotFoundError("gone")

    items = [(1, lambda: small), (2, lambda: small), (3, lambda: big), (4, lambda: small), (5, unreadable),
             (6, lambda: b"junk"), (7, lambda: small), (8, lambda: small), (9, lambda: small)]
    manifest = load_classifier(model_dir, "litert").manifest
    batches = list(prepare_batches(items, manifest, BatchLimits(size=3, pixels=1_000_000, max_image_pixels=10**8)))
    assert [b.keys for b in batches] == [[1, 2], [3], [4, 7, 8], [9]]
    side = manifest.input_size
    assert all(p.shape == (side, side, 3) and p.dtype == np.uint8 for b in batches for p in b.pixels)  # shrunk at once
    errors = {e.key: e.error for b in batches for e in b.errors}
    assert errors == {5: "stored file unreadable: FileNotFoundError", 6: "not a recognised image (JPEG, PNG, BMP or TIFF expected)"}


def test_prefetch_stays_bounded_and_stops_when_closed():
    produced, consumed, ahead = [0], [0], []

    def source():
        for i in range(50):
            produced[0] += 1
            ahead.append(produced[0] - consumed[0])
            yield i

    before = threading.active_count()
    out = []
    for item in prefetched(source(), depth=2):
        out.append(item)
        consumed[0] += 1
    assert out == list(range(50))
    assert max(ahead) <= 2 + 2  # the queue, plus the item being produced and the one being consumed

    stream = prefetched(source(), depth=1)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before


def test_errors_in_the_prefetch_thread_reach_the_caller():
    def failing():
        yield 1
        raise RuntimeError("decoder crashed")

    stream = prefetched(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="decoder crashed"):
        next(stream)


def test_thread_budget_shares_the_cores_between_worker_processes(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings().thread_budget == 8
    assert Settings(worker_processes=2).thread_budget == 4
    assert Settings(worker_processes=16).thread_budget == 1
    assert Settings(worker_processes=2, threads=3).thread_budget == 3
    assert Settings.from_env({"HEMATOVISION_THREADS": "2"}).thread_budget == 2
    with pytest.raises(ValueError, match="THREADS"):
        Settings(threads=-1)


def test_the_worker_tells_its_pool_processes_how_many_share_the_host(monkeypatch):
    from worker.celery_app import _share_cores_between_processes

    monkeypatch.setenv("HEMATOVISION_WORKER_PROCESSES", "0")  # what worker_environment passes when nothing was said
    _share_cores_between_processes(options={"concurrency": 2})
    assert Settings.from_env().worker_processes == 2
    monkeypatch.setenv("HEMATOVISION_WORKER_PROCESSES", "3")  # said by hand (several worker commands on one host): kept
    _share_cores_between_processes(options={"concurrency": 2})
    assert Settings.from_env().worker_processes == 3
