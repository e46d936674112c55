"""A judge model as an iterative-DPO ranker: any OpenAI-compatible chat endpoint compares two answers.

``neo align round --pairs judge --judge-url URL --judge-model NAME`` ranks the policy's sampled answers with it
instead of a reward model. Each two answers of a prompt are compared twice, in both orders (A/B, then B/A), as
LLM-as-a-judge work does against position bias (MT-Bench's pairwise judge swaps the answers and counts a
verdict only when both orders agree). A comparison counts only when the two orders agree; a judge that always
answers "A" agrees with itself never, so it ranks nothing. What was skipped, and why, is counted
(``JudgeStats``): unparseable replies, failed requests, and order-dependent verdicts.

The scores a prompt's answers get (their consistent wins) go to ``align.rank_pairs``, the same best-vs-worst
pair building as the reward model's.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

log = logging.getLogger(__name__)

SYSTEM = ("You are a careful judge of answers from AI assistants. Compare two answers to the same conversation "
          "for helpfulness, correctness and language (answer in the language the user wrote). Reply with exactly "
          "[[A]] if Answer A is better or [[B]] if Answer B is better, and nothing else.")
_VERDICT = re.compile(r"\[\[\s*([AB])\s*\]\]|^\s*\W*([AB])\b", re.IGNORECASE)


def render(prompt: list[dict[str, Any]], first: str, second: str) -> list[dict[str, str]]:
    """The judge's chat: the conversation, then Answer A and Answer B."""
    convo = "\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)
    user = f"## Conversation\n{convo}\n\n## Answer A\n{first}\n\n## Answer B\n{second}\n\nWhich answer is better?"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """``A`` or ``B`` from the judge's reply (``[[A]]``, or a reply that starts with the letter), else None."""
    found = _VERDICT.search(text or "")
    if not found:
        return None
    return (found.group(1) or found.group(2)).upper()


@dataclass
class JudgeStats:
    comparisons: int = 0  # answer pairs judged (each in both orders)
    consistent: int = 0  # both orders named the same answer
    position_flips: int = 0  # the verdict followed the position, not the answer: skipped
    unparseable: int = 0  # a reply with no [[A]]/[[B]]: skipped
    failed: int = 0  # a request that failed: skipped

    @property
    def skipped(self) -> int:
        return self.comparisons - self.consistent

    def to_dict(self) -> dict[str, int]:
        return asdict(self) | {"skipped": self.skipped}


@dataclass
class Judge:
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` (greedy, a few tokens)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_tokens: int = 8
    stats: JudgeStats = field(default_factory=JudgeStats)

    def _ask(self, client: Any, messages: list[dict[str, str]]) -> str | None:
        """The verdict letter, or None (counted) when the request fails or the reply has none."""
        url = self.base_url.rstrip("/")
        url = url if url.endswith("/v1") else url + "/v1"
        try:
            resp = client.post(f"{url}/chat/completions", json={
                "model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens})
            resp.raise_for_status()
            text = resp.json()["choices"][0]["message"].get("content") or ""
        except Exception as exc:  # network, HTTP, a body without choices: this comparison is skipped
            log.warning("judge request to %s failed: %s", self.base_url, exc)
            self.stats.failed += 1
            return None
        verdict = parse_verdict(text)
        if verdict is None:
            self.stats.unparseable += 1
        return verdict

    def compare(self, client: Any, prompt: list[dict[str, Any]], a: str, b: str) -> int | None:
        """0 if ``a`` is better, 1 if ``b`` is, in both orders; None when the orders disagree or a reply is
        missing (counted in ``stats``)."""
        self.stats.comparisons += 1
        first = self._ask(client, render(prompt, a, b))
        second = self._ask(client, render(prompt, b, a))
        if first is None or second is None:
            return None
        winner_first = 0 if first == "A" else 1
        winner_second = 1 if second == "A" else 0  # swapped: A is b
        if winner_first != winner_second:
            self.stats.position_flips += 1
            return None
        self.stats.consistent += 1
        return winner_first

    def scores(self, prompts: list[list[dict[str, Any]]], answers: list[list[str]]) -> list[list[float]]:
        """Each answer's consistent wins against the prompt's other answers (every pair, both orders)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        out = []
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client:
            for prompt, texts in zip(prompts, answers, strict=True):
                wins = [0.0] * len(texts)
                for i, j in combinations(range(len(texts)), 2):
                    if texts[i] == texts[j]:
                        continue
                    winner = self.compare(client, prompt, texts[i], texts[j])
                    if winner is not None:
                        wins[(i, j)[winner]] += 1
                out.append(wins)
        return out

    def win_rate(self, prompts: list[list[dict[str, Any]]], old: list[str], new: list[str]) -> float | None:
        """Share of prompts where the judge prefers ``new`` over ``old`` in both orders (ties and skipped
        comparisons count half); None with no prompts."""
        import httpx

        if not prompts:
            return None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        won = 0.0
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client:
            for prompt, a, b in zip(prompts, old, new, strict=True):
                winner = None if a == b else self.compare(client, prompt, a, b)
                won += 0.5 if winner is None else float(winner == 1)
        return won / len(prompts)
