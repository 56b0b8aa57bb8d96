"""Jobs drawn from a labelled folder with a chosen class mix, for studies that score whole jobs.

Why its own module: a job-level result (the domain alarm, an adaptation to
the job's statistics) can depend on the job's class mix, and the validation
and test folders are balanced while a real differential is not (about 60 %
neutrophils). Studies draw random, skewed, one-class and normal-differential
jobs from the same functions. NumPy only.
"""

from __future__ import annotations

import numpy as np

JOB_SIZE = 50


def random_jobs(n: int, permutations: int = 3, size: int = JOB_SIZE) -> list[np.ndarray]:
    """Each permutation cuts all ``n`` images into jobs of ``size`` (the last one may be larger, never under size)."""
    jobs = []
    for seed in range(permutations):
        order = np.random.default_rng(seed).permutation(n)
        cuts = list(range(0, n - size + 1, size))
        for k, start in enumerate(cuts):
            end = n if k == len(cuts) - 1 else start + size
            jobs.append(order[start:end])
    return jobs


def skewed_jobs(labels: np.ndarray, share: float = 0.8, size: int = JOB_SIZE, per_class: int = 3) -> list[np.ndarray]:
    """Jobs of ``size`` images, ``share`` of them from one class (every class present), the rest drawn at random."""
    jobs = []
    for cls in np.unique(labels):
        own, other = np.flatnonzero(labels == cls), np.flatnonzero(labels != cls)
        k = int(round(share * size))
        for seed in range(per_class):
            rng = np.random.default_rng(1000 + seed)
            jobs.append(np.concatenate([rng.choice(own, min(k, len(own)), replace=False),
                                        rng.choice(other, size - min(k, len(own)), replace=False)]))
    return jobs


#: a normal adult differential (per cent of white cells); the class mix a real job has, far from the balanced
#: training and validation sets
NORMAL_DIFFERENTIAL = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}


def differential_jobs(labels: np.ndarray, classes: tuple[str, ...], jobs: int = 12, size: int = JOB_SIZE) -> list[np.ndarray]:
    """Jobs of ``size`` images drawn with a normal differential's class mix (classes the folder lacks are dropped and
    the rest renormalised). None (``[]``) when the folder holds too few images of a class for one such job: a job
    never repeats an image."""
    present = {c: w for c, w in NORMAL_DIFFERENTIAL.items() if c in classes and (labels == classes.index(c)).any()}
    if not present:
        return []
    total = sum(present.values())
    counts = {c: int(round(size * w / total)) for c, w in present.items()}
    top = max(counts, key=counts.get)
    counts[top] += size - sum(counts.values())
    if any(n > int((labels == classes.index(c)).sum()) for c, n in counts.items()):
        return []
    out = []
    for seed in range(jobs):
        rng = np.random.default_rng(2000 + seed)
        out.append(np.concatenate([rng.choice(np.flatnonzero(labels == classes.index(c)), n, replace=False)
                                   for c, n in counts.items() if n]))
    return out
