"""Fault injection for the fault tests (``tests/faults``): off unless ``HEMATOVISION_FAULT_INJECTION`` is set.

Some faults cannot be caused from outside deterministically: an image whose
processing kills its process every time (a poison batch) or one that makes a
batch run past its time limit. The variable holds ``;``-separated rules
``action:match[:seconds]``: when a client path in the batch contains ``match``,
``kill`` SIGKILLs the processing process, ``sleep`` sleeps ``seconds``
(inside the task, so the real soft time limit interrupts it) and ``raise``
raises an unexpected error. Never set it in production.
"""

from __future__ import annotations

import os
import signal
import time

VARIABLE = "HEMATOVISION_FAULT_INJECTION"


class InjectedFault(RuntimeError):
    """An unexpected error, on purpose."""


def inject(paths: list[str]) -> None:
    for rule in filter(None, os.environ.get(VARIABLE, "").split(";")):
        action, _, rest = rule.partition(":")
        match, _, seconds = rest.partition(":")
        if not match or not any(match in p for p in paths):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "sleep":
            time.sleep(float(seconds or 60))
        elif action == "raise":
            raise InjectedFault(f"injected fault for {match!r}")
