"""The chat app's logic, without Gradio: a conversation as a list of turns, and the streaming answer.

A turn is a dict ``{"role", "content", "ok", "model"}``; ``ok`` is False for the readable error put in
place of an answer (shown, never sent back to the model). The raw text is kept here; only ``display``
escapes it for the browser. Sampling settings arrive from the side panel with every call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis

from neo_ui.chatlog import ChatLog, ChatTurnLog, Feedback, feedback_id, prompt_row
from neo_ui.client import Sampling, ServedModel, ServingClient, ServingUnavailable
from neo_ui.prompts import PromptQueue
from neo_ui.render import safe_markdown

log = logging.getLogger(__name__)

Turn = dict[str, Any]
WARNING = "⚠️ "  # shown before an error put where an answer should be


def add_user(conv: list[Turn], text: str) -> list[Turn]:
    return [*conv, {"role": "user", "content": text, "ok": True, "model": None}]


def request_messages(conv: list[Turn], system: str) -> list[dict[str, str]]:
    """What goes to ``/v1/chat/completions``: the system prompt, then every turn but the errors."""
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": t["role"], "content": t["content"]} for t in conv if t["ok"]]


def display(conv: list[Turn]) -> list[dict[str, str]]:
    """The conversation for ``gr.Chatbot``: every text escaped (see neo_ui.render), errors marked."""
    return [{"role": t["role"], "content": ("" if t["ok"] else WARNING) + safe_markdown(t["content"])} for t in conv]


def without_last_answer(conv: list[Turn]) -> list[Turn]:
    """For retry: the conversation up to and including the last user turn."""
    out = list(conv)
    while out and out[-1]["role"] == "assistant":
        out.pop()
    return out


def last_model(conv: list[Turn]) -> str | None:
    """The model of the newest answer (None before any)."""
    return next((t["model"] for t in reversed(conv) if t["role"] == "assistant" and t["model"]), None)


def export_json(conv: list[Turn], system: str) -> str:
    """The conversation as an OpenAI chat request body: ``{"model", "messages"}`` (errors left out), so it can
    be sent to ``/v1/chat/completions`` again."""
    return json.dumps({"model": last_model(conv), "messages": request_messages(conv, system)}, ensure_ascii=False,
                      indent=2) + "\n"


def export_markdown(conv: list[Turn], system: str) -> str:
    """The conversation as Markdown: a heading per turn (the answering model named), the raw text under it."""
    lines = ["# Neo chat", ""]
    if system.strip():
        lines += ["## System", "", system.strip(), ""]
    for turn in conv:
        if not turn["ok"]:
            continue
        head = "User" if turn["role"] == "user" else f"Assistant ({turn['model']})" if turn["model"] else "Assistant"
        lines += [f"## {head}", "", turn["content"], ""]
    return "\n".join(lines)


def undo(conv: list[Turn]) -> tuple[list[Turn], str]:
    """Drop the last user turn and its answer; returns the rest and that user text (back in the box)."""
    out = without_last_answer(conv)
    if not out:
        return [], ""
    return out[:-1], out[-1]["content"]


class ChatService:
    """Streams answers from serving into a conversation and records turns and feedback."""

    def __init__(self, client: ServingClient, chatlog: ChatLog, prompts: PromptQueue | None = None,
                 auto_queue: bool = False):
        """``auto_queue``: every logged conversation also joins the labeling queue (``prompts``), deduplicated
        (the ``chat_to_labeling`` setting; only while the chat log is on)."""
        self.client, self.chatlog, self.prompts = client, chatlog, prompts
        self.auto_queue = auto_queue and prompts is not None and chatlog.enabled

    def models(self) -> list[ServedModel]:
        """Served models with their version, stage and parent (raises ServingUnavailable, readable)."""
        return self.client.models()

    def to_labeling(self, conv: list[Turn], system: str) -> str:
        """Queue the conversation up to its last user turn (with the system prompt and history) as a labeling
        prompt, as the labeling app's "take prompts from chat" does: the same conversation is queued once.
        Returns a sentence for the user."""
        if self.prompts is None:
            return "⚠️ This chat app has no labeling queue."
        base = without_last_answer(conv)
        if not base:
            return "⚠️ Nothing to send yet: ask something first."
        report = self.prompts.add_rows([prompt_row(request_messages(base, system), last_model(conv))], source="chat")
        if report.errors:
            return f"⚠️ Not sent: {report.errors[0]}"
        waiting = self.prompts.open_count()
        if report.added:
            return f"Sent to labeling: the prompt is queued ({waiting} waiting for labels)."
        return f"Already in the labeling queue ({waiting} waiting for labels)."

    def send(self, conv: list[Turn], text: str, model: str | None, system: str,
             sampling: Sampling, user: str | None = None) -> Iterator[list[Turn]]:
        """Add the user's text and stream the answer; yields the growing conversation. ``user``: the
        signed-in account, recorded with the logged turn."""
        if not text.strip():
            yield conv
            return
        yield from self.answer(add_user(conv, text), model, system, sampling, user)

    def retry(self, conv: list[Turn], model: str | None, system: str, sampling: Sampling,
              user: str | None = None) -> Iterator[list[Turn]]:
        """Answer the last user turn again."""
        base = without_last_answer(conv)
        if not base:
            yield conv
            return
        yield from self.answer(base, model, system, sampling, user)

    def answer(self, conv: list[Turn], model: str | None, system: str, sampling: Sampling,
               user: str | None = None) -> Iterator[list[Turn]]:
        """Stream an answer to ``conv`` (which ends with a user turn). Closing this generator (the stop
        button) closes the HTTP stream; the partial answer stays in the conversation."""
        if not model:
            yield [*conv, _error("No model is selected: pick one in the side panel (↻ reloads the list).")]
            return
        messages = request_messages(conv, system)
        turn: Turn = {"role": "assistant", "content": "", "ok": True, "model": model}
        conv = [*conv, turn]
        yield conv
        pieces = self.client.stream_chat(messages, model, sampling)
        finished = False
        try:
            for piece in pieces:
                turn["content"] += piece
                yield conv
            finished = True
        except ServingUnavailable as exc:
            turn.update(content=str(exc), ok=False)
            yield conv
            return
        finally:
            pieces.close()
            # a finished answer is logged even when empty (a model that answers nothing is worth seeing);
            # a stop before the first piece is not an answer
            if turn["ok"] and (turn["content"] or finished):
                self._log(messages, turn, model, sampling, "done" if finished else "stopped", user)

    def _log(self, messages: list[dict[str, str]], turn: Turn, model: str, sampling: Sampling, finish: str,
             user: str | None) -> None:
        entry = ChatTurnLog(model=model, messages=messages, answer=turn["content"],  # type: ignore[arg-type]
                            sampling=sampling.request_args(), finish=finish, user=user)  # type: ignore[arg-type]
        self.chatlog.log_turn(entry)
        if self.auto_queue:
            self._queue(messages, model, entry.id)

    def _queue(self, messages: list[dict[str, str]], model: str, turn_id: str) -> None:
        """The conversation into the labeling queue; a Redis outage costs the queue entry, not the chat."""
        try:
            report = self.prompts.add_rows([prompt_row(messages, model, turn_id)], source="chat")  # type: ignore[union-attr]
        except redis.RedisError as exc:
            log.error("chat conversation not queued for labeling: Redis error: %s", exc)
            return
        if report.errors:
            log.warning("chat conversation not queued for labeling: %s", report.errors[0])

    def feedback(self, conv: list[Turn], index: int, liked: bool, system: str, session: str | None,
                 user: str | None = None) -> Feedback | None:
        """Store a thumbs up/down on the answer at ``index`` (its position in the conversation)."""
        if not 0 <= index < len(conv) or conv[index]["role"] != "assistant" or not conv[index]["ok"]:
            log.info("feedback on message %d ignored: not an answer", index)
            return None
        answer = conv[index]
        item = Feedback(id=feedback_id(session, index, answer["content"]), rating="up" if liked else "down",
                        model=answer["model"], messages=request_messages(conv[:index], system),  # type: ignore[arg-type]
                        answer=answer["content"], session=session, user=user)
        self.chatlog.save_feedback(item)
        return item


def _error(message: str) -> Turn:
    return {"role": "assistant", "content": message, "ok": False, "model": None}
