"""Repository behaviour on both SQLite and the real Postgres."""

import pytest
from sqlalchemy import inspect, select

from db import repository as repo
from db.engine import Database
from db.migrate import downgrade, heads, upgrade
from db.models import Image, Job, JobStatus, Prediction


def test_migrations_have_one_head():
    assert len(heads()) == 1


def test_upgrade_on_empty_database_creates_schema_and_downgrade_removes_it(database_url):
    upgrade(database_url)
    db = Database(database_url)
    assert {"jobs", "images", "predictions", "job_summaries"} <= set(inspect(db.engine).get_table_names())
    downgrade(database_url)
    assert "jobs" not in inspect(db.engine).get_table_names()
    db.dispose()


def _job(db: Database, n: int = 3) -> tuple[str, list[int]]:
    images = [repo.NewImage(i, f"s/{i}.jpg", f"jobs/{'a' * 32}/{i:07d}.jpg") for i in range(1, n + 1)]
    images.append(repo.NewImage(n + 1, "bad.txt", None, "not a recognised image"))
    with db.session() as s, s.begin():
        repo.create_job(s, "a" * 32, "upload", "t", 2, images, None, None)
    with db.session() as s:
        return "a" * 32, repo.pending_image_ids(s, "a" * 32)


def _rows(ids, label="neutrophil"):
    return [repo.ResultRow(i, label, 0.9, {label: 0.9}, None) for i in ids]


def test_results_upsert_is_idempotent(migrated_url):
    db = Database(migrated_url)
    job_id, ids = _job(db)
    for label in ("neutrophil", "lymphocyte"):  # a redelivered batch writes again
        with db.session() as s, s.begin():
            repo.record_results(s, job_id, _rows(ids[:2], label), "1")
    with db.session() as s:
        preds = s.scalars(select(Prediction).where(Prediction.job_id == job_id)).all()
        assert len(preds) == 2 and {p.label for p in preds} == {"lymphocyte"}
        prog = repo.progress(s, job_id)
        assert (prog.total, prog.done, prog.failed, prog.pending) == (4, 2, 1, 1)
    db.dispose()


def test_finalize_has_exactly_one_winner(migrated_url):
    db = Database(migrated_url)
    job_id, ids = _job(db)
    with db.session() as s, s.begin():
        repo.mark_running(s, job_id)
        repo.record_results(s, job_id, _rows(ids[:2]), "1")
    with db.session() as s, s.begin():
        assert repo.finalize_if_complete(s, job_id, lambda: {"x": 1}) is False  # one image pending
    with db.session() as s, s.begin():
        repo.record_results(s, job_id, [repo.ResultRow(ids[2], None, None, None, "truncated JPEG")], "1")
    wins = []
    for _ in range(2):
        with db.session() as s, s.begin():
            wins.append(repo.finalize_if_complete(s, job_id, lambda: {"x": 1}))
    assert wins == [True, False]
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED and job.finished_at is not None
        assert repo.get_summary(s, job_id) == {"x": 1}
        assert repo.progress(s, job_id).failed == 2
    db.dispose()


def test_cancel_only_active_jobs(migrated_url):
    db = Database(migrated_url)
    job_id, _ = _job(db)
    with db.session() as s, s.begin():
        assert repo.cancel_job(s, job_id) is True
    with db.session() as s, s.begin():
        assert repo.cancel_job(s, job_id) is False
        assert repo.job_status(s, job_id) == JobStatus.CANCELED
    db.dispose()


def _statements(db: Database) -> list[str]:
    """Every SQL statement the engine runs from now on (to check how many a call costs)."""
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


def test_progress_counters_match_a_recount_under_redelivery(migrated_url):
    """Counters move per batch by the rows that really left 'pending': repeats, mixed
    errors and a field image never count twice, and always equal a recount."""
    db = Database(migrated_url)
    job_id, ids = _job(db, n=6)
    mixed = _rows(ids[:3]) + [repo.ResultRow(ids[3], None, None, None, "truncated JPEG"),
                              repo.ResultRow(ids[4], None, None, None, "not a recognised image")]
    for _ in range(2):  # the same batch delivered twice
        with db.session() as s, s.begin():
            repo.record_results(s, job_id, mixed, "1")
        with db.session() as s:
            assert repo.progress(s, job_id) == repo.counted_progress(s, job_id) == repo.Progress(7, 3, 3)
    for _ in range(2):
        with db.session() as s, s.begin():
            repo.record_field(s, job_id, ids[5], [], None)
    with db.session() as s:
        assert repo.progress(s, job_id) == repo.counted_progress(s, job_id) == repo.Progress(7, 4, 3)
        assert repo.progress(s, "f" * 32) == repo.Progress(0, 0, 0)
    db.dispose()


