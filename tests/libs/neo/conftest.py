"""Fixtures: a small bilingual tokenizer and a random ``tiny`` model exported with it as a real checkpoint
(what ``neo model init`` writes). A random model writes gibberish: tests assert on mechanics, never meaning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.tokenizer import NeoTokenizer, TokenizerConfig, train_tokenizer

#: Common words and characters get pieces; rare ones (龘, emoji) are left to byte fallback.
SENTENCES = [
    "Neo is an open bilingual chat model.", "Please tell me a short story about the sea.",
    "The weather is nice today, let us go for a walk.", "What is the capital of China? Beijing.",
    "你好，很高兴认识你。", "今天天气很好，我们去公园散步吧。", "这个模型可以用中文和英文回答问题。",
    "请给我讲一个关于大海的故事。", "中国的首都是北京。",
]
CHAT_MAX_SEQ_LEN = 128  # short, so a few turns of ``neo chat`` already overflow it


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat-tokenizer")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20), encoding="utf-8")
    config = TokenizerConfig(vocab_size=500, num_threads=2)
    return train_tokenizer([corpus], root / "tok", config, progress=False).parent


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> NeoTokenizer:
    return NeoTokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: NeoTokenizer) -> Path:
    torch.manual_seed(0)
    # untied embeddings: a tied random model's greedy choice repeats its last token ("\n") forever
    config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=CHAT_MAX_SEQ_LEN,
                                   tie_embeddings=False)
    model = NeoModel(config)
    return export_hf(model, tmp_path_factory.mktemp("models") / "tiny", tokenizer=tokenizer)
