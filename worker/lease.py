"""A worker process's identity and the heartbeat that keeps a batch's lease alive while it runs.

The heartbeat is a daemon thread renewing the lease every third of its length.
If the process dies (SIGKILL, out of memory) the renewals stop, the lease
expires, and the reaper re-sends the batch; a database outage shorter than the
lease costs nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from db import leases
from db.engine import Database

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """``host:pid`` of this process: a lease holder a later claim on the same host can check is alive.

    Per process, because workers use Celery's prefork pool (one task at a time per process); a
    thread pool would need the thread in the identity too.
    """
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Context manager: renew ``batch_id``'s lease for ``holder`` until the block ends."""

    def __init__(self, db: Database, batch_id: int, holder: str, lease_seconds: int) -> None:
        self.db, self.batch_id, self.holder, self.lease_seconds = db, batch_id, holder, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{batch_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with self.db.session() as session, session.begin():
                    leases.renew_lease(session, self.batch_id, self.holder, self.lease_seconds)
            except Exception as exc:  # a database blip: the next beat tries again; the lease covers the gap
                log.warning("lease renewal of batch %s failed: %s", self.batch_id, exc.__class__.__name__)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
