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

from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM

from neo.hf import INDEX_FILE, export_hf, load_hf
from neo.tokenizer import NeoTokenizer
from neo_serving.settings import ServingSettings

from .helpers import LiveServer
from .released import EMBED_ROWS, build_release


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return build_release(tmp_path_factory.mktemp("released"))


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
    hello = [{"role": "user", "content": "你好"}]
    assert tok2.encode_chat(hello) == tok.encode_chat(hello)
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
        # the served prompt logprobs are transformers' on the same files (the engine runs the release's bf16)
        ids = [1, 17, 300, 599, 64001, 64002, 42]
        r = client.completions.create(model="neo-release", prompt=ids, max_tokens=0, echo=True, logprobs=0)
        served = r.choices[0].logprobs.token_logprobs
    theirs = AutoModelForCausalLM.from_pretrained(released, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        logprobs = theirs(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = logprobs[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert served[0] is None and len(served) == len(ids)
    assert (torch.tensor(served[1:]) - expected).abs().max().item() < 0.05


def test_char_offsets_follow_decode_with_a_dummy_prefix(released):
    tok = NeoTokenizer.load(released)
    for ids in (tok.encode("Hello world, 你好 there", add_bos=True),
                tok.encode_chat([{"role": "user", "content": "hi there"}])):
        offsets = tok.char_offsets(ids)
        assert all(offsets[k] == len(tok.decode(ids[:k])) for k in range(len(ids)))


def test_neo_eval_backend_scores_as_transformers(released):
    from neo.evals.backends import ModelBackend

    backend = ModelBackend(released)
    tok = backend.tokenizer
    context, continuation = "The weather is", " nice today"
    ids, start = backend._split(context, continuation)
    assert tok.decode(ids[start:]).strip() == continuation.strip()
    theirs = AutoModelForCausalLM.from_pretrained(released, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        logprobs = theirs(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = float(logprobs[start - 1:-1].gather(-1, torch.tensor(ids[start:])[:, None]).sum())
    assert abs(backend.loglikelihood(context, continuation) - expected) < 0.05  # both in the release's bf16


def test_neo_chat_talks_to_the_release(released):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "neo.cli", "chat", str(released)], input="hi\n\n",
                         capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("you> ") == 2 and "neo> " in out.stdout
