"""The profile summary names the worker's threads and files each sample under what it was doing."""

from __future__ import annotations

from bench.profile import summarize


def test_each_worker_thread_is_named_and_its_samples_categorised(tmp_path):
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (0x1): MainThread;_run_cell_batches (worker/jobs.py:130);record_results (db/repository.py:150) 30\n"
        "thread (0x2): hematovision-classify;produce (pipeline/parallel.py:70);invoke (x.py:1) 80\n"
        "thread (0x3): hematovision-prefetch;produce (pipeline/parallel.py:70);_scaled (pipeline/batch.py:150) 5\n"
        "thread (0x4): hematovision-prepare_0;prepare_image (pipeline/batch.py:100);decode_image (pipeline/images.py:1) 40\n"
    )
    lines = summarize(raw, seconds=1.0)
    assert lines == [
        "classifying thread: busy 80% of the job's wall time; inference (LiteRT invoke) 100%",
        "main thread: busy 30% of the job's wall time; database (SQLAlchemy, psycopg) 100%",
        "prefetch thread: busy 5% of the job's wall time; preprocess (crop, resize, scale) 100%",
        "preparing pool thread 0: busy 40% of the job's wall time; decode (header check + OpenCV) 100%",
    ]
