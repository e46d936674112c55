"""``build_steps(config)``: the cleaning steps a job config asks for, in pipeline order.

Kept apart from ``pipeline`` so that ``config`` can validate a job by building its steps without importing
the pipeline (which imports ``config``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from neo_dataproc.steps.base import Step
from neo_dataproc.steps.code import CodeQualityFilter
from neo_dataproc.steps.en_quality import C4Filter, GopherQualityFilter, GopherRepetitionFilter
from neo_dataproc.steps.extract import ExtractStep
from neo_dataproc.steps.langid import LangIdFilter
from neo_dataproc.steps.matrix import MatrixEnglishFilter, SensitiveWordsFilter, ZhSimilarLineDedup
from neo_dataproc.steps.pii import PiiStep, UrlBlocklistFilter
from neo_dataproc.steps.zh_quality import OpenCCStep, ZhQualityFilter

if TYPE_CHECKING:
    from neo_dataproc.config import JobConfig


def build_steps(config: JobConfig) -> list[Step]:
    """The cleaning steps the config asks for, in pipeline order (a bad keyword names its section)."""
    plan: list[tuple[str, Callable[[], Step]]] = []
    if config.extract is not None:
        plan.append(("extract", lambda: ExtractStep(**config.extract)))  # type: ignore[arg-type]
    if config.langid is not None:
        plan.append(("langid", lambda: LangIdFilter(**config.langid.model_dump())))  # type: ignore[union-attr]
    ub = config.url_blocklist
    if ub is not None and (ub.domains or ub.files or ub.words):
        files = [str(config.resolve(f)) for f in ub.files]
        plan.append(("url_blocklist", lambda: UrlBlocklistFilter(ub.domains, files, ub.words)))  # type: ignore[union-attr]
    zh, en = config.zh_quality, config.en_quality
    if zh is not None and zh.opencc:
        plan.append(("zh_quality.opencc", lambda: OpenCCStep(zh.opencc)))  # type: ignore[arg-type]
    sw = config.sensitive_words
    if sw is not None:
        def make_sensitive() -> Step:
            kw = sw.model_dump()  # type: ignore[union-attr]
            kw["files"] = {lang: [str(config.resolve(f)) for f in fs] for lang, fs in kw["files"].items()}
            return SensitiveWordsFilter(**kw)
        plan.append(("sensitive_words", make_sensitive))
    if en is not None:
        for key, cls in (("gopher_repetition", GopherRepetitionFilter), ("gopher_quality", GopherQualityFilter),
                         ("c4", C4Filter), ("matrix", MatrixEnglishFilter)):
            kwargs = getattr(en, key)
            if kwargs is not None:
                plan.append((f"en_quality.{key}", lambda cls=cls, kwargs=kwargs: cls(**kwargs)))
    if zh is not None and zh.matrix is not None:
        plan.append(("zh_quality.matrix", lambda: ZhQualityFilter(**zh.matrix)))  # type: ignore[arg-type]
    if zh is not None and zh.similar_lines is not None:
        plan.append(("zh_quality.similar_lines", lambda: ZhSimilarLineDedup(**zh.similar_lines)))  # type: ignore[arg-type]
    if config.code_quality is not None:
        plan.append(("code_quality", lambda: CodeQualityFilter(**config.code_quality)))  # type: ignore[arg-type]
    if config.pii is not None:
        plan.append(("pii", lambda: PiiStep(**config.pii.model_dump())))  # type: ignore[union-attr]
    steps = []
    for section, make in plan:
        try:
            steps.append(make())
        except (TypeError, ValueError, OSError) as exc:
            raise ValueError(f"{section}: {exc}") from exc
    return steps
