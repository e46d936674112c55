"""Benchmark input: the sample corpus (data/sample/*.jsonl.gz) cut into ~1.5 KB chunks, repeated with
heavy perturbation into ~100k *distinct* documents, plus planted near-duplicates with known originals.

* Base chunks: paragraphs of the sample documents; exact and near-duplicate chunks (true Jaccard
  of 5-gram shingles ≥ 0.5, computed exactly with an inverted index, not with MinHash) are
  removed, so the only duplicates in the output are the planted ones.
* Distinct documents: copy 0 is the chunk as is; copy r > 0 replaces a quarter of its Latin words
  and of its Han characters with random ones, which leaves two copies with a Jaccard near 0.
* Planted duplicates (``dup_share`` of the output), each placed after its original: an exact copy,
  a copy with 3 words edited, one with its first line moved to the end, one with different
  whitespace. ``truth.json`` maps each planted id to its original.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

HAN_RE = re.compile(r"[\u4e00-\u9fff]")
WORD_RE = re.compile(r"[A-Za-z]{3,}")


def _shingles(text: str, lang: str, n: int = 5) -> set[int]:
    if lang == "zh":
        units = [c for c in re.sub(r"\W+", "", text.lower())]
    else:
        units = re.sub(r"\W+", " ", text.lower()).split()
    return {hash(tuple(units[i : i + n])) for i in range(max(1, len(units) - n + 1))}


def base_chunks(sample_dir: Path, target_chars: dict[str, int]) -> list[tuple[str, str]]:
    """(lang, text) chunks of the sample corpus, without exact or near duplicates among them."""
    chunks: list[tuple[str, str]] = []
    for path in sorted(sample_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                lang, buf = rec["lang"], []
                for ln in rec["text"].split("\n"):
                    buf.append(ln)
                    if sum(map(len, buf)) >= target_chars[lang]:
                        chunks.append((lang, "\n".join(buf).strip()))
                        buf = []
                if sum(map(len, buf)) >= target_chars[lang] // 3:
                    chunks.append((lang, "\n".join(buf).strip()))
    kept: list[tuple[str, str]] = []
    postings: dict[int, list[int]] = defaultdict(list)
    sizes: list[int] = []
    for lang, text in chunks:
        sh = _shingles(text, lang)
        overlap: Counter[int] = Counter()
        for s in sh:
            for j in postings.get(s, ())[:200]:
                overlap[j] += 1
        if any(c / (len(sh) + sizes[j] - c) >= 0.5 for j, c in overlap.items()):
            continue
        idx = len(kept)
        kept.append((lang, text))
        sizes.append(len(sh))
        for s in sh:
            postings[s].append(idx)
    return kept


def perturb_heavy(text: str, lang: str, vocab: dict[str, list[str]], rng: random.Random, rate: float = 0.25) -> str:
    """Replace ``rate`` of the Han characters *and* of the Latin words (Chinese pages hold code and
    English too: perturbing one script only would leave near-duplicates)."""
    words = vocab["code" if lang == "code" else "en"]
    text = HAN_RE.sub(lambda m: rng.choice(vocab["zh"]) if rng.random() < rate else m.group(0), text)
    return WORD_RE.sub(lambda m: rng.choice(words) if rng.random() < rate else m.group(0), text)


def perturb_light(text: str, lang: str, kind: str, vocab: dict[str, list[str]], rng: random.Random) -> str:
    if kind == "exact":
        return text
    if kind == "whitespace":
        return "  " + text.replace(" ", "  ").replace("\n", "\n\n") + "\n"
    if kind == "reorder":
        lines = text.split("\n")
        return "\n".join(lines[1:] + lines[:1]) if len(lines) > 2 else text + "\n"
    # "edit": three words (or Han characters) replaced
    pattern = HAN_RE if lang == "zh" else WORD_RE
    spans = [m.span() for m in pattern.finditer(text)]
    for start, end in sorted(rng.sample(spans, min(3, len(spans))), reverse=True):
        text = text[:start] + rng.choice(vocab[lang if lang != "zh" else "zh"]) + text[end:]
    return text


def build(sample_dir: Path, out_dir: Path, n_docs: int = 100_000, dup_share: float = 0.1, files: int = 16,
          seed: int = 20240529) -> dict[str, int]:
    rng = random.Random(seed)
    chunks = base_chunks(sample_dir, {"en": 1500, "code": 1500, "zh": 700})
    vocab: dict[str, list[str]] = {"en": [], "code": [], "zh": []}
    for lang, text in chunks:
        vocab[lang] += HAN_RE.findall(text) if lang == "zh" else WORD_RE.findall(text)
    vocab = {k: sorted(set(v)) for k, v in vocab.items()}
    n_planted = int(n_docs * dup_share)
    n_distinct = n_docs - n_planted
    distinct = []
    r = 0
    while len(distinct) < n_distinct:
        for i, (lang, text) in enumerate(chunks):
            if len(distinct) == n_distinct:
                break
            body = text if r == 0 else perturb_heavy(text, lang, vocab, random.Random(seed * 1000 + r * 10**6 + i))
            distinct.append({"id": f"d{len(distinct)}", "text": body, "lang_hint": lang})
        r += 1
    rng.shuffle(distinct)
    kinds = ["exact", "edit", "reorder", "whitespace"]
    originals = rng.sample(range(n_distinct), n_planted)
    inserts: dict[int, list[dict]] = defaultdict(list)
    truth: dict[str, str] = {}
    for k, oi in enumerate(originals):
        orig = distinct[oi]
        kind = kinds[k % len(kinds)]
        copy = {"id": f"p{k}-{kind}", "text": perturb_light(orig["text"], orig["lang_hint"], kind, vocab, rng),
                "lang_hint": orig["lang_hint"]}
        at = rng.randint(oi, n_distinct - 1)  # after the original
        inserts[at].append(copy)
        truth[copy["id"]] = orig["id"]
    docs = []
    for i, d in enumerate(distinct):
        docs.append(d)
        docs.extend(inserts[i])
    out_dir.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // files)
    for f in range(files):
        part = docs[f * per : (f + 1) * per]
        data = "".join(json.dumps({"id": d["id"], "text": d["text"], "source": d["lang_hint"]}, ensure_ascii=False)
                       + "\n" for d in part)
        (out_dir / f"part-{f:03d}.jsonl.gz").write_bytes(gzip.compress(data.encode(), compresslevel=1, mtime=0))
    (out_dir / "truth.json").write_text(json.dumps(truth))
    return {"documents": len(docs), "distinct": n_distinct, "planted": n_planted, "base_chunks": len(chunks),
            "copies": r, "bytes": sum(len(d["text"].encode()) for d in docs)}
