"""The foundation's promise, end to end: `neo up` on the bundled corpus trains a tokenizer and a tiny
model and exports an HF directory that `transformers` loads with the same ids and logits as ours."""

import gzip
import json
import os
import subprocess
import sys

import pytest
import torch

from neo.hf import load_hf
from neo.stack import SAMPLE_CORPUS
from neo.tokenizer import NeoTokenizer


@pytest.mark.slow
def test_neo_up_builds_a_model_transformers_loads(tmp_path):
    env = os.environ | {"NEO_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "neo.cli", "up", "--no-chat", "--steps", "30"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    model_dir = tmp_path / "home" / "models" / "demo"
    metrics = [json.loads(line) for line in (tmp_path / "home/runs/demo-pretrain/metrics.jsonl").open()]
    assert metrics[-1]["step"] == 30 and metrics[-1]["loss"] < metrics[0]["loss"] - 1.0  # it learned
    info = json.loads((model_dir / "neo.json").read_text())
    assert info["stage"] == "pretrain" and info["preset"] == "tiny"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    ours_tok = NeoTokenizer.load(model_dir)
    with gzip.open(SAMPLE_CORPUS / "manpages.zh.jsonl.gz", "rt") as zh, \
         gzip.open(SAMPLE_CORPUS / "python-stdlib.code.jsonl.gz", "rt") as code:
        texts = [json.loads(zh.readline())["text"][:2000], json.loads(code.readline())["text"][:2000]]
    for text in texts:
        ids = ours_tok.encode(text)
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
        assert ours_tok.decode(ids) == text
    messages = [{"role": "user", "content": "你好 hello"}]
    chat_ids = ours_tok.encode_chat(messages)
    assert list(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]) == chat_ids

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = load_hf(model_dir)
    ids = torch.tensor([chat_ids + ours_tok.encode(texts[1][:300])])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4

    # a second `neo up` reuses the model instead of training again
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing" in again.stderr
