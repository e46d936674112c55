"""``build_app(settings)``: one FastAPI process serving both apps (what ``neo ui`` runs).

    /          → redirect to /chat/
    /chat/     the chat app
    /label/    the preference-labeling app (behind Gradio's login when NEO_UI_USERS is set)
    /health    {"status": "ok", "redis": true, "api_url": ...}

Every part is built here once from the settings and handed down: one Redis client, one serving
client, the stores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr
import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse

from neo_ui.chat import ChatService
from neo_ui.chat_app import build_chat_app
from neo_ui.chatlog import ChatLog
from neo_ui.client import ServingClient
from neo_ui.jobs import TrainerQueue
from neo_ui.label_app import LabelCallbacks, build_label_app
from neo_ui.labeling import Labeler
from neo_ui.prompts import PromptQueue
from neo_ui.settings import UISettings
from neo_ui.store import PreferenceStore

log = logging.getLogger(__name__)

CONCURRENCY = 16  # events of one kind processed at once (Gradio's default of 1 would serialize all users)
# Local fonts only (no Google Fonts request), with the usual Chinese system fonts of each OS before the
# generic fallback, so 中文 renders with a real CJK face wherever one is installed.
FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "PingFang SC", "Hiragino Sans GB",
         "Microsoft YaHei", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Consolas", "Noto Sans Mono CJK SC", "WenQuanYi Micro Hei Mono",
              "monospace"]


@dataclass
class Parts:
    """The objects both apps share, built once per process."""

    redis: redis.Redis
    client: ServingClient
    store: PreferenceStore
    prompts: PromptQueue
    chatlog: ChatLog
    queue: TrainerQueue

    @classmethod
    def build(cls, settings: UISettings) -> Parts:
        r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        return cls(redis=r, client=ServingClient(settings), store=PreferenceStore(r, settings.redis_prefix),
                   prompts=PromptQueue(r, settings.redis_prefix),
                   chatlog=ChatLog(r, settings.redis_prefix, settings.chat_log_max, settings.chat_log),
                   queue=TrainerQueue(settings, r))


def build_app(settings: UISettings, parts: Parts | None = None) -> FastAPI:
    """The FastAPI app with the chat app at /chat and the labeling app at /label."""
    parts = parts or Parts.build(settings)
    warning = parts.store.persistence_warning()
    if warning:
        log.warning(warning)
    chat = build_chat_app(settings, ChatService(parts.client, parts.chatlog)).queue(
        default_concurrency_limit=CONCURRENCY)
    labeler = Labeler(settings, parts.store, parts.prompts, parts.client)
    callbacks = LabelCallbacks(settings, labeler, parts.store, parts.prompts, parts.chatlog, parts.queue, parts.client)
    label = build_label_app(settings, callbacks).queue(default_concurrency_limit=CONCURRENCY)

    app = FastAPI(title="Neo UI", description="Chat and preference labeling for Neo models.")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/chat/")

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            redis_ok = bool(parts.redis.ping())
        except redis.RedisError:
            redis_ok = False
        return JSONResponse({"status": "ok" if redis_ok else "degraded", "redis": redis_ok,
                             "api_url": settings.api_url}, status_code=200 if redis_ok else 503)

    settings.prefs_dir.mkdir(parents=True, exist_ok=True)
    theme = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
    gr.mount_gradio_app(app, chat, path="/chat", footer_links=["api"], theme=theme)
    gr.mount_gradio_app(app, label, path="/label", footer_links=["api"], theme=theme, auth=settings.accounts or None,
                        auth_message="Neo preference labeling: sign in with your annotator account.",
                        allowed_paths=[str(settings.prefs_dir.resolve())])
    log.info("UI ready: chat at /chat, labeling at /label (serving: %s)", settings.api_url)
    return app
