"""Deduplication: exact (hash of the normalized text) and fuzzy (MinHash LSH), across the whole corpus.

Pass 1 computes, per document, ``exact_hash`` and a MinHash ``signature`` (word n-grams for
English and code, character n-grams for Chinese) and writes them per shard. The dedup phase then
bands all signatures (``band_edges``: documents sharing a band's hash are candidates, linked to the
smallest row of their bucket when their estimated Jaccard reaches ``min_similarity``), joins exact
duplicates, and ``connected_components`` labels every row with the smallest row of its cluster.
Rows are in input order, so the kept representative is the first occurrence: deterministic
whatever the number of workers.

Defaults: 20 bands × 10 rows (200 permutations); the LSH S-curve ``1 − (1 − s^10)^20`` crosses
0.5 at s ≈ 0.74 and catches pairs at Jaccard 0.8 with p ≈ 0.90 and 0.85 with p ≈ 0.99, then a
signature check at ``min_similarity`` = 0.7 removes the curve's low tail (datatrove's default is
14 × 8 on 5-grams with no check; MAP-Neo's Matrix used 9 × 13 on 13-character shingles).

A second, verified pass (ours, issue #19; ``DedupSection.verify_*``) re-bands the same signatures
permissively (``loose_pairs``: 50 × 4, agreement ≥ 0.4) and links a candidate only when the exact
Jaccard of the two shingle sets reaches 0.47 with sizes within 0.9 (``verify_pairs``): copies with
~8 % of their words edited sit at 5-gram Jaccard ≈ 0.5, under the first pass's curve and check.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import xxhash

_NON_WORD_RE = re.compile(r"[^\w\s]+")
_WS_RE = re.compile(r"\s+")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 4096  # shingles per block when min-hashing (bounds memory on huge documents)


@lru_cache(maxsize=1)
def _tw2sp() -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC("tw2sp").convert


def shingle_text(text: str, lang: str) -> str:
    """What near-duplicate detection compares: NFKC (full-width letters, digits and punctuation to
    ASCII), Chinese Traditional → Simplified with Taiwan phrases (OpenCC ``tw2sp``: 軟體 → 软件,
    記憶體 → 内存), then ``normalize``. A Traditional copy with Taiwan vocabulary (``s2twp``) collides
    with its Simplified original; the output text is not changed."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        if lang == "zh":
            text = _tw2sp()(text)
    return normalize(text)


def normalize(text: str) -> str:
    """Lowercase, punctuation → space, whitespace runs → one space: what dedup compares."""
    return _WS_RE.sub(" ", _NON_WORD_RE.sub(" ", text.lower())).strip()


