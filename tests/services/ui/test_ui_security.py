"""Logins (neo_ui.auth): with accounts both apps ask for one login, failed logins are locked out for a while,
admins must be accounts, the chat app's file route never hands out the labeling app's exports, and secrets
can come from files instead of the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from gradio_client import Client
from pydantic import ValidationError
from typer.testing import CliRunner

from neo.net import free_port, wait_http
from neo_ui import auth
from neo_ui.auth import CLIENT_FACTOR, Accounts, FailureWindow
from neo_ui.cli import app
from neo_ui.settings import UISettings
from neo_ui.store import PreferenceStore

from .conftest import REDIS_URL, LiveUI, ThreadServer, make_settings, stop
from .records import record

DOWN = "http://127.0.0.1:9"  # no serving: these tests are about the doors, not the answers
KNOBS = ("You are Neo.", 1.0, 1.0, 24)


def login(http: httpx.Client, base: str, name: str, password: str) -> httpx.Response:
    return http.post(f"{base}/login", data={"username": name, "password": password})


def fake_upstream(seen: list[str | None]) -> FastAPI:
    """An OpenAI-compatible stand-in that records the Authorization header of every request."""
    upstream = FastAPI()

    @upstream.get("/v1/models")
    def models(request: Request) -> dict:
        seen.append(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "test"}]}

    @upstream.post("/v1/chat/completions")
    def chat(request: Request) -> StreamingResponse:
        seen.append(request.headers.get("authorization"))
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "echo",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        return StreamingResponse(iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]),
                                 media_type="text/event-stream")

    return upstream


# --- /chat behind the same login as /label -----------------------------------------------------------------
def test_chat_asks_for_the_login_and_one_login_serves_both_apps(tmp_path, redis_prefix, rds):
    seen: list[str | None] = []
    with ThreadServer(fake_upstream(seen)) as upstream:
        settings = make_settings(tmp_path, redis_prefix, upstream.url, ui_users=["alice:s3cret"])
        with LiveUI(settings) as ui, httpx.Client() as http:
            page = http.get(f"{ui.url}/chat/")
            assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
            assert http.get(f"{ui.url}/chat/config").status_code == 401
            assert http.get(f"{ui.url}/chat/gradio_api/info").status_code == 401
            call = http.post(f"{ui.url}/chat/gradio_api/call/send", json={"data": ["hi", [], "echo", *KNOBS]})
            assert call.status_code == 401  # a chat call without login is refused
            with pytest.raises(ValueError, match="credentials were not provided"):
                Client(f"{ui.url}/chat/", verbose=False)
            assert seen == [] and rds.llen(f"{redis_prefix}chat:log") == 0  # nothing reached serving

            assert login(http, f"{ui.url}/chat", "alice", "s3cret").status_code == 200
            assert http.get(f"{ui.url}/chat/config").status_code == 200
            assert http.get(f"{ui.url}/label/config").status_code == 200  # the same session: no second login
            assert http.get(f"{ui.url}/label/logout", follow_redirects=False).status_code == 302
            assert http.get(f"{ui.url}/chat/config").status_code == 401  # logged out of both

            # the account name goes with the logged turn
            chat = Client(f"{ui.url}/chat/", auth=("alice", "s3cret"), verbose=False)
            history, _ = chat.predict("hello", "echo", *KNOBS, api_name="/send")
            assert history[-1]["role"] == "assistant" and len(seen) == 1
    [turn] = [json.loads(raw) for raw in rds.lrange(f"{redis_prefix}chat:log", 0, -1)]
    assert turn["user"] == "alice" and turn["answer"] == "hi"


# --- admins are accounts ------------------------------------------------------------------------------------
def test_an_admin_must_be_an_account(tmp_path):
    with pytest.raises(ValidationError, match="ui_admins \\['root'\\] must be accounts.*no accounts are configured"):
        UISettings(home=tmp_path, ui_admins=["root"])
    with pytest.raises(ValidationError, match="ui_admins \\['bob'\\] must be accounts.*accounts: alice"):
        UISettings(home=tmp_path, ui_users=["alice:pw"], ui_admins=["bob"])
    assert UISettings(home=tmp_path, ui_users=["alice:pw"], ui_admins=["alice"]).ui_admins == ["alice"]
    with pytest.raises(ValidationError, match="names account 'alice' twice"):
        UISettings(home=tmp_path, ui_users=["alice:pw", "alice:other"])


@pytest.fixture
def no_server(monkeypatch) -> list[UISettings]:
    """``neo ui`` up to the point where it would serve: the settings it would build the app from."""
    import uvicorn

    import neo_ui.server

    built: list[UISettings] = []
    monkeypatch.setattr(neo_ui.server, "build_app", lambda settings: built.append(settings) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    return built


def test_ui_refuses_to_start_with_an_admin_without_an_account(tmp_path, no_server):
    env = {"NEO_HOME": str(tmp_path), "NEO_UI_USERS": None, "NEO_UI_ADMINS": None}
    result = CliRunner().invoke(app, ["--admin", "alice", "--port", "1"], env=env)
    assert result.exit_code == 2 and "must be accounts" in result.output and "--user NAME:PASSWORD" in result.output
    result = CliRunner().invoke(app, ["--user", "bob:pw", "--admin", "alice", "--port", "1"], env=env)
    assert result.exit_code == 2 and "ui_admins ['alice'] must be accounts" in result.output
    assert no_server == []  # never got as far as serving


# --- failed logins are rate-limited ---------------------------------------------------------------------------
def test_failure_window_locks_a_key_until_its_failures_age_out():
    now = [0.0]
    window = FailureWindow(max_failures=3, window_s=60, clock=lambda: now[0])
    for t in (0, 10, 20):
        now[0] = t
        assert window.retry_after("alice") == 0
        window.fail("alice")
    assert window.retry_after("alice") == pytest.approx(40)  # the first failure leaves the window at 60
    assert window.retry_after("bob") == 0  # per key
    now[0] = 60.5
    assert window.retry_after("alice") == 0  # two failures left in the window: one more try
    window.fail("alice")
    assert window.retry_after("alice") == pytest.approx(9.5)  # locked until the failure at 10 ages out
    window.clear("alice")
    assert window.retry_after("alice") == 0


def test_accounts_compare_in_constant_time_and_lock_a_name(monkeypatch):
    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    now = [0.0]
    accounts = Accounts([("alice", "s3cret")], max_failures=2, window_s=30, clock=lambda: now[0])
    assert accounts("alice", "s3cret") is True
    assert accounts("nobody", "s3cret") is False  # an unknown name is compared too (same time)
    assert len(compared) == 2 and all(len(a) == len(b) == 32 for a, b in compared)  # digests: length hidden
    assert accounts("alice", "wrong") is False and accounts("alice", "wrong") is False
    with pytest.raises(auth.HTTPException) as refused:
        accounts("alice", "s3cret")  # locked: the right password is refused too
    assert refused.value.status_code == 429 and refused.value.headers == {"Retry-After": "30"}
    now[0] = 31
    assert accounts("alice", "s3cret") is True


def test_repeated_wrong_passwords_lock_the_login_then_the_window_passes(tmp_path, redis_prefix):
    window_s = 1.5
    settings = make_settings(tmp_path, redis_prefix, DOWN, ui_users=["alice:s3cret", "bob:pw"],
                             ui_login_max_failures=3, ui_login_window_s=window_s)
    with LiveUI(settings) as ui, httpx.Client() as http:
        assert login(http, f"{ui.url}/label", "alice", "s3cret").status_code == 200
        start = time.monotonic()
        for _ in range(3):
            assert login(http, f"{ui.url}/label", "alice", "guess").status_code == 400
        locked = login(http, f"{ui.url}/chat", "alice", "s3cret")  # right password, other app: still locked
        assert locked.status_code == 429 and "Too many failed logins for this account" in locked.json()["detail"]
        assert 1 <= int(locked.headers["retry-after"]) <= 2
        assert login(http, f"{ui.url}/label", "bob", "pw").status_code == 200  # other names are not locked
        time.sleep(max(0.0, start + window_s + 0.1 - time.monotonic()))
        assert login(http, f"{ui.url}/label", "alice", "s3cret").status_code == 200

        # one client address spraying names is locked too (CLIENT_FACTOR times the per-name limit)
        start = time.monotonic()
        for i in range(3 * CLIENT_FACTOR):
            assert login(http, f"{ui.url}/chat", f"user{i}", "guess").status_code == 400
        locked = login(http, f"{ui.url}/label", "bob", "pw")
        assert locked.status_code == 429 and "from your address" in locked.json()["detail"]
        time.sleep(max(0.0, start + window_s + 0.1 - time.monotonic()))
        assert login(http, f"{ui.url}/label", "bob", "pw").status_code == 200


# --- the chat app's file route ----------------------------------------------------------------------------------
def export_via_label(ui_url: str, auth_pair: tuple[str, str] | None) -> dict:
    """Run the Export tab's export (one label in the store) and return the FileData Gradio hands out."""
    label = Client(f"{ui_url}/label/", auth=auth_pair, verbose=False, download_files=False)
    file_data, summary = label.predict(True, True, "conversational", False, api_name="/export")
    assert "wrote" in summary
    return file_data


