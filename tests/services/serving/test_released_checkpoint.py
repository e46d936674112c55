"""A checkpoint Neo did not write, shaped like MAP-Neo's released ones (m-a-p/neo_7b, neo_2b_general):
transformers' ``LlamaForCausalLM`` weights in bf16 sharded safetensors with ``model.safetensors.index.json``; a
LLaMA-style SentencePiece ``tokenizer.model`` (only ``<unk>``/``<s>``/``</s>`` as pieces, dummy prefix) and no
``tokenizer.json``; pad and ChatML tokens added past the model at ids ≥ 64000 (``added_tokens_decoder``), a
custom ``tokenizer_class`` behind ``auto_map`` (``trust_remote_code``); an embedding of 64256 rows, more than the
tokenizer's pieces. Tiny and random, built here: nothing is downloaded.

Neo loads it (``load_hf``, ``NeoTokenizer.load``, serving's torch engine) with the same logits as
``transformers``, answers a chat request with the checkpoint's template, and exports it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from neo.hf import INDEX_FILE, export_hf, load_hf
from neo.tokenizer import NeoTokenizer
from neo_serving.settings import ServingSettings

from .corpus import corpus_lines
from .helpers import LiveServer

EMBED_ROWS = 64256  # neo_7b config.json vocab_size: 64000 pieces + added tokens, padded
ADDED = {64000: "<pad>", 64001: "<|im_start|>", 64002: "<|im_end|>"}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("released")
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


def test_tokenizer_reads_the_released_files_without_remote_code(released):
    tok = NeoTokenizer.load(released)
    sp = spm.SentencePieceProcessor(model_file=str(released / "tokenizer.model"))
    assert sp.get_piece_size() == 600 and tok.vocab_size == 64003 <= EMBED_ROWS
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert (tok.pad_id, tok.im_start_id, tok.im_end_id) == (64000, 64001, 64002)
    assert tok.encode("Hello world, 你好") == sp.encode("Hello world, 你好")
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])
    assert ids == [64001, *sp.encode("user\nhi"), 64002, *sp.encode("\n"), 64001, *sp.encode("assistant\n")]
    assert tok.decode(ids, skip_special=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == "user\nhi\nassistant\n"
    assert tok.encode_specials("<s>a<pad>") == [1, *sp.encode("a"), 64000]


def test_load_hf_matches_transformers_on_the_sharded_release(released):
    ours = load_hf(released, dtype=torch.float32)
    assert ours.config.vocab_size == EMBED_ROWS and not ours.config.tie_embeddings
    theirs = AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 300, 599, 64001, 64002, 64000, 7, 2, 64255]])
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert a.shape == (1, 10, EMBED_ROWS)
    assert (a - b).abs().max().item() < 1e-4
    assert load_hf(released).embed.weight.dtype == torch.bfloat16  # the checkpoint's own dtype by default


def test_a_missing_shard_is_named(released, tmp_path):
    gone = sorted(released.glob("model-*.safetensors"))[1]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in released.iterdir():
        if f != gone:
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=gone.name):
        load_hf(broken)


def test_export_of_a_released_model_round_trips(released, tmp_path):
    model, tok = load_hf(released, dtype=torch.float32), NeoTokenizer.load(released)
    out = export_hf(model, tmp_path / "again", tokenizer=tok, max_shard_bytes=3_000_000)
    assert (out / INDEX_FILE).is_file() and (out / "README.md").is_file()
    again, tok2 = load_hf(out), NeoTokenizer.load(out)
    ids = torch.tensor([[1, 64001, 42, 64002]])
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
    assert tok2.encode_chat([{"role": "user", "content": "你好"}]) == tok.encode_chat([{"role": "user", "content": "你好"}])
    assert (tok2.pad_id, tok2.im_end_id, tok2.vocab_size) == (64000, 64002, 64003)


def test_serving_answers_chat_with_the_release_template(released):
    with LiveServer(ServingSettings(models=[f"neo-release={released}"], max_batch_size=2)) as live:
        client = live.client()
        chat = client.chat.completions.create(model="neo-release", max_tokens=5, temperature=0,
                                              messages=[{"role": "user", "content": "hi"}])
        assert chat.usage.prompt_tokens == len(NeoTokenizer.load(released).encode_chat(
            [{"role": "user", "content": "hi"}]))
        assert chat.choices[0].finish_reason in ("length", "stop")
        assert chat.usage.completion_tokens >= 1