def test_status_list_and_finalize_cost_does_not_grow_with_the_job(migrated_url):
    """Status reads one row; the jobs list is one query; the completeness check is one UPDATE."""
    db = Database(migrated_url)
    job_id, ids = _job(db, n=300)
    for i in range(3):
        with db.session() as s, s.begin():
            repo.create_job(s, f"{i:032x}", "folder", None, 8, [repo.NewImage(1, "a.jpg", None, "bad")])
    seen = _statements(db)
    with db.session() as s:
        jobs, total = repo.list_jobs(s, limit=2, offset=1)
        assert total == 4 and len(jobs) == 2 and len(seen) == 1
        assert repo.list_jobs(s, limit=2, offset=10) == ([], 4)
    with db.session() as s, s.begin():
        repo.record_results(s, job_id, _rows(ids[:-1]), "1")
    seen.clear()
    with db.session() as s, s.begin():
        assert repo.finalize_if_complete(s, job_id, lambda: {"x": 1}) is False
    assert [q.split()[0] for q in seen if not q.startswith(("BEGIN", "COMMIT", "ROLLBACK"))] == ["UPDATE"]
    db.dispose()


def test_upgrade_backfills_counters_of_existing_jobs(database_url):
    upgrade(database_url, "0002")
    db = Database(database_url)
    with db.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("INSERT INTO jobs (id, status, kind, kind_source, source, images_total, batch_size, created_at) "
                          "VALUES ('j', 'running', 'cells', 'client', 'upload', 3, 8, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO images (job_id, seq, path, status) VALUES ('j', 1, 'a', 'done'), ('j', 2, 'b', 'failed'), "
                          "('j', 3, 'c', 'pending')"))
    upgrade(database_url)
    with db.session() as s:
        assert repo.progress(s, "j") == repo.Progress(3, 1, 1)
    downgrade(database_url, "0002")
    db.dispose()


def _old_fields_job(database_url: str, revision: str, job_id: str) -> Database:
    """A database at ``revision`` holding one running "fields" job with a done and a pending field (for migrations)."""
    from sqlalchemy import text

    upgrade(database_url, revision)
    db = Database(database_url)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, status, kind, kind_source, source, images_total, batch_size, created_at) "
                          f"VALUES ('{job_id}', 'running', 'fields', 'client', 'upload', 2, 8, CURRENT_TIMESTAMP)"))
        conn.execute(text(f"INSERT INTO images (job_id, seq, path, status) VALUES ('{job_id}', 1, 's/old.jpg', 'done'), "
                          f"('{job_id}', 2, 's/new.jpg', 'pending')"))
    return db


def test_field_cell_ood_score_migration_keeps_cells_and_round_trips(database_url):
    """0007 adds cells.ood_score to a database with cells in it (old rows: NULL), the repository writes and reads it,
    and the downgrade drops only that column."""
    from sqlalchemy import text

    db = _old_fields_job(database_url, "0004_progress_counters", "f")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO cells (job_id, image_id, idx, x0, y0, x1, y1, score, label, confidence, probabilities) "
                          "SELECT 'f', id, 0, 1, 2, 3, 4, 0.9, 'neutrophil', 0.8, '{}' FROM images WHERE seq = 1"))
    upgrade(database_url)
    assert "ood_score" in {c["name"] for c in inspect(db.engine).get_columns("cells")}
    with db.session() as s, s.begin():
        new_id = s.scalar(select(Image.id).where(Image.seq == 2))
        repo.record_field(s, "f", new_id, [repo.CellRow(0, (5, 6, 7, 8), 0.7, "lymphocyte", 0.6, {}, None, 12.5)], None)
    with db.session() as s:
        out = repo.field_outcomes(s, "f")
    assert out.cells == [("s/old.jpg", 0, "neutrophil", 0.8, None, None, None), ("s/new.jpg", 0, "lymphocyte", 0.6, 12.5, None, None)]
    downgrade(database_url, "0004_progress_counters")
    assert "ood_score" not in {c["name"] for c in inspect(db.engine).get_columns("cells")}
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cells")).scalar() == 2
    db.dispose()
    upgrade(database_url)


