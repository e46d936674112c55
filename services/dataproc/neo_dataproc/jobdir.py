"""``JobDir``: where a data job's outputs live under ``NEO_HOME/data/<job>/`` (pipeline, report, executors),
and ``load_tokenizer``, the tokenizer a job's tokenize and finalize units share."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


class JobDir:
    """Paths of a job's outputs under ``NEO_HOME/data/<job>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    plan = property(lambda self: self.root / "plan.json")
    report = property(lambda self: self.root / "report.json")
    shards = property(lambda self: self.root / "shards")

    def stats(self, phase: str, unit: int) -> Path:
        return self.root / phase / f"{unit:05d}.stats.json"

    def clean_docs(self, shard: int) -> Path:
        return self.root / "clean" / f"{shard:05d}.jsonl.zst"

    def signatures(self, shard: int) -> Path:
        return self.root / "clean" / f"{shard:05d}.sig.npz"

    def lines(self, shard: int) -> Path:
        return self.root / "clean" / f"{shard:05d}.lines.npz"

    def paragraph_drops(self, unit: int) -> Path:
        return self.root / "dedup_paragraphs" / f"{unit:05d}.drop.npz"

    def edges(self, group: int) -> Path:
        return self.root / "dedup_bands" / f"{group:05d}.edges.npy"

    def removed(self) -> Path:
        return self.root / "dedup_cluster" / "removed.npz"

    def final_docs(self, shard: int) -> Path:
        return self.root / "docs" / f"{shard:05d}.jsonl.zst"

    def tokens(self, shard: int, source: str) -> Path:
        return self.root / "tokenize" / f"{shard:05d}" / f"{source}.bin"

    def is_done(self, phase: str, unit: int) -> bool:
        return self.stats(phase, unit).exists()

    def read_stats(self, phase: str, unit: int) -> dict[str, Any]:
        return json.loads(self.stats(phase, unit).read_text())


@lru_cache(maxsize=2)
def load_tokenizer(path: str) -> Any:
    from neo.tokenizer import NeoTokenizer

    return NeoTokenizer.load(path)
