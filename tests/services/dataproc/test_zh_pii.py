"""Chinese rules (MAP-Neo / Matrix), OpenCC, PII masking and the URL blocklist on crafted documents."""

from __future__ import annotations

import random

import pytest

from neo_dataproc.document import Document
from neo_dataproc.steps.pii import PiiStep, UrlBlocklistFilter, id_card_valid
from neo_dataproc.steps.zh_quality import OpenCCStep, ZhQualityFilter

from .corpus import EN_DOCS, ZH_DOCS

GOOD = ZH_DOCS[1]


def zh(text: str) -> Document:
    return Document(uid=1, text=text, source="t", lang="zh")


def reason(step, text: str) -> str | None:
    out = step(zh(text))
    if out is not None:
        return None
    return next(k.removeprefix("dropped_") for k, v in step.stats.counts.items() if k.startswith("dropped_") and v)


def _single_char_words() -> str:
    rng = random.Random(3)
    pool = "的了是在我有他这中大来上个国到说们为子和你地出道也时年"
    s = "".join(rng.choice(pool) for _ in range(80))
    return "。".join(s[i : i + 10] for i in range(0, 80, 10)) + "。"


@pytest.mark.parametrize("text", ZH_DOCS)
def test_clean_chinese_passes(text):
    assert ZhQualityFilter()(zh(text)) is not None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("你好，世界。", "zh_too_short"),
        (GOOD + "【广告】【点击这里领取免费的优惠券和大礼包】【限时抢购全场五折起】【立即购买】", "zh_bracket_ratio"),
        ("今天天气很好我们一起去公园散步然后去湖边看看风景"
         "再去附近的小店吃一碗热腾腾的面条晚上早点回家休息明天继续", "zh_too_few_sentences"),
        (GOOD + "#热门# #话题# #转发# #抽奖# #关注# #点赞# #评论# #收藏# " * 4, "zh_hash_ratio"),
        (GOOD + "……等等……然后……还有……" * 12, "zh_ellipsis_ratio"),
        (GOOD + "订单号：" + "，".join(str(10**8 + i * 7919) for i in range(40)) + "。", "zh_digit_ratio"),
        ("\n".join(ln + "展开" for ln in GOOD.split("\n")[:4]) + "\n" + GOOD.split("\n")[4], "zh_readmore_lines"),
        ("\n".join("• " + ln for ln in GOOD.split("\n")), "zh_bullet_lines"),
        ("哈哈哈。" * 40, "zh_unique_chars"),
        ("天天向上。好好学习。天天向上。好好学习。" * 3, "zh_char_entropy"),
        (GOOD + "非常" * 30 + "。", "zh_top_2_gram"),
        (ZH_DOCS[0][:40] + "。" + "人工智能改变了我们工作和生活的方式。" * 6, "zh_dup_5_gram"),
        (_single_char_words(), "zh_mean_word_length"),
    ],
)
def test_zh_rules(text, expected):
    assert reason(ZhQualityFilter(), text) == expected


def test_zh_thresholds_are_keywords():
    assert reason(ZhQualityFilter(max_chars=100), GOOD) == "zh_too_long"
    no_punct = ("今天天气很好我们一起去公园散步然后去湖边看看风景"
                "再去附近的小店吃一碗热腾腾的面条晚上早点回家休息明天继续")
    assert reason(ZhQualityFilter(min_sentences=1), no_punct) == "zh_no_punctuation"


def test_opencc_traditional_to_simplified():
    step = OpenCCStep()
    d = zh("這個城市的資訊科技發展很快，學習環境也很好。")
    assert step(d) is d and d.text == "这个城市的资讯科技发展很快，学习环境也很好。"
    assert step.stats.to_dict()["converted"] == 1
    en = Document(uid=2, text="Traditional 漢字 in English text", source="t", lang="en")
    assert step(en) is en and en.text == "Traditional 漢字 in English text"  # only Chinese documents


def test_opencc_phrases_only_for_traditional_text():
    """tw2sp maps Taiwan words (軟體 → 软件) in Traditional text, but leaves mainland words in
    Simplified text alone (文件 would become 文档, 程序 进程); stray Traditional characters in a
    Simplified document are converted one by one."""
    step = OpenCCStep("tw2sp")
    simplified = "在更新过程中开始下载相应的软件包文件，然后运行这个程序。"
    d = zh(simplified)
    assert step(d) is d and d.text == simplified
    taiwan = zh("在更新過程中開始下載相應的軟體包檔案，然後執行這個程式。")
    assert step(taiwan) is taiwan and taiwan.text == "在更新过程中开始下载相应的软件包文件，然后运行这个程序。"
    stray = zh("在更新过程中开始下载相应的软件包文件，然後运行这个程序。")  # one Traditional 後
    assert step(stray) is stray and stray.text == simplified
    assert step.stats.to_dict()["converted"] == 2 and step.stats.to_dict()["chars_only"] == 1


