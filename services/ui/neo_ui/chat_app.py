"""The chat app (Gradio Blocks): thin callbacks over ``neo_ui.chat.ChatService``.

Named API endpoints (for ``gradio_client``): ``/models``, ``/send``, ``/retry``, ``/undo``, ``/clear``.
The conversation lives in the session's ``gr.State``; the chatbot only ever shows escaped text. Behind a
login (``NEO_UI_USERS``) the account name goes with every logged turn and rating.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr
import redis

from neo_ui.chat import ChatService, Turn, display, undo
from neo_ui.client import Sampling, ServingUnavailable
from neo_ui.settings import UISettings

log = logging.getLogger(__name__)

MAX_TOKENS_SLIDER = 4096  # upper end of the slider; serving still caps at its context length


def user(request: gr.Request | None) -> str | None:
    """The signed-in account's name (None when the app has no logins)."""
    return getattr(request, "username", None) if request is not None else None


def build_chat_app(settings: UISettings, service: ChatService) -> gr.Blocks:
    """The chat page: side panel (model, system prompt, sampling), chatbot, send/stop/retry/undo/clear."""

    def load_models(current: str | None) -> tuple[Any, str]:
        try:
            names = service.models()
        except ServingUnavailable as exc:
            return gr.update(), f"⚠️ {exc}"
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value), f"{len(names)} model(s) served at {settings.api_url}"

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
    return app
