"""The real system for the benchmark: the API under gunicorn and Celery worker processes.

Everything runs as separate processes, as in production, so the benchmark's own
threads (upload, polling, the load generator) never share a GIL with the API.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from api.analyze import start_worker, worker_environment
from api.client import ApiClient
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parent.parent


#: where the benchmark creates (and drops) its own database, and the Redis database it uses as broker (defaults of
#: ``HEMATOVISION_BENCH_PG`` and ``HEMATOVISION_BENCH_REDIS``, read when a stack starts so tests can point elsewhere)
ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_REDIS = "redis://127.0.0.1:6379/14"


@contextmanager
def bench_settings(base: Settings, tmp: Path, stack: str = "redis-postgres") -> Iterator[Settings]:
    """The settings of a benchmark stack under ``tmp``: its own storage, allowed folder root (``tmp/allowed``),
    queue and token; with ``redis-postgres`` a fresh Postgres database (dropped afterwards) and Redis as broker,
    else the embedded default (SQLite). The database schema is migrated."""
    from db.migrate import upgrade

    admin = os.environ.get("HEMATOVISION_BENCH_PG", ADMIN_PG)
    pg_name, overrides = None, {}
    if stack == "redis-postgres":
        pg_name, url = _pg_database(admin)
        overrides = {"database_url": url, "broker_url": os.environ.get("HEMATOVISION_BENCH_REDIS", BENCH_REDIS)}
    try:
        settings = Settings(**{**base.__dict__, "var_dir": str(tmp / "var"), "storage_root": str(tmp / "storage"),
                               "allowed_folder_root": str(tmp / "allowed"), "queue": f"hv-bench-{os.getpid()}",
                               "api_token": base.api_token or secrets.token_hex(16), **overrides})
        upgrade(settings.resolved_database_url)
        yield settings
    finally:
        if pg_name:
            _pg_drop(admin, pg_name)


def _pg_database(admin_url: str) -> tuple[str, str]:
    import uuid

    import psycopg

    name = "hv_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def _pg_drop(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_api(settings: Settings, log_path: Path) -> Iterator[ApiClient]:
    """``gunicorn api.wsgi:app`` as in the Dockerfile (2 processes x 4 threads), on a free local port.

    Production servers require a token, so ``settings.api_token`` must be set; the client sends it.
    """
    port = _free_port()
    env = worker_environment(settings) | {"HEMATOVISION_ALLOWED_FOLDER_ROOT": settings.allowed_folder_root}
    cmd = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4", "--timeout", "600", "--bind", f"127.0.0.1:{port}",
           "--log-level", "warning", "api.wsgi:app"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    client = ApiClient(f"http://127.0.0.1:{port}", timeout=600, token=settings.api_token)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.http.get(f"{client.base}/healthz", timeout=2).ok:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {log_path}")
            time.sleep(0.1)
        yield client
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pool_pids(pid: int) -> list[int]:
    """The pool (child) processes of a Celery worker: they load the model and do the work."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Workers:
    proc: subprocess.Popen
    started: float  # time.perf_counter() when the process was started

    def pool(self, timeout: float = 60) -> int:
        """The pid of the first pool process (once it exists)."""
        deadline = time.monotonic() + timeout
        while not (pids := pool_pids(self.proc.pid)):
            if time.monotonic() > deadline:
                raise SystemExit("the worker started no pool process")
            time.sleep(0.05)
        return pids[0]

    def peak_rss_mib(self) -> float:
        """The largest peak RSS among the pool processes."""
        return max((peak_rss_mib(p) for p in pool_pids(self.proc.pid)), default=float("nan"))


@contextmanager
def running_workers(settings: Settings, concurrency: int, log_path: Path) -> Iterator[Workers]:
    """One ``celery worker --concurrency N`` (N pool processes sharing the cores by the thread budget)."""
    started = time.perf_counter()
    proc = start_worker(settings, concurrency, log_path)
    try:
        yield Workers(proc, started)
    finally:
        stop(proc)


#: adaptive polling of a running job: bounds of the interval, and the share of the expected remaining time
POLL_MIN, POLL_MAX, POLL_SHARE = 0.02, 0.5, 0.25


def next_poll(done: int, total: int, elapsed: float) -> float:
    """Seconds to the next status poll: a quarter of the time the job still needs at its rate so far.

    Why: each poll is a request the API answers on the same cores as the worker being measured;
    polling a 10-second job every 50 ms cost ~200 requests, most of them while nothing could have
    finished, and the figure paid for them. Near the end the interval shrinks to ``POLL_MIN``, so
    the end of the job is still seen within tens of milliseconds.
    """
    if done <= 0 or elapsed <= 0:
        return 0.1
    remaining = max(0, total - done) * elapsed / done
    return min(POLL_MAX, max(POLL_MIN, POLL_SHARE * remaining))


def wait_for(client: ApiClient, job_id: str, poll: float | None = None, until_done: int | None = None, timeout: float = 3600) -> dict:
    """Poll a job until it finished (or until ``until_done`` images are done); returns the last status.

    ``poll`` None: the adaptive interval of ``next_poll``.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        job = client.job(job_id)
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        images = job["images"]
        finished = images["done"] + images["failed"]
        if until_done is not None and finished >= until_done:
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['status']} after {timeout}s")
        total = until_done if until_done is not None else images["total"]
        time.sleep(poll if poll is not None else next_poll(finished, total, time.monotonic() - start))


def timed_job(client: ApiClient, submit, n: int) -> float:
    """Seconds from submission to the report in hand, for a job that must classify all ``n`` images."""
    t0 = time.perf_counter()
    job = submit()
    final = wait_for(client, job["id"])
    client.report(job["id"])
    elapsed = time.perf_counter() - t0
    if final["status"] != "succeeded" or final["images"]["done"] != n:
        raise SystemExit(f"benchmark job did not complete: {final}")
    return elapsed
