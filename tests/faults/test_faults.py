"""Fault injection with real processes: every job reaches a terminal state and nothing is lost or counted twice.

Each case: 24 sample cell images in batches of 6, one Celery worker process,
private Redis and Postgres. Every batch sleeps 1.5 s (``sleep:.jp:1.5``) so a
fault lands mid-batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from sqlalchemy import func, select

from api.analyze import worker_environment
from db.models import ErrorCode, Job, JobStatus
from tests.conftest import REPO, jpeg_bytes
from tests.faults.conftest import assert_every_image_accounted_for, free_port, holder_pid, kill_group

pytestmark = pytest.mark.faults
SLOW_BATCHES = "sleep:.jp:1.5"
RECOVERY = 90  # seconds: a 5 s lease and a 1 s reaper recover in well under this


def cells(n: int = 24, rename: dict[int, str] | None = None) -> dict[str, bytes]:
    paths = sorted((REPO / "samples" / "cells").rglob("*.jp*g"))[:n]
    names = {i: f"{p.parent.name}/{p.name}" for i, p in enumerate(paths)}
    names.update(rename or {})
    return {names[i]: p.read_bytes() for i, p in enumerate(paths)}


def test_sigkill_of_the_pool_process_mid_batch(stack):
    stack.start_worker(faults=SLOW_BATCHES)
    job_id = stack.submit(cells())
    os.kill(holder_pid(stack.running_batch(job_id)), signal.SIGKILL)
    stack.fault()
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.SUCCEEDED
    assert assert_every_image_accounted_for(stack, job_id) == {"done": 24, "failed": 0, "codes": []}


def test_sigkill_of_the_whole_worker_then_a_new_worker(stack):
    worker = stack.start_worker(faults=SLOW_BATCHES)
    job_id = stack.submit(cells())
    stack.running_batch(job_id)
    kill_group(worker)
    stack.fault()
    stack.start_worker(faults=SLOW_BATCHES)
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.SUCCEEDED
    assert assert_every_image_accounted_for(stack, job_id)["done"] == 24


def test_redis_restarted_mid_job_without_persistence(stack, redis_server):
    stack.start_worker(faults=SLOW_BATCHES)
    job_id = stack.submit(cells())
    stack.running_batch(job_id)
    redis_server.stop()  # every queued message is gone
    redis_server.start()
    stack.fault()
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.SUCCEEDED
    assert assert_every_image_accounted_for(stack, job_id)["done"] == 24


@pytest.mark.parametrize("outage", [20, pytest.param(90, marks=pytest.mark.slow)])
def test_postgres_stopped(stack, postgres, outage):
    stack.start_worker(faults=SLOW_BATCHES)
    job_id = stack.submit(cells())
    stack.running_batch(job_id)
    postgres.stop()
    try:
        time.sleep(outage)
    finally:
        postgres.start()
        stack.fault()  # recovery is timed from the database's return
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.SUCCEEDED
    assert assert_every_image_accounted_for(stack, job_id)["done"] == 24


@pytest.mark.parametrize(("faults", "image", "code"), [
    ("sleep:slow-:60", "slow-one.jpg", ErrorCode.TIMEOUT),  # a batch over the soft time limit (60 s against 10 s)
    ("kill:poison-", "poison-pill.jpg", ErrorCode.POISON),  # a batch that SIGKILLs its process on every delivery
], ids=["over-soft-time-limit", "poison-batch"])
def test_a_bad_batch_fails_its_images_with_a_code_and_the_job_goes_on(stack, faults, image, code):
    stack.start_worker(faults=faults)
    job_id = stack.submit(cells(rename={7: image}))
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.SUCCEEDED
    assert assert_every_image_accounted_for(stack, job_id) == {"done": 18, "failed": 6, "codes": [code]}


def test_a_job_whose_every_batch_is_poison_fails_with_a_code(stack):
    stack.start_worker(faults="kill:.jp")
    job_id = stack.submit(cells(6))
    assert stack.wait_terminal(job_id, RECOVERY) == JobStatus.FAILED
    assert assert_every_image_accounted_for(stack, job_id) == {"done": 0, "failed": 6, "codes": [ErrorCode.POISON]}


def test_api_killed_mid_upload_leaves_no_job_and_its_files_are_swept(stack, tmp_path):
    """SIGKILL of the API while it writes an upload to storage: no half-created job; the reaper removes the files."""
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port)], cwd=REPO, env=worker_environment(stack.settings),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        small = jpeg_bytes(size=(40, 40))
        files = [("files", (f"cells/{i:05d}.jpg", small, "image/jpeg")) for i in range(1500)]
        threading.Thread(target=_post_ignoring_errors, args=(f"http://127.0.0.1:{port}/api/v1/jobs", files), daemon=True).start()
        jobs_dir = stack.settings.resolved_storage_root / "jobs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (jobs_dir.is_dir() and any(jobs_dir.rglob("*.jpg"))):
            time.sleep(0.005)
        api.kill()
    finally:
        api.kill()
        api.wait()
    stack.fault()
    written = list(jobs_dir.rglob("*.jpg"))
    with stack.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # no half-created job
    assert 0 < len(written) < 1500
    stack.start_worker()
    deadline = time.monotonic() + 30
    while any(jobs_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(jobs_dir.iterdir()), stack.logs()
    print(f"\n[faults] {len(written)} orphan files removed {time.monotonic() - stack.fault_at:.1f} s after the kill")


def _post_ignoring_errors(url: str, files: list) -> None:
    with contextlib.suppress(requests.RequestException):  # the API is killed mid-request: expected
        requests.post(url, files=files, timeout=60)
