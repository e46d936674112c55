"""Benchmark formats: load items from the files users bring, build prompts, score answers.

Formats (the public releases' own layouts):
- ``mmlu``: CSV without header: question, A, B, C, D, answer letter (hendrycks/test ``*_test.csv``).
- ``ceval``: CSV with header ``id,question,A,B,C,D,answer[,explanation]`` (ceval-exam ``*_val.csv``).
- ``gsm8k``: JSONL ``{"question", "answer"}``, the answer ending in ``#### <number>``.
- ``humaneval``: JSONL ``{"task_id", "prompt", "canonical_solution", "test", "entry_point"}``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from neo.textio import open_text

TaskKind = Literal["mmlu", "ceval", "gsm8k", "humaneval"]
TASK_KINDS: tuple[TaskKind, ...] = ("mmlu", "ceval", "gsm8k", "humaneval")
LETTERS = ("A", "B", "C", "D")
#: Small item sets Neo wrote itself, one per format, for tests and the demo (not the real benchmarks).
BUNDLED = {kind: Path(__file__).parent / "data" / name for kind, name in {
    "mmlu": "debian_and_linux_test.csv", "ceval": "计算机基础_val.csv", "gsm8k": "gsm8k_mini.jsonl",
    "humaneval": "humaneval_mini.jsonl"}.items()}


@dataclass
class Item:
    id: str
    prompt: str
    answer: str  # a letter, a number, or (HumanEval) the test program
    extra: dict[str, Any]


def _subject(path: Path) -> str:
    name = path.name.split(".")[0]
    return re.sub(r"_(test|val|dev)$", "", name).replace("_", " ")


def _choice_rows(path: Path, header: bool) -> Iterator[tuple[int, list[str]]]:
    with open_text(path) as f:
        rows = csv.reader(f)
        if header:
            names = next(rows, None)
            if not names or [n.lower() for n in names[1:7]] != ["question", "a", "b", "c", "d", "answer"]:
                raise ValueError(f"{path}: expected a C-Eval header id,question,A,B,C,D,answer, got {names}")
        yield from enumerate(rows, 2 if header else 1)


def load_multiple_choice(path: Path, kind: Literal["mmlu", "ceval"]) -> list[Item]:
    subject, items = _subject(path), []
    for lineno, row in _choice_rows(path, header=kind == "ceval"):
        fields = row[1:7] if kind == "ceval" else row[:6]
        if len(fields) < 6 or fields[5].strip().upper() not in LETTERS:
            raise ValueError(f"{path}:{lineno}: expected question, A, B, C, D and an answer letter")
        question, *options, answer = (f.strip() for f in fields)
        body = "\n".join([question] + [f"{letter}. {opt}" for letter, opt in zip(LETTERS, options, strict=True)])
        if kind == "ceval":  # C-Eval's official zero-shot prompt (ceval-exam README)
            prompt = f"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n{body}\n答案："
        else:  # MMLU's prompt (Hendrycks et al. 2021, evaluate.py)
            prompt = f"The following are multiple choice questions (with answers) about {subject}.\n\n{body}\nAnswer:"
        item_id = row[0] if kind == "ceval" else str(lineno)
        items.append(Item(f"{subject}/{item_id}", prompt, answer.upper(), {"subject": subject}))
    return items


def _jsonl(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            missing = [k for k in fields if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing string field(s) {missing}")
            yield lineno, row


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def normalize_number(text: str) -> str | None:
    """``"1,234.50"`` → ``"1234.5"``; None when there is no number."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value.rstrip("0").rstrip(".") if "." in value else value


def load_gsm8k(path: Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path, ("question", "answer")):
        if "####" not in row["answer"]:
            raise ValueError(f"{path}:{lineno}: the answer must end with '#### <number>'")
        gold = normalize_number(row["answer"].rsplit("####", 1)[1])
        items.append(Item(str(row.get("id", lineno)), f"Question: {row['question']}\nAnswer:", gold or "", {}))
    return items


def extract_gsm8k_answer(completion: str) -> str | None:
    """The number after ``####`` if the model wrote one, else the last number (lm-eval's flexible match)."""
    if "####" in completion:
        return normalize_number(completion.rsplit("####", 1)[1])
    return normalize_number(completion)


def load_humaneval(path: Path) -> list[Item]:
    items = []
    for _, row in _jsonl(path, ("task_id", "prompt", "test", "entry_point")):
        program = f"{row['test']}\n\ncheck({row['entry_point']})\n"
        items.append(Item(row["task_id"], row["prompt"], program, {"canonical": row.get("canonical_solution")}))
    return items


#: HumanEval's stop sequences (Chen et al. 2021, §2.3): the function body ends at the next top-level block.
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
GSM8K_STOPS = ["Question:", "\n\n"]

LOADERS: dict[TaskKind, Callable[[Path], list[Item]]] = {
    "mmlu": lambda p: load_multiple_choice(p, "mmlu"),
    "ceval": lambda p: load_multiple_choice(p, "ceval"),
    "gsm8k": load_gsm8k,
    "humaneval": load_humaneval,
}


def load_items(kind: str, path: Path) -> list[Item]:
    if kind not in LOADERS:
        raise ValueError(f"unknown task {kind!r}: choose one of {', '.join(TASK_KINDS)}")
    items = LOADERS[kind](Path(path))  # type: ignore[index]
    if not items:
        raise ValueError(f"{path}: no items")
    return items
