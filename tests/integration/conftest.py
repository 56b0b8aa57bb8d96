"""A real stack: Celery worker processes, a broker, a database, the HTTP API.

``stack`` is parametrized over the production shape (Redis + Postgres) and the
embedded default (SQLite database + kombu's SQLAlchemy transport on SQLite).
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from dataclasses import dataclass

import pytest
from werkzeug.serving import make_server

from api import create_app
from api.analyze import start_worker
from db.engine import Database
from db.migrate import upgrade
from pipeline.settings import Settings
from tests.conftest import REDIS_URL, _pg_create, _pg_drop


@dataclass
class Stack:
    base_url: str
    settings: Settings
    db: Database
    workers: list[subprocess.Popen]


@pytest.fixture(params=["redis+postgres", "embedded-sqlite"])
def stack(request, tmp_path, model_dir):
    pg_name = None
    if request.param == "redis+postgres":
        pg_name, db_url = _pg_create()
        broker = REDIS_URL
    else:
        db_url = f"sqlite:///{tmp_path / 'hv.sqlite'}"
        broker = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    settings = Settings(var_dir=str(tmp_path), database_url=db_url, broker_url=broker, storage_root=str(tmp_path / "shared-storage"),
                        model_dir=str(model_dir), batch_size=8, queue=f"hv-test-{uuid.uuid4().hex[:8]}")
    upgrade(db_url)
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # two worker processes, as two hosts would run them, sharing broker, database and storage
    workers = [start_worker(settings, 1, tmp_path / f"worker-{i}.log") for i in range(2)]
    db = Database(db_url)
    try:
        yield Stack(f"http://127.0.0.1:{server.server_port}", settings, db, workers)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        server.shutdown()
        db.dispose()
        app.extensions["hematovision"].db.dispose()
        if pg_name:
            _pg_drop(pg_name)
        for log in sorted(tmp_path.glob("worker-*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name} ---\n{text[-4000:]}")