def test_field_red_cell_migration_round_trips_and_downgrades(database_url):
    """0008 adds images.red_cell_px (old rows: NULL); record_field keeps a field's measurement, field_outcomes reads it
    back by path; the downgrade drops only that column."""
    from sqlalchemy import text

    db = _old_fields_job(database_url, "0007_field_ood", "r")
    upgrade(database_url)
    assert "red_cell_px" in {c["name"] for c in inspect(db.engine).get_columns("images")}
    with db.session() as s, s.begin():
        new_id = s.scalar(select(Image.id).where(Image.job_id == "r", Image.seq == 2))
        repo.record_field(s, "r", new_id, [repo.CellRow(0, (5, 6, 7, 8), 0.7, "lymphocyte", 0.6, {}, None, 12.5)], None, 88.5)
    with db.session() as s:
        out = repo.field_outcomes(s, "r")
    assert out.red_cells == {"s/old.jpg": None, "s/new.jpg": 88.5}
    downgrade(database_url, "0007_field_ood")
    assert "red_cell_px" not in {c["name"] for c in inspect(db.engine).get_columns("images")}
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM images WHERE job_id = 'r'")).scalar() == 2
        # the images table is altered in place, not recreated: its cascades must not empty cells on SQLite
        assert conn.execute(text("SELECT count(*) FROM cells WHERE job_id = 'r'")).scalar() == 1
    db.dispose()
    upgrade(database_url)


def test_stain_signatures_round_trip_through_predictions_and_field_cells(migrated_url):
    """record_results and record_field store each image's and cell's stain signature (a redelivery overwrites it);
    all_outcomes and field_outcomes give it back, as a tuple; unmeasured ones are SQL NULL, not JSON null. A cell
    image's red-cell diameter (the red-cell check, 2.3.2) and its blur effect (the focus check, 2.4.2) come back last
    from all_outcomes."""
    from sqlalchemy import func

    from db.models import Cell
    from pipeline.report import CellPrediction

    db = Database(migrated_url)
    job_id, ids = _job(db, n=4)
    sig, again = (0.1232, 0.2863, 0.2307), (0.2464, 0.5726, 0.4614)
    rows = [repo.ResultRow(ids[0], "neutrophil", 0.9, {}, None, True, 3.5, stain_od=sig, red_cell_px=42.5,
                           focus=0.4321),
            repo.ResultRow(ids[1], "lymphocyte", 0.8, {}, None, False, 4.5),
            repo.ResultRow(ids[2], None, None, None, "truncated JPEG", stain_od=sig)]  # an error row stores no prediction
    with db.session() as s, s.begin():
        repo.record_results(s, job_id, rows, "1")
    with db.session() as s:
        out = repo.all_outcomes(s, job_id)
    assert [o[-3] for o in out] == [sig, None, None, None, None]
    assert [o[-2] for o in out] == [42.5, None, None, None, None]
    assert [o[-1] for o in out] == [0.4321, None, None, None, None]
    assert out[0] == ("s/1.jpg", "neutrophil", 0.9, None, True, 3.5, sig, 42.5, 0.4321)
    read = CellPrediction(*out[0])  # as the worker reads them
    assert read.stain_od == sig and read.ood_score == 3.5 and read.red_cell_px == 42.5 and read.focus == 0.4321
    with db.session() as s, s.begin():  # the same image again (a redelivered batch): the new signature stands
        repo.record_results(s, job_id, [repo.ResultRow(ids[0], "neutrophil", 0.9, {}, None, True, 3.5, stain_od=again)], "1")
    with db.session() as s:
        assert repo.all_outcomes(s, job_id)[0][-3] == again
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.stain_od.is_(None))) == 1

    cells = [repo.CellRow(0, (1, 2, 3, 4), 0.9, "neutrophil", 0.8, {}, None, 11.0, sig, 0.512),
             repo.CellRow(1, (5, 6, 7, 8), 0.7, "monocyte", 0.6, {}, None, 12.0)]
    with db.session() as s, s.begin():
        repo.record_field(s, job_id, ids[3], cells, None)
    with db.session() as s:
        out = repo.field_outcomes(s, job_id)
        assert out.cells == [("s/4.jpg", 0, "neutrophil", 0.8, 11.0, sig, 0.512), ("s/4.jpg", 1, "monocyte", 0.6, 12.0, None, None)]
        assert s.scalar(select(func.count()).select_from(Cell).where(Cell.stain_od.is_(None))) == 1
    with db.session() as s, s.begin():
        repo.record_field(s, job_id, ids[3], [cells[0], repo.CellRow(1, (5, 6, 7, 8), 0.7, "monocyte", 0.6, {}, None, 12.0, again)], None)
    with db.session() as s:
        assert [c[-2:] for c in repo.field_outcomes(s, job_id).cells] == [(sig, 0.512), (again, None)]
    db.dispose()


