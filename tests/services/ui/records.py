"""Labels built by hand, for the store, stats and export tests (no serving needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from neo.schemas import PreferenceAnswer, PreferenceRecord, PromptMessage

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def record(label_id: str, choice: str, *, annotator: str = "alice", pair: str = "p1", versions=("m:v1", "m:v2"),
           swap: bool = False, minutes: int = 0, edited: str | None = None,
           prompt: str = "写一首诗 about the sea") -> PreferenceRecord:
    """A label of pair ``pair`` whose answer 0 came from versions[0] and answer 1 from versions[1];
    ``swap`` shows answer 1 as A."""
    answers = [PreferenceAnswer(id=f"{pair}:{i}", text=f"answer {i} of {pair}", model=v.split(":")[0],
                                model_version=v, finish_reason="stop") for i, v in enumerate(versions)]
    a, b = (answers[1], answers[0]) if swap else (answers[0], answers[1])
    return PreferenceRecord(
        id=label_id, prompt_id=f"prompt-{pair}", pair_id=pair,
        prompt=[PromptMessage(role="system", content="You are Neo."), PromptMessage(role="user", content=prompt)],
        annotator=annotator, created=(T0 + timedelta(minutes=minutes)).isoformat(), answer_a=a, answer_b=b,
        sampling={"temperature": 0.8}, choice=choice, edited=edited, time_spent_s=3.0 + minutes)