def exact_hash(text: str) -> int:
    """64-bit hash of the normalized text (exact duplicates up to case, punctuation, whitespace)."""
    return xxhash.xxh3_64_intdigest(normalize(text).encode())


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _rolling(units: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit id per n consecutive units (the whole sequence if shorter than n)."""
    if len(units) == 0:
        return units
    if len(units) <= n:
        h = units[:1].copy()
        for k in range(1, len(units)):
            h = h * _MIX + units[k : k + 1]
        return h
    h = units[: len(units) - n + 1].copy()
    for k in range(1, n):
        h = h * _MIX + units[k : len(units) - n + 1 + k]
    return h


class MinHasher:
    """MinHash signatures with ``num_bands × rows_per_band`` 32-bit multiply-shift hash functions."""

    def __init__(self, num_bands: int = 20, rows_per_band: int = 10, en_ngram: int = 5, zh_ngram: int = 5,
                 seed: int = 1, en_shingle: str = "word") -> None:
        if num_bands < 1 or rows_per_band < 1 or en_ngram < 1 or zh_ngram < 1:
            raise ValueError("num_bands, rows_per_band, en_ngram and zh_ngram must be ≥ 1")
        self.num_bands, self.rows_per_band = num_bands, rows_per_band
        self.num_perm = num_bands * rows_per_band
        self.en_ngram, self.zh_ngram = en_ngram, zh_ngram
        if en_shingle not in ("word", "char"):
            raise ValueError(f"en_shingle must be 'word' or 'char', got {en_shingle!r}")
        self.en_shingle = en_shingle  # char: Matrix's minhashLsh.py ngrams(text, width) over the normalized text
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self._b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        self._buf = np.empty((_CHUNK, self.num_perm), dtype=np.uint64)

    def shingles(self, text: str, lang: str) -> np.ndarray:
        """Distinct 64-bit shingle ids: character n-grams for Chinese, word n-grams otherwise (character
        n-grams of the normalized text, spaces included, with ``en_shingle="char"``)."""
        norm = shingle_text(text, lang)
        if lang != "zh" and self.en_shingle == "char":
            units = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            grams = _rolling(units, self.en_ngram)
        elif lang == "zh":
            chars = norm.replace(" ", "")
            units = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            grams = _rolling(units, self.zh_ngram)
        else:
            words = norm.encode().split()
            units = np.fromiter(map(xxhash.xxh64_intdigest, words), dtype=np.uint64, count=len(words))
            grams = _rolling(units, self.en_ngram)
        return np.unique(_splitmix(grams))

    def signature(self, text: str, lang: str) -> np.ndarray:
        """``(num_perm,)`` uint32; an empty document gets all-ones (matches only other empties)."""
        return self.signature_of(self.shingles(text, lang))

    def signature_of(self, sh: np.ndarray) -> np.ndarray:
        """The signature of a shingle set from ``shingles``."""
        if len(sh) == 0:
            return np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        low = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, len(sh), _CHUNK):
            part = sh[i : i + _CHUNK]
            buf = self._buf[: len(part)]  # (chunk, num_perm): a·x + b mod 2^64, in place (no temporaries)
            np.multiply(part[:, None], self._a[None, :], out=buf)
            np.add(buf, self._b[None, :], out=buf)
            np.minimum(low, buf.min(axis=0), out=low)
        # the top 32 bits are the multiply-shift hash; min commutes with the shift
        return (low >> np.uint64(32)).astype(np.uint32)


def band_hashes(sigs: np.ndarray, band: int, rows_per_band: int) -> np.ndarray:
    """``(n,)`` uint64 hash of each signature's rows for one band."""
    cols = sigs[:, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
    h = np.full(len(sigs), np.uint64(band + 1), dtype=np.uint64)
    for k in range(cols.shape[1]):
        h = _splitmix(h * _MIX + cols[:, k])
    return h


def band_edges(sigs: np.ndarray, band: int, rows_per_band: int, min_similarity: float = 0.0) -> np.ndarray:
    """``(m, 2)`` int64 edges ``(row, bucket's smallest row)`` for rows sharing band ``band``'s hash
    with an earlier row, kept when their signatures agree on ≥ ``min_similarity`` of positions."""
    if len(sigs) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bh = band_hashes(sigs, band, rows_per_band)
    order = np.lexsort((np.arange(len(bh)), bh))  # by hash, then by row
    sorted_h = bh[order]
    starts = np.r_[True, sorted_h[1:] != sorted_h[:-1]]
    head = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))]
    members = ~starts
    rows, reps = order[members], head[members]
    if min_similarity > 0 and len(rows):
        sim = (sigs[rows] == sigs[reps]).mean(axis=1)
        keep = sim >= min_similarity
        rows, reps = rows[keep], reps[keep]
    return np.stack([rows, reps], axis=1).astype(np.int64)


def loose_pairs(sigs: np.ndarray, rows_per_band: int, min_similarity: float) -> np.ndarray:
    """``(m, 2)`` int64 candidate pairs ``(row, earlier row)`` from a second, permissive banding of the
    same signatures (``num_perm // rows_per_band`` bands of ``rows_per_band`` rows), kept when their
    signatures agree on ≥ ``min_similarity`` of positions. Candidates only: ``verify_pairs`` decides."""
    bands = sigs.shape[1] // rows_per_band if len(sigs) else 0
    parts = [band_edges(sigs, b, rows_per_band, min_similarity) for b in range(bands)]
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(parts), axis=0)


def verify_pairs(pairs: np.ndarray, shingles: dict[int, np.ndarray], min_jaccard: float,
                 min_size_ratio: float) -> np.ndarray:
    """The ``pairs`` whose exact shingle sets (``MinHasher.shingles``, keyed by row) have Jaccard ≥
    ``min_jaccard`` and sizes within ``min_size_ratio`` of each other."""
    keep = []
    for a, b in pairs.tolist():
        sa, sb = shingles[a], shingles[b]
        small, large = sorted((len(sa), len(sb)))
        if large == 0 or small < min_size_ratio * large:
            continue
        inter = len(np.intersect1d(sa, sb, assume_unique=True))
        if inter >= min_jaccard * (len(sa) + len(sb) - inter):
            keep.append((a, b))
    return np.array(keep, dtype=np.int64).reshape(-1, 2)


def exact_edges(hashes: np.ndarray) -> np.ndarray:
    """``(m, 2)`` edges from each row to the first row with the same exact hash."""
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    firsts = first[inverse]
    rows = np.nonzero(firsts < np.arange(len(hashes)))[0]
    return np.stack([rows, firsts[rows]], axis=1).astype(np.int64)


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Label each of ``n`` rows with the smallest row of its connected component."""
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    u, v = edges[:, 0], edges[:, 1]
    while True:
        m = np.minimum(labels[u], labels[v])
        before = labels.copy()
        np.minimum.at(labels, u, m)
        np.minimum.at(labels, v, m)
        while True:  # pointer jumping: follow labels to their roots
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels
