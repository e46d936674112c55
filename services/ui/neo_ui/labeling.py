"""The labeling app's logic, without Gradio: next pair for an annotator, and the label write.

A prompt's two answers are sampled once through serving (from one model twice, or from two models)
and kept as its pair, so every annotator of the prompt judges the same two texts and their labels can
be compared. Each annotator sees the pair in their own random order, without model names. The label
is built here from what Redis holds about the task (never from what the browser sends back besides
the choice, comment and edit), so the record says exactly what was shown, by whom, and for how long.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from neo.schemas import PreferenceAnswer, PreferenceChoice, PreferenceRecord
from neo_ui.client import Sampling, ServedModel, ServingClient, ServingUnavailable
from neo_ui.prompts import Prompt, PromptQueue
from neo_ui.settings import UISettings
from neo_ui.store import Pair, PreferenceStore, Task

log = logging.getLogger(__name__)

CHOICES: dict[str, PreferenceChoice] = {"A better": "a", "B better": "b", "Tie": "tie", "Both bad": "both_bad"}


class LabelError(ValueError):
    """A label that cannot be stored (unknown task, someone else's task, a bad choice); a readable message."""


@dataclass(frozen=True)
class TaskView:
    """What the annotator sees: the prompt and the answers as A and B, blinded."""

    task_id: str
    prompt: list[dict[str, str]]
    answer_a: str
    answer_b: str


@dataclass(frozen=True)
class LabelResult:
    record: PreferenceRecord
    created: bool  # False: this task was labeled before (a double click); the first label stands


class Labeler:
    """Hands out pairs and stores labels for the labeling app and its API."""

    def __init__(self, settings: UISettings, store: PreferenceStore, prompts: PromptQueue, client: ServingClient,
                 rng: random.Random | None = None):
        self.settings, self.store, self.prompts, self.client = settings, store, prompts, client
        self.rng = rng or random.Random()

    # --- next pair -----------------------------------------------------------------------------------------
    def next_task(self, annotator: str) -> TaskView | None:
        """The annotator's unlabeled task if one is open, else a new one; None when the queue has nothing for them.
        Raises ServingUnavailable when answers must be sampled and serving cannot."""
        annotator = check_annotator(annotator)
        task = self.store.pending(annotator)
        if task is not None:
            pair, prompt = self.store.pair(task.prompt_id), self.prompts.get(task.prompt_id)
            if pair is not None and prompt is not None:
                return self._view(task, prompt, pair)
        prompt = self.prompts.next_for(annotator, self.settings.labels_per_prompt)
        if prompt is None:
            return None
        pair = self.store.pair(prompt.id) or self.store.put_pair(self._sample_pair(prompt))
        order = (0, 1) if self.rng.random() < 0.5 else (1, 0)
        task = self.store.create_task(annotator, pair, order, self.settings.task_ttl_s)
        return self._view(task, prompt, pair)

    def _view(self, task: Task, prompt: Prompt, pair: Pair) -> TaskView:
        a, b = (pair.answers[i] for i in task.order)
        return TaskView(task_id=task.id, prompt=prompt.chat(), answer_a=a.text, answer_b=b.text)

    def _models(self) -> list[ServedModel]:
        served = {m.id: m for m in self.client.models()}
        wanted = self.settings.label_models or sorted(served)
        missing = [name for name in wanted if name not in served]
        if missing or not wanted:
            raise ServingUnavailable(f"The model server does not serve {', '.join(missing) or 'any model'} "
                                     f"(it serves: {', '.join(sorted(served)) or 'nothing'}).")
        chosen = self.rng.sample(wanted, 2) if len(wanted) >= 2 else [wanted[0]] * 2
        return [served[name] for name in chosen]

    def battle(self, annotator: str, prompt: Prompt, models: list[ServedModel]) -> TaskView:
        """An arena battle: ``prompt`` (a fresh one, not queued for labeling) answered once by each of two
        different served versions, shown blind in a random order; the vote is an ordinary label (``submit``)."""
        annotator = check_annotator(annotator)
        if len(models) != 2 or models[0].ref == models[1].ref:
            raise LabelError("An arena battle needs two different model versions.")
        self.prompts.redis.set(self.prompts.key("prompt", prompt.id), prompt.model_dump_json(),
                               ex=self.settings.task_ttl_s, nx=True)
        pair = self.store.put_pair(self._sample_pair(prompt, models))
        order = (0, 1) if self.rng.random() < 0.5 else (1, 0)
        task = self.store.create_task(annotator, pair, order, self.settings.task_ttl_s)
        return self._view(task, prompt, pair)

    def _sample_pair(self, prompt: Prompt, models: list[ServedModel] | None = None) -> Pair:
        models = models or self._models()
        pair_id = uuid.uuid4().hex[:16]
        seeds = [self.rng.randrange(2**31) for _ in models]
        answers = []
        for i, (model, seed) in enumerate(zip(models, seeds, strict=True)):
            sampling = Sampling(temperature=self.settings.label_temperature, top_p=self.settings.label_top_p,
                                max_tokens=self.settings.label_max_tokens, seed=seed)
            text, finish = self.client.complete_chat(prompt.chat(), model.id, sampling)
            answers.append(PreferenceAnswer(id=f"{pair_id}:{i}", text=text, model=model.id,
                                            model_version=model.ref, finish_reason=finish))
        sampling_info = {"temperature": self.settings.label_temperature, "top_p": self.settings.label_top_p,
                         "max_tokens": self.settings.label_max_tokens, "seeds": seeds}
        log.info("sampled pair %s for prompt %s from %s", pair_id, prompt.id, [m.ref for m in models])
        return Pair(id=pair_id, prompt_id=prompt.id, answers=answers, sampling=sampling_info)

    # --- labels --------------------------------------------------------------------------------------------
    def _own_task(self, annotator: str, task_id: str) -> Task:
        task = self.store.task(task_id) if task_id else None
        if task is None:
            raise LabelError("This pair is no longer open (it expired or was never shown): load the next one.")
        if task.annotator != annotator:
            raise LabelError(f"This pair was shown to {task.annotator}, not to {annotator}.")
        return task

    def submit(self, annotator: str, task_id: str, choice: str, comment: str = "", edit: str = "") -> LabelResult:
        """Store the label of ``task_id`` once. A repeat returns the stored label with ``created=False``."""
        annotator = check_annotator(annotator)
        value = CHOICES.get(choice, choice)
        if value not in CHOICES.values():
            raise LabelError(f"Pick one of: {', '.join(CHOICES)} (got {choice!r}).")
        existing = self.store.label(task_id) if task_id else None
        if existing is not None and existing.annotator == annotator:
            return LabelResult(existing, created=False)
        task = self._own_task(annotator, task_id)
        pair, prompt = self.store.pair(task.prompt_id), self.prompts.get(task.prompt_id)
        if pair is None or prompt is None:
            raise LabelError(f"The prompt or answers of task {task_id} are gone from Redis.")
        a, b = (pair.answers[i] for i in task.order)
        better = {"a": a, "b": b}.get(value)
        edited = edit.strip() if better is not None and edit.strip() and edit.strip() != better.text.strip() else None
        record = PreferenceRecord(
            id=task.id, prompt_id=prompt.id, pair_id=pair.id, prompt=prompt.messages, source=prompt.source,
            annotator=annotator, created=datetime.now(UTC).isoformat(), answer_a=a, answer_b=b,
            sampling=pair.sampling, choice=value, comment=comment.strip(), edited=edited,  # type: ignore[arg-type]
            time_spent_s=round(max(0.0, time.time() - task.shown_at), 3))
        created = self.store.save_label(record, self.settings.labels_per_prompt)
        if not created:  # a concurrent submit of the same task won the write
            stored = self.store.label(task.id)
            assert stored is not None, "SET NX refused, so the record exists"
            return LabelResult(stored, created=False)
        return LabelResult(record, created=True)

    def skip(self, annotator: str, task_id: str) -> None:
        """The annotator will not label this prompt (they are not given it again)."""
        annotator = check_annotator(annotator)
        task = self._own_task(annotator, task_id)
        self.prompts.mark_done(annotator, task.prompt_id)
        self.store.clear_pending(annotator, task.id)
        log.info("%s skipped prompt %s", annotator, task.prompt_id)

    def better_text(self, annotator: str, task_id: str, choice: str) -> str:
        """The raw text of the answer picked as better (to pre-fill the edit box); '' for tie/both bad."""
        value = CHOICES.get(choice, choice)
        task = self.store.task(task_id) if task_id else None
        if value not in ("a", "b") or task is None or task.annotator != annotator:
            return ""
        pair = self.store.pair(task.prompt_id)
        return pair.answers[task.order[0 if value == "a" else 1]].text if pair else ""


def check_annotator(name: str | None) -> str:
    """A usable annotator name (trimmed), or LabelError."""
    name = (name or "").strip()
    if not name:
        raise LabelError("Sign in first: type your name and press 'Sign in'.")
    if len(name) > 64 or ":" in name:
        raise LabelError("An annotator name has at most 64 characters and no ':'.")
    return name
