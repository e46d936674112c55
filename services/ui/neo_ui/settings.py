"""The UI's one settings object (env prefix ``NEO_``), built by ``neo ui`` / ``neo prefs`` and passed down."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from neo.settings import NeoSettings


class UISettings(NeoSettings):
    """Where serving is, how the two apps sample, who may label and who may start a DPO round."""

    # --- serving (talked to only over its OpenAI-compatible HTTP API) ------------------------------
    api_url: str = Field(default="http://127.0.0.1:8000/v1",
                         description="serving's OpenAI-compatible base URL ('/v1' is added when missing)")
    api_key: str | None = Field(default=None, description="Bearer key for serving (one of its NEO_API_KEYS)")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="seconds to reach serving before giving up")
    request_timeout_s: float = Field(default=120.0, gt=0,
                                     description="seconds without a token before an answer counts as stalled")

    # --- this process ------------------------------------------------------------------------------
    ui_host: str = Field(default="127.0.0.1", description="address `neo ui` listens on")
    ui_port: int = Field(default=7860, description="port `neo ui` listens on (Gradio's default)")

    # --- chat app defaults (the side panel starts with these; `neo chat` uses the same) -------------
    system_prompt: str = Field(default="You are Neo, a helpful assistant.", description="default system prompt")
    temperature: float = Field(default=0.7, ge=0, le=2, description="default temperature (0 = greedy)")
    top_p: float = Field(default=0.9, gt=0, le=1, description="default nucleus sampling")
    max_tokens: int = Field(default=256, ge=1, description="default tokens per answer")
    seed: int | None = Field(default=None, ge=0, description="sampling seed of chat answers: the same conversation "
                                                            "gets the same answer (demos, tests); empty = random")
    chat_log: bool = Field(default=True, description="keep chat turns in Redis (the labeling queue can use them)")
    chat_log_max: int = Field(default=10_000, ge=1, description="chat turns kept (oldest dropped)")
    chat_to_labeling: bool = Field(
        default=True, description="every logged chat conversation also joins the labeling queue (deduplicated: "
                                  "a conversation is one prompt); false = only the chat's 'send to labeling' "
                                  "button and the labeling app's 'take prompts from chat'. Needs chat_log")

    # --- labeling app -------------------------------------------------------------------------------
    ui_users: list[str] = Field(
        default_factory=list,
        description="NAME:PASSWORD accounts: /chat and /label sit behind one login; empty = open (annotators type a "
                    "name; for loopback demos)")
    ui_admins: list[str] = Field(default_factory=list,
                                 description="accounts (names in NEO_UI_USERS) allowed to start DPO rounds")
    ui_login_max_failures: int = Field(
        default=5, ge=1, description="failed logins for one account name within the window before its logins are "
                                     "refused (429); one client address may fail 4 times as often")
    ui_login_window_s: float = Field(default=60.0, gt=0,
                                     description="seconds failed logins are counted over (and refused for)")
    label_models: list[str] = Field(
        default_factory=list,
        description="served models answers are sampled from: one (two samples) or two; empty = what /v1/models lists")
    labels_per_prompt: int = Field(default=2, ge=1, description="annotators per prompt (>1 measures agreement)")
    label_temperature: float = Field(default=0.8, ge=0, le=2, description="temperature of labeling answers")
    label_top_p: float = Field(default=0.95, gt=0, le=1, description="top-p of labeling answers")
    label_max_tokens: int = Field(default=256, ge=1, description="tokens per labeling answer")
    task_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="how long a shown, unlabeled pair is kept")

    # --- DPO rounds (through the trainer's queue; see neo_ui.jobs) ----------------------------------
    trainer_queue: str = Field(default="trainer", description="the trainer's Celery queue (NEO_TRAINER_QUEUE)")
    dpo_base_model: str | None = Field(
        default=None, description="checkpoint DPO starts from; default: the labeled model's checkpoint directory")

    @field_validator("api_url")
    @classmethod
    def _v1(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url {value!r} must start with http:// or https://")
        return value if value.endswith("/v1") else f"{value}/v1"

    @field_validator("ui_users")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for item in value:
            name, sep, password = item.partition(":")
            if not sep or not name.strip() or not password:
                raise ValueError(f"ui_users entry {item.split(':')[0]!r}… is not NAME:PASSWORD")
            if name.strip() in seen:
                raise ValueError(f"ui_users names account {name.strip()!r} twice")
            seen.add(name.strip())
        return value

    @model_validator(mode="after")
    def _admins_are_accounts(self) -> UISettings:
        """Without logins anyone can type any name: an admin must be an account, or nobody may be one."""
        names = {name for name, _ in self.accounts}
        strangers = [a for a in self.ui_admins if a not in names]
        if strangers:
            raise ValueError(
                f"ui_admins {strangers} must be accounts: give each a login in ui_users (--user NAME:PASSWORD, "
                f"--users-file or NEO_UI_USERS); an admin without one is a name anybody could type "
                f"({'no accounts are configured' if not names else 'accounts: ' + ', '.join(sorted(names))})")
        return self

    @property
    def accounts(self) -> list[tuple[str, str]]:
        """``ui_users`` as (name, password) pairs (names stripped, as Gradio's login strips them)."""
        return [(name.strip(), password) for name, _, password in (item.partition(":") for item in self.ui_users)]

    @property
    def prefs_dir(self):
        """Where exports and DPO-round files go: ``$NEO_HOME/data/prefs``."""
        return self.data_dir / "prefs"
