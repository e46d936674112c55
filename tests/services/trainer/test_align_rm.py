"""Iterative DPO as MAP-Neo did it: the policy's answers, sampled through a real serving API, ranked by a reward
model into best-vs-worst pairs → DPO → the next registered version, with the round's win rates in its neo.json.
Also the pieces: ranking, the human win rate from version-labeled pairs, the weighted DPO loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neo.registry import ModelRegistry
from neo_trainer.align import Sampling, human_win_rate, rank_pairs, read_prompts, run_round
from neo_trainer.config import RewardConfig, load_stage_config
from neo_trainer.losses import dpo_loss
from neo_trainer.sft_data import read_jsonl
from neo_trainer.stages.rm import run_rm

from .test_reward import planted_rows, rm_config, write_rows
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

REDIS_URL = "redis://127.0.0.1:6379/0"
FAST = ["train.steps=2", "train.lr=2e-3", "seq_len=256"]


def test_rank_pairs_best_vs_worst_and_skips_ties():
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    rows = rank_pairs(prompts, [["x", "y", "z"], ["p", "q"]], [[0.1, 0.9, -0.3], [0.5, 0.5]], "neo:v1", "rm:test")
    assert len(rows) == 1
    assert rows[0]["chosen"][0]["content"] == "y" and rows[0]["rejected"][0]["content"] == "z"
    assert rows[0]["chosen_model"] == "neo:v1" and rows[0]["prompt"] == prompts[0]


def test_human_win_rate_counts_version_against_parent_only():
    rows = [{"chosen_model": "neo:v2", "rejected_model": "neo:v1", "choice": "a"},
            {"chosen_model": "neo:v1", "rejected_model": "neo:v2", "choice": "b"},
            {"chosen_model": "neo:v2", "rejected_model": "neo:v1", "choice": "tie"},
            {"chosen_model": "neo:v2", "rejected_model": "neo:v2", "choice": "a"},   # same version: no signal
            {"chosen_model": "neo:v3", "rejected_model": "neo:v1", "choice": "a"}]   # another pairing
    assert human_win_rate(rows, "neo:v2", "neo:v1") == (pytest.approx(1.5 / 3), 3)  # chosen is the winner
    assert human_win_rate(rows, "neo:v2", None) == (None, 0)


def test_weighted_dpo_loss_is_a_weighted_mean():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(4) for _ in range(4))
    plain = dpo_loss(pc, pr, rc, rr, 0.1)["loss"]
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, 0.1, weights=torch.ones(4))["loss"], plain)
    w = torch.tensor([2.0, 0.0, 1.0, 1.0])
    per = -torch.nn.functional.logsigmoid(0.1 * ((pc - pr) - (rc - rr)))
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, 0.1, weights=w)["loss"], (per * w).sum() / 4)


def test_read_prompts_takes_trl_rows_and_message_lists(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "hello"}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "chosen": "c"}]))
    assert read_prompts(path) == [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "hi"}],
                                  [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]


@pytest.mark.slow
def test_rm_ranked_round_samples_through_serving_and_registers_the_next_version(
        tmp_path, base_model, sft_files, redis_prefix):  # noqa: F811
    from neo_serving.settings import ServingSettings  # test-only: a real server samples the policy
    from tests.services.serving.helpers import LiveServer

    rm_cfg = load_stage_config(RewardConfig, rm_config(tmp_path, base_model,
                                                       write_rows(tmp_path / "rm.jsonl", planted_rows(sft_files)),
                                                       steps=6))
    reward_model = run_rm(rm_cfg)
    registry = ModelRegistry.from_url(REDIS_URL, redis_prefix)
    v1 = registry.register("neo-chat", base_model, stage="sft")
    prompts = write_rows(tmp_path / "prompts.jsonl",
                         [{"prompt": [r["messages"][0]]} for r in list(read_jsonl(sft_files["instruction"]))[:6]])
    settings = ServingSettings(models=["neo-chat"], redis_url=REDIS_URL, redis_prefix=redis_prefix, max_batch_size=8)
    with LiveServer(settings) as server:
        sampling = Sampling(base_url=server.url, model="neo-chat", n=3, max_tokens=16, temperature=1.0, seed=1)
        result = run_round(run_dir=tmp_path / "round", model_name="neo-chat", registry=registry, pairs="rm",
                           reward_model=reward_model, sampling=sampling, prompts=prompts, eval_fraction=0.34,
                           overrides=FAST)
    assert result.parent == v1.ref and result.sources["human"] == 0 and result.sources["rm"] > 0
    latest = registry.latest("neo-chat")
    assert latest.version == "v2" and latest.stage == "dpo" and latest.parent == "neo-chat:v1"
    assert latest.path == str(Path(result.export_dir).resolve())
    ranked = list(read_jsonl(tmp_path / "round" / "rm_pairs.jsonl"))
    assert ranked and all(r["chosen_reward"] > r["rejected_reward"] and r["chosen_model"] == "neo-chat:v1"
                          for r in ranked)
    samples = list(read_jsonl(tmp_path / "round" / "rm_samples.jsonl"))
    assert len(samples) == 4 and all(len(s["answers"]) == 3 for s in samples)  # 2 of 6 prompts held out
    info = json.loads((result.export_dir / "neo.json").read_text())
    assert info["stage"] == "dpo" and info["parent"] == "neo-chat:v1"
    assert 0.0 <= info["metrics"]["win_rate/rm"] <= 1.0 and info["metrics"]["win_rate/rm_prompts"] == 2
    assert info["metrics"]["round/rm_pairs"] == len(ranked) and info["data"]["pairs_from"] == "rm"
    print(f"RM-ranked round: {len(ranked)} pairs, win rate vs v1 (reward model) {info['metrics']['win_rate/rm']:.3f}")
