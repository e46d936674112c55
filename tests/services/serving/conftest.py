"""Fixtures: a tiny bilingual tokenizer and random tiny model exported as a real checkpoint, and real
servers (uvicorn on 127.0.0.1, a free port, in a thread) built with ``build_app``.

A random model writes gibberish: tests assert on mechanics (token counts, seeds, stop cuts, shapes,
status codes), never on meaning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from neo.tokenizer import NeoTokenizer, TokenizerConfig, train_tokenizer
from neo_serving.settings import ServingSettings

from .corpus import corpus_lines
from .helpers import LONG_SEQ_LEN, VOCAB_SIZE, LiveServer, export_random_model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokenizer")
    text = root / "corpus.txt"
    text.write_text("\n".join(corpus_lines()), encoding="utf-8")
    train_tokenizer([text], root / "tok", TokenizerConfig(vocab_size=VOCAB_SIZE, num_threads=2), progress=False)
    return root / "tok"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> NeoTokenizer:
    return NeoTokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A random ``tiny`` model (context 256) with the tokenizer and its ChatML template."""
    return export_random_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer, seed=0)


@pytest.fixture(scope="session")
def long_server(tmp_path_factory, tokenizer):
    """A server of a random tiny model with context ``LONG_SEQ_LEN``, served as ``tiny``: hang-up tests use it."""
    long = export_random_model(tmp_path_factory.mktemp("models") / "long", tokenizer, seed=0, max_seq_len=LONG_SEQ_LEN)
    with LiveServer(ServingSettings(models=[f"tiny={long}"], max_batch_size=2)) as live:
        yield live


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory, checkpoint) -> Path:
    """The same model whose tokenizer_config.json has no chat_template: completions only."""
    out = tmp_path_factory.mktemp("models") / "plain"
    shutil.copytree(checkpoint, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def server(checkpoint, plain_checkpoint):
    """The main server: ``tiny`` (with chat template) and ``plain`` (without), torch engine."""
    settings = ServingSettings(models=[f"tiny={checkpoint}", f"plain={plain_checkpoint}"], max_batch_size=8)
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def client(server) -> openai.OpenAI:
    return server.client()
