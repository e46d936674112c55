"""neo.tokenizer: real SentencePiece training on a small generated bilingual corpus, and id parity of
the SentencePiece model, the exported tokenizer.json and ``transformers.AutoTokenizer``."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from neo.tokenizer import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    NeoTokenizer,
    TokenizerConfig,
    TrainProgress,
    _chunks,
    model_spec,
    tokenizer_stats,
    train_tokenizer,
)

VOCAB = 1000
_EN = ("the of and to in is that for it as with was on be by this are from at or an have not but which one all "
       "they more their can has been model data language training token text learning open source neural network "
       "large english chinese corpus paper result method we our use using based show table figure code function "
       "return value number time first new work also two used such each between than other these into only when "
       "would may could should very well performance evaluation benchmark dataset quality filter document").split()
_ZH = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同"
       "工也能下过子说产种面而方后多定行学法所"
       "民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那"
       "社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并"
       "模型语言训练数据开源中文英文介绍自己助手请写代码函数")
_CODE = [
    "def {w}(x, y):\n    if x > y:\n        return x - y\n\n    return y - x  \n",
    "for (int i = 0; i < {n}; i++) {{\n\tsum += data[i];\n\t\tif (sum > 100) break;\n}}\n",
    "class {W}:\n    def __init__(self):\n        self.value = {n}\n        self.items = []\n\n\n",
    "    x = [1, 2, 3]\n        y = {{'a': {n}}}\n            print(x, y)   \n",
]


def _sentence(r: random.Random, zh: bool) -> str:
    if zh:
        return "".join(r.choice(_ZH) for _ in range(r.randint(6, 30))) + r.choice("。，？！")
    return " ".join(r.choice(_EN) for _ in range(r.randint(5, 18))).capitalize() + r.choice(".?!,")


def _documents(n: int = 1600, seed: int = 0) -> list[str]:
    r, docs = random.Random(seed), []
    for i in range(n):
        if i % 4 == 0:
            docs.append(" ".join(_sentence(r, False) for _ in range(r.randint(2, 6))) + f" In {r.randint(1900, 2024)}.")
        elif i % 4 == 1:
            docs.append("".join(_sentence(r, True) for _ in range(r.randint(2, 6))) + f"共有{r.randint(0, 9999)}个。")
        elif i % 4 == 2:
            docs.append(r.choice(_CODE).format(w=r.choice(_EN), W=r.choice(_EN).title(), n=r.randint(0, 999)))
        else:
            docs.append(f"{_sentence(r, False)} {_sentence(r, True)}\n{_sentence(r, True)} {_sentence(r, False)}")
    return docs


def _write_jsonl_gz(path: Path, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            row = {"id": str(i), "text": text, "source": "test", "lang": "mixed"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _config(**kw: object) -> TokenizerConfig:
    return TokenizerConfig(**{"vocab_size": VOCAB, "num_threads": 2, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("corpus")
    docs = _documents()
    text = root / "extra.txt"
    text.write_text("\n".join(d for d in docs[:200] if "\n" not in d) + "\n", encoding="utf-8")
    return [_write_jsonl_gz(root / "sample.jsonl.gz", docs), text]


@pytest.fixture(scope="session")
def tok_dir(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    assert train_tokenizer(corpus, out, _config(), progress=False) == out / "tokenizer.model"
    return out


@pytest.fixture(scope="session")
def sp_tok(tok_dir: Path) -> NeoTokenizer:
    return NeoTokenizer.load(tok_dir)


@pytest.fixture(scope="session")
def hf_tok(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> NeoTokenizer:
    only_json = tmp_path_factory.mktemp("only_json")  # what serving may get: no tokenizer.model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, only_json / name)
    return NeoTokenizer.load(only_json)


@pytest.fixture(scope="session")
def auto_tok(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


CASES = {
    "english": "The open model was trained on English and Chinese data. It works well!",
    "chinese": "我们的模型是开源的，训练数据包括中文和英文。",
    "code": "def f(x):\n\tif x > 1:\n        return  x   \n\n\n  y = [1, 2]\t\n    \n\t\t  z  ",
    "space_runs": "".join(f"a{' ' * k}" for k in range(2, 9)) + "b",
    "byte_fallback": "Emoji 🙂👍🏽 and rare 龘 𠜎 characters, é ß ☃",
    "digits": "In 2024, 3.14159 × 1000000 = 3141590 and 0042",
    "chat_markers": f"{IM_START}user\nHello 你好{IM_END}\n{IM_START}assistant\n",
    "leading_spaces": "   leading spaces and trailing   ",
    "newlines": "\n\nx\n",
    "empty": "",
}


def test_config_defaults_follow_the_paper() -> None:
    c = TokenizerConfig()
    assert (c.vocab_size, c.max_sentencepiece_length, c.remove_extra_whitespaces) == (64000, 16, False)
    assert (c.model_type, c.byte_fallback, c.split_digits, c.normalization_rule_name) == ("bpe", True, True, "identity")
    assert CHAT_TEMPLATE.startswith("{{ bos_token }}")


def test_trained_model_has_the_configured_settings(tok_dir: Path, sp_tok: NeoTokenizer) -> None:
    spec = model_spec((tok_dir / "tokenizer.model").read_bytes())
    assert spec["model_type"] == "bpe" and spec["vocab_size"] == VOCAB == sp_tok.vocab_size
    assert spec["max_sentencepiece_length"] == 16 and spec["byte_fallback"] and spec["split_digits"]
    assert spec["allow_whitespace_only_pieces"] and spec["split_by_whitespace"]
    assert not spec["remove_extra_whitespaces"] and not spec["add_dummy_prefix"]
    assert spec["normalization_rule_name"] == "identity" and spec["precompiled_charsmap"] == b""
    ids = (sp_tok.unk_id, sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id, sp_tok.im_start_id, sp_tok.im_end_id)
    assert ids == (0, 1, 2, 3, 4, 5) and [sp_tok.id_to_piece(i) for i in ids] == list(SPECIAL_TOKENS)
    assert sp_tok.id_to_piece(6) == "<0x00>" and sp_tok.is_byte(6)
    assert max(len(sp_tok.id_to_piece(i)) for i in range(sp_tok.vocab_size) if not sp_tok.is_byte(i)) <= 16


@pytest.mark.parametrize("name", CASES)
def test_ids_identical_across_backends(name: str, tok_dir: Path, sp_tok: NeoTokenizer, hf_tok: NeoTokenizer,
                                       auto_tok) -> None:
    text = CASES[name]
    ids = sp_tok.encode(text)
    assert sp_tok.backend == "sentencepiece" and hf_tok.backend == "tokenizers"
    assert hf_tok.encode(text) == ids
    assert Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids == ids
    assert auto_tok.encode(text, add_special_tokens=False) == ids
    assert auto_tok.encode(text) == sp_tok.encode(text, add_bos=True) == [sp_tok.bos_id, *ids]  # add_bos_token
    assert sp_tok.encode(text, add_bos=True, add_eos=True) == [1, *ids, 2]


@pytest.mark.parametrize("name", CASES)
def test_decode_roundtrips_exactly(name: str, sp_tok: NeoTokenizer, hf_tok: NeoTokenizer, auto_tok) -> None:
    text = CASES[name]
    ids = sp_tok.encode(text)
    assert sp_tok.decode(ids, skip_special=False) == hf_tok.decode(ids, skip_special=False) == text
    assert auto_tok.decode(ids) == text
    bare = text.replace(IM_START, "").replace(IM_END, "")
    assert sp_tok.decode(ids) == hf_tok.decode(ids) == auto_tok.decode(ids, skip_special_tokens=True) == bare
    assert sp_tok.decode([1, *ids, 2]) == bare


def test_special_pieces_digits_and_byte_fallback(sp_tok: NeoTokenizer) -> None:
    ids = sp_tok.encode(CASES["chat_markers"])
    assert ids.count(sp_tok.im_start_id) == 2 and ids.count(sp_tok.im_end_id) == 1
    pieces = [sp_tok.id_to_piece(i) for i in sp_tok.encode(CASES["digits"]) if not sp_tok.is_byte(i)]
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))  # one digit per token
    assert sum(p.isdigit() for p in pieces) == sum(c.isdigit() for c in CASES["digits"])
    emoji = sp_tok.encode(CASES["byte_fallback"])
    assert sum(map(sp_tok.is_byte, emoji)) >= 4 * 3 and sp_tok.unk_id not in emoji  # 🙂 👍 🏽 𠜎: 4 bytes each
    # whitespace-only pieces exist: the indentation of code is not one token per space
    assert any(set(sp_tok.id_to_piece(i)) == {"▁"} and len(sp_tok.id_to_piece(i)) >= 4
               for i in sp_tok.encode(CASES["code"]))
    # literal control strings stay text for NeoTokenizer on both backends (transformers differs: documented)
    assert sp_tok.bos_id not in sp_tok.encode(f"a {BOS} b")


CHATS = {
    "english": [{"role": "system", "content": "You are Neo, a helpful assistant."},
                {"role": "user", "content": "Write a function that adds two numbers."},
                {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
                {"role": "user", "content": "Thanks! Now in 2 lines?"}],
    "chinese": [{"role": "system", "content": "你是一个有用的助手。"},
                {"role": "user", "content": "请介绍一下你自己。"},
                {"role": "assistant", "content": "我是开源的语言模型。"},
                {"role": "user", "content": "训练数据是什么？"}],
}


@pytest.mark.parametrize("name", CHATS)
def test_chat_template_matches_transformers(name: str, sp_tok: NeoTokenizer, hf_tok: NeoTokenizer,
                                            auto_tok) -> None:
    messages = CHATS[name]
    text = sp_tok.render_chat(messages)
    assert text == auto_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith(f"{BOS}{IM_START}system\n") and text.endswith(f"{IM_END}\n{IM_START}assistant\n")
    ids = sp_tok.encode_chat(messages)
    expected = auto_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(expected) == hf_tok.encode_chat(messages)
    assert ids[:2] == [sp_tok.bos_id, sp_tok.im_start_id] and ids.count(sp_tok.bos_id) == 1
    assert ids.count(sp_tok.im_end_id) == len(messages)
    assert sp_tok.decode(ids, skip_special=False) == text
    no_prompt = sp_tok.encode_chat(messages, add_generation_prompt=False)
    assert no_prompt == list(auto_tok.apply_chat_template(messages, add_generation_prompt=False, return_dict=False))


def test_hf_files(tok_dir: Path, sp_tok: NeoTokenizer, tmp_path: Path) -> None:
    sp_tok.save_hf(tmp_path, model_max_length=4096)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 4096
    assert [config[f"{k}_token"] for k in ("bos", "eos", "pad", "unk")] == [BOS, EOS, PAD, UNK]
    assert config["chat_template"] == CHAT_TEMPLATE and config["add_bos_token"] and not config["add_eos_token"]
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == [IM_START, IM_END]
    assert (tmp_path / "tokenizer.model").read_bytes() == (tok_dir / "tokenizer.model").read_bytes()
    assert (tmp_path / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()
    hf_only = NeoTokenizer.load(tmp_path / "tokenizer.json")
    hf_only.save_hf(tmp_path / "again")  # a tokenizers-only tokenizer re-exports itself unchanged
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
        NeoTokenizer.load(tmp_path / "missing")


def test_long_lines_are_chunked_at_character_boundaries() -> None:
    line = "模型abc" * 1000
    chunks = list(_chunks(line, 100))
    assert "".join(chunks) == line and all(len(c.encode()) <= 100 for c in chunks) and len(chunks) > 1


def test_input_errors(tmp_path: Path, corpus: list[Path]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        train_tokenizer([corpus[0], empty], tmp_path / "o1", _config(), progress=False)
    blank = _write_jsonl_gz(tmp_path / "blank.jsonl.gz", ["", ""])
    with pytest.raises(ValueError, match="blank.jsonl.gz"):
        train_tokenizer([blank], tmp_path / "o2", _config(), progress=False)
    with pytest.raises(FileNotFoundError, match="nope.jsonl.gz"):
        train_tokenizer([tmp_path / "nope.jsonl.gz"], tmp_path / "o3", _config(), progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n\xff\xfe world\n")
    with pytest.raises(ValueError, match=r"bad\.txt: invalid UTF-8 at byte offset 6"):
        train_tokenizer([bad], tmp_path / "o4", _config(), progress=False)
    late = tmp_path / "late.txt"  # passes the upfront check; found while streaming to the trainer
    late.write_bytes("".join(f"line {i} 模型训练数据\n" for i in range(300)).encode() + b"oops \xc3\x28\n")
    with pytest.raises(ValueError, match=r"late\.txt: invalid UTF-8 at byte offset \d+"):
        train_tokenizer([late], tmp_path / "o5", _config(vocab_size=300), progress=False)
    assert not (tmp_path / "o5" / "tokenizer.model").exists()
    with pytest.raises(ValueError, match="vocab_size=20000 is too large"):
        train_tokenizer([corpus[1]], tmp_path / "o6", _config(vocab_size=20000), progress=False)
    with pytest.raises(ValueError, match="is too small"):
        train_tokenizer([corpus[0]], tmp_path / "o7", _config(vocab_size=300), progress=False)


def test_stats_bytes_per_token(sp_tok: NeoTokenizer, corpus: list[Path]) -> None:
    rows = tokenizer_stats(sp_tok, corpus)
    docs = _documents()
    assert [r["documents"] for r in rows][0] == len(docs)
    nbytes, ntokens = sum(len(d.encode()) for d in docs), sum(len(sp_tok.encode(d)) for d in docs)
    assert (rows[0]["bytes"], rows[0]["tokens"]) == (nbytes, ntokens)
    assert rows[0]["bytes_per_token"] == pytest.approx(nbytes / ntokens)
    assert rows[0]["unk_rate"] == 0.0 and 0.0 <= rows[0]["byte_fallback_rate"] < 0.05


def test_remove_extra_whitespaces_changes_code_compression(corpus: list[Path], sp_tok: NeoTokenizer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = _write_jsonl_gz(tmp_path / "code.jsonl.gz", [d for d in _documents(400, seed=1) if "    " in d])
    events: list[TrainProgress] = []
    collapsed = NeoTokenizer.load(train_tokenizer(corpus, tmp_path / "collapse", _config(remove_extra_whitespaces=True),
                                                  progress=events.append))
    assert [e.stage for e in events][-2:] == ["training", "done"]
    assert events[-1].documents == len(_documents()) + len(corpus[1].read_text(encoding="utf-8").splitlines())
    kept, squashed = tokenizer_stats(sp_tok, [code])[0], tokenizer_stats(collapsed, [code])[0]
    assert kept["bytes"] == squashed["bytes"] and kept["bytes_per_token"] != squashed["bytes_per_token"]
    sample = CASES["code"]
    assert sp_tok.decode(sp_tok.encode(sample)) == sample != collapsed.decode(collapsed.encode(sample))  # lossy
    train_tokenizer(corpus[1:], tmp_path / "shown", _config(vocab_size=600), progress=True)
    assert "docs" in capsys.readouterr().out  # the rich progress display goes to stdout


def test_char_offsets_index_the_decoded_text(tok_dir):
    tok = NeoTokenizer.load(tok_dir)
    text = "The 答案 is 42 😀!\n\tdef f(): pass"
    ids = tok.encode(text, add_bos=True)
    offsets = tok.char_offsets(ids)
    assert offsets[0] == 0 and offsets[1] == 0  # <s> takes no room
    assert offsets == sorted(offsets) and len(offsets) == len(ids)
    for k, off in enumerate(offsets):
        # the text of the tokens from k on is exactly the text from the offset on, unless k starts mid-character
        if k == 0 or offsets[k - 1] < off:
            assert tok.decode(ids[k:]) == text[off:], (k, off)
    # byte-fallback tokens of one character share its offset
    emoji_tokens = [k for k, i in enumerate(ids) if tok.is_byte(i)]
    assert emoji_tokens and len({offsets[k] for k in emoji_tokens}) < len(emoji_tokens)


def test_tokenizer_digest_is_the_reference_file_and_ignores_neighbours(tmp_path):
    from neo.tokenizer import tokenizer_digest

    (tmp_path / "tokenizer.json").write_text('{"model": 1}')
    before = tokenizer_digest(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")  # a checkpoint directory holds more
    assert tokenizer_digest(tmp_path) == before == tokenizer_digest(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.model").write_bytes(b"sp")  # SentencePiece's model wins when both are there
    assert tokenizer_digest(tmp_path) != before
    with pytest.raises(FileNotFoundError):
        tokenizer_digest(tmp_path / "nowhere")


# --- #21: MAP-Neo's tokenizer options: whitespace per phase, whole documents, per-source sampling, .zst ---
def _code_docs(n: int = 300, seed: int = 3) -> list[str]:
    r = random.Random(seed)
    return ["".join(r.choice(_CODE).format(w=r.choice(_EN), W=r.choice(_EN).title(), n=r.randint(0, 999))
                    for _ in range(r.randint(3, 8))) for _ in range(n)]


def test_map_neo_config_per_whitespace_phase():
    from neo.tokenizer import MAP_NEO_MAX_SENTENCE_BYTES, WHITESPACE_PHASES

    assert WHITESPACE_PHASES == {"fundamental": True, "decay": False}  # SentencePiece's default, then the fix
    fundamental, decay = TokenizerConfig.map_neo("fundamental"), TokenizerConfig.map_neo()
    assert fundamental.remove_extra_whitespaces and not decay.remove_extra_whitespaces
    for c in (fundamental, decay):
        assert (c.sample_unit, c.max_sentence_length, c.character_coverage) == ("document", 64000, 0.9999)
        assert (c.vocab_size, c.max_sentencepiece_length, c.split_digits, c.byte_fallback) == (64000, 16, True, True)
    assert MAP_NEO_MAX_SENTENCE_BYTES == 64000
    assert "remove_extra_whitespaces" in fundamental.trainer_kwargs()
    assert "sample_unit" not in decay.trainer_kwargs() and "source_weights" not in decay.trainer_kwargs()
    with pytest.raises(ValueError, match="whitespace='middle'"):
        TokenizerConfig.map_neo("middle")
    with pytest.raises(ValueError, match="source_weights.code: weight must be a finite number"):
        _config(source_weights={"code": -1}).trainer_kwargs()


def test_documents_as_sentences_learn_newline_pieces_and_keep_parity(tmp_path: Path) -> None:
    """Whole documents (MAP-Neo) let pieces span newlines, which line sentences never can; the HF export still
    gives SentencePiece's ids."""
    code = _write_jsonl_gz(tmp_path / "code.jsonl.gz", _code_docs())
    lines = NeoTokenizer.load(train_tokenizer([code], tmp_path / "lines", _config(vocab_size=500), progress=False))
    docs_dir = tmp_path / "docs"
    train_tokenizer([code], docs_dir, _config(vocab_size=500, sample_unit="document", max_sentence_length=64000),
                    progress=False)
    docs = NeoTokenizer.load(docs_dir)

    def newline_pieces(tok: NeoTokenizer) -> list[str]:
        return [p for i in range(tok.vocab_size) if "\n" in (p := tok.id_to_piece(i)) and not tok.is_byte(i)]

    assert newline_pieces(lines) == [] and len(newline_pieces(docs)) >= 3, newline_pieces(docs)
    sample = _code_docs(5, seed=9)
    assert tokenizer_stats(docs, [code])[0]["bytes_per_token"] > tokenizer_stats(lines, [code])[0]["bytes_per_token"]
    hf_only = tmp_path / "hf_only"
    hf_only.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(docs_dir / name, hf_only / name)
    hf = NeoTokenizer.load(hf_only)
    assert hf.backend == "tokenizers" and docs.backend == "sentencepiece"
    for text in [*sample, CASES["code"], CASES["newlines"]]:
        assert hf.encode(text) == docs.encode(text) and docs.decode(docs.encode(text)) == text


