#!/usr/bin/env python3
"""Build the held-out messy bilingual corpus (with ground truth) that ``bench/dataproc/heldout.py`` scores.

The sample corpus (``data/sample``: Debian Reference, fortunes, manpages-zh, stdlib source) is what
the rules were tuned on; this corpus is built from *other* packaged text, so its scores say how the
pipeline does on data it has not seen:

* English / Chinese prose: the Debian Administrator's Handbook (``debian-handbook``: en-US, zh-CN),
  the Debian FAQ (``debian-faq``, ``debian-faq-zh-cn``) and the New Maintainers' Guide
  (``maint-guide``, ``maint-guide-zh-cn``), split into sections;
* code: Python files of third-party packages installed in the virtual environment (not the stdlib).

Base sections are split into two disjoint halves by a hash of their id: ``tune/`` (rules may be
tuned on it) and ``report/`` (scores are reported on it). Each half is then made messy, with the
truth of every document in ``truth.json``:

* clean unique documents as JSONL records, as raw ``.txt`` files (half hard-wrapped at 72 columns)
  and as HTML pages in one of three site templates (navigation, sidebars, cookie banners, footers);
* code: whole ``.py`` files, Python source as JSONL text records (no language hint), functions cut
  out of files, and Markdown documentation with fenced code; code junk (auto-generated files,
  data tables, minified one-liners) to be dropped;
* duplicates, each after its original (all in the ``b/`` folder, read after ``a/``): exact copies,
  near-duplicates across the whole Jaccard range (word edits, cut or extended copies, moved
  paragraphs; the exact 5-gram Jaccard is recorded), the same section as HTML and as text,
  re-templated pages, and Traditional copies with Taiwan phrasing (OpenCC ``s2twp``);
* mojibake of each common kind: UTF-8 read as cp1252 (once and twice), as Latin-1, a GBK-encoded
  file (decodable: should be read right), and lossy damage (bytes lost, or UTF-8 read as GBK):
  to be repaired or, when lossy, dropped;
* junk and spam in both languages (keyword stuffing, gambling spam, link lists, cookie walls,
  lorem ipsum, repeated blocks, number tables, "read more" teasers, random characters);
* mixed English/Chinese pages (a section interleaved with one in the other language);
* PII planted in many formats (emails in text and ``mailto:``, IPv4, IPv6, mainland China, Taiwan
  and international phone numbers) inside otherwise clean documents.

Layout of each half: ``a/`` (originals and unique documents) and ``b/`` (duplicates), each with
``records.jsonl`` and ``files/``; ``truth.json`` maps each document key (the record ``id``, or the
file name) to its truth. Deterministic (seeded, sorted inputs).

    apt-get install -y debian-handbook debian-faq debian-faq-zh-cn maint-guide maint-guide-zh-cn
    .venv/bin/python scripts/build_heldout_corpus.py --out .neo/heldout
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import random
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20260119
CJK_RE = re.compile("[\u3400-\u9fff\uf900-\ufaff]")
WS_RE = re.compile(r"\s+")

SOURCES = {
    "en": [
        ("handbook", "/usr/share/doc/debian-handbook/html/en-US/*.html"),
        ("faq", "/usr/share/doc/debian/FAQ/*.en.html"),
        ("maint-guide", "/usr/share/doc/maint-guide/html/*.en.html"),
    ],
    "zh": [
        ("handbook", "/usr/share/doc/debian-handbook/html/zh-CN/*.html"),
        ("faq", "/usr/share/doc/debian/FAQ/zh-cn/*.html"),
        ("maint-guide", "/usr/share/doc/maint-guide-zh-cn/html/*.zh-cn.html"),
    ],
}
CODE_PACKAGES = ("click", "anyio", "httpx", "jinja2", "pydantic", "rich", "celery", "kombu", "yaml",
                 "dateutil", "fsspec", "filelock", "markdown", "babel", "starlette", "typer", "tqdm",
                 "redis", "requests", "urllib3", "idna", "sympy", "networkx", "pygments", "werkzeug")


# ---------------------------------------------------------------------------------------------------
# base sections
# ---------------------------------------------------------------------------------------------------
@dataclass
class Block:
    kind: str  # h | p | li | pre
    text: str


@dataclass
class Section:
    id: str
    lang: str
    title: str
    blocks: list[Block]

    @property
    def prose(self) -> list[str]:
        return [b.text for b in self.blocks if b.kind in ("p", "li")]

    @property
    def code(self) -> list[str]:
        return [b.text for b in self.blocks if b.kind == "pre"]


def _blocks(path: Path) -> list[Block]:
    import lxml.html

    tree = lxml.html.fromstring(path.read_bytes())
    for bad in tree.xpath("//script|//style|//ul[contains(@class,'docnav')]|//div[@id='banner']|"
                          "//div[contains(@class,'toc')]|//div[contains(@class,'navheader')]|"
                          "//div[contains(@class,'navfooter')]|//p[@id='title']|//div[contains(@class,'footnotes')]"):
        bad.drop_tree()
    out: list[Block] = []
    body = tree.find("body") if tree.find("body") is not None else tree
    def is_para(e: object) -> bool:
        return e.tag == "p" or (e.tag == "div" and "para" in (e.get("class") or "").split())  # type: ignore[attr-defined]

    for el in body.iter("h1", "h2", "h3", "h4", "p", "div", "li", "pre", "dt", "dd"):
        if el.tag == "div" and not is_para(el):
            continue
        if el.tag == "pre":
            text = el.text_content().strip("\n")
            if text.strip():
                out.append(Block("pre", text))
            continue
        if el.tag not in ("h1", "h2", "h3", "h4") and any(
                is_para(d) or d.tag in ("pre", "li", "dd", "dt") for d in el.iterdescendants()):
            continue  # a container: its paragraphs and code come on their own
        text = WS_RE.sub(" ", el.text_content()).strip()
        if not text:
            continue
        kind = "h" if el.tag in ("h1", "h2", "h3", "h4") else ("li" if el.tag in ("li", "dt", "dd") else "p")
        out.append(Block(kind, text))
    return out


def load_sections(lang: str, min_chars: int, max_chars: int) -> list[Section]:
    import glob

    sections: list[Section] = []
    for name, pattern in SOURCES[lang]:
        for path in sorted(glob.glob(pattern)):
            blocks = _blocks(Path(path))
            cur: list[Block] = []
            title = ""
            n = 0

            def flush(cur: list[Block] = cur, name: str = name, path: str = path) -> None:
                nonlocal n
                size = sum(len(b.text) for b in cur if b.kind != "h")
                prose = "".join(b.text for b in cur if b.kind in ("p", "li"))
                cjk = len(CJK_RE.findall(prose)) / max(1, len(prose))
                if size >= min_chars and any(b.kind == "p" for b in cur) and (cjk > 0.3) == (lang == "zh"):
                    sid = f"{name}/{lang}/{Path(path).name.split('.')[0]}/{n}"
                    sections.append(Section(sid, lang, title or cur[0].text, list(cur)))  # noqa: B023 (title: read at flush)
                    n += 1
                cur.clear()

            for b in blocks:
                size = sum(len(x.text) for x in cur if x.kind != "h")
                if (b.kind == "h" and size >= min_chars) or size + len(b.text) > max_chars:
                    flush()
                if b.kind == "h":
                    title = b.text
                    if cur and all(x.kind == "h" for x in cur):
                        cur.clear()
                if b.kind != "h" or not cur:
                    cur.append(b)
            flush()
    return sections


def load_code(venv: Path) -> list[tuple[str, str]]:
    site = next(venv.glob("lib/python3*/site-packages"))
    files: list[tuple[str, str]] = []
    for pkg in CODE_PACKAGES:
        root = site / pkg
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(site).as_posix()
            if "test" in rel or "/vendor" in rel or "_vendor" in rel:
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if not 1500 <= len(text) <= 30000 or "DO NOT EDIT" in text or "autogenerated" in text.lower():
                continue
            lines = text.splitlines()
            if max(map(len, lines)) > 200 or sum(1 for ln in lines if ln.strip()) < 30:
                continue
            files.append((rel, text))
    return files


def half_of(key: str) -> str:
    return "tune" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "report"


# ---------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------
def as_text(sec: Section, with_code: bool = False) -> str:
    parts = [sec.title]
    for b in sec.blocks:
        if b.kind == "p":
            parts.append(b.text)
        elif b.kind == "li":
            parts.append(f"- {b.text}")
        elif b.kind == "pre" and with_code:
            parts.append(f"```\n{b.text}\n```")
    return "\n\n".join(parts)


def wrapped(text: str, width: int = 72) -> str:
    out = []
    for para in text.split("\n\n"):
        if para.startswith("```") or CJK_RE.search(para):
            # Chinese text files wrap by characters (no spaces to break at)
            if CJK_RE.search(para) and not para.startswith("```"):
                out.append("\n".join(para[i:i + 38] for i in range(0, len(para), 38)))
            else:
                out.append(para)
        else:
            out.append(textwrap.fill(para, width))
    return "\n\n".join(out)


TEMPLATES = {
    "en": [
        ("Debian Tips", ["Home", "Guides", "Packages", "Forums", "About"], "© 2024 Debian Tips. All rights reserved.",
         "We use cookies to improve your experience. By continuing you accept our cookie policy."),
        ("LinuxAdmin Hub", ["Start", "Tutorials", "News", "Downloads", "Contact us", "Login"],
         "Copyright 2023 LinuxAdmin Hub | Privacy Policy | Terms of Use", "Subscribe to our newsletter!"),
        ("OpenDocs Mirror", ["Docs", "Search", "Changelog", "Sponsors"], "Mirrored for offline reading. Content licensed GPL-2+.",
         "Was this page helpful? Yes / No"),
    ],
    "zh": [
        ("Debian 技术之家", ["首页", "教程", "软件包", "论坛", "关于我们"], "© 2024 Debian 技术之家 版权所有 京ICP备12345678号",
         "本站使用Cookie以改善您的体验，继续浏览即表示同意。"),
        ("运维笔记网", ["首页", "新闻", "下载", "联系我们", "登录", "注册"], "Copyright 2023 运维笔记网 | 隐私政策 | 使用条款",
         "关注我们的微信公众号，获取更多精彩内容！"),
        ("开源文档镜像", ["文档", "搜索", "更新日志", "赞助"], "本页为离线镜像，内容以 GPL-2+ 授权。", "本文对您有帮助吗？是 / 否"),
    ],
}


def as_html(sec: Section, template: int, rng: random.Random, with_code: bool = False) -> str:
    site, nav, footer, banner = TEMPLATES[sec.lang][template % 3]
    e = html.escape
    body = [f"<h1>{e(sec.title)}</h1>"]
    items: list[str] = []
    for b in sec.blocks:
        if b.kind == "li":
            items.append(f"<li>{e(b.text)}</li>")
            continue
        if items:
            body.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if b.kind == "p":
            body.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "pre" and with_code:
            body.append(f"<pre><code>{e(b.text)}</code></pre>")
    if items:
        body.append("<ul>" + "".join(items) + "</ul>")
    navhtml = "".join(f'<li><a href="/{i}">{e(x)}</a></li>' for i, x in enumerate(nav))
    related = "".join(f'<li><a href="/p/{rng.randrange(10**5)}">{e(x)}</a></li>' for x in nav[::-1])
    layouts = [
        f'<div id="cookie">{e(banner)}</div><header><div class="logo">{e(site)}</div><nav><ul>{navhtml}</ul></nav></header>'
        f'<main><article>{"".join(body)}</article></main><aside><h3>Related</h3><ul>{related}</ul></aside>'
        f"<footer><p>{e(footer)}</p></footer>",
        f'<div class="top"><span>{e(site)}</span><ul class="menu">{navhtml}</ul></div><div class="wrap">'
        f'<div class="content"><div class="post">{"".join(body)}</div><div class="share">Share: Twitter Facebook Weibo</div></div>'
        f'<div class="sidebar"><ul>{related}</ul><p>{e(banner)}</p></div></div><div class="foot">{e(footer)}</div>',
        f'<table class="layout"><tr><td class="nav"><ul>{navhtml}</ul></td><td class="main">{"".join(body)}</td></tr></table>'
        f'<div class="footer"><small>{e(footer)}</small><p>{e(banner)}</p></div>',
    ]
    return (f'<!DOCTYPE html><html lang="{"zh-CN" if sec.lang == "zh" else "en"}"><head><meta charset="utf-8">'
            f"<title>{e(sec.title)} - {e(site)}</title><script>var _gaq=[];</script></head><body>"
            f"{layouts[template % 3]}</body></html>")


# ---------------------------------------------------------------------------------------------------
# near-duplicates
# ---------------------------------------------------------------------------------------------------
def shingles(text: str, lang: str, n: int = 5) -> set[int]:
    if lang == "zh":
        units = [c for c in text.lower() if c.isalnum()]
    else:
        units = re.findall(r"\w+", text.lower())
    if len(units) < n:
        return {hash(tuple(units))}
    return {hash(tuple(units[i:i + n])) for i in range(len(units) - n + 1)}


def jaccard(a: str, b: str, lang: str) -> float:
    sa, sb = shingles(a, lang), shingles(b, lang)
    return len(sa & sb) / max(1, len(sa | sb))


def edit_words(text: str, rate: float, rng: random.Random, lang: str, vocab: list[str]) -> str:
    if lang == "zh":
        chars = list(text)
        idx = [i for i, c in enumerate(chars) if CJK_RE.match(c)]
        for i in rng.sample(idx, min(len(idx), max(1, int(len(idx) * rate)))):
            chars[i] = rng.choice(vocab)
        return "".join(chars)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * rate))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------
# mojibake
# ---------------------------------------------------------------------------------------------------
def cp1252_mis(text: str) -> str:
    """UTF-8 bytes read as cp1252 (undefined bytes read as Latin-1, as browsers do)."""
    out = []
    for byte in text.encode("utf-8"):
        try:
            out.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(byte))
    return "".join(out)


MOJIBAKE = {
    "cp1252": lambda t: cp1252_mis(t),
    "cp1252_twice": lambda t: cp1252_mis(cp1252_mis(t)),
    "latin1": lambda t: t.encode("utf-8").decode("latin-1"),
    # lossy: bytes the cp1252 decoder does not know are lost (as a strict-ish decoder with replace)
    "lossy_replace": lambda t: t.encode("utf-8").decode("cp1252", errors="replace"),
    "lossy_gbk": lambda t: t.encode("utf-8").decode("gbk", errors="replace"),
}

# ---------------------------------------------------------------------------------------------------
# junk and spam
# ---------------------------------------------------------------------------------------------------
EN_SPAM_WORDS = ["cheap", "replica", "watches", "buy", "online", "best", "price", "discount", "free", "shipping",
                 "viagra", "casino", "bonus", "win", "money", "fast", "loans", "credit", "sale", "deal", "outlet",
                 "handbags", "sneakers", "pills", "weight", "loss", "crypto", "profit"]
ZH_SPAM = ["澳门新葡京", "在线娱乐", "官方网站", "注册送彩金", "真人百家乐", "老虎机", "体育投注", "六合彩", "代开发票",
           "信用卡套现", "高额返水", "无抵押贷款", "日赚千元", "兼职刷单", "私服", "传奇", "棋牌游戏", "点击进入"]
ZH_NAV = ["首页", "新闻中心", "产品展示", "关于我们", "联系我们", "在线留言", "招聘信息", "网站地图", "下载中心", "常见问题"]
EN_NAV = ["Home", "About", "Products", "Services", "Blog", "Contact", "Careers", "Sitemap", "Login", "Register",
          "FAQ", "Support", "Privacy", "Terms"]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip "
         "ex ea commodo consequat.")


def junk(lang: str, kind: str, rng: random.Random, filler: list[str]) -> str:
    r = rng
    if lang == "en":
        if kind == "spam":
            lines = []
            for _ in range(r.randint(8, 20)):
                ws = [r.choice(EN_SPAM_WORDS) for _ in range(r.randint(6, 14))]
                lines.append(" ".join(ws).capitalize() + r.choice([".", "!", "!!!", ""]))
            return "\n".join(lines)
        if kind == "nav":
            return "\n".join(" | ".join(r.sample(EN_NAV, r.randint(3, 7))) for _ in range(r.randint(5, 15)))
        if kind == "lorem":
            return "\n\n".join([LOREM] * r.randint(2, 5) + [r.choice(filler)])
        if kind == "repeat":
            para = r.choice(filler)
            return "\n\n".join([para] * r.randint(4, 9))
        if kind == "table":
            return "\n".join("\t".join(f"{r.random() * 1000:.2f}" for _ in range(6)) for _ in range(r.randint(20, 60)))
        if kind == "cookie":
            return ("This website uses cookies to ensure you get the best experience. Accept all cookies. "
                    "Manage preferences. Privacy policy. Terms of use.\nLoading...\nPlease enable JavaScript "
                    "to view this page.\nAccept\nReject")
        if kind == "teaser":
            return "\n".join(f"{r.choice(filler)[:r.randint(40, 90)]}... Read more" for _ in range(r.randint(6, 12)))
        return " ".join("".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(r.randint(2, 12)))
                        for _ in range(r.randint(80, 200)))  # random tokens
    if kind == "spam":
        lines = []
        for _ in range(r.randint(8, 20)):
            lines.append("".join(r.choice(ZH_SPAM) for _ in range(r.randint(3, 7))) + r.choice(["！", "。", "", "！！"]))
        return "\n".join(lines)
    if kind == "nav":
        return "\n".join(" | ".join(r.sample(ZH_NAV, r.randint(3, 7))) for _ in range(r.randint(5, 15)))
    if kind == "lorem":  # placeholder text ("假文")
        return "\n".join(["这里是文章标题这里是文章标题"] * 3 + ["此处为内容占位符，请替换为实际内容。"] * r.randint(3, 8))
    if kind == "repeat":
        para = r.choice(filler)
        return "\n\n".join([para] * r.randint(4, 9))
    if kind == "table":
        return "\n".join(" ".join(f"{r.randint(0, 99999)}" for _ in range(6)) + " 元" for _ in range(r.randint(20, 60)))
    if kind == "cookie":
        return "本网站使用Cookie\n接受\n拒绝\n正在加载中……\n请开启JavaScript以浏览本页\n登录 | 注册"
    if kind == "teaser":
        return "\n".join(f"{r.choice(filler)[:r.randint(15, 40)]}……展开" for _ in range(r.randint(6, 12)))
    common = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后"
    return "".join(r.choice(common) for _ in range(r.randint(300, 800)))  # random characters


JUNK_KINDS = ("spam", "nav", "lorem", "repeat", "table", "cookie", "teaser", "random")

# ---------------------------------------------------------------------------------------------------
# PII
# ---------------------------------------------------------------------------------------------------
EMAILS = ["john.smith@example-mail.com", "li_wei+debian@mail.qq.com", "zhang.san@163.com", "ops-team@corp.example.org",
          "a.b.c@sub.domain.co.uk", "wangfang2021@gmail.com", "admin@tsinghua.edu.cn", "Support@My-Host.NET",
          "chen.xiaoming@outlook.com", "m_garcia@uni-heidelberg.de", "xiao_hong@sina.com.cn", "root@server01.example.io"]
PHONES = ["+86 138 1234 5678", "+86-139-8765-4321", "13812345678", "138-1234-5678", "138 1234 5678",
          "010-65529988", "(010) 6552 9988", "+86 10 6552 9988", "0755-86013388", "021-54038888",
          "+886 2 2345 6789", "0912-345-678", "(02) 2345-6789", "+886-912-345-678",
          "+1 415-555-0132", "(415) 555-2671", "415.555.2671", "+1 (212) 555-0199",
          "+44 20 7946 0958", "+49 30 901820", "+81 3-1234-5678", "+33 1 42 68 53 00", "400-810-8888",
          "+852 2345 6789", "+65 6123 4567", "+86 (21) 5403 8888"]
IPV4 = ["8.8.4.4", "114.114.114.114", "45.33.12.201", "202.96.134.133", "61.135.169.121", "151.101.1.69",
        "223.5.5.5", "119.29.29.29", "104.16.132.229", "180.101.49.12"]
IPV6 = ["2001:4860:4860::8888", "2400:3200::1", "2606:4700:4700::1111", "2607:f8b0:4005:805::200e",
        "2a00:1450:4001:81c::200e", "240e:e9:6002:15c:0:ff:b015:146f", "2001:da8:8000:1:202:120:2:101",
        "2620:fe::fe"]


def pii_sentences(lang: str, rng: random.Random, kinds: list[str], for_html: bool) -> tuple[list[str], list[dict]]:
    out, planted = [], []
    for kind in kinds:
        if kind == "email":
            v = rng.choice(EMAILS)
            style = rng.choice(["plain", "mailto", "brackets"])
            if style == "mailto":
                link = f"[{'写信给我们' if lang == 'zh' else 'write to us'}](mailto:{v})"
                s = (f"如需帮助，请{link}。" if lang == "zh" else f"For help, please {link} any time.")
            elif style == "brackets":
                s = (f"维护者：王工 <{v}>。" if lang == "zh" else f"Maintainer: Jane Doe <{v}>.")
            else:
                s = (f"如有问题请发邮件至 {v} 联系我们。" if lang == "zh" else f"Send questions by email to {v} and we will reply.")
        elif kind == "phone":
            v = rng.choice(PHONES)
            s = (f"客服电话：{v}，工作日九点至十八点。" if lang == "zh" else f"You can also call our office at {v} on weekdays.")
        elif kind == "ipv4":
            v = rng.choice(IPV4)
            s = rng.choice([f"镜像服务器的地址是 {v}，请在配置中使用它。", f"日志显示来自 {v}:8080 的连接被拒绝。"]) if lang == "zh" else \
                rng.choice([f"The mirror server is reachable at {v} for all users.", f"The log shows a refused connection from {v}:8080 yesterday."])
        else:
            v = rng.choice(IPV6)
            s = (f"该主机的 IPv6 地址为 {v}，已加入白名单。" if lang == "zh" else f"The host's IPv6 address is {v} and it is allowed.")
        out.append(s)
        planted.append({"kind": "ip" if kind.startswith("ip") else kind, "sub": kind, "value": v})
    return out, planted


# ---------------------------------------------------------------------------------------------------
# code junk
# ---------------------------------------------------------------------------------------------------
def code_junk(kind: str, rng: random.Random) -> str:
    if kind == "generated":
        fields = "\n".join(f"    {n}_{i} = {i}" for i, n in enumerate(rng.sample(["FOO", "BAR", "BAZ", "QUX", "NODE", "EDGE"], 4)))
        blob = ",".join(f"0x{rng.randrange(256):02x}" for _ in range(2000))
        return (f"# -*- coding: utf-8 -*-\n# Generated by the protocol buffer compiler.  DO NOT EDIT!\n# source: msg_{rng.randrange(999)}.proto\n"
                f'"""Generated protocol buffer code."""\nfrom google.protobuf import descriptor as _descriptor\n\n'
                f"DESCRIPTOR = _descriptor.FileDescriptor(serialized_pb=bytes([{blob}]))\n\nclass Enum:\n{fields}\n")
    if kind == "data":
        rows = ",\n".join("    (" + ", ".join(str(rng.randint(0, 65535)) for _ in range(12)) + ")" for _ in range(rng.randint(150, 300)))
        return f"# table\nTABLE = [\n{rows}\n]\n"
    if kind == "minified":
        parts = [f"function f{i}(a,b){{return a*{rng.randint(1, 99)}+b}}" for i in range(rng.randint(150, 300))]
        return "!function(){" + ";".join(parts) + "}();\n"
    b64 = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(rng.randint(8000, 16000)))
    return f'ICON = (\n    "{b64}"\n)\n'


CODE_JUNK_KINDS = ("generated", "data", "minified", "base64")


def functions_of(src: str) -> list[str]:
    out, lines = [], src.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"(def|class|async def) \w", lines[i]):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t", ")"))):
                j += 1
            block = "\n".join(lines[i:j]).rstrip()
            if 400 <= len(block) <= 6000 and block.count("\n") >= 10:
                out.append(block)
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------------
class Half:
    def __init__(self, root: Path, name: str, seed: int) -> None:
        self.root, self.name = root / name, name
        self.rng = random.Random(f"{seed}-{name}")
        self.truth: dict[str, dict] = {}
        self.records: dict[str, list[dict]] = {"a": [], "b": []}
        self.n = 0
        if self.root.exists():
            shutil.rmtree(self.root)
        for part in ("a", "b"):
            (self.root / part / "files").mkdir(parents=True)

    def key(self, prefix: str) -> str:
        self.n += 1
        return f"{self.name}-{prefix}-{self.n:05d}"

    def record(self, part: str, cat: str, text: str, truth: dict, extra: dict | None = None) -> str:
        k = self.key(cat)
        self.records[part].append({"id": k, "text": text, **(extra or {})})
        self.truth[k] = {"cat": cat, **truth}
        return k

    def file(self, part: str, cat: str, ext: str, data: str | bytes, truth: dict) -> str:
        k = self.key(cat) + ext
        path = self.root / part / "files" / k
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        self.truth[k] = {"cat": cat, **truth}
        return k

    def write(self) -> dict:
        for part, recs in self.records.items():
            with open(self.root / part / "records.jsonl", "w", encoding="utf-8") as f:
                for r in recs:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (self.root / "truth.json").write_text(json.dumps(self.truth, ensure_ascii=False, indent=0) + "\n")
        counts: dict[str, int] = {}
        for t in self.truth.values():
            counts[t["cat"]] = counts.get(t["cat"], 0) + 1
        return dict(sorted(counts.items()))


def build_half(h: Half, secs: dict[str, list[Section]], code: list[tuple[str, str]]) -> dict:
    rng = h.rng
    pools = {lang: [s for s in secs[lang] if not s.code] for lang in ("en", "zh")}
    with_code = {lang: [s for s in secs[lang] if s.code and sum(map(len, s.code)) >= 80] for lang in ("en", "zh")}
    for lang in pools:
        rng.shuffle(pools[lang])
        rng.shuffle(with_code[lang])
    rng.shuffle(code)
    vocab = {"en": [w for s in pools["en"][:50] for w in " ".join(s.prose).split() if w.isalpha()],
             "zh": [c for s in pools["zh"][:50] for c in "".join(s.prose) if CJK_RE.match(c)]}
    filler = {lang: [p for s in pools[lang][:40] for p in s.prose if len(p) > 60] for lang in pools}

    def take(lang: str) -> Section:
        return pools[lang].pop()

    def keep(lang: str, **kw: object) -> dict:
        return {"expect": "keep", "lang": lang, **kw}

    n_en, n_zh = len(pools["en"]), len(pools["zh"])
    plan = {  # share of each language's pool of prose sections
        "clean": 0.2, "raw": 0.08, "html": 0.08, "dup": 0.36, "moji": 0.12, "pii": 0.10, "mixed": 0.06,
    }
    counts = {lang: {k: int(v * (n_en if lang == "en" else n_zh)) for k, v in plan.items()} for lang in ("en", "zh")}
    for lang in ("en", "zh"):
        c = counts[lang]
        # clean unique JSONL records
        for _ in range(c["clean"]):
            s = take(lang)
            h.record("a", f"clean_{lang}", as_text(s), keep(lang, form="jsonl"))
        # raw text files (half hard-wrapped)
        for i in range(c["raw"]):
            s = take(lang)
            text = as_text(s)
            h.file("a", f"raw_{lang}", ".txt", wrapped(text) if i % 2 else text, keep(lang, form="text", wrapped=bool(i % 2)))
        # unique HTML pages
        for i in range(c["html"]):
            s = take(lang)
            h.file("a", f"html_{lang}", ".html", as_html(s, i, rng), keep(lang, form="html", text=as_text(s)))
        # duplicates: originals in a/, variants in b/
        forms = ["exact", "near", "near", "near", "near", "html_vs_text", "retemplated"] + (["s2twp", "s2twp"] if lang == "zh" else [])
        for i in range(c["dup"] // 2):
            s = take(lang)
            form = forms[i % len(forms)]
            text = as_text(s)
            if form == "html_vs_text":
                if i % 2:
                    orig = h.file("a", f"orig_{lang}", ".html", as_html(s, i, rng), keep(lang, form="html", text=text))
                    vt = (".txt", wrapped(text) if i % 4 == 1 else text)
                else:
                    orig = h.file("a", f"orig_{lang}", ".txt", text, keep(lang, form="text"))
                    vt = (".html", as_html(s, i, rng))
                h.file("b", f"dup_{lang}", vt[0], vt[1], {"expect": "dup", "lang": lang, "orig": orig, "form": form,
                                                         "text": text})
                continue
            if form == "retemplated":
                orig = h.file("a", f"orig_{lang}", ".html", as_html(s, i, rng), keep(lang, form="html", text=text))
                h.file("b", f"dup_{lang}", ".html", as_html(s, i + 1 + i % 2, rng),
                       {"expect": "dup", "lang": lang, "orig": orig, "form": form, "text": text})
                continue
            orig = h.record("a", f"orig_{lang}", text, keep(lang, form="jsonl"))
            if form == "exact":
                vtext = text
            elif form == "s2twp":
                import opencc

                vtext = opencc.OpenCC("s2twp").convert(text)
            else:
                vtext, form = near_dup(text, lang, rng, vocab[lang], pools[lang])
            j = jaccard(text, vtext, lang)
            h.record("b", f"dup_{lang}", vtext, {"expect": "dup", "lang": lang, "orig": orig, "form": form,
                                                  "jaccard": round(j, 3), "text": text})
        # mojibake
        kinds = ["cp1252", "cp1252", "cp1252", "cp1252_twice", "latin1", "lossy_replace", "gbk_file"] + (["lossy_gbk"] if lang == "zh" else [])
        done = 0
        while done < c["moji"] and pools[lang]:
            s = take(lang)
            text = as_text(s)
            if lang == "en" and sum(1 for ch in text if ord(ch) > 127) < 2:
                text = text.replace(" - ", " — ").replace("'", "’") + "\n\nSee also the naïve café résumé example."
            kind = kinds[done % len(kinds)]
            done += 1
            if kind == "gbk_file":
                if lang == "en":
                    kind = "cp1252_file"
                    data = text.encode("cp1252", errors="ignore")
                    text = data.decode("cp1252")
                else:
                    data = text.encode("gb18030")
                h.file("a", f"moji_{lang}", ".txt", data, keep(lang, form="text", moji=kind, lossy=False, text=text))
                continue
            bad = MOJIBAKE[kind](text)
            lossy = kind.startswith("lossy")
            if kind == "lossy_replace" and "\ufffd" not in bad:
                lossy = False
            if kind in ("cp1252", "cp1252_twice") and done % 3 == 0:
                h.file("a", f"moji_{lang}", ".txt", bad, {"expect": "drop" if lossy else "keep", "lang": lang,
                                                         "moji": kind, "lossy": lossy, "text": text, "form": "text"})
            else:
                h.record("a", f"moji_{lang}", bad, {"expect": "drop" if lossy else "keep", "lang": lang, "moji": kind,
                                                    "lossy": lossy, "text": text, "form": "jsonl"})
        # PII
        for _ in range(c["pii"]):
            s = take(lang)
            kinds = ["email", "phone", rng.choice(["ipv4", "ipv6"])]
            sents, planted = pii_sentences(lang, rng, kinds, for_html=False)
            paras = [s.title] + [("- " if b.kind == "li" else "") + b.text for b in s.blocks if b.kind in ("p", "li")]
            for sent in sents:
                pos = rng.randrange(1, len(paras) + 1)
                if lang == "zh":
                    paras.insert(pos, sent)
                else:
                    paras.insert(pos, sent)
            h.record("a", f"pii_{lang}", "\n\n".join(paras), keep(lang, form="jsonl", pii=planted))
        # mixed EN/ZH: this section interleaved with one in the other language
        other = "zh" if lang == "en" else "en"
        for _ in range(c["mixed"]):
            if not pools[other]:
                break
            s, t = take(lang), take(other)
            a, b = [s.title] + s.prose, [t.title] + t.prose
            mixed: list[str] = []
            while a or b:
                if a:
                    mixed.append(a.pop(0))
                if b and rng.random() < 0.7:
                    mixed.append(b.pop(0))
            text = "\n\n".join(mixed)
            h.record("a", "mixed", text, keep("mixed", form="jsonl", main=lang, text=text))
        # junk and spam
        for i in range(int(0.08 * (n_en if lang == "en" else n_zh)) + 10):
            kind = JUNK_KINDS[i % len(JUNK_KINDS)]
            text = junk(lang, kind, rng, filler[lang])
            if i % 4 == 3:
                h.file("a", f"junk_{lang}", ".html", f"<html><body><div>{'<br>'.join(html.escape(x) for x in text.splitlines())}</div></body></html>",
                       {"expect": "drop", "lang": lang, "junk": kind, "form": "html"})
            else:
                h.record("a", f"junk_{lang}", text, {"expect": "drop", "lang": lang, "junk": kind, "form": "jsonl"})
    # docs with embedded code (Markdown records and files)
    for lang in ("en", "zh"):
        for i, s in enumerate(with_code[lang][: max(10, len(with_code[lang]) // 2)]):
            text = as_text(s, with_code=True)
            if i % 3 == 2:
                h.file("a", f"docs_code_{lang}", ".md", text, keep("code_docs", form="markdown", main=lang))
            else:
                h.record("a", f"docs_code_{lang}", text, keep("code_docs", form="jsonl", main=lang))
    # code
    n = min(len(code), 200)
    for rel, src in code[: n * 3 // 10]:
        h.file("a", "code_file", ".py", src, keep("code", form="py_file", path=rel))
    funcs: list[str] = []
    for i, (rel, src) in enumerate(code[n * 3 // 10: n * 8 // 10]):
        if i % 3 == 0:
            funcs += functions_of(src)[:1]
            continue
        h.record("a", "code_jsonl", src, keep("code", form="jsonl_record", path=rel), extra={"source": "github"})
    for f in funcs:
        h.record("a", "code_jsonl", f, keep("code", form="jsonl_function"))
    for i in range(max(20, n // 8)):
        kind = CODE_JUNK_KINDS[i % len(CODE_JUNK_KINDS)]
        text = code_junk(kind, rng)
        if i % 2:
            h.file("a", "code_junk", ".js" if kind == "minified" else ".py", text, {"expect": "drop", "lang": "code", "junk": kind})
        else:
            h.record("a", "code_junk", text, {"expect": "drop", "lang": "code", "junk": kind})
    return h.write()


def near_dup(text: str, lang: str, rng: random.Random, vocab: list[str], pool: list[Section]) -> tuple[str, str]:
    """A near-duplicate of ``text`` by one of: word edits, a cut copy, an extended copy, moved paragraphs."""
    how = rng.choice(["edit", "edit", "cut", "extend", "move"])
    paras = text.split("\n\n")
    if how == "edit" or len(paras) < 3:
        return edit_words(text, rng.choice([0.01, 0.02, 0.03, 0.05, 0.08]), rng, lang, vocab), "near_edit"
    if how == "cut":
        drop = set(rng.sample(range(1, len(paras)), max(1, len(paras) // rng.choice([2, 3, 4]))))
        return "\n\n".join(p for i, p in enumerate(paras) if i not in drop), "near_cut"
    if how == "extend":
        extra = [p for s in pool[-3:] for p in s.prose][: rng.randint(1, 3)]
        return "\n\n".join(paras + extra), "near_extend"
    i, j = rng.sample(range(len(paras)), 2)
    paras[i], paras[j] = paras[j], paras[i]
    return "\n\n".join(paras), "near_move"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / ".neo" / "heldout")
    ap.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    missing = [p for lang in SOURCES for _, p in SOURCES[lang] if not list(Path("/").glob(p.lstrip("/")))]
    if missing:
        print(f"missing sources {missing}: apt-get install -y debian-handbook debian-faq debian-faq-zh-cn "
              "maint-guide maint-guide-zh-cn", file=sys.stderr)
        return 2
    secs = {"en": load_sections("en", 500, 2500), "zh": load_sections("zh", 200, 900)}
    code = load_code(args.venv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"seed": args.seed, "sections": {k: len(v) for k, v in secs.items()}, "code_files": len(code), "halves": {}}
    for name in ("tune", "report"):
        part = {lang: [s for s in v if half_of(s.id) == name] for lang, v in secs.items()}
        pcode = [c for c in code if half_of(c[0]) == name]
        h = Half(args.out, name, args.seed)
        info["halves"][name] = build_half(h, part, pcode)
    (args.out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