def seed_one_label(rds, prefix: str) -> None:
    PreferenceStore(rds, prefix).save_label(record("t1", "a"), 2)


def test_exports_are_not_served_by_the_chat_app(tmp_path, redis_prefix, rds):
    seed_one_label(rds, redis_prefix)
    settings = make_settings(tmp_path, redis_prefix, DOWN, ui_users=["alice:s3cret"])
    with LiveUI(settings) as ui, httpx.Client() as http:
        cached = export_via_label(ui.url, ("alice", "s3cret"))["path"]  # the copy in Gradio's upload folder
        [original] = (settings.prefs_dir / "exports").glob("prefs-*.jsonl")
        for path in (cached, str(original)):
            assert http.get(f"{ui.url}/chat/gradio_api/file={path}").status_code == 401  # no login: no file
            assert http.get(f"{ui.url}/label/gradio_api/file={path}").status_code == 401
        assert login(http, f"{ui.url}/chat", "alice", "s3cret").status_code == 200
        served = http.get(f"{ui.url}/label/gradio_api/file={cached}")
        assert served.status_code == 200 and served.text == original.read_text(encoding="utf-8")
        for path in (cached, str(original)):  # signed in, the chat app still serves no labeling files
            assert http.get(f"{ui.url}/chat/gradio_api/file={path}").status_code == 403


