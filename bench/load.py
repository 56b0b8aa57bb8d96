"""A bounded load generator: GET one URL at a fixed rate from a small thread pool on 127.0.0.1.

Requests are sent on an open-loop schedule (request i at t0 + i / rate) by a
fixed number of threads with keep-alive sessions; latency is measured from the
scheduled send time, so a server that falls behind shows it in the tail
instead of silently lowering the rate (no coordinated omission).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import requests


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def constant_rate(url: str, rate: float, seconds: float, threads: int = 16, headers: dict[str, str] | None = None) -> LoadResult:
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))
    t0 = time.perf_counter() + 0.2

    def run() -> None:
        session = requests.Session()
        session.headers.update(headers or {})
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                ok = session.get(url, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            took = time.perf_counter() - scheduled
            with lock:
                latencies.append(took)
                errors[0] += not ok

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    ms = np.array(latencies) * 1000
    return LoadResult(len(latencies), errors[0], time.perf_counter() - t0, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                      float(ms.max()))
