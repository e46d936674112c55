"""Trainer fixtures: a small tokenizer and a shard directory built from the bundled sample corpus.

The shards are written with ``neo.shards.ShardWriter`` (the dataproc format) into three sources
(``en``, ``zh``, ``code``), with small files so a source spans several of them. Runs use the ``tiny``
preset with the fixture tokenizer's vocabulary, short rows and few steps, on CPU/gloo.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from neo.schemas import ShardManifest, SourceCounts
from neo.shards import ShardWriter, write_manifest
from neo.stack import SAMPLE_CORPUS
from neo.tokenizer import NeoTokenizer, TokenizerConfig, train_tokenizer
from neo_trainer.distributed import LAUNCHER_ENV

VOCAB = 2000
TOKENS_PER_SOURCE = 40_000
SOURCES = {"en": "*.en.jsonl.gz", "zh": "*.zh.jsonl.gz", "code": "*.code.jsonl.gz"}


def _docs(pattern: str, per_file: int = 80) -> list[str]:
    out = []
    for path in sorted(SAMPLE_CORPUS.glob(pattern)):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [json.loads(line)["text"][:6000] for line in itertools.islice(f, per_file)]
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for p in SOURCES.values() for d in _docs(p)))
    train_tokenizer([corpus], root / "tokenizer",
                    TokenizerConfig(vocab_size=VOCAB, character_coverage=0.98, num_threads=2))
    return root / "tokenizer"


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("shards")
    tok = NeoTokenizer.load(tokenizer_dir)
    manifest = ShardManifest(job="fixture", dtype="uint16", vocab_size=tok.vocab_size, tokenizer_sha256="fixture",
                             tokenizer_path=str(tokenizer_dir), bos_id=tok.bos_id, eos_id=tok.eos_id,
                             tokens_per_shard=16_384)
    for source, pattern in SOURCES.items():
        docs = tokens = 0
        with ShardWriter(out, "uint16", 16_384, prefix=f"{source}-", source=source) as writer:
            for text in _docs(pattern, per_file=200):
                ids = tok.encode(text, add_bos=True, add_eos=True)
                writer.add(ids)
                docs, tokens = docs + 1, tokens + len(ids)
                if tokens >= TOKENS_PER_SOURCE:
                    break
        manifest.files += writer.files
        manifest.sources[source] = SourceCounts(documents=docs, tokens=tokens, files=len(writer.files))
    write_manifest(out, manifest)
    return out


@pytest.fixture
def make_config(tmp_path, shard_dir):
    """A small run config dict; keyword arguments ``section={...}`` update sections."""

    def make(run: str = "run", **sections: Any) -> dict[str, Any]:
        cfg = {
            "name": run, "run_dir": str(tmp_path / run),
            "model": {"preset": "tiny"},
            "data": {"manifest": str(shard_dir), "seq_len": 32},
            "train": {"steps": 8, "micro_batch_size": 4, "warmup_steps": 2, "lr": 3e-3},
            "distributed": {"zero_stage": 0},
            "checkpoint": {},
            "metrics": {"log_every": 1, "eval_every": 4, "eval_rows": 8, "tensorboard": False, "progress": False},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                cfg[section] = cfg.get(section, {}) | values
            else:
                cfg[section] = values
        return cfg

    return make


@pytest.fixture(autouse=True)
def _restore_launcher_env():
    """In-process runs set RANK/WORLD_SIZE/... for their one-process group; don't leak them to other tests."""
    saved = {k: os.environ.get(k) for k in (*LAUNCHER_ENV, "DS_ACCELERATOR")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core box, busy-waiting OpenMP threads slow tiny models 10-20×."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