def test_open_demo_chat_file_route_refuses_exports(tmp_path, redis_prefix, rds):
    """Without accounts both apps are open; still only /label/ hands out its own files."""
    seed_one_label(rds, redis_prefix)
    settings = make_settings(tmp_path, redis_prefix, DOWN)
    with LiveUI(settings) as ui:
        cached = export_via_label(ui.url, None)["path"]
        assert httpx.get(f"{ui.url}/label/gradio_api/file={cached}").status_code == 200
        assert httpx.get(f"{ui.url}/chat/gradio_api/file={cached}").status_code == 403


# --- secrets from files, not the command line ------------------------------------------------------------------
def test_help_names_the_secret_files():
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "240"}).output
    assert "--users-file" in text and "--api-key-file" in text
    assert "`ps`" in text and "NEO_UI_USERS" in text and "NEO_API_KEY" in text


def test_secret_files_are_read(tmp_path, no_server):
    built = no_server
    users, key = tmp_path / "users.txt", tmp_path / "key.txt"
    users.write_text("# annotators\nalice:pw a\n\nbob:pw-b\n", encoding="utf-8")
    key.write_text("sk-from-file\n", encoding="utf-8")
    users.chmod(0o600)
    key.chmod(0o600)
    env = {"NEO_HOME": str(tmp_path), "NEO_UI_USERS": None, "NEO_API_KEY": None}
    result = CliRunner().invoke(app, ["--users-file", str(users), "--user", "carol:pw-c", "--admin", "bob",
                                      "--api-key-file", str(key)], env=env)
    assert result.exit_code == 0, result.output
    assert built[-1].ui_users == ["carol:pw-c", "alice:pw a", "bob:pw-b"] and built[-1].api_key == "sk-from-file"
    assert built[-1].ui_admins == ["bob"]

    both = CliRunner().invoke(app, ["--api-key", "k", "--api-key-file", str(key)], env=env)
    assert both.exit_code == 2 and "not both" in both.output
    missing = CliRunner().invoke(app, ["--users-file", str(tmp_path / "nope.txt")], env=env)
    assert missing.exit_code == 2 and "cannot read secrets" in missing.output
    bad = tmp_path / "bad.txt"
    bad.write_text("alice-without-password\n", encoding="utf-8")
    assert "NAME:PASSWORD" in CliRunner().invoke(app, ["--users-file", str(bad)], env=env).output


def test_neo_ui_with_secret_files_keeps_them_out_of_ps(tmp_path, redis_prefix):
    """A real ``neo ui`` process: logins from --users-file work, serving sees the key from --api-key-file,
    and neither secret is in the process's command line."""
    users, key = tmp_path / "users.txt", tmp_path / "key.txt"
    users.write_text("alice:file-pass-1\n", encoding="utf-8")
    key.write_text("sk-file-key-2\n", encoding="utf-8")
    seen: list[str | None] = []
    with ThreadServer(fake_upstream(seen)) as upstream:
        port = free_port()
        env = {**os.environ, "NEO_HOME": str(tmp_path / "home"), "NEO_REDIS_URL": REDIS_URL,
               "NEO_REDIS_PREFIX": redis_prefix, "NEO_API_URL": upstream.url}
        env.pop("NEO_UI_USERS", None)
        env.pop("NEO_API_KEY", None)
        proc = subprocess.Popen([sys.executable, "-m", "neo_ui.cli", "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "warning", "--users-file", str(users), "--api-key-file", str(key)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", proc)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
            assert "file-pass-1" not in cmdline and "sk-file-key-2" not in cmdline
            with pytest.raises(ValueError, match="credentials were not provided"):
                Client(f"{url}/chat/", verbose=False)
            chat = Client(f"{url}/chat/", auth=("alice", "file-pass-1"), verbose=False)
            update, status = chat.predict(None, api_name="/models")
            assert "1 model(s) served" in status
        finally:
            stop(proc)
    assert seen and set(seen) == {"Bearer sk-file-key-2"}
