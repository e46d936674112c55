"""Both apps through ``gradio_client`` (the named API endpoints), in one UI process, against real serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from neo_ui.settings import UISettings

from .conftest import LiveUI, make_settings

KNOBS = ("You are Neo.", 1.0, 1.0, 24)  # system prompt, temperature, top-p, max tokens


def texts(history: list[dict]) -> list[tuple[str, str]]:
    """(role, text) per chatbot message (Gradio 6 sends content as a list of parts)."""
    out = []
    for m in history:
        content = m["content"]
        out.append((m["role"], content if isinstance(content, str) else "".join(p.get("text", "") for p in content)))
    return out


@pytest.fixture
def chat(live_ui) -> Client:
    return Client(f"{live_ui.url}/chat/", verbose=False)


@pytest.fixture
def label(live_ui) -> Client:
    return Client(f"{live_ui.url}/label/", verbose=False)


def test_model_picker_is_filled_from_serving(chat):
    update, status = chat.predict(None, api_name="/models")
    assert [tuple(c) for c in update["choices"]] == [("tiny · random", "tiny"), ("tiny2 · random", "tiny2")]
    assert update["value"] == "tiny"
    assert "2 model(s) served" in status


def test_send_streams_then_retry_undo_clear(chat, rds, settings):
    job = chat.submit("你好, write <b>a</b> poem", "tiny", *KNOBS, api_name="/send")
    outputs = list(job)
    assert len(outputs) > 2  # streamed: many partial updates
    history, box = outputs[-1]
    (user_role, user_text), (bot_role, bot_text) = texts(history)
    assert (user_role, bot_role, box) == ("user", "assistant", "")
    assert user_text == "你好, write &lt;b&gt;a&lt;/b&gt; poem"  # escaped for display
    assert bot_text
    assert rds.llen(f"{settings.redis_prefix}chat:log") == 1

    history = list(chat.submit("tiny2", *KNOBS, api_name="/retry"))[-1]  # one output: the chatbot
    assert len(history) == 2 and texts(history)[0][1] == user_text
    history, box = chat.predict(api_name="/undo")
    assert history == [] and box == "你好, write <b>a</b> poem"
    assert chat.predict(api_name="/clear") == ([], "")


def test_send_to_labeling_and_exports_through_the_api(chat, rds, settings):
    assert chat.predict("You are Neo.", api_name="/to_labeling").startswith("⚠️ Nothing to send yet")
    assert chat.predict("You are Neo.", api_name="/export_json") == ""  # nothing to download
    history, _ = chat.predict("写一首诗", "tiny", *KNOBS, api_name="/send")
    assert chat.predict("You are Neo.", api_name="/to_labeling").startswith("Sent to labeling")
    assert chat.predict("You are Neo.", api_name="/to_labeling").startswith("Already in the labeling queue")
    assert rds.zcard(f"{settings.redis_prefix}prefs:queue") == 1
    payload = json.loads(chat.predict("You are Neo.", api_name="/export_json"))
    assert payload["name"].endswith(".json") and payload["type"] == "application/json"
    body = json.loads(payload["text"])
    assert body["model"] == "tiny" and [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    markdown = json.loads(chat.predict("You are Neo.", api_name="/export_markdown"))
    assert markdown["type"] == "text/markdown" and "## User\n\n写一首诗" in markdown["text"]


def test_server_down_is_a_message_in_the_chat(tmp_path, redis_prefix):
    settings = make_settings(tmp_path, redis_prefix, "http://127.0.0.1:9")
    with LiveUI(settings) as ui:
        client = Client(f"{ui.url}/chat/", verbose=False)
        _, status = client.predict(None, api_name="/models")
        assert status.startswith("⚠️ Cannot reach the model server")
        history, _ = client.predict("hello", "tiny", *KNOBS, api_name="/send")
        role, text = texts(history)[-1]
        assert role == "assistant" and text.startswith("⚠️ Cannot reach the model server at http://127.0.0.1:9/v1")
        assert "Traceback" not in text


def test_label_flow(label, rds, settings):
    assert label.predict("alice", api_name="/sign_in").startswith("Signed in as **alice**")
    info = label.predict('{"prompt": "写一首诗"}\n{"prompt": "Say hi"}', api_name="/add_prompts")
    assert info.startswith("2 prompts added")
    task_id, prompt, a, b, choice, comment, edit, status = label.predict(api_name="/next_pair")
    assert task_id and prompt == "**user**\n\n写一首诗" and choice is None and "pick one" in status
    out = label.predict(task_id, "B better", "good one", "", api_name="/submit_label")
    assert out[-1].startswith(f"Saved label `{task_id[:8]}` (b)") and out[0] != task_id  # the next pair is loaded
    again = label.predict(task_id, "A better", "", "", api_name="/submit_label")  # a double click
    assert again[-1].startswith("Already saved")
    assert rds.zcard(f"{settings.redis_prefix}prefs:labels") == 1
    record = json.loads(rds.get(f"{settings.redis_prefix}prefs:label:{task_id}"))
    assert (record["annotator"], record["choice"], record["comment"]) == ("alice", "b", "good one")

    summary, annotators, models, _, _ = label.predict(api_name="/stats")
    assert "**1** labels" in summary and "| alice | 1 |" in annotators and "tiny:local" in models
    path, text = label.predict(False, False, "conversational", False, api_name="/export")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert [r["id"] for r in rows] == [task_id] and "wrote 1 pairs" in text


def test_second_annotator_and_admin_round(tmp_path, redis_prefix, serving, rds):
    """Admins are accounts: alice (no admin) is refused a round, the admin account starts one."""
    settings = make_settings(tmp_path, redis_prefix, serving, ui_users=["alice:pw-a", "admin:pw-admin"],
                             ui_admins=["admin"])
    with LiveUI(settings) as ui:
        label = Client(f"{ui.url}/label/", auth=("alice", "pw-a"), verbose=False)
        assert "(admin)" not in label.predict("admin", api_name="/sign_in")  # a typed name counts for nothing
        label.predict('{"prompt": "hello there"}', api_name="/add_prompts")
        first = label.predict(api_name="/next_pair")
        label.predict(first[0], "A better", "", "", api_name="/submit_label")
        assert "Only admins" in label.predict(api_name="/start_round")

        admin = Client(f"{ui.url}/label/", auth=("admin", "pw-admin"), verbose=False)  # another annotator
        assert "(admin)" in admin.predict("", api_name="/sign_in")
        second = admin.predict(api_name="/next_pair")
        assert second[1] == first[1] and second[0] != first[0]  # the same prompt, a task of its own
        admin.predict(second[0], "Tie", "", "", api_name="/submit_label")
        text = admin.predict(api_name="/start_round")
        assert text.startswith("Round 1 queued") and "**queued**" in text
        assert "**queued**" in admin.predict(api_name="/round_status")
        assert rds.llen(f"{settings.redis_prefix}trainer") == 1


def test_logins(tmp_path, redis_prefix, serving, rds):
    settings = make_settings(tmp_path, redis_prefix, serving, ui_users=["alice:s3cret"])
    with LiveUI(settings) as ui:
        with pytest.raises(ValueError, match="credentials were not provided"):
            Client(f"{ui.url}/label/", verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(f"{ui.url}/label/", auth=("alice", "wrong"), verbose=False)
        client = Client(f"{ui.url}/label/", auth=("alice", "s3cret"), verbose=False)
        client.predict('{"prompt": "hi"}', api_name="/add_prompts")
        task_id = client.predict(api_name="/next_pair")[0]
        client.predict(task_id, "Both bad", "", "", api_name="/submit_label")
        assert json.loads(rds.get(f"{redis_prefix}prefs:label:{task_id}"))["annotator"] == "alice"


def test_stop_cancels_the_stream(chat, rds, settings):
    """Cancel mid-answer: the partial answer is logged as stopped. A random model may end its answer (EOS)
    or a busy machine may deliver it whole before the cancel lands, so up to 3 tries must see one stop."""
    log_key = f"{settings.redis_prefix}chat:log"
    finishes = []
    for attempt in range(3):
        if attempt:  # a new conversation: the last answer in the history would overflow the 256-token context
            chat.predict(api_name="/clear")
        job = chat.submit("tell me a long story", "tiny", "", 1.0, 1.0, 200, api_name="/send")
        deadline = time.monotonic() + 30
        while len(job.outputs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.cancel() or job.done()
        deadline = time.monotonic() + 30
        while rds.llen(log_key) <= attempt and time.monotonic() < deadline:
            time.sleep(0.05)
        turn = json.loads(rds.lindex(log_key, 0))  # the newest
        finishes.append(turn["finish"])
        if turn["finish"] == "stopped":
            assert turn["answer"], turn
            break
    assert finishes[-1] == "stopped", finishes


def test_chat_logs_feed_the_labeling_queue(chat, label):
    list(chat.submit("从聊天记录来的问题", "tiny", *KNOBS, api_name="/send"))
    assert label.predict(10, api_name="/prompts_from_chat").startswith("1 prompts added")
    label.predict("zoe", api_name="/sign_in")
    prompt = label.predict(api_name="/next_pair")[1]
    assert prompt == "**system**\n\nYou are Neo.\n\n---\n\n**user**\n\n从聊天记录来的问题"


def test_chats_join_the_labeling_queue_by_default(tmp_path, redis_prefix, serving, rds):
    settings = make_settings(tmp_path, redis_prefix, serving, chat_to_labeling=True)
    assert UISettings.model_fields["chat_to_labeling"].default is True  # a deployment opts out
    with LiveUI(settings) as ui:
        chat, label = Client(f"{ui.url}/chat/", verbose=False), Client(f"{ui.url}/label/", verbose=False)
        list(chat.submit("不用按按钮的问题", "tiny", *KNOBS, api_name="/send"))
        list(chat.submit("tiny2", *KNOBS, api_name="/retry"))  # the same conversation again: one prompt
        assert rds.zcard(f"{redis_prefix}prefs:queue") == 1
        assert chat.predict("You are Neo.", api_name="/to_labeling").startswith("Already in the labeling queue")
        label.predict("zoe", api_name="/sign_in")
        prompt = label.predict(api_name="/next_pair")[1]  # no "take prompts from chat" pressed
        assert prompt == "**system**\n\nYou are Neo.\n\n---\n\n**user**\n\n不用按按钮的问题"
        info = label.predict('{"prompt": "uploaded"}', api_name="/add_prompts")  # says where prompts came from
        assert info.endswith("2 prompts waiting for labels. Queued so far: 1 from chat, 1 from upload."), info


def test_health_and_root(live_ui):
    health = httpx.get(f"{live_ui.url}/health").json()
    assert health["status"] == "ok" and health["redis"] is True and health["api_url"].endswith("/v1")
    root = httpx.get(f"{live_ui.url}/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/chat/"


def test_redis_down_chat_still_answers_labels_say_so(tmp_path, serving):
    settings = make_settings(tmp_path, "test-ui-down:", serving, redis_url="redis://127.0.0.1:1/0")
    with LiveUI(settings) as ui:
        assert httpx.get(f"{ui.url}/health").status_code == 503
        history, _ = Client(f"{ui.url}/chat/", verbose=False).predict("hi", "tiny", *KNOBS, api_name="/send")
        assert texts(history)[-1][0] == "assistant" and not texts(history)[-1][1].startswith("⚠️")
        label = Client(f"{ui.url}/label/", verbose=False)
        label.predict("alice", api_name="/sign_in")
        status = label.predict(api_name="/next_pair")[-1]
        assert status == "⚠️ The label store (Redis) is unreachable: nothing was saved. Try again in a moment."
