"""Batched, prefetched classification: same predictions as one image at a time, bounded memory and threads."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.batch import BatchLimits, apply_thread_budget, classify_batch, classify_stream, prefetched, prepare_batches, prepare_image
from pipeline.classifier import load_classifier, prepare_batch
from pipeline.images import decode_image
from pipeline.parallel import ordered_map
from pipeline.preprocess import model_crop
from pipeline.settings import Settings
from pipeline.stain_check import stain_signature
from pipeline.storage import StorageUnavailable
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
    items = [(i, p.read_bytes) for i, p in enumerate(paths)]
    streamed = {r.key: r for batch in classify_stream(clf, items, limits) for r in batch}
    assert sorted(streamed) == list(range(len(paths)))
    pooled = [r for batch in classify_stream(clf, items, limits, prefetch=2, threads=3) for r in batch]
    assert pooled == [streamed[i] for i in range(len(paths))]  # the pool keeps the order and every figure
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
    keras_results = [r for b in classify_stream(load_classifier(model_dir, "keras", threads=2), items, limits, threads=2) for r in b]
    lite_results = [r for b in classify_stream(load_classifier(model_dir, "litert"), items, limits) for r in b]
    assert [r.label for r in keras_results] == [r.label for r in lite_results]
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(keras_results, lite_results, strict=True)
               for c in a.probabilities) <= 1e-4


def _mixed_items(delay: float = 0.0) -> list[tuple[int, object]]:
    """Small and big images, an unreadable file and junk; with ``delay``, reads take random time
    (seeded), so a pool finishes them out of order."""
    small, big = jpeg_bytes(1), encode_jpeg(np.full((2000, 3000, 3), 180, np.uint8))  # 76,800 and 6,000,000 pixels
    rng = random.Random(0)

    def reader(data: bytes | None):
        pause = rng.uniform(0, delay)

        def read() -> bytes:
            time.sleep(pause)
            if data is None:
                raise FileNotFoundError("gone")
            return data
        return read

    return [(1, reader(small)), (2, reader(small)), (3, reader(big)), (4, reader(small)), (5, reader(None)),
            (6, reader(b"junk")), (7, reader(small)), (8, reader(small)), (9, reader(small))]


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_close_at_the_image_count_or_the_pixel_budget(model_dir, threads):
    manifest = load_classifier(model_dir, "litert").manifest
    limits = BatchLimits(size=3, pixels=1_000_000, max_image_pixels=10**8)
    batches = list(prepare_batches(_mixed_items(delay=0.05 if threads > 1 else 0.0), manifest, limits, threads))
    assert [b.keys for b in batches] == [[1, 2], [3], [4, 7, 8], [9]]
    side = manifest.input_size
    assert all(p.shape == (side, side, 3) and p.dtype == np.uint8 for b in batches for p in b.pixels)  # shrunk at once
    # each error row stays in the batch of its place in the input
    assert [[e.key for e in b.errors] for b in batches] == [[], [], [5, 6], []]
    errors = {e.key: e.error for b in batches for e in b.errors}
    assert errors == {5: "stored file unreadable: FileNotFoundError", 6: "not a recognised image (JPEG, PNG, BMP or TIFF expected)"}


@pytest.mark.parametrize("opencv_threads", [1, 4])
def test_the_pool_prepares_the_same_pixels_as_one_thread(model_dir, opencv_threads):
    """Whatever the pool's threads and OpenCV's own (the worker sets 1, ``apply_thread_budget``)."""
    manifest = load_classifier(model_dir, "litert").manifest
    limits = BatchLimits(size=4, pixels=10**9, max_image_pixels=10**8)
    before = cv2.getNumThreads()
    one = list(prepare_batches(_mixed_items(), manifest, limits, threads=1))
    try:
        cv2.setNumThreads(opencv_threads)
        pooled = list(prepare_batches(_mixed_items(delay=0.05), manifest, limits, threads=4))
    finally:
        cv2.setNumThreads(before)
    assert [(b.keys, b.found, b.stains, b.errors, b.source_pixels) for b in pooled] == \
        [(b.keys, b.found, b.stains, b.errors, b.source_pixels) for b in one]
    assert all(np.array_equal(p, q) for a, b in zip(one, pooled, strict=True) for p, q in zip(a.pixels, b.pixels, strict=True))


def _reader(data: bytes):
    return lambda: data


def _signature_of(data: bytes, manifest) -> tuple[float, float, float] | None:
    """The stain signature of an image's model crop, computed apart from the serving path."""
    return stain_signature(model_crop(decode_image(data, 10**8), manifest.input_size, manifest.preprocessing).pixels)


