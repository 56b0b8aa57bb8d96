"""Jobs with a chosen class mix (``training.job_mixes``): they are what the studies say they are."""

from __future__ import annotations

import numpy as np

from training.job_mixes import differential_jobs, random_jobs, skewed_jobs


def test_jobs_cover_the_images_and_keep_the_asked_class_mix():
    jobs = random_jobs(130, permutations=2)
    assert [len(j) for j in jobs] == [50, 80, 50, 80]  # the remainder joins the last job: no job under 50
    assert sorted(np.concatenate(jobs[:2]).tolist()) == list(range(130))
    labels = np.repeat(np.arange(4), 100)
    for job in skewed_jobs(labels, share=0.8):
        assert len(job) == 50 and np.bincount(labels[job]).max() == 40
    classes = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
    for job in differential_jobs(labels, classes, jobs=3):
        counts = np.bincount(labels[job], minlength=4)
        # 60 / 30 / 6 / 3 % renormalised without basophils: 30 neutrophils, 15 lymphocytes, 3 monocytes, 2 eosinophils
        assert counts.tolist() == [2, 15, 3, 30]


def test_a_folder_without_any_differential_class_gets_no_differential_jobs():
    labels = np.zeros(100, int)
    assert differential_jobs(labels, ("platelet",)) == []


def test_too_few_images_of_a_class_for_one_job_gives_no_differential_jobs():
    classes = ("lymphocyte", "neutrophil")
    labels = np.array([0] * 200 + [1] * 20)  # a job of 50 needs 33 neutrophils
    assert differential_jobs(labels, classes) == []
    assert len(differential_jobs(np.array([0] * 200 + [1] * 40), classes, jobs=2)) == 2
