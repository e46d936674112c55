"""Iterative DPO rounds: exported preference JSONL (or the UI's Redis store) → DPO → HF export that
``transformers`` loads → next registry version; zero new preferences are refused; the worker runs the UI's
``dpo`` job."""

from __future__ import annotations

import json

import pytest
import redis
import torch

from neo.registry import ModelRegistry
from neo_trainer.align import NoPreferences, run_round
from neo_trainer.worker import JOB_KINDS, JobStore, execute_job

from .helpers import neo, trainer_env
from .test_dpo import preference_records, write_prefs
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

REDIS_URL = "redis://127.0.0.1:6379/0"
FAST = ["train.steps=3", "train.lr=2e-3", "seq_len=256"]


def test_round_from_jsonl_exports_a_loadable_checkpoint_and_registers_it(tmp_path, base_model, sft_files,  # noqa: F811
                                                                         redis_prefix):
    from transformers import AutoModelForCausalLM

    registry = ModelRegistry.from_url(REDIS_URL, redis_prefix)
    v1 = registry.register("neo-chat", base_model, stage="sft")
    prefs = write_prefs(tmp_path / "prefs.jsonl", sft_files)
    result = run_round(run_dir=tmp_path / "round1", prefs=prefs, model_name="neo-chat", registry=registry,
                       overrides=FAST)
    assert result.pairs == 8 and result.parent == v1.ref
    latest = registry.latest("neo-chat")
    assert latest.version == "v2" and latest.stage == "dpo" and latest.parent == "neo-chat:v1"
    assert latest.path == str(result.export_dir.resolve())
    info = json.loads((result.export_dir / "neo.json").read_text())
    assert info["stage"] == "dpo" and info["parent"] == "neo-chat:v1" and info["name"] == "neo-chat"
    hf = AutoModelForCausalLM.from_pretrained(result.export_dir)
    ids = torch.tensor([[1, 5, 9, 13]])
    from neo.hf import load_hf

    ours = load_hf(result.export_dir)(ids)
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours, atol=1e-4)
    assert result.metrics["rewards/margins"] > 0


def test_zero_new_preferences_are_refused(tmp_path, base_model):  # noqa: F811
    empty = tmp_path / "prefs.jsonl"
    empty.write_text("")
    with pytest.raises(NoPreferences, match="no new preferences since the last round"):
        run_round(run_dir=tmp_path / "r", prefs=empty, policy=base_model)
    assert not (tmp_path / "r" / "hf").exists()
    proc = neo("align", "round", "--policy", str(base_model), "--prefs", str(empty), "--no-register",
               "--run-dir", str(tmp_path / "r2"))
    assert proc.returncode == 3, proc.stderr
    assert "refusing to run: no new preferences since the last round" in proc.stderr


def test_round_from_redis_takes_labels_since_the_last_round(tmp_path, base_model, sft_files, redis_prefix):  # noqa: F811
    from neo_ui.store import PreferenceStore  # test-only: seed labels as the labeling UI stores them

    store = PreferenceStore(redis.Redis.from_url(REDIS_URL, decode_responses=True), redis_prefix)
    for record in preference_records(sft_files, n=4):
        assert store.save_label(record, labels_per_prompt=1)
    registry = ModelRegistry.from_url(REDIS_URL, redis_prefix)
    registry.register("neo-chat", base_model, stage="sft")
    env = trainer_env(NEO_REDIS_URL=REDIS_URL, NEO_REDIS_PREFIX=redis_prefix, NEO_HOME=str(tmp_path / "home"))
    # a round that fails after reading the labels (here: a bad setting) leaves them for the next round
    with pytest.raises(ValueError, match="nope"):
        run_round(run_dir=tmp_path / "failed", model_name="neo-chat", registry=registry, from_redis=True, env=env,
                  overrides=[*FAST, "train.nope=1"])
    assert store.last_round() == {} and registry.latest("neo-chat").version == "v1"
    result = run_round(run_dir=tmp_path / "round1", model_name="neo-chat", registry=registry, from_redis=True,
                       env=env, overrides=FAST)
    assert result.pairs == 4 and registry.latest("neo-chat").version == "v2"
    assert store.last_round()["round"] == 1 and store.last_round()["labels"] == 4
    # nothing labeled since: the next round refuses and registers nothing
    with pytest.raises(NoPreferences):
        run_round(run_dir=tmp_path / "round2", model_name="neo-chat", registry=registry, from_redis=True, env=env,
                  overrides=FAST)
    assert registry.latest("neo-chat").version == "v2" and store.last_round()["round"] == 1


def test_worker_runs_the_ui_dpo_job(tmp_path, base_model, sft_files, redis_prefix, monkeypatch):  # noqa: F811
    """The UI's job config as jobs.py sends it; the export becomes the next version of the base's name."""
    assert "dpo" in JOB_KINDS and "sft" in JOB_KINDS
    monkeypatch.setenv("NEO_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("NEO_REDIS_PREFIX", redis_prefix)
    registry = ModelRegistry.from_url(REDIS_URL, redis_prefix)
    registry.register("neo-chat", base_model, stage="sft")
    prefs = write_prefs(tmp_path / "prefs.jsonl", sft_files, n=4)
    store = JobStore(redis.Redis.from_url(REDIS_URL, decode_responses=True), redis_prefix)
    config = {"name": "neo-chat", "stage": "dpo", "run_dir": str(tmp_path / "run"), "base_model": str(base_model),
              "data": {"preferences": [str(prefs)], "format": "conversational"},
              "checkpoint": {"export_dir": str(tmp_path / "out")},
              "train": {"steps": 2}, "seq_len": 256}  # the UI sends the first five keys; the rest keep it fast
    job = store.create("dpo", config, nproc=1)
    assert execute_job(store, job, poll_s=0.5) == "done", (tmp_path / "run" / "job.log").read_text()[-2000:]
    row = store.get(job)
    assert row["export_dir"] == str(tmp_path / "out") and row["step"] == "2"
    info = json.loads((tmp_path / "out" / "neo.json").read_text())
    assert info["stage"] == "dpo" and info["parent"] == "neo-chat:v1"
    latest = registry.latest("neo-chat")
    assert latest.version == "v2" and latest.parent == "neo-chat:v1" and latest.path == str(tmp_path / "out")
    store.close()
