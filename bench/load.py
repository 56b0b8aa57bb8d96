"""A bounded load generator: GET one URL at a fixed rate on 127.0.0.1.

Requests are sent on an open-loop schedule (request i at t0 + i / rate);
latency is measured from the scheduled send time, so a server that falls
behind shows it in the tail instead of silently lowering the rate (no
coordinated omission).

Two clients, so that the benchmark can show what the client itself adds:

- ``constant_rate`` (the benchmark's figure): one asyncio event loop in a
  process of its own, raw HTTP/1.1 on a pool of keep-alive connections. One
  thread means no waiting for the GIL between a response arriving and its
  time being taken, and its own process means the benchmark's other threads
  cannot delay it either.
- ``constant_rate_threads``: the earlier client, 16 threads with ``requests``
  sessions in the calling process. Every response must win the GIL against
  15 other threads parsing theirs (Python hands the GIL over every 5 ms), so
  its tail includes the client's own queueing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

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


def _result(latencies_s: list[float], errors: int, seconds: float) -> LoadResult:
    ms = np.array(latencies_s or [float("nan")]) * 1000
    return LoadResult(len(latencies_s), errors, seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max()))


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one GET and read its whole response; the HTTP status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return status


async def _get(pool: asyncio.Queue, host: str, port: int, request: bytes) -> bool:
    """One GET on an idle keep-alive connection, or a new one if none is idle or the idle one was closed by the
    server (its keep-alive timeout); True on HTTP 200."""
    reused = not pool.empty()
    for attempt in range(2):
        reader, writer = pool.get_nowait() if reused and attempt == 0 else await asyncio.open_connection(host, port)
        try:
            status = await _exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            if reused and attempt == 0:
                continue
            return False
        pool.put_nowait((reader, writer))
        return status == 200
    return False


async def _run(url: str, rate: float, seconds: float, headers: dict[str, str]) -> tuple[list[float], int, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {host}:{port}",
             "Connection: keep-alive", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    pool: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        try:
            ok = await asyncio.wait_for(_get(pool, host, port, request), timeout=10)
        except (TimeoutError, OSError):
            ok = False
        latencies.append(loop.time() - scheduled)
        errors += not ok

    await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    elapsed = loop.time() - t0
    while not pool.empty():
        pool.get_nowait()[1].close()
    return latencies, errors, elapsed


def _child(url: str, rate: float, seconds: float, headers: dict[str, str], out) -> None:
    out.send(asyncio.run(_run(url, rate, seconds, headers)))
    out.close()


def constant_rate(url: str, rate: float, seconds: float, headers: dict[str, str] | None = None) -> LoadResult:
    """Open-loop GETs at ``rate`` per second for ``seconds``, from a single-threaded asyncio client in its own process."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(url, rate, seconds, dict(headers or {}), send), daemon=True)
    child.start()
    send.close()
    try:
        latencies, errors, elapsed = receive.recv()
    finally:
        child.join(timeout=30)
    return _result(latencies, errors, elapsed)


def constant_rate_threads(url: str, rate: float, seconds: float, threads: int = 16,
                          headers: dict[str, str] | None = None) -> LoadResult:
    """The same schedule from ``threads`` threads with ``requests`` sessions in this process."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))
    t0 = time.perf_counter() + 0.2

    def run() -> None:
        with requests.Session() as session:
            session.headers.update(headers or {})
            send(session)

    def send(session: requests.Session) -> None:
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
    return _result(latencies, errors[0], time.perf_counter() - t0)