def test_each_result_carries_the_red_cell_stain_signature_of_its_own_crop(model_dir, sample_folder):
    """Sample cell images (red cells around the cell) carry their crop's signature through prepare_image, the batches
    (parallel to keys, across a pool and errors) and classify_stream; an image without red cells carries None."""
    clf = load_classifier(model_dir, "litert")
    manifest = clf.manifest
    samples = {i: p.read_bytes() for i, p in enumerate(_samples(sample_folder)[:12])}
    expected = {key: _signature_of(data, manifest) for key, data in samples.items()}
    assert all(sig is not None and len(sig) == 3 and all(v > 0 for v in sig) for sig in expected.values())
    assert len(set(expected.values())) > 1  # one signature per image, not one per batch
    plain = encode_jpeg(np.full((300, 300, 3), 200, np.uint8))  # no red cell (and no white cell)
    assert prepare_image((0, _reader(samples[0])), manifest, BatchLimits()).stain == expected[0]
    assert prepare_image((1, _reader(plain)), manifest, BatchLimits()).stain is None

    items = [(key, _reader(data)) for key, data in samples.items()]
    items[3:3] = [(100, _reader(plain)), (101, _reader(b"junk"))]
    items.insert(9, (102, _reader(plain)))
    expected.update({100: None, 102: None})
    limits = BatchLimits(size=4)
    for batch in prepare_batches(items, manifest, limits, threads=3):
        assert len(batch.stains) == len(batch.keys) == len(batch.pixels)
        assert batch.stains == [expected[key] for key in batch.keys]
    results = {r.key: r for batch in classify_stream(clf, items, limits, prefetch=1, threads=3) for r in batch}
    assert {key: r.stain_od for key, r in results.items() if r.error is None} == expected
    assert results[100].label is not None and results[100].cell_found is False  # still classified, just not measured
    assert results[101].error is not None and results[101].stain_od is None
    whole = classify_batch(clf, [(key, read()) for key, read in items], 10**8)
    assert [r.stain_od for r in whole] == [results[key].stain_od for key, _ in items]


def test_a_model_without_a_stain_reference_spends_nothing_on_signatures(model_dir, sample_folder):
    """Models before 2.3.1 cannot check a stain, so their jobs do not measure it (0.25 ms of preparation per
    image); the crop and everything else stay the same."""
    import dataclasses

    manifest = load_classifier(model_dir, "litert").manifest
    assert manifest.checks_stain
    ood = {k: v for k, v in manifest.extra["ood"].items() if k != "stain"}
    older = dataclasses.replace(manifest, extra={**manifest.extra, "ood": ood})
    assert not older.checks_stain
    data = _samples(sample_folder)[0].read_bytes()
    with_check = prepare_image((0, _reader(data)), manifest, BatchLimits())
    without = prepare_image((0, _reader(data)), older, BatchLimits())
    assert with_check.stain is not None and without.stain is None
    assert np.array_equal(with_check.pixels, without.pixels) and with_check.found == without.found


def test_the_focus_check_measures_each_crop_only_for_models_that_carry_it(model_dir, sample_folder):
    """A model with a focus reference (``ood.focus``, 2.4.2) measures each image's blur effect on its own model crop
    and carries it to the result; one without spends nothing on it; the crop and the answer are the same."""
    import dataclasses

    from pipeline.focus_check import blur_effect

    clf = load_classifier(model_dir, "litert")
    ood = dict(clf.manifest.extra["ood"])
    ood.pop("focus", None)
    without = dataclasses.replace(clf.manifest, extra={**clf.manifest.extra, "ood": ood})
    with_focus = dataclasses.replace(clf.manifest, extra={**clf.manifest.extra, "ood": {**ood, "focus": {"laboratories": ["x"]}}})
    assert with_focus.checks_focus and not without.checks_focus
    samples = {i: p.read_bytes() for i, p in enumerate(_samples(sample_folder)[:6])}
    for key, data in samples.items():
        measured = prepare_image((key, _reader(data)), with_focus, BatchLimits())
        plain = prepare_image((key, _reader(data)), without, BatchLimits())
        crop = model_crop(decode_image(data, 10**8), with_focus.input_size, with_focus.preprocessing)
        assert measured.focus == blur_effect(crop.pixels) and 0.0 < measured.focus < 1.0
        assert plain.focus is None and np.array_equal(measured.pixels, plain.pixels)
    items = [(key, _reader(data)) for key, data in samples.items()] + [(99, _reader(b"junk"))]
    clf.manifest = with_focus  # this test's own classifier: serve it as a model that carries the check
    results = {r.key: r for batch in classify_stream(clf, items, BatchLimits(size=4), threads=2) for r in batch}
    assert {k: r.focus for k, r in results.items() if r.error is None} == {
        k: prepare_image((k, _reader(d)), with_focus, BatchLimits()).focus for k, d in samples.items()}
    assert results[99].focus is None


