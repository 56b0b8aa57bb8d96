"""The one settings object, read from ``HEMATOVISION_*`` environment variables.

Defaults give the embedded setup: a SQLite file and a SQLite-backed Celery
broker under ``./var``, so nothing has to be started. Production sets
``HEMATOVISION_DATABASE_URL`` (Postgres) and ``HEMATOVISION_BROKER_URL`` (Redis)
and points ``HEMATOVISION_STORAGE_ROOT`` at storage shared by API and workers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.reference import parse_intervals

PREFIX = "HEMATOVISION_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_model_dir() -> str:
    models = REPO_ROOT / "models"
    found = sorted(p for p in models.glob("*/manifest.json")) if models.is_dir() else []
    return str(found[0].parent) if found else str(models / "missing")


#: (setting, lowest, highest) for the numbers whose extremes wedge or starve the system.
BOUNDS = (
    ("task_time_limit", 10, 86_400),  # below 10 s a normal batch cannot finish; above a day a stuck one never ends
    ("lease_seconds", 5, 3_600),
    ("reaper_interval", 1, 600),
    ("max_deliveries", 1, 20),
    ("orphan_seconds", 1, 30 * 86_400),
    ("analyze_deadline", 10, 7 * 86_400),
    ("max_json_bytes", 1_024, 10 * 1024 * 1024),
    ("max_name_length", 16, 4_096),
    ("tta", 0, 2),
    ("ensemble", 0, 1),
    ("worker_nice", 0, 19),
)
MAX_BATCH_SIZE = 1024  # a batch keeps its decoded images in memory: bounded per job and per setting


@dataclass(frozen=True)
class Settings:
    """Runtime configuration shared by the API, the workers and the CLI."""

    var_dir: str = "var"
    database_url: str = ""  # default: sqlite file in var_dir
    broker_url: str = ""  # default: kombu SQLAlchemy transport on a sqlite file in var_dir
    storage_root: str = ""  # default: var_dir/storage; must be shared by API and workers
    allowed_folder_root: str = ""  # server-side folders must lie under this; empty = feature off
    model_dir: str = field(default_factory=_default_model_dir)
    backend: str = "litert"  # litert (fp32) | litert-int8 | keras
    # 0 = one view; 1 = the 8 rotations/flips of every image (8x the model's cost); 2 = the 8 only where one view is
    # unsure (the manifest's gate, rule G; a model without a gate is read in one view)
    tta: int = 2
    ensemble: int = 1  # 1 = every network the model ships (ensemble.members); 0 = the first alone (faster)
    queue: str = "hematovision"  # Celery queue shared by the API and its workers
    batch_size: int = 64  # images per model call
    batch_pixels: int = 256_000_000  # decoded source pixels per model call (bounds memory and decode time of one batch)
    task_batches: int = 8  # model calls per worker task: the next batch is decoded while the current one is classified
    threads: int = 0  # per-process thread budget (LiteRT/TensorFlow, the preparing pool); 0 = cores / worker processes
    worker_processes: int = 0  # worker processes on this host (set from Celery's --concurrency); 0 = one
    worker_nice: int = 0  # workers run this much nicer than normal (0-19), for hosts where an API shares the cores
    low_confidence: float = 0.6
    max_upload_bytes: int = 512 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # decompression-bomb guard for cell images, checked from the header
    max_field_pixels: int = 100_000_000  # the same for field/slide images ("fields" jobs; decoded ~3 bytes/pixel)
    cell_diameter_px: float = 190.0  # expected white-cell diameter in field images (190 for 640x480 BCCD-like fields)
    field_tile: int = 1024  # field images larger than this are localised tile by tile
    max_images_per_job: int = 100_000
    task_time_limit: int = 600  # soft limit of one batch (s); the hard limit is 30 s later
    lease_seconds: int = 60  # a running batch's lease, renewed by its worker every third of it
    reaper_interval: int = 15  # how often (s) one worker re-sends lost batches and finalizes finished jobs
    max_deliveries: int = 3  # a batch whose worker died this many times has its images failed ("poison")
    orphan_seconds: int = 3600  # stored files of an upload that never became a job (API killed mid-upload) are removed after this
    analyze_deadline: int = 3600  # `hematovision analyze` gives up (exit 3) after this many seconds
    api_url: str = "http://127.0.0.1:5000"
    api_token: str = ""  # one admin token sent as "Authorization: Bearer <token>" (also what the CLI sends)
    api_tokens: str = ""  # named tokens, stored hashed: "name:sha256hex[:admin],..." (see `hematovision token`)
    allow_anonymous: int = 0  # 1 = serve a non-local bind (and Flower) without any token (not recommended)
    flower_auth: str = ""  # "user:password[,user2:password2]" for Flower's HTTP basic auth
    max_json_bytes: int = 64 * 1024  # a JSON request body larger than this is refused (413)
    max_name_length: int = 255  # longest client file name or job name accepted
    page_size: int = 100
    reference_intervals: str = ""  # "neutrophil=40-60;..." in % of white cells; default: pipeline.reference.DEFAULT_INTERVALS
    reference_source: str = ""  # where the ranges come from, printed on every report
    secret_key: str = ""  # signs the web pages' session cookie; default: derived from api_token

    def __post_init__(self) -> None:
        if self.backend not in ("litert", "litert-int8", "keras"):
            raise ValueError(f"{PREFIX}BACKEND must be 'litert', 'litert-int8' or 'keras', not {self.backend!r}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"{PREFIX}BATCH_SIZE must be between 1 and {MAX_BATCH_SIZE}, not {self.batch_size}")
        if self.batch_pixels < 1 or not 1 <= self.task_batches <= 64 or self.threads < 0 or self.worker_processes < 0:
            raise ValueError(f"{PREFIX}BATCH_PIXELS must be >= 1, {PREFIX}TASK_BATCHES between 1 and 64, "
                             f"{PREFIX}THREADS and {PREFIX}WORKER_PROCESSES >= 0")
        if not 0.0 < self.low_confidence < 1.0:
            raise ValueError(f"{PREFIX}LOW_CONFIDENCE must be between 0 and 1, not {self.low_confidence}")
        parse_intervals(self.reference_intervals)  # fail at start-up, not on the first report
        for name, low, high in BOUNDS:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{PREFIX}{name.upper()} must be between {low} and {high}, not {value}")

    @property
    def thread_budget(self) -> int:
        """Threads one process may use: ``threads``, else the cores shared evenly by the worker processes,
        so N processes on one host never oversubscribe its cores."""
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.worker_processes))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.var_dir).resolve() / 'hematovision.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{Path(self.var_dir).resolve() / 'broker.sqlite'}"

    @property
    def resolved_storage_root(self) -> Path:
        return Path(self.storage_root or Path(self.var_dir) / "storage").resolve()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``HEMATOVISION_<FIELD>`` variables, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls, f.name, "")) if f.default is not dataclasses.MISSING else str
            try:
                values[f.name] = kind(raw) if kind in (int, float) else raw
            except ValueError as exc:
                raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery options derived from settings, shared by the API (producer) and the workers.

    Plain data (no Celery import) so the API can build a light producer and the
    worker its app from the very same values.
    """
    broker = settings.resolved_broker_url
    # Redis redelivers unacked tasks after the visibility timeout: keep it above the task time limit.
    # Recovery does not wait for it: batch leases and the reaper re-send lost work within a minute or two.
    transport = {"visibility_timeout": 3 * settings.task_time_limit} if broker.startswith(("redis", "rediss")) else {}
    return {
        "broker_url": broker,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "worker_hijack_root_logger": False,
    }