def test_stain_signature_migration_adds_the_columns_and_the_downgrade_keeps_every_row(database_url):
    """0009 adds predictions.stain_od and cells.stain_od to a database with rows in both (old rows: None); the downgrade
    drops only those columns, in place, so no prediction, cell or image is lost."""
    from sqlalchemy import text

    db = _old_fields_job(database_url, "0008_field_red_cells", "st")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO cells (job_id, image_id, idx, x0, y0, x1, y1, score, label, confidence, probabilities) "
                          "SELECT 'st', id, 0, 1, 2, 3, 4, 0.9, 'neutrophil', 0.8, '{}' FROM images WHERE seq = 1"))
        conn.execute(text("INSERT INTO predictions (job_id, image_id, label, confidence, probabilities, model_version, created_at) "
                          "SELECT 'st', id, 'neutrophil', 0.8, '{}', '1', CURRENT_TIMESTAMP FROM images WHERE seq = 1"))
    upgrade(database_url)
    for table in ("predictions", "cells"):
        assert "stain_od" in {c["name"] for c in inspect(db.engine).get_columns(table)}
    with db.session() as s, s.begin():
        new_id = s.scalar(select(Image.id).where(Image.job_id == "st", Image.seq == 2))
        repo.record_field(s, "st", new_id, [repo.CellRow(0, (5, 6, 7, 8), 0.7, "lymphocyte", 0.6, {}, None, 12.5, (0.1, 0.2, 0.3))],
                          None)
    with db.session() as s:
        assert [c[-2] for c in repo.field_outcomes(s, "st").cells] == [None, (0.1, 0.2, 0.3)]
        assert [o[-3] for o in repo.all_outcomes(s, "st")] == [None, None]
    downgrade(database_url, "0008_field_red_cells")
    for table in ("predictions", "cells"):
        assert "stain_od" not in {c["name"] for c in inspect(db.engine).get_columns(table)}
    with db.engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT count(*) FROM {table} WHERE job_id = 'st'")).scalar() for table in ("images", "predictions", "cells")]
    assert counts == [2, 1, 2]
    db.dispose()
    upgrade(database_url)


@pytest.mark.parametrize(("before", "column", "value", "position", "tables"), [
    ("0009_stain_signatures", "red_cell_px", 63.5, -2, ("predictions",)),  # 0010: the red-cell check (2.3.2)
    ("0010_red_cell_size", "focus", 0.4321, -1, ("predictions", "cells")),  # 0011: the focus check (2.4.2)
])
def test_prediction_column_migrations_add_the_column_and_the_downgrade_keeps_every_row(database_url, before, column, value,
                                                                                       position, tables):
    """0010 adds predictions.red_cell_px, 0011 predictions.focus and cells.focus, to a database with predictions (old
    rows: None); new rows store the value; the downgrade drops only that column, in place, so no row is lost."""
    from sqlalchemy import text

    db = _old_fields_job(database_url, before, "rc")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO predictions (job_id, image_id, label, confidence, probabilities, model_version, created_at) "
                          "SELECT 'rc', id, 'neutrophil', 0.8, '{}', '1', CURRENT_TIMESTAMP FROM images WHERE seq = 1"))
    upgrade(database_url)
    assert all(column in {c["name"] for c in inspect(db.engine).get_columns(table)} for table in tables)
    with db.session() as s, s.begin():
        new_id = s.scalar(select(Image.id).where(Image.job_id == "rc", Image.seq == 2))
        repo.record_results(s, "rc", [repo.ResultRow(new_id, "lymphocyte", 0.7, {}, None, **{column: value})], "1")
    with db.session() as s:
        assert [o[position] for o in repo.all_outcomes(s, "rc")] == [None, value]
    downgrade(database_url, before)
    assert not any(column in {c["name"] for c in inspect(db.engine).get_columns(table)} for table in tables)
    with db.engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT count(*) FROM {table} WHERE job_id = 'rc'")).scalar() for table in ("images", "predictions")]
    assert counts == [2, 2]
    db.dispose()
    upgrade(database_url)
