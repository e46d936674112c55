"""A checkpoint Neo did not write, shaped like MAP-Neo's released ones (m-a-p/neo_7b, neo_2b_general), built
from scratch (tiny, random, no downloads); used by the serving and trainer tests. See test_released_checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from neo.hf import INDEX_FILE

from .corpus import corpus_lines

EMBED_ROWS = 64256  # neo_7b config.json vocab_size: 64000 pieces + added tokens, padded
ADDED = {64000: "<pad>", 64001: "<|im_start|>", 64002: "<|im_end|>"}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")



def build_release(root: Path) -> Path:
    """``root/neo_tiny_release``: transformers' LlamaForCausalLM in bf16 safetensors shards with an index, a
    LLaMA-style SentencePiece model (600 pieces, dummy prefix, no pad/chat pieces), pad/ChatML tokens added at
    64000-64002, 64256 embedding rows, a custom tokenizer class whose code must never run."""
    root.mkdir(parents=True, exist_ok=True)
    text = root / "corpus.txt"
    text.write_text("\n".join(corpus_lines()), encoding="utf-8")
    out = root / "neo_tiny_release"
    out.mkdir()
    spm.SentencePieceTrainer.train(  # LLaMA-style: no pad/chat pieces in the model itself
        input=str(text), model_prefix=str(out / "tokenizer"), vocab_size=600, model_type="bpe",
        byte_fallback=True, remove_extra_whitespaces=False, max_sentencepiece_length=16, num_threads=2,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=EMBED_ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out, max_shard_size="2MB")
    # config.json as the released ones spell it (written by transformers 4.x)
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": EMBED_ROWS,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": None, "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16",
        "transformers_version": "4.39.3", "use_cache": True}))
    added = {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for i, t in {0: "<unk>", 1: "<s>", 2: "</s>", **ADDED}.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "NEOTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_neo.NEOTokenizer", None]},
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "chat_template": CHATML, "model_max_length": 256, "legacy": True}))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": {"content": "</s>", "lstrip": False},
        "unk_token": {"content": "<unk>", "lstrip": False}, "pad_token": "<pad>"}))
    (out / "tokenization_neo.py").write_text("raise RuntimeError('remote code must not run')\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    assert (out / INDEX_FILE).is_file() and not (out / "model.safetensors").exists()
    assert len(list(out.glob("model-0000*-of-0000*.safetensors"))) > 1
    return out
