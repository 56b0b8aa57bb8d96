"""A small HTTP client for the API, used by the CLI and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import requests

from pipeline.intake import IGNORED_PARTS


class ApiClientError(RuntimeError):
    pass


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 300.0, token: str = "") -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _check(self, response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ApiClientError(f"HTTP {response.status_code}: {message}")
        return response

    def submit_folder(self, folder: str | Path, name: str | None = None, batch_size: int | None = None, kind: str | None = None) -> dict:
        """Upload every file under ``folder``, keeping relative paths."""
        folder = Path(folder)
        paths = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") or part in IGNORED_PARTS for part in p.relative_to(folder).parts))
        if not paths:
            raise ApiClientError(f"no files under {folder}")
        with ExitStack() as stack:
            files = [("files", (p.relative_to(folder).as_posix(), stack.enter_context(open(p, "rb")), "application/octet-stream"))
                     for p in paths]
            data = {k: str(v) for k, v in (("name", name), ("batch_size", batch_size), ("kind", kind)) if v is not None}
            return self._check(self.http.post(f"{self.base}/api/v1/jobs", files=files, data=data, timeout=self.timeout)).json()

    def submit_server_folder(self, folder: str, batch_size: int | None = None, kind: str | None = None) -> dict:
        """A job over a folder on the server (under its allowed root): nothing is uploaded."""
        body = {k: v for k, v in (("folder", folder), ("batch_size", batch_size), ("kind", kind)) if v is not None}
        return self._check(self.http.post(f"{self.base}/api/v1/jobs", json=body, timeout=self.timeout)).json()

    def cancel(self, job_id: str) -> dict:
        return self._check(self.http.post(f"{self.base}/api/v1/jobs/{job_id}/cancel", timeout=self.timeout)).json()

    def job(self, job_id: str) -> dict:
        return self._check(self.http.get(f"{self.base}/api/v1/jobs/{job_id}", timeout=self.timeout)).json()

    def report(self, job_id: str, fmt: str = "json") -> str:
        return self._check(self.http.get(f"{self.base}/api/v1/jobs/{job_id}/report", params={"format": fmt}, timeout=self.timeout)).text

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None, poll: float = 0.5, timeout: float = 3600) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise ApiClientError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll)
