"""``build_app(settings)``: one FastAPI process serving both apps (what ``neo ui`` runs).

    /          → redirect to /chat/
    /chat/     the chat app
    /label/    the preference-labeling app
    /health    {"status": "ok", "redis": true, "api_url": ...}

With accounts (NEO_UI_USERS) both apps sit behind Gradio's login, with one session for both and failed
logins rate-limited (neo_ui.auth); without, both are open (a demo on loopback, as ``neo up`` runs it).
The chat app serves no files: Gradio's file route of /chat/ refuses the labeling app's exports and uploads
(they are copied into Gradio's upload folder, which every mounted app would otherwise serve).

Every part is built here once from the settings and handed down: one Redis client, one serving
client, the stores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from gradio.utils import get_upload_folder

from neo_ui.auth import Accounts, LoginThrottle, share_sessions
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
    service = ChatService(parts.client, parts.chatlog, parts.prompts, auto_queue=settings.chat_to_labeling)
    chat = build_chat_app(settings, service).queue(default_concurrency_limit=CONCURRENCY)
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
    prefs_dir = str(settings.prefs_dir.resolve())
    theme = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
    accounts = Accounts(settings.accounts, settings.ui_login_max_failures, settings.ui_login_window_s) \
        if settings.accounts else None
    gr.mount_gradio_app(app, chat, path="/chat", footer_links=["api"], theme=theme, auth=accounts,
                        auth_message="Neo: sign in with your account (one login for chat and labeling).",
                        blocked_paths=[prefs_dir, str(Path(get_upload_folder()).resolve())])
    gr.mount_gradio_app(app, label, path="/label", footer_links=["api"], theme=theme, auth=accounts,
                        auth_message="Neo preference labeling: sign in with your account (one login for chat and "
                                     "labeling).",
                        allowed_paths=[prefs_dir])
    if accounts is not None:
        share_sessions(app, "/chat", "/label")
        app.add_middleware(LoginThrottle, accounts=accounts)
    log.info("UI ready: chat at /chat, labeling at /label (%s; serving: %s)",
             f"{len(settings.accounts)} accounts" if accounts else "open: no accounts", settings.api_url)
    return app