# --- PII ---
def test_pii_masks_each_kind():
    step = PiiStep()
    text = (
        "Write to jane.doe+news@example.co.uk or 张三 zhangsan@163.com. "
        "手机 138-1234-5678, 电话 010-87654321, call (415) 555-2671 or +44 20 7946 0958. "
        "Server 8.8.8.8 answered; the router 192.168.1.1 and 127.0.0.1 are local. "
        "身份证 11010519491231002X, 订单 110105194912310021 (bad check digit)."
    )
    d = Document(uid=1, text=text, source="t", lang="en")
    assert step(d) is d
    assert d.text == (
        "Write to <EMAIL> or 张三 <EMAIL>. "
        "手机 <PHONE>, 电话 <PHONE>, call <PHONE> or <PHONE>. "
        "Server <IP> answered; the router 192.168.1.1 and 127.0.0.1 are local. "
        "身份证 <ID_CARD>, 订单 110105194912310021 (bad check digit)."
    )
    stats = step.stats.to_dict()
    assert (stats["masked_email"], stats["masked_phone"], stats["masked_ip"], stats["masked_id_card"]) == (2, 4, 1, 1)


def test_pii_leaves_section_numbers_that_read_as_ipv4():
    """Handbook headings ("5.4.5.1. 启用多架构") and cross-references ("see Section 4.2.2.1") are not
    addresses; the same dotted quad in a sentence, or at a line's start without the heading's dot, is."""
    step = PiiStep()
    text = ("5.4.5.1. 启用多架构\n当已经配置 dpkg 来支持异质架构时。\n"
            "  14.6.2.1. Knowing What to Expect\n"
            "(for the choices made, see Section 4.2.2.1, “Guided partitioning”) and 第 9.1.2.3 节。\n"
            "The resolver 8.8.4.4. answered.\n8.8.8.8 is Google's resolver.")
    d = Document(uid=1, text=text, source="t", lang="en")
    assert step(d) is d
    assert d.text == text.replace("8.8.4.4.", "<IP>.").replace("8.8.8.8 is", "<IP> is")
    assert step.stats.to_dict()["masked_ip"] == 2


def test_pii_leaves_clean_text_and_versions_alone():
    step = PiiStep()
    text = EN_DOCS[1] + " Version 1.2.3 was released in 2024, page 12-34."
    d = Document(uid=1, text=text, source="t", lang="en")
    assert step(d).text == text  # type: ignore[union-attr]
    assert id_card_valid("11010519491231002X") and not id_card_valid("110105194912310021")


def test_pii_kinds_can_be_switched_off():
    step = PiiStep(email=False)
    d = Document(uid=1, text="mail a@b.org from 8.8.4.4", source="t")
    assert step(d).text == "mail a@b.org from <IP>"  # type: ignore[union-attr]


# --- URL blocklist ---
def test_url_blocklist(tmp_path):
    listed = tmp_path / "block.txt"
    listed.write_text("# ads and trackers\nads.example.net\nnews.example.org/sponsored\n")
    step = UrlBlocklistFilter(domains=["casino.test"], files=[str(listed)])

    def url_doc(url):
        return Document(uid=1, text="x", source="t", url=url)

    assert step(url_doc("https://www.casino.test/win")) is None
    assert step(url_doc("http://eu.casino.test/")) is None  # subdomain
    assert step(url_doc("https://ads.example.net/x?y=1")) is None
    assert step(url_doc("https://news.example.org/sponsored/post-1")) is None  # URL prefix
    assert step(url_doc("https://news.example.org/world/post-2")) is not None
    assert step(url_doc("https://notcasino.test/")) is not None
    assert step(Document(uid=1, text="x", source="t")) is not None  # no URL: nothing to check
    assert step.stats.to_dict()["dropped_url_blocklisted"] == 4


def test_url_blocklist_missing_file():
    with pytest.raises(ValueError, match="not found"):
        UrlBlocklistFilter(files=["/nonexistent/list.txt"])
