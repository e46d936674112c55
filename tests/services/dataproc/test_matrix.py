"""MAP-Neo Matrix stages: corpus-wide paragraph dedup (in the job, across shards), Chinese
similar-line dedup, Matrix's English rule set, the sensitive-word hook, URL words, profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neo_dataproc.config import ConfigError, parse_config
from neo_dataproc.document import Document
from neo_dataproc.steps.dedup import MinHasher
from neo_dataproc.steps.matrix import (
    MatrixEnglishFilter,
    SensitiveWordsFilter,
    ZhSimilarLineDedup,
    drop_paragraphs,
    paragraph_hashes,
    split_sentences,
)
from neo_dataproc.steps.pii import UrlBlocklistFilter

from .conftest import write_jsonl
from .corpus import EN_DOCS, ZH_DOCS
from .test_job import final_docs, make_config, run_eager


def test_paragraph_hashes_skip_blank_lines_and_fenced_code():
    text = "Intro line here.\n\n```\nx = 1\n```\nAfter the code."
    idx = [i for i, _ in paragraph_hashes(text)]
    assert idx == [0, 5]
    assert drop_paragraphs("a\nb\nc", {1}) == "a\nc"


def test_paragraph_dedup_across_shards_removes_repeated_lines_and_emptied_copies(tmp_path, settings):
    en0 = EN_DOCS[0].split("\n")
    extra = "A completely new closing remark about the town and its people, written for this copy alone."
    docs = [
        {"id": "orig", "text": EN_DOCS[0]},
        {"id": "other", "text": EN_DOCS[1]},
        {"id": "zh", "text": ZH_DOCS[0]},
        # a truncated copy: every line occurs earlier → nothing left → dropped
        {"id": "cut", "text": "\n".join(en0[:5])},
        # an extended copy: its shared lines go, the new ones stay
        {"id": "ext", "text": "\n".join(en0[2:] + [EN_DOCS[2], extra])},
        {"id": "zh_cut", "text": "\n".join(ZH_DOCS[0].split("\n")[:4])},
    ]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    # min_similarity high enough that the cut copies are not document-level near-duplicates
    cfg = make_config(tmp_path, docs_per_shard=2, dedup={"fuzzy": False})
    report = run_eager(cfg, settings)
    out = {d["meta"]["id"]: d["text"] for d in final_docs(settings)}
    assert set(out) == {"orig", "other", "zh", "ext"}
    assert out["orig"] == EN_DOCS[0]
    assert not any(line in out["ext"].split("\n") for line in en0[2:])
    assert extra in out["ext"] and EN_DOCS[2].split("\n")[0] in out["ext"]
    pd = report["stages"]["paragraph_dedup"]
    assert pd["dropped_paragraph_dedup_short"] == 2 and pd["seen"] == 6 and pd["kept"] == 4
    assert pd["lines_removed"] == 5 + 5 + 4


def test_paragraph_dedup_skips_lines_of_documents_the_document_dedup_removed(tmp_path, settings):
    # "copy" is an exact duplicate of "orig" (dropped by dedup); "later" shares a line only with the copy
    # after the copy's removal that line's first occurrence is orig's own, so it is removed from "later"
    line = EN_DOCS[0].split("\n")[0]
    docs = [{"id": "orig", "text": EN_DOCS[0]}, {"id": "copy", "text": EN_DOCS[0]},
            {"id": "later", "text": EN_DOCS[1] + "\n" + line}]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    run_eager(make_config(tmp_path, docs_per_shard=1), settings)
    out = {d["meta"]["id"]: d["text"] for d in final_docs(settings)}
    assert set(out) == {"orig", "later"} and out["later"] == EN_DOCS[1]


def test_paragraph_dedup_off(tmp_path, settings):
    docs = [{"id": "orig", "text": EN_DOCS[0]}, {"id": "cut", "text": "\n".join(EN_DOCS[0].split("\n")[:5])}]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    report = run_eager(make_config(tmp_path, paragraph_dedup=None, dedup={"fuzzy": False}), settings)
    assert {d["meta"]["id"] for d in final_docs(settings)} == {"orig", "cut"}
    assert "paragraph_dedup" not in report["stages"]


def test_zh_similar_line_dedup():
    a = "今天的天气非常好，我们一起去公园散步，看到了很多美丽的花朵和绿树。"
    b = "今天的天气非常好，我们一起去公园散步，看到了很多漂亮的花朵和绿树。"  # 2 edits in 32
    c = "晚上回家以后，大家围坐在桌子旁边，一边吃饭一边聊起了白天的见闻。"
    text = a + b + c + "短句。短句。"
    assert "".join(split_sentences(text)) == text
    step = ZhSimilarLineDedup()
    out = step(Document(uid=1, text=text, source="s", lang="zh"))
    assert out is not None and out.text == a + c + "短句。"
    assert step.stats.counts["similar_line_removed"] == 2
    en = Document(uid=2, text="Same. Same.", source="s", lang="en")
    assert step(en).text == "Same. Same."  # English is left alone


def test_matrix_english_rules():
    step = MatrixEnglishFilter()
    good = Document(uid=1, text=EN_DOCS[1], source="s", lang="en")
    assert step(good) is not None
    caps = Document(uid=2, text=" ".join(["BUY THE BEST WATCHES NOW and save"] * 12), source="s", lang="en")
    assert step(caps) is None
    short = Document(uid=3, text="The cat sat on the mat and that was all.", source="s", lang="en")
    assert step(short) is None
    assert step.stats.counts["dropped_matrix_en_all_caps"] == 1  # 5 of 7 words in capitals
    assert step.stats.counts["dropped_matrix_en_mean_word_length"] == 1  # NLTK-style tokens: "." counts
    assert step.stats.counts["dropped"] == 2


def test_sensitive_words(tmp_path):
    step = SensitiveWordsFilter()
    spam = "\n".join(["澳门百家乐真人娱乐！", "注册送彩金高额返水", "六合彩开奖直播", "正规平台欢迎您"])
    assert step(Document(uid=1, text=spam, source="s", lang="zh")) is None
    news = ZH_DOCS[0] + "\n警方近日破获一起利用百家乐网站实施诈骗的案件。"
    assert step(Document(uid=2, text=news, source="s", lang="zh")) is not None
    assert step.stats.counts["dropped_sensitive_words"] == 1
    # custom words and files per language; Matrix's line removal
    words = tmp_path / "en.txt"
    words.write_text("# mine\nfrobnicator deals\n")
    custom = SensitiveWordsFilter(words={"en": ["blorp"]}, files={"en": [str(words)]}, defaults=False,
                                  remove_lines=True)
    text = EN_DOCS[0] + "\nGet blorp now."
    out = custom(Document(uid=3, text=text, source="s", lang="en"))
    assert out is not None and out.text == EN_DOCS[0]
    assert custom(Document(uid=4, text="frobnicator deals\nfrobnicator deals today", source="s", lang="en")) is None
    with pytest.raises(ValueError, match="not found"):
        SensitiveWordsFilter(files={"zh": [str(tmp_path / "missing.txt")]})


def test_url_words():
    step = UrlBlocklistFilter(words=["casino"])
    assert step(Document(uid=1, text="x", source="s", url="https://best-casino.example/a")) is None
    assert step(Document(uid=2, text="x", source="s", url="https://example.org/a")) is not None


def test_matrix_minhash_char_shingles():
    h = MinHasher(9, 13, en_ngram=13, zh_ngram=13, en_shingle="char")
    a = h.signature(EN_DOCS[0], "en")
    b = h.signature(EN_DOCS[0].replace("early", "early,"), "en")  # punctuation is normalized away
    assert a.shape == (117,) and np.array_equal(a, b)
    with pytest.raises(ValueError):
        MinHasher(en_shingle="bytes")


def test_profiles(tmp_path: Path):
    base = {"name": "p", "inputs": [{"path": "in"}]}
    default = parse_config(base, base_dir=tmp_path)
    assert default.en_quality.c4 == {} and default.en_quality.matrix is None and default.dedup.num_bands == 20
    matrix = parse_config({**base, "profile": "matrix", "dedup": {"seed": 7}}, base_dir=tmp_path)
    assert matrix.en_quality.c4 is None and matrix.en_quality.matrix == {}
    dedup = matrix.dedup
    assert (dedup.num_bands, dedup.rows_per_band, dedup.en_shingle, dedup.seed) == (9, 13, "char", 7)
    assert matrix.zh_quality.similar_lines == {} and matrix.sensitive_words.remove_lines
    per_step = parse_config({**base, "dedup": {"profile": "matrix"}}, base_dir=tmp_path)
    assert per_step.dedup.num_bands == 9 and per_step.en_quality.c4 == {}
    mixed = parse_config({**base, "profile": "matrix", "en_quality": {"profile": "default"}}, base_dir=tmp_path)
    assert mixed.en_quality.c4 == {} and mixed.en_quality.matrix is None and mixed.dedup.num_bands == 9
    with pytest.raises(ConfigError, match="profile"):
        parse_config({**base, "profile": "nope"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="profile"):
        parse_config({**base, "dedup": {"profile": "nope"}}, base_dir=tmp_path)


def test_report_lists_dropped_examples_per_rule(tmp_path, settings):
    docs = [{"id": "ok", "text": EN_DOCS[0]}, {"id": "short", "text": "The cat sat on the mat."},
            {"id": "spam", "text": "\n".join(["澳门百家乐真人娱乐！", "注册送彩金高额返水", "六合彩开奖直播"])}]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    report = run_eager(make_config(tmp_path), settings)
    ex = report["examples"]
    dropped = {e["id"]: reason for reason, es in ex.items() for e in es}
    assert set(dropped) == {"short", "spam"} and dropped["short"] in report["stages"]["gopher_quality"] or \
        dropped["short"].startswith(("gopher", "c4", "langid"))
    assert all(len(es) <= 5 and es[0]["text"] for es in ex.values())
