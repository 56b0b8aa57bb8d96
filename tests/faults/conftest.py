"""A private Redis and Postgres (on free ports, so a test may stop them) and real Celery workers.

Settings are shortened so each case is quick: a 5 s lease, a 1 s reaper, a 10 s
soft time limit, 2 deliveries. The job is stored through the same intake as the
API (``accept_job``) and sent through the real broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.analyze import start_worker, stop_worker
from api.state import AppState
from api.submission import accept_job
from db import repository as repo
from db.engine import Database
from db.migrate import upgrade
from db.models import Batch, BatchStatus, Image, ImageStatus, JobStatus, Prediction
from pipeline.settings import Settings
from worker.faults import VARIABLE as FAULTS

pytestmark = pytest.mark.faults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'}")


@dataclass
class RedisServer:
    """redis-server without persistence: a restart loses every queued message, as in the issue."""

    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _wait_port(self.port, up=False)


@dataclass
class PostgresServer:
    """A throw-away cluster (initdb + pg_ctl); run as the ``postgres`` user when the tests run as root."""

    port: int
    root: Path

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self) -> str:
        import psycopg

        name = "hv_fault_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres():
    root = Path(tempfile.mkdtemp(prefix="hv-faults-pg-"))
    server = PostgresServer(free_port(), root)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by a test that failed mid-way
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def redis_server():
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class FaultStack:
    settings: Settings
    state: AppState
    db: Database
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)
    fault_at: float | None = None
    submitted_at: float = 0.0

    def fault(self) -> None:
        """Note when the fault was injected: recovery time is printed from here (README's fault table)."""
        self.fault_at = time.monotonic()

    def start_worker(self, concurrency: int = 1, faults: str = "") -> subprocess.Popen:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        worker = start_worker(self.settings, concurrency, log, extra_env={FAULTS: faults})
        self.workers.append(worker)
        return worker

    def submit(self, files: dict[str, bytes], batch_size: int = 6) -> str:
        self.submitted_at = time.monotonic()
        return accept_job(self.state, iter(files.items()), "upload", "fault case", batch_size, "cells")

    def running_batch(self, job_id: str, timeout: float = 60.0) -> Batch:
        """Wait until some batch of the job is held by a worker; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.db.session() as s:
                batch = s.scalars(select(Batch).where(Batch.job_id == job_id, Batch.status == BatchStatus.RUNNING)).first()
            if batch is not None and batch.holder:
                return batch
            time.sleep(0.05)
        raise AssertionError(f"no batch of job {job_id} started within {timeout} s\n{self.logs()}")

    def wait_terminal(self, job_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.db.session() as s:
                    status = repo.job_status(s, job_id)
            except Exception:  # the database may be the thing that is down
                status = None
            if status in JobStatus.FINISHED:
                since = self.fault_at if self.fault_at is not None else self.submitted_at
                print(f"\n[faults] job {status} {time.monotonic() - since:.1f} s after the fault")
                return status
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not finished within {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("worker-*.log")))


def holder_pid(batch: Batch) -> int:
    return int(batch.holder.rpartition(":")[2])


def kill_group(worker: subprocess.Popen) -> None:
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


@pytest.fixture
def stack(postgres, redis_server, model_dir, tmp_path):
    db_url = postgres.create_database()
    upgrade(db_url)
    settings = Settings(var_dir=str(tmp_path), database_url=db_url, broker_url=redis_server.url, storage_root=str(tmp_path / "storage"),
                        model_dir=str(model_dir), queue=f"hv-fault-{uuid.uuid4().hex[:8]}", task_time_limit=10, lease_seconds=5,
                        reaper_interval=1, max_deliveries=2, orphan_seconds=2, task_batches=1)  # a leased batch = one model batch
    state = AppState.create(settings)
    fs = FaultStack(settings, state, Database(db_url), tmp_path)
    try:
        yield fs
    finally:
        for w in fs.workers:
            if w.poll() is None:
                stop_worker(w, grace=5)
        fs.db.dispose()
        state.db.dispose()


def assert_every_image_accounted_for(stack: FaultStack, job_id: str) -> dict:
    """Each image: exactly one prediction (done) or one failure with an error and a code; the report adds up."""
    with stack.db.session() as s:
        rows = s.execute(select(Image.id, Image.status, Image.error, Image.error_code, func.count(Prediction.id))
                         .outerjoin(Prediction, Prediction.image_id == Image.id).where(Image.job_id == job_id)
                         .group_by(Image.id, Image.status, Image.error, Image.error_code)).all()
        summary = repo.get_summary(s, job_id)
        job = repo.get_job(s, job_id)
    for _, status, error, code, predictions in rows:
        if status == ImageStatus.DONE:
            assert predictions == 1 and error is None
        else:
            assert status == ImageStatus.FAILED and predictions == 0 and error and code, (status, error, code, predictions)
    done = sum(1 for r in rows if r[1] == ImageStatus.DONE)
    failed = len(rows) - done
    if job.status == JobStatus.SUCCEEDED:
        assert summary["n_images"] == len(rows) == job.images_total
        assert summary["n_classified"] == done and summary["n_failed"] == failed
        classified = sum(r["count"] for r in summary["differential"]) + summary["erythroblasts"]["count"] + summary["platelets"]["count"]
        assert classified == done
    else:
        assert summary is None and done == 0 and job.error_code
    return {"done": done, "failed": failed, "codes": sorted({r[3] for r in rows if r[3]})}