def test_the_pool_stays_bounded_keeps_order_and_stops_when_closed():
    lock = threading.Lock()
    pulled, consumed, running, most_running, ahead = [0], [0], [0], [0], []

    def source():
        for i in range(60):
            pulled[0] += 1
            ahead.append(pulled[0] - consumed[0])
            yield i

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
        time.sleep(0.002 * (i % 4))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i

    before = threading.active_count()
    out = []
    for value in ordered_map(work, source(), threads=3, ahead=5):
        out.append(value)
        consumed[0] += 1
        time.sleep(0.001)  # a consumer slower than the pool
    assert out == [i * i for i in range(60)]
    assert max(ahead) <= 5 + 1  # the window, plus the item being submitted
    assert most_running[0] <= 3
    assert threading.active_count() == before

    stream = ordered_map(work, source(), threads=3, ahead=5)
    pulled[0] = consumed[0] = 0
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert threading.active_count() == before  # pool threads joined
    assert pulled[0] <= 2 + 5  # the rest of the source was never read


def test_an_error_in_the_pool_reaches_the_caller_at_its_place_and_stops_the_pool():
    def work(i: int) -> int:
        if i == 4:
            raise StorageUnavailable("store went away")
        time.sleep(0.001)
        return i

    before = threading.active_count()
    out = []
    with pytest.raises(StorageUnavailable):
        for value in ordered_map(work, range(50), threads=3):
            out.append(value)
    assert out == [0, 1, 2, 3]
    assert threading.active_count() == before


def test_an_unavailable_store_fails_the_whole_stream_and_the_threads_stop(model_dir):
    clf = load_classifier(model_dir, "litert")

    def store_away() -> bytes:
        raise StorageUnavailable("storage folder is missing")

    items = [(i, (lambda: jpeg_bytes(1))) for i in range(6)] + [(6, store_away)] + [(7, lambda: jpeg_bytes(1))]
    before = threading.active_count()
    with pytest.raises(StorageUnavailable):
        list(classify_stream(clf, items, BatchLimits(size=4), prefetch=2, threads=3))
    assert threading.active_count() == before


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


def test_a_thread_budget_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        apply_thread_budget(0)


def test_the_worker_tells_its_pool_processes_how_many_share_the_host(monkeypatch):
    from worker.celery_app import _share_cores_between_processes

    monkeypatch.setattr("os.nice", lambda increment: 0)  # the priority is tested in a process of its own below
    monkeypatch.setenv("HEMATOVISION_WORKER_PROCESSES", "0")  # what worker_environment passes when nothing was said
    _share_cores_between_processes(options={"concurrency": 2})
    assert Settings.from_env().worker_processes == 2
    monkeypatch.setenv("HEMATOVISION_WORKER_PROCESSES", "3")  # said by hand (several worker commands on one host): kept
    _share_cores_between_processes(options={"concurrency": 2})
    assert Settings.from_env().worker_processes == 3


@pytest.mark.parametrize(("setting", "expected"), [("", 0), ("5", 5), ("12", 12)])
def test_the_worker_runs_nicer_than_the_api_by_its_setting(setting, expected):
    """celeryd_init lowers the worker's priority before it forks its pool, so every pool process inherits it."""
    import os
    import subprocess
    import sys

    code = ("import os; from worker.celery_app import _share_cores_between_processes as init; "
            "before = os.nice(0); init(options={'concurrency': 1}); print(os.nice(0) - before)")
    env = {**os.environ, "HEMATOVISION_WORKER_NICE": setting, "HEMATOVISION_WORKER_PROCESSES": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) == min(expected, 19 - os.nice(0))


def test_a_worker_nice_outside_0_to_19_is_refused():
    with pytest.raises(ValueError, match="WORKER_NICE"):
        Settings(worker_nice=20)
