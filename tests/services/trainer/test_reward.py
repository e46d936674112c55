"""Reward model: Bradley-Terry training lowers its loss and learns a planted preference (real answers in the
prompt's language over gibberish), held-out accuracy is reported, and the export loads in ``transformers`` as
``LlamaForSequenceClassification`` with the same scores as Neo's own (≤ 1e-4)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from neo.hf import is_reward_hf, load_hf
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import RewardConfig, load_stage_config
from neo_trainer.losses import reward_loss
from neo_trainer.reward import RewardScorer, batch, encode_reward_pair
from neo_trainer.sft_data import read_jsonl
from neo_trainer.stages.rm import run_rm, split_rows

from .helpers import neo_train, records
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

CONSONANTS = "bcdfghjklmnpqrstvwxz"


def gibberish(rng: random.Random, chars: int) -> str:
    words = ["".join(rng.choice(CONSONANTS) for _ in range(rng.randint(2, 7))) for _ in range(max(2, chars // 5))]
    return " ".join(words)[:max(8, chars)]


def planted_rows(sft_files: dict[str, Path], seed: int = 0) -> list[dict[str, Any]]:  # noqa: F811
    """Every instruction of the demo SFT set: chosen = its real answer (in the language asked for), rejected =
    consonant gibberish of about the same length. Conversational TRL rows, as ``neo prefs export`` writes."""
    rng = random.Random(seed)
    rows = []
    for r in read_jsonl(sft_files["instruction"]):
        user, answer = r["messages"]
        rows.append({"prompt": [user], "chosen": [answer],
                     "rejected": [{"role": "assistant", "content": gibberish(rng, len(answer["content"]))}]})
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rm_config(tmp_path: Path, base: Path, prefs: Path, **train: Any) -> dict[str, Any]:
    return {"name": "neo-rm", "run_dir": str(tmp_path / "rm"), "base_model": str(base), "seq_len": 256,
            "data": {"preferences": [str(prefs)], "eval_fraction": 0.25},
            "train": {"lr": 1e-3, "steps": 24, "micro_batch_size": 8, "seed": 0, **train},
            "distributed": {"zero_stage": 0},
            "metrics": {"log_every": 1, "progress": False, "tensorboard": False}}


def test_reward_loss_is_trl_formula():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    out = reward_loss(chosen, rejected)
    ref = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    assert torch.allclose(out["loss"], ref) and float(out["accuracy"]) == pytest.approx(1 / 3)
    centred = reward_loss(chosen, rejected, center_coefficient=0.01)["loss"]
    assert torch.allclose(centred, ref + 0.01 * ((chosen + rejected) ** 2).mean())


def test_split_is_seeded_and_disjoint():
    rows = [{"i": i} for i in range(20)]
    train, held = split_rows(rows, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15 and {r["i"] for r in train} | {r["i"] for r in held} == set(range(20))
    assert split_rows(rows, 0.25, seed=3)[1] == held


def test_reward_tokens_are_trl_chat_template(tokenizer_dir, sft_files):  # noqa: F811
    tok = NeoTokenizer.load(tokenizer_dir)
    row = planted_rows(sft_files)[0]
    chosen, _ = encode_reward_pair(tok, row, 512)
    assert chosen == tok.encode_chat(row["prompt"] + row["chosen"], add_generation_prompt=False)
    assert chosen[-2] == tok.im_end_id and chosen[-1:] == tok.encode("\n")  # the reward is read at the "\n"
    assert encode_reward_pair(tok, row, 16)[0] == chosen[-16:]  # too long: the start goes (keep_end)
    assert encode_reward_pair(tok, row, 16, "drop") is None  # or the pair goes, as TRL's RewardTrainer drops it
    assert encode_reward_pair(tok, row, 512, "drop")[0] == chosen


@pytest.mark.slow
def test_reward_model_learns_planted_preference_and_exports_for_transformers(tmp_path, base_model, sft_files):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    prefs = write_rows(tmp_path / "prefs.jsonl", planted_rows(sft_files))
    cfg = load_stage_config(RewardConfig, rm_config(tmp_path, base_model, prefs))
    out = run_rm(cfg)
    log = records(cfg.run_dir)
    first, last = sum(r["loss"] for r in log[:4]) / 4, sum(r["loss"] for r in log[-4:]) / 4
    assert last < first * 0.5, (first, last)
    found = json.loads((cfg.run_dir / "rm_eval.json").read_text())
    assert found["eval/pairs"] == 12 and found["eval/accuracy"] == 1.0, found
    assert found["eval/loss"] < found["eval_before/loss"]
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["stage"] == "rm" and meta["metrics"]["eval/accuracy"] == 1.0
    assert is_reward_hf(out) and not (out / "neo.json").exists()
    with pytest.raises(ValueError):
        load_hf(out)  # not a chat model

    # the planted preference, on a prompt it never saw: a real answer in the prompt's language beats gibberish
    scorer = RewardScorer(out)
    en = [{"role": "user", "content": "What does the Debian Reference section \"Network setup\" say?"}]
    good, bad = scorer.score(en, ["The network is configured with the tools described in this chapter.",
                                  gibberish(random.Random(7), 60)])
    assert good > bad

    # transformers loads it as LlamaForSequenceClassification and scores as Neo does
    hf = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(hf, LlamaForSequenceClassification) and hf.config.num_labels == 1
    tok = scorer.tokenizer
    rows = [x for r in planted_rows(sft_files)[:4] for x in encode_reward_pair(tok, r, 256)]
    ids, lengths = batch(rows, tok.pad_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=(torch.arange(ids.shape[1]) < lengths[:, None]).long()).logits[:, 0]
        ours = scorer.model(ids, lengths)
    delta = float((theirs - ours).abs().max())
    assert delta <= 1e-4, delta
    print(f"held-out accuracy {found['eval/accuracy']:.3f} (before {found['eval_before/accuracy']:.3f}); "
          f"loss {first:.4f} -> {last:.4f}; HF vs Neo max |Δscore| {delta:.2e}")


@pytest.mark.slow
def test_neo_train_rm_cli_prints_held_out_accuracy(tmp_path, base_model, sft_files):  # noqa: F811
    prefs = write_rows(tmp_path / "prefs.jsonl", planted_rows(sft_files))
    config = tmp_path / "rm.json"
    config.write_text(json.dumps(rm_config(tmp_path, base_model, prefs, steps=2)))
    proc = neo_train("rm", str(config), "--set", "checkpoint.export_dir=" + str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"exported {tmp_path / 'out'}" in proc.stdout and "held-out accuracy" in proc.stdout
    assert is_reward_hf(tmp_path / "out")
