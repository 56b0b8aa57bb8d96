"""Batch leases, bounded redelivery and the reaper's decisions, on SQLite and Postgres."""

from __future__ import annotations

import subprocess
from datetime import timedelta

from sqlalchemy import update

from db import leases
from db import repository as repo
from db.engine import Database
from db.models import Batch, BatchStatus, ErrorCode, Image, ImageStatus, Lock, utcnow
from pipeline.settings import Settings
from worker.lease import worker_identity
from worker.names import CLASSIFY_BATCH, FINALIZE_JOB, START_JOB
from worker.reaper import reap

JOB = "b" * 32


def _job(db: Database, n: int = 4, batch_size: int = 2) -> list[int]:
    with db.session() as s, s.begin():
        repo.create_job(s, JOB, "upload", None, batch_size, [repo.NewImage(i, f"{i}.jpg", f"jobs/{JOB}/{i:07d}.jpg") for i in range(1, n + 1)])
        repo.mark_running(s, JOB)
        return leases.plan_batches(s, JOB, batch_size)


def _dead_holder() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{worker_identity().rpartition(':')[0]}:{proc.pid}"


def _claim(db: Database, batch_id: int, holder: str, max_deliveries: int = 2) -> leases.Claim:
    with db.session() as s, s.begin():
        return leases.claim_batch(s, batch_id, holder, 60, max_deliveries)


def test_batches_are_planned_once(migrated_url):
    db = Database(migrated_url)
    assert len(_job(db, 5, 2)) == 3
    with db.session() as s, s.begin():
        assert leases.plan_batches(s, JOB, 2) == []
    db.dispose()


def test_a_live_lease_refuses_a_second_claim_and_a_dead_holder_loses_it(migrated_url):
    db = Database(migrated_url)
    batch = _job(db)[0]
    assert _claim(db, batch, "elsewhere:1") == leases.Claim("claimed", 1)
    assert _claim(db, batch, worker_identity()).outcome == "busy"  # a duplicate message costs nothing
    dead = _dead_holder()
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == batch).values(holder=dead))
    assert _claim(db, batch, worker_identity()) == leases.Claim("claimed", 2)  # its process is gone: take over at once
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == batch).values(holder=dead))
    assert _claim(db, batch, worker_identity()).outcome == "poison"  # a third delivery is over max_deliveries=2
    db.dispose()


def test_an_expired_lease_is_claimable_and_a_clean_release_does_not_count(migrated_url):
    db = Database(migrated_url)
    batch = _job(db)[0]
    assert _claim(db, batch, "other-host:1").deliveries == 1
    with db.session() as s, s.begin():
        s.execute(update(Batch).where(Batch.id == batch).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert _claim(db, batch, "h:2").deliveries == 2
    with db.session() as s, s.begin():
        leases.release_batch(s, batch, "h:2")  # a transient error: given back, not counted
        assert s.get(Batch, batch).status == BatchStatus.QUEUED and s.get(Batch, batch).deliveries == 1
    db.dispose()


def test_failing_a_batch_marks_only_its_pending_images(migrated_url):
    db = Database(migrated_url)
    batch = _job(db)[0]
    with db.session() as s, s.begin():
        first, second = leases.batch_image_ids(s, batch)
        repo.record_results(s, JOB, [repo.ResultRow(first, "neutrophil", 0.9, {}, None)], "1")
        assert leases.fail_batch_images(s, batch, ErrorCode.TIMEOUT, "too slow") == 1
    with db.session() as s:
        assert s.get(Image, first).status == ImageStatus.DONE
        failed = s.get(Image, second)
        assert (failed.status, failed.error_code) == (ImageStatus.FAILED, ErrorCode.TIMEOUT)
        assert s.get(Batch, batch).status == BatchStatus.FAILED
    db.dispose()


def test_reaper_resends_lost_work_finalizes_and_has_one_winner_per_round(migrated_url, tmp_path):
    db = Database(migrated_url)
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, lease_seconds=5, reaper_interval=1)
    expired, queued = _job(db)
    with db.session() as s, s.begin():
        leases.claim_batch(s, expired, "gone-host:1", 5, 3)
        past = utcnow() - timedelta(seconds=60)
        s.execute(update(Batch).where(Batch.id == expired).values(lease_until=past))
        s.execute(update(Batch).where(Batch.id == queued).values(queued_at=past))
    sent: list[tuple[str, list]] = []

    def round_(depth):
        with db.session() as s, s.begin():
            s.execute(update(Lock).values(until=utcnow() - timedelta(seconds=1)))
        return reap(db, settings, lambda name, args: sent.append((name, args)), lambda: depth)

    assert round_(3).resent == [expired]  # messages are waiting in the broker: queued batches are presumably there
    assert reap(db, settings, lambda *a: None, lambda: 0).won is False  # the lock is held for this round
    assert round_(0).resent == [queued]  # nothing in the broker: the queued batch's message was lost
    assert sent == [(CLASSIFY_BATCH, [JOB, expired]), (CLASSIFY_BATCH, [JOB, queued])]
    with db.session() as s, s.begin():
        s.execute(update(Image).values(status=ImageStatus.DONE))
    assert round_(0).finalized == [JOB] and sent[-1] == (FINALIZE_JOB, [JOB])
    db.dispose()


def test_reaper_starts_a_job_whose_start_message_was_lost(migrated_url, tmp_path):
    db = Database(migrated_url)
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, lease_seconds=5)
    with db.session() as s, s.begin():
        repo.create_job(s, JOB, "upload", None, 2, [repo.NewImage(1, "1.jpg", f"jobs/{JOB}/0000001.jpg")])
        s.execute(update(repo.Job).values(created_at=utcnow() - timedelta(seconds=60)))
    sent = []
    assert reap(db, settings, lambda name, args: sent.append((name, args)), lambda: 0).started == [JOB]
    assert sent == [(START_JOB, [JOB])]
    db.dispose()


def test_reaper_removes_stored_files_of_uploads_that_never_became_jobs(migrated_url, tmp_path):
    import os
    import time

    from pipeline.storage import ImageStore

    db = Database(migrated_url)
    _job(db)
    store = ImageStore(tmp_path / "storage")
    orphan = "c" * 32
    for job_id in (JOB, orphan):
        store.put(f"jobs/{job_id}/0000001.jpg", b"x")
        old = time.time() - 120
        os.utime(tmp_path / "storage" / "jobs" / job_id, (old, old))
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, orphan_seconds=60)
    assert reap(db, settings, lambda *a: None, lambda: 3, store).orphans == [orphan]
    assert sorted(p.name for p in (tmp_path / "storage" / "jobs").iterdir()) == [JOB]  # the real job's files stay
    db.dispose()


def test_field_cells_are_upserted_so_two_deliveries_never_collide(migrated_url):
    db = Database(migrated_url)
    _job(db)
    with db.session() as s:
        image_id = repo.pending_image_ids(s, JOB)[0]

    def cells(n):
        return [repo.CellRow(i, (i, i, i + 5, i + 5), 0.9, "neutrophil", 0.8, {"neutrophil": 0.8}, None) for i in range(n)]

    for n in (3, 2):  # a redelivered batch writes the same field again, finding fewer cells
        with db.session() as s, s.begin():
            repo.record_field(s, JOB, image_id, cells(n), None)
    with db.session() as s:
        assert [c.idx for c in repo.cells_of_images(s, JOB, [image_id])[image_id]] == [0, 1]
    db.dispose()
