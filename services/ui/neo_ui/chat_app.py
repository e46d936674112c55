"""The chat app (Gradio Blocks): thin callbacks over ``neo_ui.chat.ChatService``.

Named API endpoints (for ``gradio_client``): ``/models``, ``/send``, ``/retry``, ``/undo``, ``/clear``,
``/to_labeling``, ``/export_json``, ``/export_markdown``.
The conversation lives in the session's ``gr.State``; the chatbot only ever shows escaped text. Behind a
login (``NEO_UI_USERS``) the account name goes with every logged turn and rating.

The model picker shows each served version's stage and parent (serving's ``/v1/models`` extras). "Send to
labeling" queues the conversation as a labeling prompt. The exports are made in the browser from a text the
server sends (a Blob download): the chat app serves no files (see neo_ui.server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import gradio as gr
import redis

from neo_ui.chat import ChatService, Turn, display, export_json, export_markdown, undo
from neo_ui.client import Sampling, ServingUnavailable
from neo_ui.settings import UISettings

log = logging.getLogger(__name__)

MAX_TOKENS_SLIDER = 4096  # upper end of the slider; serving still caps at its context length
EXPORTS = {"json": ("application/json", export_json), "md": ("text/markdown", export_markdown)}
# Saves the export the server put in the hidden payload box ({"name", "type", "text"}) as a file.
DOWNLOAD_JS = """(payload) => {
  if (!payload) return;
  const {name, type, text} = JSON.parse(payload);
  const url = URL.createObjectURL(new Blob([text], {type: type + ";charset=utf-8"}));
  const a = Object.assign(document.createElement("a"), {href: url, download: name});
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}"""


def user(request: gr.Request | None) -> str | None:
    """The signed-in account's name (None when the app has no logins)."""
    return getattr(request, "username", None) if request is not None else None


