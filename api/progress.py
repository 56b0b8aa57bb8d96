"""Progress output that suits where it goes: one redrawn line on a terminal, sparse lines in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Counts towards ``total``: a tqdm bar on a TTY; otherwise a line per tenth of the way or per ``every`` seconds."""

    def __init__(self, total: int, desc: str = "classifying", stream: TextIO | None = None, enabled: bool = True,
                 every: float = 30.0) -> None:
        self.total, self.desc, self.every = total, desc, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        self.shown = -1
        self.last_line = time.monotonic()
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=desc, file=self.stream)

    def update(self, done: int) -> None:
        if not self.enabled or done == self.shown:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.shown = done
            return
        step = max(1, self.total // 10)
        due = time.monotonic() - self.last_line >= self.every
        if self.shown < 0 or done // step > self.shown // step or done >= self.total or due:
            percent = 100 * done / self.total if self.total else 100.0
            print(f"{self.desc}: {done}/{self.total} images ({percent:.0f} %)", file=self.stream, flush=True)
            self.shown, self.last_line = done, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
