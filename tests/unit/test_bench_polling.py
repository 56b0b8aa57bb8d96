"""The benchmark's client polls a running job rarely while it cannot be done, and often near its end."""

from __future__ import annotations

import pytest

from bench import stack
from bench.stack import POLL_MAX, POLL_MIN, next_poll, wait_for


def test_the_poll_interval_follows_the_expected_remaining_time():
    assert next_poll(0, 2000, 1.0) == 0.1  # no rate yet
    assert next_poll(200, 2000, 1.0) == POLL_MAX  # 9 s to go
    assert next_poll(1960, 2000, 9.8) == pytest.approx(0.05)  # 0.2 s to go: a quarter of it
    assert next_poll(2000, 2000, 10.0) == POLL_MIN


class FakeJob:
    """A job classifying ``rate`` images per (fake) second; counts the status requests."""

    def __init__(self, total: int, rate: float) -> None:
        self.total, self.rate, self.now, self.requests = total, rate, 0.0, 0

    def job(self, job_id: str) -> dict:
        self.requests += 1
        done = min(self.total, int(self.now * self.rate))
        status = "succeeded" if done == self.total else "running"
        return {"status": status, "images": {"total": self.total, "done": done, "failed": 0, "pending": self.total - done}}


def test_a_ten_second_job_takes_few_polls_and_its_end_is_seen_promptly(monkeypatch):
    client = FakeJob(2000, 200.0)  # 10 s
    monkeypatch.setattr(stack.time, "sleep", lambda s: setattr(client, "now", client.now + s))
    monkeypatch.setattr(stack.time, "monotonic", lambda: client.now)
    assert wait_for(client, "j")["status"] == "succeeded"
    assert client.requests <= 60  # every 50 ms: 200
    assert client.now - 10.0 <= 0.05  # seen at most 50 ms late
    client = FakeJob(2000, 200.0)
    wait_for(client, "j", poll=0.05)
    assert client.requests >= 200  # a fixed interval is kept when asked for