def build_chat_app(settings: UISettings, service: ChatService) -> gr.Blocks:
    """The chat page: side panel (model, system prompt, sampling), chatbot, send/stop/retry/undo/clear."""

    def load_models(current: str | None) -> tuple[Any, str]:
        try:
            models = service.models()
        except ServingUnavailable as exc:
            return gr.update(), f"⚠️ {exc}"
        names = [m.id for m in models]
        value = current if current in names else (names[0] if names else None)
        return (gr.update(choices=[(m.label, m.id) for m in models], value=value),
                f"{len(names)} model(s) served at {settings.api_url}")

    def sampling(temperature: float, top_p: float, max_tokens: float) -> Sampling:
        return Sampling(temperature=float(temperature), top_p=float(top_p), max_tokens=int(max_tokens),
                        seed=settings.seed)

    def send(text: str, conv: list[Turn], model: str | None, system: str, temperature: float, top_p: float,
             max_tokens: float, request: gr.Request) -> Iterator[tuple[Any, list[Turn], str]]:
        for c in service.send(conv, text, model, system, sampling(temperature, top_p, max_tokens), user(request)):
            yield display(c), c, ""

    def retry(conv: list[Turn], model: str | None, system: str, temperature: float, top_p: float,
              max_tokens: float, request: gr.Request) -> Iterator[tuple[Any, list[Turn]]]:
        for c in service.retry(conv, model, system, sampling(temperature, top_p, max_tokens), user(request)):
            yield display(c), c

    def undo_last(conv: list[Turn]) -> tuple[Any, list[Turn], str]:
        rest, text = undo(conv)
        return display(rest), rest, text

    def clear() -> tuple[Any, list[Turn], str]:
        return [], [], ""

    def to_labeling(conv: list[Turn], system: str) -> str:
        try:
            return service.to_labeling(conv, system)
        except redis.RedisError as exc:
            log.error("exchange not sent to labeling: Redis error: %s", exc)
            return "⚠️ Not sent: the labeling queue's store is unreachable. Try again later."

    def export(kind: str) -> Any:
        mime, make = EXPORTS[kind]

        def run(conv: list[Turn], system: str) -> str:
            if not conv:
                return ""
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            return json.dumps({"name": f"neo-chat-{stamp}.{kind}", "type": mime, "text": make(conv, system)},
                              ensure_ascii=False)

        return run

    def rate(conv: list[Turn], system: str, data: gr.LikeData, request: gr.Request) -> None:
        index = data.index if isinstance(data.index, int) else data.index[0]
        try:
            service.feedback(conv, index, data.liked in (True, "Like"), system,
                             request.session_hash if request else None, user(request))
        except redis.RedisError as exc:
            log.error("feedback not saved: Redis error: %s", exc)
            gr.Warning("Your rating could not be saved (the store is unreachable). Try again later.")

    with gr.Blocks(title="Neo chat") as app:
        conv = gr.State([])
        with gr.Sidebar(label="Model and sampling", position="left"):
            model = gr.Dropdown(label="Model", choices=[], value=None, allow_custom_value=True, elem_id="model-picker")
            reload_models = gr.Button("↻ Reload models", size="sm")
            models_status = gr.Markdown(elem_id="models-status")
            system = gr.Textbox(settings.system_prompt, label="System prompt", lines=3)
            temperature = gr.Slider(0, 2, settings.temperature, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, settings.top_p, step=0.05, label="Top-p")
            max_tokens = gr.Slider(1, MAX_TOKENS_SLIDER, settings.max_tokens, step=1, label="Max tokens")
        gr.Markdown("## Neo chat · 中文 / English")
        chatbot = gr.Chatbot(label="Neo", height=520, elem_id="chatbot", sanitize_html=True, allow_tags=False,
                             render_markdown=True, buttons=["copy"], feedback_options=("Like", "Dislike"))
        with gr.Row():
            text = gr.Textbox(placeholder="Message Neo… (Enter sends)", show_label=False, scale=8,
                              elem_id="chat-input", autofocus=True)
            send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
        with gr.Row():
            retry_btn = gr.Button("↻ Retry", size="sm", elem_id="retry")
            undo_btn = gr.Button("↶ Undo", size="sm", elem_id="undo")
            clear_btn = gr.Button("Clear", size="sm", elem_id="clear")
        with gr.Row():
            label_btn = gr.Button("➜ Send this exchange to labeling", size="sm", elem_id="to-labeling")
            json_btn = gr.Button("⬇ JSON", size="sm", elem_id="export-json")
            md_btn = gr.Button("⬇ Markdown", size="sm", elem_id="export-md")
        chat_status = gr.Markdown(elem_id="chat-status")
        payload = gr.Textbox(visible=False, elem_id="export-payload")

        knobs = [model, system, temperature, top_p, max_tokens]
        app.load(load_models, [model], [model, models_status], api_name="models")
        reload_models.click(load_models, [model], [model, models_status], api_name=False)
        sent = send_btn.click(send, [text, conv, *knobs], [chatbot, conv, text], api_name="send")
        entered = text.submit(send, [text, conv, *knobs], [chatbot, conv, text], api_name=False)
        retried = retry_btn.click(retry, [conv, *knobs], [chatbot, conv], api_name="retry")
        stop_btn.click(None, None, None, cancels=[sent, entered, retried], api_name=False)
        undo_btn.click(undo_last, [conv], [chatbot, conv, text], api_name="undo")
        clear_btn.click(clear, None, [chatbot, conv, text], api_name="clear")
        chatbot.like(rate, [conv, system], None, api_name=False)
        label_btn.click(to_labeling, [conv, system], [chat_status], api_name="to_labeling")
        for button, kind, name in ((json_btn, "json", "export_json"), (md_btn, "md", "export_markdown")):
            button.click(export(kind), [conv, system], [payload], api_name=name).then(
                None, [payload], None, js=DOWNLOAD_JS)
    return app
