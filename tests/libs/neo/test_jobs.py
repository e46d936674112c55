"""neo.jobs: the trainer job contract the UI and the trainer worker share (a real Redis)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from neo.jobs import SCHEMA_VERSION, DPOJobCheckpoint, DPOJobConfig, DPOJobData, job_key, jobs_key, read_job, record_job


def test_a_recorded_job_is_queued_indexed_and_read_back(rds, redis_prefix):
    config = {"run_dir": "/runs/x", "train": {"steps": 3}}
    job = record_job(rds, redis_prefix, "pretrain", config, nproc=2)
    record = read_job(rds, redis_prefix, job)
    assert record["config"] == config and "config_error" not in record
    assert (record["id"], record["kind"], record["state"], record["nproc"], record["run_dir"]) == (
        job, "pretrain", "queued", "2", "/runs/x")
    assert int(record["schema"]) == SCHEMA_VERSION and record["submitted"]
    assert rds.zscore(jobs_key(redis_prefix), job) is not None
    assert read_job(rds, redis_prefix, "nope") is None
    with pytest.raises(ValueError, match="needs run_dir"):
        record_job(rds, redis_prefix, "pretrain", {})


def test_an_unreadable_config_is_reported_not_raised(rds, redis_prefix):
    job = record_job(rds, redis_prefix, "sft", {"run_dir": "r"})
    rds.hset(job_key(redis_prefix, job), "config", "[1, 2]")
    record = read_job(rds, redis_prefix, job)
    assert record["config"] is None and "expected a JSON object, got list" in record["config_error"]


def test_the_dpo_job_config_is_one_the_trainer_accepts(tmp_path):
    from neo_trainer.config import DPOConfig, load_stage_config

    job = DPOJobConfig(name="dpo-round-001", run_dir=str(tmp_path / "run"), base_model=str(tmp_path / "base"),
                       seq_len=256, data=DPOJobData(preferences=[str(tmp_path / "p.jsonl")]),
                       checkpoint=DPOJobCheckpoint(export_dir=str(tmp_path / "out"))).to_config()
    assert "parent" not in job and "register_export" not in job  # unset: the stage's defaults apply
    json.dumps(job)  # what goes into the job hash
    cfg = load_stage_config(DPOConfig, job)
    assert (cfg.name, cfg.seq_len, cfg.register_export, cfg.data.format) == ("dpo-round-001", 256, True,
                                                                             "conversational")
    with pytest.raises(ValidationError, match="preferences"):
        DPOJobConfig(name="x", run_dir="r", base_model="b", data={"preferences": []}, checkpoint={"export_dir": "o"})
