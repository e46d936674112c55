"""SFT and pretraining starting from a checkpoint Neo did not write (MAP-Neo's released shape: sharded bf16
safetensors, a LLaMA-style SentencePiece model with pad/ChatML tokens added at ids >= 64000, 64256 embedding rows)."""

from __future__ import annotations

import json

import torch
from serving.corpus import corpus_lines
from serving.released import EMBED_ROWS, build_release

from neo.hf import load_hf
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import SFTConfig, build_config, load_stage_config
from neo_trainer.stages.pretrain import run_pretrain
from neo_trainer.stages.sft import run_sft

from .helpers import records
from .test_sft import sft_files  # noqa: F401  (fixture)


def test_sft_runs_from_a_released_checkpoint(tmp_path, sft_files):  # noqa: F811
    released = build_release(tmp_path / "release")
    cfg = load_stage_config(SFTConfig, {
        "name": "neo-release-sft", "run_dir": str(tmp_path / "run"), "base_model": str(released), "seq_len": 128,
        "phases": [{"name": "chat", "data": [str(sft_files["chat"])], "steps": 2}],
        "train": {"micro_batch_size": 2, "lr": 1e-3},
        "checkpoint": {"export_dir": str(tmp_path / "out")}, "metrics": {"log_every": 1, "progress": False}})
    out = run_sft(cfg)
    rows = records(tmp_path / "run")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    before, after = load_hf(released, dtype=torch.float32), load_hf(out, dtype=torch.float32)
    assert after.config.vocab_size == EMBED_ROWS
    assert not torch.equal(before.layers[0].attn.q_proj.weight, after.layers[0].attn.q_proj.weight)  # it trained
    tok = NeoTokenizer.load(out)  # the release's tokenizer travels with the export
    assert (tok.pad_id, tok.im_start_id, tok.im_end_id) == (64000, 64001, 64002)
    info = json.loads((out / "neo.json").read_text())
    assert info["stage"] == "sft" and info["parent"] == str(released)  # no neo.json: the path


def test_pretraining_starts_from_a_released_checkpoint(tmp_path, make_config):
    """``train.init_from`` naming an HF directory: the run trains that model (its shape and weights, a fresh
    optimizer at step 0) on shards tokenized with the release's own tokenizer."""
    released = build_release(tmp_path / "release")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(corpus_lines() * 4), encoding="utf-8")
    cfg = make_config(data={"manifest": None, "text_files": [str(text)], "tokenizer": str(released), "seq_len": 32},
                      train={"steps": 2, "warmup_steps": 0, "lr": 1e-12, "weight_decay": 0.0,
                             "micro_batch_size": 2, "init_from": str(released)},
                      metrics={"eval_every": 2, "eval_rows": 2, "log_every": 1, "progress": False})
    out = run_pretrain(build_config(cfg))
    rows = records(cfg["run_dir"])
    assert len(rows) == 2 and 9 < rows[0]["loss"] < 13  # a random 64256-row model: about ln(64256) = 11.1
    before, after = load_hf(released, dtype=torch.float32), load_hf(out, dtype=torch.float32)
    assert after.config.vocab_size == EMBED_ROWS and after.config.d_model == 32  # the release's shape, not tiny's
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # its weights (lr 1e-12), not a fresh init
    assert NeoTokenizer.load(out).im_end_id == 64002
