"""Extraction (HTML, mojibake, NFKC where safe, control characters, time limit) and language id."""

from __future__ import annotations

import time

import pytest

from neo_dataproc.document import Document
from neo_dataproc.steps.extract import ExtractStep, nfkc_safe
from neo_dataproc.steps.langid import LangIdFilter, code_score

from .corpus import EN_DOCS, ZH_DOCS

ARTICLE = (
    "<html><head><title>Market day</title><script>var tracking = 1;</script></head><body>"
    "<nav><a href='/'>Home</a> | <a href='/about'>About us</a></nav>"
    "<article><h1>Market day in the river town</h1>"
    + "".join(f"<p>{line}</p>" for line in EN_DOCS[0].split("\n"))
    + "</article><footer>Copyright 2024. All rights reserved.</footer></body></html>"
)


def doc(text: str, kind: str = "text", lang: str = "") -> Document:
    return Document(uid=1, text=text, source="t", kind=kind, lang=lang)  # type: ignore[arg-type]


def test_html_main_text_is_extracted():
    step = ExtractStep()
    out = step(doc(ARTICLE, kind="html"))
    assert out is not None
    assert "The river town woke early on market day" in out.text
    assert "The mayor thanked everyone" in out.text
    assert "<p>" not in out.text and "var tracking" not in out.text
    assert step.stats.to_dict()["html_extracted"] == 1


def test_html_without_content_is_dropped_as_empty():
    step = ExtractStep()
    assert step(doc("<html><body><div></div></body></html>", kind="html")) is None
    assert step.stats.to_dict()["dropped_extract_empty"] == 1


def test_extractor_that_hangs_is_dropped_with_timeout_not_the_worker():
    def hanging(html: str) -> str:
        while True:  # a pathological page: the extractor never returns
            time.sleep(0.01)

    step = ExtractStep(timeout_s=0.2, html_extractor=hanging)
    t0 = time.time()
    assert step(doc("<html>x</html>", kind="html")) is None
    assert time.time() - t0 < 2
    assert step.stats.to_dict()["dropped_extract_timeout"] == 1
    assert step(doc("plain text survives")) is not None  # the step (and process) goes on


def test_extractor_that_crashes_is_dropped_with_error():
    def crashing(html: str) -> str:
        raise ValueError("lxml could not parse this")

    step = ExtractStep(html_extractor=crashing)
    assert step(doc("<html>x</html>", kind="html")) is None
    assert step.stats.to_dict()["dropped_extract_error"] == 1


def test_real_trafilatura_on_huge_page_hits_the_time_limit():
    page = ("<html><body>" + "<div><p>word and word and more words here.</p>" * 40000 + "</div>" * 40000
            + "</body></html>")
    step = ExtractStep(timeout_s=0.05)
    assert step(doc(page, kind="html")) is None
    assert step.stats.to_dict()["dropped_extract_timeout"] == 1


def test_too_large_is_dropped_before_parsing():
    step = ExtractStep(max_bytes=100)
    assert step(doc("x" * 101)) is None
    assert step.stats.to_dict()["dropped_extract_too_large"] == 1


def test_mojibake_repaired_then_control_chars_removed():
    step = ExtractStep()
    out = step(doc("The cafÃ© is â€œniceâ€\x9d\x07 and naÃ¯ve.\r\nSecond line\x00."))
    assert out is not None and out.text == "The café is “nice” and naïve.\nSecond line."
    stats = step.stats.to_dict()
    assert stats["fixed_mojibake"] == 1 and stats["removed_control_chars"] == 1


def test_nfkc_where_safe():
    # full-width Latin letters and digits fold; Chinese full-width punctuation stays as written
    assert nfkc_safe("ＡＢＣ１２３，你好！（注）") == "ABC123，你好！（注）"
    assert nfkc_safe("ﬁne ①") == "fine 1"
    step = ExtractStep()
    code = step(doc("x² = 'ﬁ'  # keep", kind="code"))
    assert code is not None and code.text == "x² = 'ﬁ'  # keep"  # code is not NFKC'd


# --- language id --------------------------------------------------------------------------------
PYTHON = "import os\n\n\ndef main(argv):\n    for name in argv:\n        print(os.path.basename(name))\n    return 0\n"


@pytest.mark.parametrize("text, lang", [(EN_DOCS[1], "en"), (ZH_DOCS[0], "zh"), (PYTHON, "code")])
def test_langid_labels_and_scores(text, lang):
    step = LangIdFilter()
    d = doc(text)
    assert step(d) is d
    assert d.lang == lang and d.lang_score >= 0.5


def test_langid_drops_other_languages():
    step = LangIdFilter()
    fr = doc("Le marché du village ouvre tôt le samedi, et les boulangers allument leurs fours avant l'aube.")
    assert step(fr) is None and fr.lang == "other"
    assert step.stats.to_dict()["dropped_langid_other"] == 1


def test_langid_low_score_and_not_kept():
    step = LangIdFilter(min_scores={"en": 0.99})
    unsure = doc("ok ok yes no maybe la la")
    assert step(unsure) is None
    only_en = LangIdFilter(keep=["en"])
    assert only_en(doc(ZH_DOCS[1])) is None
    assert step.stats.to_dict()["dropped_langid_low_score"] == 1
    assert only_en.stats.to_dict()["dropped_langid_not_kept"] == 1


def test_code_kind_and_code_score():
    assert code_score(PYTHON) > 0.6
    assert code_score(EN_DOCS[0]) < 0.2
    d = doc("README\nplain words here\nmore words", kind="code")
    assert LangIdFilter()(d) is d and d.lang == "code" and d.lang_score == 1.0


def test_langid_rejects_unknown_keep():
    with pytest.raises(ValueError, match="unknown languages"):
        LangIdFilter(keep=["en", "fr"])
