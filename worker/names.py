"""Task names: the one place both the API (which sends by name) and the worker (which registers) read them.

Kept free of Celery imports so the API can import it without the worker's code.
"""

START_JOB = "hematovision.start_job"  # args: job_id, resend_queued=False
CLASSIFY_BATCH = "hematovision.classify_batch"  # args: job_id, batch_id
FINALIZE_JOB = "hematovision.finalize_job"  # args: job_id
