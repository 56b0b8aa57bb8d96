"""Throughput benchmark: the classifier alone vs the whole job path, side by side in one run.

``python -m bench.throughput [--images 2000] [--stack redis-postgres|embedded] [--quick] [--profile]``

1. the classifier alone at the configured batch size (LiteRT fp32 and int8, Keras
   when TensorFlow is installed) and a batch-size sweep (16, 32, 64, 128);
2. reading + decoding + preprocessing alone, on one thread and on the worker's pool
   (as many threads as the process' thread budget);
3. the whole path (submit -> API under gunicorn -> broker -> Celery worker ->
   predictions in the database -> report fetched) via a server-side folder job and
   via multipart upload, with 1, 2 and 4 worker processes (each process takes
   cores / processes threads), int8 too, and the ratios to the classifier alone;
4. worker cold start (process start -> first batch done), peak RSS per worker
   process (including one batch of 64 synthetic 4000x3000 images), status latency
   p50/p99 under a constant request rate while a job runs, the report of a
   10,000-image job, and the predictions/s the database accepts.
Prints every figure, the ratios and the issue's targets. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from api.client import ApiClientError
from bench import database, load, profile
from bench.report import Report
from bench.stack import bench_settings, running_api, running_workers, timed_job, wait_for
from pipeline.batch import BatchLimits, apply_thread_budget, classify_stream, prepare_batches
from pipeline.classifier import describe, load_classifier
from pipeline.manifest import ModelManifest
from pipeline.preprocess import scale_for_mobilenet
from pipeline.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SWEEP = (16, 32, 64, 128)


def collect_images(n: int, dest: Path, source: Path | None = None) -> list[Path]:
    """Copy ``n`` cell images into ``dest`` (PBC and Kaggle at random, or ``source`` repeated as needed)."""
    if source is not None:
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        picked = [found[i % len(found)] for i in range(n)]
    else:
        found = sorted((SHARED / "pbc").glob("*/*.jpg")) + sorted((SHARED / "kaggle" / "TRAIN").glob("*/*.jpeg"))
        if len(found) < n:
            raise SystemExit(f"need {n} images, found {len(found)} under {SHARED}")
        picked = [found[i] for i in np.random.default_rng(0).choice(len(found), size=n, replace=False)]
    out = []
    for i, src in enumerate(picked):
        target = dest / src.parent.name / f"{i:05d}{src.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        out.append(target)
    return out


def big_images(dest: Path, n: int, width: int = 4000, height: int = 3000) -> Path:
    """``n`` synthetic field-sized JPEGs (one encoded, copied): a memory test, not a content test."""
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(215, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(400):
        cv2.circle(img, (int(rng.integers(0, width)), int(rng.integers(0, height))), 45, (178, 168, 226), -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    dest.mkdir(parents=True)
    for i in range(n):
        (dest / f"field{i:03d}.jpg").write_bytes(buf.tobytes())
    return dest


def time_classifier(backend: str, model_dir: str, batch: np.ndarray, repeats: int, threads: int | None = None) -> float:
    clf = load_classifier(model_dir, backend, threads=threads)
    clf.predict(batch)  # warm-up (allocations, graph tracing)
    t0 = time.perf_counter()
    for _ in range(repeats):
        clf.predict(batch)
    return repeats * len(batch) / (time.perf_counter() - t0)


class Reference:
    """The classifier alone, kept loaded in this process, re-measured around each whole-path figure.

    Background load on a shared machine moves absolute figures by several times within
    minutes; a ratio to the classifier alone measured right before and right after the
    figure (while the workers are idle) stays comparable.
    """

    def __init__(self, model_dir: str, batch: np.ndarray, backends: list[str], seconds: float = 1.5) -> None:
        self.batch, self.seconds = batch, seconds
        self.classifiers = {b: load_classifier(model_dir, b) for b in backends}
        for clf in self.classifiers.values():
            clf.predict(batch)

    def rate(self, backend: str) -> float:
        clf, n, t0 = self.classifiers[backend], 0, time.perf_counter()
        while n < 2 * len(self.batch) or time.perf_counter() - t0 < self.seconds:
            clf.predict(self.batch)
            n += len(self.batch)
        return n / (time.perf_counter() - t0)

    def around(self, backend: str, measure) -> tuple[float, float]:
        """(the figure, the classifier alone averaged over right before and right after it)."""
        before = self.rate(backend)
        value = measure()
        return value, (before + self.rate(backend)) / 2


def time_decode(paths: list[Path], manifest: ModelManifest, settings: Settings, threads: int = 1) -> tuple[float, np.ndarray]:
    """Read + decode + shrink + scale on ``threads`` threads (what the worker's prefetch does); also a model batch.

    OpenCV runs as in the worker (``apply_thread_budget``: one thread per call)."""
    apply_thread_budget(settings.thread_budget)
    limits = BatchLimits(settings.batch_size, settings.batch_pixels, settings.max_image_pixels)
    items = [(i, p.read_bytes) for i, p in enumerate(paths)]
    t0 = time.perf_counter()
    batches = [scale_for_mobilenet(np.stack(b.pixels)) for b in prepare_batches(items, manifest, limits, threads)]
    return len(paths) / (time.perf_counter() - t0), np.concatenate(batches)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, help="images per whole-path job (default 2000; 200 with --quick)")
    parser.add_argument("--stack", choices=("redis-postgres", "embedded"), default="redis-postgres")
    parser.add_argument("--quick", action="store_true", help="a short run: fewer images, repeats, load seconds; same figures")
    parser.add_argument("--concurrency", default="1,2,4", help="worker process counts for the whole path")
    parser.add_argument("--source", type=Path, help="folder of cell images to use (repeated as needed) instead of ../shared/data")
    parser.add_argument("--profile", action="store_true", help="sample the worker with py-spy during the 1-process folder job")
    parser.add_argument("--out", type=Path, help="also write the printed table to this file")
    parser.add_argument("--compare-model", help="another exported model (e.g. an older version): its preparation, classifier "
                                                "alone and 1-process folder-job whole path in the same run")
    args = parser.parse_args(argv)
    args.images = args.images or (200 if args.quick else 2000)
    args.repeats = 3 if args.quick else 10
    args.load_seconds, args.load_rate = (3, 50) if args.quick else (30, 200)
    args.report_images = 1000 if args.quick else 10_000
    args.big = 8 if args.quick else 64
    args.writes = 256 if args.quick else 3000
    args.sweep = SWEEP[:1] if args.quick else SWEEP  # whole path; the classifier alone always gets the full sweep
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Settings.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
    report = Report(args, base)
    try:
        with contextlib.ExitStack() as stack:
            paths = collect_images(args.images, tmp / "allowed" / "images", args.source)
            served = load_classifier(base.model_dir, base.backend, base.tta, ensemble=bool(base.ensemble))
            manifest = served.manifest
            size = manifest.input_size
            prep_paths = paths[: max(SWEEP[-1], base.batch_size * 4)]
            prep_rate, scaled = time_decode(prep_paths, manifest, base)
            report.add("decode", f"read + decode + preprocess alone (1 thread; recipe {manifest.preprocessing})", prep_rate)
            if base.thread_budget > 1:
                report.add("decode", f"read + decode + preprocess alone, the worker's pool of {base.thread_budget} threads",
                           time_decode(prep_paths, manifest, base, base.thread_budget)[0])
            args.stream_paths = paths[: min(len(paths), 640)]
            reference = _classifier_figures(report, base, scaled, args)
            settings = stack.enter_context(bench_settings(base, tmp, args.stack))
            _database_figures(report, settings, manifest.classes, args)
            with running_api(settings, tmp / "api.log") as client:
                _latency_idle(report, client, args)
                _whole_path_figures(report, client, settings, paths, reference, tmp, args)
                job_id = report.large_job_id
                report.add("report", f"GET /report of the {args.report_images:,}-image job (median of 10)",
                           database.median_ms(lambda: client.report(job_id)), unit="ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report.render(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
                         f"model {Path(base.model_dir).name} ({size}x{size}); workers read {describe(served)} "
                         f"(the classifier-alone figures: one view); batch size {base.batch_size}; stack {args.stack}; "
                         f"{args.images} images per job{getattr(args, 'compare_serving', '')}")
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def time_stream(paths: list[Path], settings: Settings) -> float:
    """The worker's own loop in this process: read, decode, prepare on the pool, classify one batch ahead
    (``classify_stream`` with the worker's thread budget), without database, broker or API."""
    apply_thread_budget(settings.thread_budget)
    classifier = load_classifier(settings.model_dir, settings.backend, settings.tta, threads=settings.thread_budget,
                                 ensemble=bool(settings.ensemble))
    limits = BatchLimits(settings.batch_size, settings.batch_pixels, settings.max_image_pixels)
    items = [(i, p.read_bytes) for i, p in enumerate(paths)]
    list(classify_stream(classifier, items[: settings.batch_size], limits, threads=settings.thread_budget))  # warm-up
    t0 = time.perf_counter()
    with contextlib.closing(classify_stream(classifier, items, limits, threads=settings.thread_budget)) as stream:
        n = sum(len(batch) for batch in stream)
    return n / (time.perf_counter() - t0)


def _classifier_figures(report: Report, base: Settings, scaled: np.ndarray, args) -> Reference:
    batch = scaled[: base.batch_size]
    fp32 = time_classifier("litert", base.model_dir, batch, args.repeats)
    report.rates["litert"] = fp32
    report.add("classifier", f"classifier alone, LiteRT fp32, batch {base.batch_size}", fp32)
    backends = ["litert"]
    if (load_classifier(base.model_dir, "litert").manifest.extra.get("int8") or {}).get("file"):
        backends.append("litert-int8")
        report.rates["litert-int8"] = time_classifier("litert-int8", base.model_dir, batch, args.repeats)
        report.add("classifier", f"classifier alone, LiteRT int8, batch {base.batch_size}", report.rates["litert-int8"], ref=fp32, ref_name="fp32")
    try:
        import tensorflow  # noqa: F401

        keras = time_classifier("keras", base.model_dir, batch, max(2, args.repeats // 2))
        report.add("classifier", f"classifier alone, Keras/TensorFlow, batch {base.batch_size}", keras, ref=fp32, ref_name="fp32")
    except ImportError:
        pass
    stream_paths = args.stream_paths
    report.add("classifier", f"read + decode + preprocess + classifier in one process ({len(stream_paths)} images, the worker's "
               f"loop without database, broker or API), thread budget {base.thread_budget}", time_stream(stream_paths, base),
               ref=fp32, ref_name="fp32")
    for b in SWEEP:
        report.add("sweep", f"classifier alone, LiteRT fp32, batch {b}", time_classifier("litert", base.model_dir, scaled[:b], args.repeats),
                   ref=fp32, ref_name=f"fp32 batch {base.batch_size}")
    return Reference(base.model_dir, batch, backends, 0.2 if args.quick else 1.5)


def _database_figures(report: Report, settings: Settings, classes: list[str], args) -> None:
    url = settings.resolved_database_url
    for writers in (1, 4):
        rate = database.write_rate(url, writers, args.writes // writers, settings.batch_size, classes)
        report.add("database", f"predictions/s the database accepts, {writers} writer process{'es' if writers > 1 else ''}, batches of "
                   f"{settings.batch_size}", rate)
    from worker import jobs
    from worker.context import WorkerContext

    ctx = WorkerContext(settings)
    _ = ctx.manifest  # model load is not part of finalisation
    took = []
    for _ in range(FINALISE_JOBS):  # a job finalises once: one large job per measurement, the median kept
        report.large_job_id = database.large_job(url, args.report_images, settings.batch_size, classes)
        t0 = time.perf_counter()
        if not jobs.finalize(ctx, report.large_job_id):
            raise SystemExit("the large job did not finalise")
        took.append((time.perf_counter() - t0) * 1000)
    # in order: the first in a fresh worker context also pays one-time costs (a connection, statement compilation);
    # the model load froze the start-up heap (``pipeline.heap``), so no full collection walks it mid-finalisation
    report.add("report", f"finalise a {args.report_images:,}-image job (check + build + store the report; median of "
               f"{FINALISE_JOBS} jobs; in order {' / '.join(f'{t:.0f}' for t in took)} ms)", float(np.median(took)), unit="ms")
    ctx.db.dispose()


#: large jobs finalised for the finalisation figure (each job can be finalised only once)
FINALISE_JOBS = 3


def _plural(c: int) -> str:
    return f"{c} worker process{'es' if c > 1 else ''}"


def _whole_path_figures(report: Report, client, settings: Settings, paths: list[Path], ref: Reference, tmp: Path, args) -> None:
    n, folder = len(paths), str(tmp / "allowed" / "images")
    first_batch = tmp / "allowed" / "first"
    for p in paths[: settings.batch_size]:
        (first_batch / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, first_batch / p.parent.name / p.name)

    def whole(what: str, submit, backend: str = "litert") -> None:
        rate, alone = ref.around(backend, lambda: n / timed_job(client, submit, n))
        report.add("whole", what, rate, ref=alone, ref_name=backend)

    for c in (int(x) for x in args.concurrency.split(",")):
        cold = client.submit_server_folder(str(first_batch))  # queued before the worker exists
        with running_workers(settings, c, tmp / f"worker-{c}.log") as workers:
            wait_for(client, cold["id"], poll=0.01, until_done=settings.batch_size)
            report.add("cold", f"worker cold start, {c} process{'es' if c > 1 else ''} (process start -> first batch done)",
                       time.perf_counter() - workers.started, unit="s")
            wait_for(client, cold["id"])
            spy = profile.start(workers.pool(), tmp / "profile.txt") if args.profile and c == 1 else None
            t0 = time.perf_counter()
            whole(f"whole path, folder job, {_plural(c)}", lambda: client.submit_server_folder(folder))
            if spy is not None:
                profile.stop(spy)
                report.profile = profile.summarize(tmp / "profile.txt", time.perf_counter() - t0)
            whole(f"whole path, upload, {_plural(c)}", lambda: client.submit_folder(folder))
            if c == 1:
                big = str(big_images(tmp / "allowed" / "big", args.big))
                timed_job(client, lambda big=big: client.submit_server_folder(big, batch_size=64, kind="cells"), args.big)
            report.add("rss", f"peak RSS per worker process, {_plural(c)}" + (f" (after a batch of {args.big} 4000x3000 images)" if c == 1 else ""),
                       workers.peak_rss_mib(), unit="MiB")
            if c == 1:
                for b in args.sweep:
                    whole(f"whole path, folder job, 1 worker process, batch {b}", lambda b=b: client.submit_server_folder(folder, batch_size=b))
                _latency_under_load(report, client, folder, n, args)
    if "litert-int8" in ref.classifiers:
        with running_workers(Settings(**{**settings.__dict__, "backend": "litert-int8"}), 1, tmp / "worker-int8.log"):
            timed_job(client, lambda: client.submit_server_folder(str(first_batch)), min(n, settings.batch_size))  # warm-up
            whole("whole path, folder job, 1 worker process, LiteRT int8", lambda: client.submit_server_folder(folder), "litert-int8")
    if args.compare_model:
        _compare_model_figures(report, client, settings, paths, folder, first_batch, tmp, args)


def _compare_model_figures(report: Report, client, settings: Settings, paths: list[Path], folder: str, first_batch: Path,
                           tmp: Path, args) -> None:
    """Another model's preparation, classifier alone and whole path, beside the shipped model's in the same run."""
    other = Settings(**{**settings.__dict__, "model_dir": args.compare_model})
    served = load_classifier(other.model_dir, other.backend, other.tta, ensemble=bool(other.ensemble))
    manifest = served.manifest
    name = f"model {manifest.label} ({manifest.input_size}x{manifest.input_size})"
    args.compare_serving = f"; the compared model's workers read {describe(served)}"
    prep_paths = paths[: max(SWEEP[-1], other.batch_size * 4)]
    prep_rate, scaled = time_decode(prep_paths, manifest, other)
    report.add("compare", f"read + decode + preprocess alone (1 thread), {name}", prep_rate)
    report.add("compare", f"classifier alone, LiteRT fp32, batch {other.batch_size}, {name}",
               time_classifier("litert", other.model_dir, scaled[: other.batch_size], args.repeats))
    ref = Reference(other.model_dir, scaled[: other.batch_size], ["litert"], 0.2 if args.quick else 1.5)
    with running_workers(other, 1, tmp / "worker-compare.log"):
        timed_job(client, lambda: client.submit_server_folder(str(first_batch)), min(len(paths), other.batch_size))  # warm-up
        rate, alone = ref.around("litert", lambda: len(paths) / timed_job(client, lambda: client.submit_server_folder(folder), len(paths)))
    report.add("compare", f"whole path, folder job, 1 worker process, {name}", rate, ref=alone, ref_name="its litert")


#: the load generators, side by side: the benchmark's figure first (``bench.load`` says why two)
CLIENTS = (("asyncio client", load.constant_rate), ("threaded requests client", load.constant_rate_threads))


def _latency_idle(report: Report, client, args) -> None:
    """The same load with no job running: what the API itself costs, without CPU taken by a worker."""
    url = f"{client.base}/api/v1/jobs/{report.large_job_id}"
    for name, generator in CLIENTS:
        result = generator(url, args.load_rate, min(10, args.load_seconds), headers=dict(client.http.headers))
        what = f"GET /api/v1/jobs/<id> at {args.load_rate} req/s, no job running, {name} ({result.requests} requests, " \
               f"{result.errors} errors)"
        report.add("latency", what + ": p50", result.p50_ms, unit="ms")
        report.add("latency", what + ": p99", result.p99_ms, unit="ms")


def _latency_under_load(report: Report, client, folder: str, n: int, args) -> None:
    """Status latency at a constant request rate while jobs keep the worker busy for the whole window (each client
    in turn)."""
    rate = report.value("whole path, folder job, 1 worker process")
    copies = max(1, math.ceil(rate * args.load_seconds * len(CLIENTS) * 1.5 / n))
    ids = [client.submit_server_folder(folder)["id"] for _ in range(copies)]
    results = [(name, generator(f"{client.base}/api/v1/jobs/{ids[0]}", args.load_rate, args.load_seconds,
                                headers=dict(client.http.headers))) for name, generator in CLIENTS]
    busy = client.job(ids[-1])["status"] in ("queued", "running")
    for job_id in ids:
        with contextlib.suppress(ApiClientError):  # it finished meanwhile
            client.cancel(job_id)
    for job_id in ids:
        wait_for(client, job_id)
    for name, result in results:
        what = f"GET /api/v1/jobs/<id> at {args.load_rate} req/s for {args.load_seconds} s during a job, {name} " \
               f"({result.requests} requests, {result.errors} errors, {result.rate:.0f} req/s sent" \
               f"{'' if busy else '; the jobs ended early'})"
        report.add("latency", what + ": p50", result.p50_ms, unit="ms")
        report.add("latency", what + ": p99", result.p99_ms, unit="ms")


if __name__ == "__main__":
    raise SystemExit(main())
