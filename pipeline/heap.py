"""Keep start-up objects out of the garbage collector's full passes.

Why: a worker process holds tens of thousands of long-lived objects after it has
loaded its model (interpreter wrappers, SQLAlchemy's compiled statements and
mappers, Celery, NumPy and OpenCV modules). CPython's full (generation 2)
collection walks every one of them, and one is triggered whenever enough new
long-lived objects accumulate, for instance when a 10,000-image job's rows are
read to build its report. Measured (``bench.throughput``'s finalisation figure,
cProfile and ``gc.callbacks``): the occasional slow finalisation (45-95 ms more
than its neighbours, up to 284 ms in all) was one such full pass; after
``gc.freeze()`` the same pass takes about 2 ms. Objects created at start-up live
as long as the process, so nothing collectable is kept by freezing them.
"""

from __future__ import annotations

import gc


def settle_after_startup() -> int:
    """Collect once, then move every object alive now into the permanent generation; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
