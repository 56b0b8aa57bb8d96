"""Throughput benchmark: the classifier alone vs the whole job path, in one run.

``python -m bench.throughput [--images 2000] [--stack redis-postgres|embedded]``

1. classifier alone: forward passes on preprocessed batches at the configured
   batch size, LiteRT and (if TensorFlow is installed) Keras, side by side;
2. decode + preprocess alone (OpenCV);
3. the whole path: HTTP multipart upload of the folder -> API -> broker ->
   a Celery worker (1 and 2 processes) -> predictions in the database -> report.
Prints every figure, the ratios, batch size, backend and core count.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier, prepare_batch
from pipeline.images import decode_image
from pipeline.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def collect_images(n: int, dest: Path) -> list[Path]:
    """Copy ``n`` cell images (PBC and Kaggle, round-robin by class) into ``dest``."""
    sources = sorted((SHARED / "pbc").glob("*/*.jpg")) + sorted((SHARED / "kaggle" / "TRAIN").glob("*/*.jpeg"))
    if len(sources) < n:
        raise SystemExit(f"need {n} images, found {len(sources)} under {SHARED}")
    rng = np.random.default_rng(0)
    picked = [sources[i] for i in rng.choice(len(sources), size=n, replace=False)]
    out = []
    for i, src in enumerate(picked):
        target = dest / src.parent.name / f"{i:05d}{src.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        out.append(target)
    return out


def time_classifier(backend: str, model_dir: str, batch: np.ndarray, repeats: int) -> float:
    clf = load_classifier(model_dir, backend)
    clf.predict(batch)  # warm-up (allocations, graph tracing)
    t0 = time.perf_counter()
    for _ in range(repeats):
        clf.predict(batch)
    return repeats * len(batch) / (time.perf_counter() - t0)


def time_whole_path(paths_root: Path, n: int, settings: Settings, concurrency: int) -> tuple[float, float]:
    """Images/s for submit -> stored predictions -> report; also the upload share."""
    import logging
    import threading

    from werkzeug.serving import make_server

    from api import create_app
    from api.analyze import start_worker
    from api.client import ApiClient
    from db.migrate import upgrade

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker = start_worker(settings, concurrency=concurrency)
    client = ApiClient(f"http://127.0.0.1:{server.server_port}")
    try:
        # warm-up job so worker start-up and model load are not counted
        warm = client.submit_folder(next(p for p in paths_root.iterdir() if p.is_dir()))
        client.wait(warm["id"], timeout=600)
        t0 = time.perf_counter()
        job = client.submit_folder(paths_root)
        t_upload = time.perf_counter() - t0
        final = client.wait(job["id"], poll=0.2, timeout=3600)
        client.report(job["id"])
        elapsed = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.shutdown()
    if final["status"] != "succeeded" or final["images"]["done"] != n:
        raise SystemExit(f"benchmark job did not complete: {final}")
    return n / elapsed, t_upload / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--stack", choices=("redis-postgres", "embedded"), default="redis-postgres")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--concurrency", default="1,2", help="worker process counts to measure the whole path with")
    args = parser.parse_args(argv)
    base = Settings.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
    try:
        paths = collect_images(args.images, tmp / "images")
        manifest = load_classifier(base.model_dir, "litert").manifest
        t0 = time.perf_counter()
        decoded = [decode_image(p.read_bytes(), base.max_image_pixels) for p in paths[: base.batch_size * 4]]
        batch = prepare_batch(decoded, manifest)
        prep_rate = len(decoded) / (time.perf_counter() - t0)
        batch = batch[: base.batch_size]
        rates = {"litert": time_classifier("litert", base.model_dir, batch, args.repeats)}
        if (load_classifier(base.model_dir, "litert").manifest.extra.get("int8") or {}).get("file"):
            rates["litert-int8"] = time_classifier("litert-int8", base.model_dir, batch, args.repeats)
        try:
            import tensorflow  # noqa: F401

            rates["keras"] = time_classifier("keras", base.model_dir, batch, max(2, args.repeats // 2))
        except ImportError:
            pass
        if args.stack == "redis-postgres":
            overrides = {"database_url": os.environ.get("HEMATOVISION_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"),
                         "broker_url": os.environ.get("HEMATOVISION_BENCH_REDIS", "redis://127.0.0.1:6379/14")}
        else:
            overrides = {}
        settings = Settings(**{**base.__dict__, "var_dir": str(tmp / "var"), "storage_root": str(tmp / "storage"),
                               "queue": f"hv-bench-{os.getpid()}", **overrides})
        whole = {int(c): time_whole_path(tmp / "images", args.images, Settings(**{**settings.__dict__, "queue": f"{settings.queue}-{c}"}), int(c))
                 for c in args.concurrency.split(",")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {Path(base.model_dir).name} ({manifest.input_size}x{manifest.input_size}); "
          f"batch size {base.batch_size}; stack {args.stack}; {args.images} images")
    for backend, rate in rates.items():
        print(f"classifier alone ({backend:11s}): {rate:8.1f} images/s  ({1000 / rate:.2f} ms/image)")
    print(f"decode + preprocess (OpenCV):  {prep_rate:8.1f} images/s")
    for c, (rate, upload_share) in whole.items():
        print(f"whole path (litert, worker concurrency {c}): {rate:8.1f} images/s  (upload is {100 * upload_share:.0f}% of the time); "
              f"ratio to classifier alone {rate / rates['litert']:.2f}")
    if "keras" in rates:
        print(f"ratio litert / keras classifier: {rates['litert'] / rates['keras']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
