"""Run tasks against a backend; a report as JSON and as a table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neo.evals.backends import Backend
from neo.evals.sandbox import SandboxLimits, run_python
from neo.evals.tasks import (
    GSM8K_STOPS,
    HUMANEVAL_STOPS,
    LETTERS,
    Item,
    extract_gsm8k_answer,
    load_items,
)

log = logging.getLogger(__name__)

#: Tasks that execute the code the model generates: off unless the caller opts in.
CODE_TASKS = ("humaneval",)


class CodeExecutionNotAllowed(RuntimeError):
    """A code task was asked for without ``allow_code_execution=True``."""

    def __init__(self, kind: str):
        super().__init__(f"{kind} runs the code the model generates, which is off unless you opt in: pass "
                         "--allow-code-execution to `neo eval` (allow_code_execution=True to run_task); it then "
                         "runs in a bubblewrap sandbox (docs/evaluation.md)")


@dataclass
class TaskResult:
    task: str
    file: str
    metric: str  # accuracy | pass@1
    score: float
    n: int
    seconds: float
    samples: list[dict] = field(default_factory=list)


def _multiple_choice(backend: Backend, item: Item) -> dict:
    sep = "" if item.prompt.endswith("：") else " "  # C-Eval answers "A", MMLU " A"
    scores = {letter: backend.loglikelihood(item.prompt, sep + letter) for letter in LETTERS}
    pred = max(scores, key=scores.get)
    return {"id": item.id, "pred": pred, "gold": item.answer, "correct": pred == item.answer, "scores": scores}


def _gsm8k(backend: Backend, item: Item, max_tokens: int) -> dict:
    completion = backend.generate(item.prompt, max_tokens, GSM8K_STOPS)
    pred = extract_gsm8k_answer(completion)
    return {"id": item.id, "pred": pred, "gold": item.answer, "correct": pred == item.answer,
            "completion": completion}


def _humaneval(backend: Backend, item: Item, max_tokens: int, limits: SandboxLimits) -> dict:
    completion = backend.generate(item.prompt, max_tokens, HUMANEVAL_STOPS)
    result = run_python(item.prompt + completion + "\n\n" + item.answer, limits)
    return {"id": item.id, "correct": result.passed, "status": result.status, "completion": completion,
            "output": result.output[-500:]}


def run_task(
    backend: Backend, kind: str, path: Path, limit: int | None = None, max_tokens: int = 256,
    limits: SandboxLimits | None = None, progress: Callable[[int, int], None] | None = None,
    allow_code_execution: bool = False,
) -> TaskResult:
    """Score ``kind`` on ``path``. Code tasks (HumanEval) raise :class:`CodeExecutionNotAllowed` unless
    ``allow_code_execution``; their programs run in :mod:`neo.evals.sandbox`."""
    if kind in CODE_TASKS and not allow_code_execution:
        raise CodeExecutionNotAllowed(kind)
    items = load_items(kind, path)[:limit]
    t0, samples = time.perf_counter(), []
    for i, item in enumerate(items):
        if kind in ("mmlu", "ceval"):
            samples.append(_multiple_choice(backend, item))
        elif kind == "gsm8k":
            samples.append(_gsm8k(backend, item, max_tokens))
        else:
            samples.append(_humaneval(backend, item, max_tokens, limits or SandboxLimits()))
        if progress:
            progress(i + 1, len(items))
    score = sum(s["correct"] for s in samples) / len(samples)
    metric = "pass@1" if kind == "humaneval" else "accuracy"
    log.info("%s %s: %s %.3f over %d items", backend.name, kind, metric, score, len(samples))
    return TaskResult(kind, str(path), metric, score, len(samples), time.perf_counter() - t0, samples)


def report(results_by_model: dict[str, list[TaskResult]]) -> dict:
    return {model: [asdict(r) for r in results] for model, results in results_by_model.items()}
