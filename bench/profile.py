"""Where a worker process spends its time: py-spy samples of a live pool process, summarised.

py-spy (``pip install py-spy``) samples only threads that are running, so the
share of samples per thread also says how busy that thread was; each sample is
attributed to the innermost frame we know a name for (decode, preprocess,
inference, database, ...).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: innermost-first: the first function found walking from the leaf up names the sample's category
CATEGORIES = {
    "read file": ("get (pipeline/storage.py", "read_bytes ("),
    "decode (header check + OpenCV)": ("decode_image (", "sniff_format ("),
    "preprocess (crop, resize, scale)": ("model_crop (", "to_model_pixels (", "scale_for_mobilenet (", "_scaled (", "prepare_batch ("),
    "inference (LiteRT invoke)": ("invoke (", "outputs (", "predict_with_features (", "predict ("),
    "result rows and JSON": ("_classify (",),
    "database (SQLAlchemy, psycopg)": ("record_results (", "finalize (", "job_status (", "images_for_batch (", "get_job (", "summarize ("),
    "Celery and messaging": ("celery/", "kombu/", "billiard/"),
}


def start(pid: int, out: Path, rate: int = 100) -> subprocess.Popen | None:
    """Start sampling ``pid`` (None when py-spy is not installed)."""
    beside = Path(sys.executable).parent / "py-spy"  # installed in the same virtualenv
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--threads", "--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf last in py-spy's collapsed stacks
        for name, needles in CATEGORIES.items():
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize(raw: Path, seconds: float, rate: int = 100) -> list[str]:
    """Lines: per thread, how busy it was and where its samples went."""
    per_thread: dict[str, Counter] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not count.isdigit():
            continue
        name = frames[0].partition(": ")[2]  # "thread (id): name"
        thread = {"MainThread": "main thread", "hematovision-prefetch": "prefetch thread",
                  "hematovision-classify": "classifying thread"}.get(name) or (
            f"preparing pool thread {name.rpartition('_')[2]}" if name.startswith("hematovision-prepare") else f"thread {name}")
        per_thread.setdefault(thread, Counter())[_category(frames)] += int(count)
    lines = []
    for thread, counts in sorted(per_thread.items()):
        busy = sum(counts.values()) / (seconds * rate)
        parts = ", ".join(f"{name} {100 * n / sum(counts.values()):.0f}%" for name, n in counts.most_common())
        lines.append(f"{thread}: busy {100 * busy:.0f}% of the job's wall time; {parts}")
    return lines