def test_source_weights_set_the_sample(tmp_path: Path) -> None:
    en = _write_jsonl_gz(tmp_path / "web.en.jsonl.gz", [d for d in _documents(800) if d.isascii()][:150])
    code = _write_jsonl_gz(tmp_path / "stdlib.code.jsonl.gz", _code_docs(100))
    zh = tmp_path / "news.zh.txt"
    zh.write_text("\n".join(_sentence(random.Random(i), True) for i in range(200)) + "\n", encoding="utf-8")
    out = tmp_path / "weighted"
    train_tokenizer([en, code, zh], out, _config(vocab_size=600, source_weights={"stdlib.code": 3, "web.en": 0.5,
                                                                                  "news.zh": 0}), progress=False)
    sample = json.loads((out / "training_sample.json").read_text())
    src = sample["sources"]
    assert src["stdlib.code"]["documents"] == 100 and src["stdlib.code"]["documents_fed"] == 300
    assert src["news.zh"]["documents"] == 200 and src["news.zh"].get("documents_fed", 0) == 0
    assert 50 <= src["web.en"]["documents_fed"] <= 100  # each document kept with probability 0.5 (seeded)
    assert sample["config"]["source_weights"] == {"stdlib.code": 3, "web.en": 0.5, "news.zh": 0}
    tok = NeoTokenizer.load(out)
    assert tokenizer_stats(tok, [zh])[0]["byte_fallback_rate"] > 0.3  # no Chinese was fed: bytes
    with pytest.raises(ValueError, match=r"no input is named 'code' \(sources: news.zh, stdlib.code, web.en\)"):
        train_tokenizer([en, code, zh], tmp_path / "x", _config(source_weights={"code": 2}), progress=False)


