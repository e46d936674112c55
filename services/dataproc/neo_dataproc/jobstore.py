"""Job state and progress in Redis, under ``<prefix>dataproc:<job>:``.

Files in the job directory are the truth (a unit is done when its stats file exists); Redis
mirrors them for ``neo data status`` while a job runs: ``meta`` (state, phase, timings),
``done:<phase>`` (unit → final stats) and ``live:<phase>`` (unit → stats so far, from running
units). Every write is an idempotent HSET, so a redelivered unit cannot count twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from neo_dataproc.pipeline import PHASES
from neo_dataproc.settings import DataprocSettings
from neo_dataproc.stats import merge

KEEP_S = 7 * 24 * 3600  # job keys expire a week after the job ends


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str, job: str) -> None:
        self.r, self.job = client, job
        self.base = f"{prefix}{job}:"

    @classmethod
    def from_settings(cls, settings: DataprocSettings, job: str) -> JobStore:
        return cls(redis.Redis.from_url(settings.redis_url), settings.job_prefix, job)

    def _key(self, name: str) -> str:
        return self.base + name

    # --- writers ---
    def start(self, job_dir: str, totals: dict[str, int], fingerprint: str) -> None:
        now = time.time()
        pipe = self.r.pipeline()
        for phase in PHASES:  # the runner re-sends the units already done (files are the truth)
            pipe.delete(self._key(f"live:{phase}"), self._key(f"done:{phase}"))
        pipe.delete(self._key("meta"))
        pipe.hset(self._key("meta"), mapping={
            "state": "running", "phase": "", "job_dir": job_dir, "fingerprint": fingerprint, "run_started": now,
            "updated": now, "error": "", "totals": json.dumps(totals),
        })
        pipe.execute()

    def note_resumed(self, phase: str, units: list[int]) -> None:
        """Units already done before this run (so docs/s counts only this run's work)."""
        if units:
            self.r.hset(self._key("meta"), f"resumed:{phase}", json.dumps(units))

    def set_phase(self, phase: str) -> None:
        self.r.hset(self._key("meta"), mapping={"phase": phase, "updated": time.time()})

    def live(self, phase: str, unit: int, stats: dict[str, Any]) -> None:
        self.r.hset(self._key(f"live:{phase}"), str(unit), json.dumps(stats))

    def done(self, phase: str, unit: int, stats: dict[str, Any]) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self._key(f"done:{phase}"), str(unit), json.dumps(stats))
        pipe.hdel(self._key(f"live:{phase}"), str(unit))
        pipe.hset(self._key("meta"), "updated", time.time())
        pipe.execute()

    def finish(self, state: str, error: str = "") -> None:
        self.r.hset(self._key("meta"), mapping={"state": state, "error": error, "finished": time.time()})
        for key in self.r.scan_iter(match=self.base + "*"):
            self.r.expire(key, KEEP_S)

    # --- reader ---
    def status(self) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._key("meta"))
        if not raw:
            return None
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        totals = json.loads(meta.get("totals") or "{}")
        phases = {}
        for phase in PHASES:
            done = self.r.hlen(self._key(f"done:{phase}"))
            running = self.r.hlen(self._key(f"live:{phase}"))
            phases[phase] = {"done": done, "running": running, "total": totals.get(phase, 0)}
        done_stats = {int(k): json.loads(v) for k, v in self.r.hgetall(self._key("done:clean")).items()}
        live_stats = {int(k): json.loads(v) for k, v in self.r.hgetall(self._key("live:clean")).items()}
        resumed = set(json.loads(meta.get("resumed:clean") or "[]"))
        steps = merge([s.get("steps", {}) for s in done_stats.values()]
                      + [s.get("steps", {}) for s in live_stats.values()])
        this_run = merge([s.get("steps", {}) for u, s in done_stats.items() if u not in resumed]
                         + [s.get("steps", {}) for s in live_stats.values()])
        docs_this_run = this_run.get("read", {}).get("seen", 0)
        end = float(meta.get("finished") or time.time())
        elapsed = max(end - float(meta.get("run_started", end)), 1e-9)
        cluster = self.r.hget(self._key("done:dedup_cluster"), "0")
        if cluster:
            steps.update(json.loads(cluster).get("steps", {}))
        return {
            "job": self.job, "state": meta.get("state"), "phase": meta.get("phase"), "job_dir": meta.get("job_dir"),
            "error": meta.get("error") or None, "elapsed_s": round(elapsed, 1), "phases": phases,
            "docs_read": int(steps.get("read", {}).get("seen", 0)),
            "docs_per_s": round(docs_this_run / elapsed, 1), "stages": steps,
        }
