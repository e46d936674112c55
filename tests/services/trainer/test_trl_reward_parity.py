"""Neo's reward-model stage against TRL's own ``RewardTrainer`` (trl 1.16), like test_trl_parity for SFT/DPO.

The same starting reward model (a tiny random Neo backbone + a seeded head, exported with ``export_reward_hf``;
transformers loads it as ``LlamaForSequenceClassification``), the same 8 EN/ZH conversational pairs (4 with a
multi-turn prompt), fp32 on CPU, one batch holding every pair, one AdamW step (β 0.9/0.999, no weight decay, grad
norm clipped at 1, constant LR). Token ids must be equal; rewards before and after the step, the loss and the
grad norm must agree.
"""

from __future__ import annotations

import json

import pytest
import torch

from neo.hf import export_reward_hf
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import RewardConfig, load_stage_config
from neo_trainer.reward import RewardModel, RewardScorer, batch, encode_reward_pair
from neo_trainer.stages.rm import run_rm

from .helpers import records
from .test_dpo import preference_rows
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)
from .test_trl_parity import ADAMW, trl_args, worst

ATOL = 1e-4


@pytest.mark.slow
def test_reward_model_matches_trl_reward_trainer(tmp_path, base_model, sft_files):  # noqa: F811
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    rows = preference_rows(sft_files)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tok = NeoTokenizer.load(base_model)
    torch.manual_seed(0)
    start = RewardModel.load(base_model)
    init = export_reward_hf(start.backbone, start.score.weight, tmp_path / "init", tokenizer=tok)
    pairs = [encode_reward_pair(tok, r, 256) for r in rows]
    flat = [c for c, _ in pairs] + [r for _, r in pairs]
    ids, lengths = batch(flat, tok.pad_id)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()

    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(init, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(init),
        args=trl_args(TRLRewardConfig, tmp_path / "trl"),
        train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows))
    for i, ((chosen, rejected), trl_row) in enumerate(zip(pairs, trainer.train_dataset, strict=True)):
        assert chosen == trl_row["chosen_ids"] and rejected == trl_row["rejected_ids"], f"pair {i}: ids differ"
    before = trainer.evaluate()
    with torch.no_grad():
        trl0 = trainer.model.eval()(input_ids=ids, attention_mask=mask).logits[:, 0]
    trainer.train()
    trl_step = next(r for r in trainer.state.log_history if "grad_norm" in r)
    after = trainer.evaluate()
    with torch.no_grad():
        trl1 = trainer.model.eval()(input_ids=ids, attention_mask=mask).logits[:, 0]

    cfg = load_stage_config(RewardConfig, {
        "name": "neo", "run_dir": str(tmp_path / "neo"), "base_model": str(init), "seq_len": 256,
        "data": {"preferences": [str(prefs)], "eval_fraction": 0},
        "train": {"steps": 1, "micro_batch_size": 8, **ADAMW}, "distributed": {"zero_stage": 0},
        "checkpoint": {"export_dir": str(tmp_path / "neo" / "hf")}, "metrics": {"progress": False}})
    with torch.no_grad():
        neo0 = RewardScorer(init).model(ids, lengths)
    out = run_rm(cfg)
    neo_step = records(cfg.run_dir)[0]
    with torch.no_grad():
        neo1 = RewardScorer(out).model(ids, lengths)
    neo_after = json.loads((cfg.run_dir / "rm_eval.json").read_text())["train/loss"]

    d0, d1 = worst(neo0, trl0), worst(neo1, trl1)
    report = (f"rewards before: max |Δ| {d0[0]:.2e}; after one step: max |Δ| {d1[0]:.2e} "
              f"(moved {float((neo1 - neo0).abs().max()):.3f})\n"
              f"loss before: neo {neo_step['loss']:.7f} trl {before['eval_loss']:.7f}\n"
              f"grad norm: neo {neo_step['grad_norm']:.6g} trl {trl_step['grad_norm']:.6g}\n"
              f"loss after: neo {neo_after:.7f} trl {after['eval_loss']:.7f}")
    print(report)
    assert d0[0] <= ATOL and d1[0] <= ATOL, report
    assert neo_step["loss"] == pytest.approx(before["eval_loss"], abs=1e-6), report
    assert neo_step["grad_norm"] == pytest.approx(trl_step["grad_norm"], rel=2e-5), report
    assert neo_after == pytest.approx(after["eval_loss"], abs=1e-5), report
    assert float((neo1 - neo0).abs().max()) > 10 * ATOL  # the step moved the rewards well past the tolerance