def test_zst_inputs_read_like_gzip(tmp_path: Path) -> None:
    import zstandard

    from neo.textio import iter_documents, open_text, source_name

    docs = _documents(200)
    gz = _write_jsonl_gz(tmp_path / "part.jsonl.gz", docs)
    zst = tmp_path / "clean.jsonl.zst"  # what dataproc writes (clean/*.jsonl.zst)
    zst.write_bytes(zstandard.ZstdCompressor().compress(gzip.decompress(gz.read_bytes())))
    assert list(iter_documents(zst)) == list(iter_documents(gz)) == docs
    assert source_name(zst) == "clean" and source_name("a/b/python-stdlib.code.jsonl.gz") == "python-stdlib.code"
    with open_text(zst) as f:
        assert json.loads(f.readline())["text"] == docs[0]
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "ok"}\n{"text": "\xc3\x28"}\n'))
    with pytest.raises(ValueError, match=r"bad\.jsonl\.zst: invalid UTF-8 at byte offset 25 \(decompressed\), line 2"):
        list(iter_documents(bad))
    assert train_tokenizer([zst], tmp_path / "tok", _config(vocab_size=700), progress=False).is_file()


def test_fundamental_whitespace_loses_code_and_stats_compare_both(corpus: list[Path], tmp_path: Path) -> None:
    """The paper's reason for the change: with remove_extra_whitespaces on, code does not decode back to itself;
    `neo tokenizer stats` shows it (lossless %) and compares bytes per token across tokenizers."""
    import subprocess
    import sys

    code = _write_jsonl_gz(tmp_path / "code.jsonl.gz", _code_docs(120))
    english = [d for d in _documents(400) if d.isascii() and "\n" not in d and "  " not in d][:80]
    prose = _write_jsonl_gz(tmp_path / "prose.en.jsonl.gz", english)
    dirs = {}
    for phase in ("fundamental", "decay"):
        dirs[phase] = tmp_path / phase
        train_tokenizer(corpus, dirs[phase], TokenizerConfig.map_neo(phase, vocab_size=VOCAB, num_threads=2),
                        progress=False)
    fundamental, decay = (NeoTokenizer.load(dirs[p]) for p in ("fundamental", "decay"))
    assert model_spec((dirs["fundamental"] / "tokenizer.model").read_bytes())["remove_extra_whitespaces"]
    f_code, d_code = tokenizer_stats(fundamental, [code])[0], tokenizer_stats(decay, [code])[0]
    assert d_code["lossless_rate"] == 1.0 and f_code["lossless_rate"] < 0.1
    assert tokenizer_stats(fundamental, [prose])[0]["lossless_rate"] == 1.0  # single spaces: nothing lost
    out = subprocess.run([sys.executable, "-m", "neo.cli", "tokenizer", "stats", str(code), str(prose),
                          "--tokenizer", str(dirs["fundamental"]), "--tokenizer", str(dirs["decay"])],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr
    assert "bytes per token, compared" in out.stdout and "lossless %" in out.stdout
    assert f"{d_code['bytes_per_token']:.3f}" in out.stdout and f"{f_code['bytes_per_token']:.3f}" in out.stdout
    assert f"{100 * f_code['lossless_rate']:.1f}" in out.stdout


def test_tokenizer_train_cli_options(tmp_path: Path) -> None:
    import subprocess
    import sys

    import zstandard

    zst = tmp_path / "mixed.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d}) + "\n" for d in _documents(600)).encode()))

    def neo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "neo.cli", "tokenizer", "train", *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})

    out = neo(str(zst), "--out", str(tmp_path / "t"), "--vocab-size", "900", "--whitespace", "fundamental",
              "--sample-unit", "document", "--weight", "mixed=2")
    assert out.returncode == 0, out.stdout + out.stderr
    sample = json.loads((tmp_path / "t" / "training_sample.json").read_text())
    assert sample["sources"]["mixed"] == {"documents": 600, "documents_fed": 1200,
                                          "bytes_fed": 2 * sum(len(d.encode()) for d in _documents(600))}
    c = sample["config"]
    assert (c["remove_extra_whitespaces"], c["sample_unit"], c["max_sentence_length"]) == (True, "document", 64000)
    assert model_spec((tmp_path / "t" / "tokenizer.model").read_bytes())["remove_extra_whitespaces"]
    bad = neo(str(zst), "--out", str(tmp_path / "u"), "--weight", "mixed:2")
    assert bad.returncode == 2 and "expected SOURCE=WEIGHT" in bad.stdout
