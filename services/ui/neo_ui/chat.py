"""The chat app's logic, without Gradio: a conversation as a list of turns, and the streaming answer.

A turn is a dict ``{"role", "content", "ok", "model"}``; ``ok`` is False for the readable error put in
place of an answer (shown, never sent back to the model). The raw text is kept here; only ``display``
escapes it for the browser. Sampling settings arrive from the side panel with every call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from neo_ui.chatlog import ChatLog, ChatTurnLog, Feedback, feedback_id
from neo_ui.client import Sampling, ServingClient, ServingUnavailable
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


def undo(conv: list[Turn]) -> tuple[list[Turn], str]:
    """Drop the last user turn and its answer; returns the rest and that user text (back in the box)."""
    out = without_last_answer(conv)
    if not out:
        return [], ""
    return out[:-1], out[-1]["content"]


class ChatService:
    """Streams answers from serving into a conversation and records turns and feedback."""

    def __init__(self, client: ServingClient, chatlog: ChatLog):
        self.client, self.chatlog = client, chatlog

    def models(self) -> list[str]:
        """Served model names (raises ServingUnavailable with a readable message)."""
        return [m.id for m in self.client.models()]

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
        self.chatlog.log_turn(ChatTurnLog(model=model, messages=messages, answer=turn["content"],  # type: ignore[arg-type]
                                          sampling=sampling.request_args(), finish=finish, user=user))  # type: ignore[arg-type]

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
