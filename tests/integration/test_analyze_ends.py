"""`hematovision analyze` always ends: a deadline with a clear message and exit code, and no worker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _env(var: Path, model_dir: Path, faults: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMATOVISION_")}
    env.update({"HEMATOVISION_VAR_DIR": str(var), "HEMATOVISION_MODEL_DIR": str(model_dir), "HEMATOVISION_FAULT_INJECTION": faults})
    return env


def _processes_of(var: Path) -> list[int]:
    """Processes (other than this one) whose environment names this run's var dir: the analyze worker and its pool."""
    needle = f"HEMATOVISION_VAR_DIR={var}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and int(pid) != os.getpid():
                found.append(int(pid))
        except OSError:
            continue
    return found


def _gone(var: Path, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while _processes_of(var) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _processes_of(var)


def _analyze(tmp_path: Path, sample_folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", "analyze", str(sample_folder / "pbc"), "-o", str(tmp_path / "out"), *extra]


def test_deadline_exits_3_with_a_message_and_stops_the_worker(tmp_path, sample_folder, model_dir):
    var = tmp_path / "var"
    proc = subprocess.run(_analyze(tmp_path, sample_folder, "--deadline", "10"), cwd=REPO, env=_env(var, model_dir, "sleep:.jp:120"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "did not finish within 10 s" in proc.stderr and "Traceback" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("classifying:")]
    assert 1 <= len(progress) <= 11  # not a line per poll: output is not a terminal
    assert _gone(var)


def test_sigterm_stops_analyze_and_its_worker(tmp_path, sample_folder, model_dir):
    var = tmp_path / "var"
    proc = subprocess.Popen(_analyze(tmp_path, sample_folder), cwd=REPO, env=_env(var, model_dir, "sleep:.jp:120"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_processes_of(var)) < 2 and time.monotonic() < deadline:  # the worker and its pool process are up
        time.sleep(0.2)
    assert _processes_of(var), "the worker never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by signal SIGTERM" in err and "Traceback" not in err
    assert _gone(var)
