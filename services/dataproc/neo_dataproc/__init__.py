"""Neo's data processing service: raw documents → cleaned, language-tagged, deduplicated documents →
tokenized shards with a manifest, run on Celery + Redis (or in process, same code path).

Layout: ``steps/`` (one small class per rule family), ``pipeline.py`` (the units of work: per-shard
cleaning, dedup bands and clusters, per-shard tokenizing, finalize), ``runner.py`` (plans a job and
drives the phases through an executor), ``executors.py`` (eager and Celery), ``tasks.py`` (the
Celery app and its one task), ``cli.py`` (``neo data``).
"""
