"""SFT starting from a checkpoint Neo did not write (MAP-Neo's released shape: sharded bf16 safetensors, a
LLaMA-style SentencePiece model with pad/ChatML tokens added at ids >= 64000, 64256 embedding rows)."""

from __future__ import annotations

import json

import torch
from serving.released import EMBED_ROWS, build_release

from neo.hf import load_hf
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import SFTConfig, load_stage_config
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
