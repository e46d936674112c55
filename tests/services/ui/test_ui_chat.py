"""The chat logic against real serving: models, streaming, stop, retry/undo, readable errors, feedback."""

from __future__ import annotations

import json
import socket
import time

import pytest

from neo_ui.chat import (
    ChatService,
    add_user,
    display,
    export_json,
    export_markdown,
    request_messages,
    undo,
    without_last_answer,
)
from neo_ui.chatlog import ChatLog
from neo_ui.client import Sampling, ServedModel, ServingClient, ServingUnavailable
from neo_ui.prompts import PromptQueue

from .conftest import make_settings

# Seeded: a random model sampled freely ends some answers at the first token (EOS, ~1 run in 200), and the
# tests below need answers of several pieces; a seed makes every run the same (seeding is tested in serving).
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=24, seed=7)


@pytest.fixture
def service(settings, rds) -> ChatService:
    return ChatService(ServingClient(settings), ChatLog(rds, settings.redis_prefix))


def test_models_come_from_serving(settings):
    models = {m.id: m for m in ServingClient(settings).models()}
    assert set(models) == {"tiny", "tiny2"}
    assert models["tiny"].ref == "tiny:local" and models["tiny"].root.endswith("tiny")


def test_stream_chat_yields_pieces(settings):
    pieces = list(ServingClient(settings).stream_chat([{"role": "user", "content": "你好 hello"}], "tiny", SAMPLING))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)


def test_send_streams_into_the_conversation_and_logs_it(service):
    states = [list(c) for c in service.send([], "write a poem 写诗", "tiny", "You are Neo.", SAMPLING)]
    final = states[-1]
    assert [t["role"] for t in final] == ["user", "assistant"] and final[1]["ok"]
    lengths = [len(s[-1]["content"]) for s in states if s[-1]["role"] == "assistant"]
    assert len(lengths) > 2 and lengths == sorted(lengths)  # the answer grew piece by piece
    logged = service.chatlog.recent()
    assert logged[0].answer == final[1]["content"] and logged[0].messages[0].content == "You are Neo."
    assert logged[0].finish == "done" and logged[0].sampling["max_tokens"] == 24


def test_stop_keeps_the_partial_answer(service):
    stream = service.send([], "hello", "tiny", "", Sampling(temperature=1.0, max_tokens=200, seed=7))
    conv = next(stream)  # the empty assistant turn
    while not conv[-1]["content"]:  # until the first piece (a busy reader may get many tokens in one)
        conv = next(stream)
    stream.close()  # what Gradio does when the stop button cancels the event
    assert conv[-1]["role"] == "assistant" and conv[-1]["ok"] and conv[-1]["content"]
    assert service.chatlog.recent()[0].finish == "stopped"


def test_retry_and_undo(service):
    conv = list(service.send([], "first", "tiny", "", SAMPLING))[-1]
    conv = list(service.send(conv, "second", "tiny", "", SAMPLING))[-1]
    retried = list(service.retry(conv, "tiny2", "", SAMPLING))[-1]
    assert len(retried) == 4 and retried[-1]["model"] == "tiny2" and retried[2]["content"] == "second"
    rest, text = undo(retried)
    assert text == "second" and len(rest) == 2
    assert undo([]) == ([], "") and without_last_answer(rest) == rest[:1]


def test_errors_are_sentences_not_tracebacks(tmp_path, redis_prefix, rds):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = make_settings(tmp_path, redis_prefix, f"http://127.0.0.1:{port}")
    service = ChatService(ServingClient(down), ChatLog(rds, redis_prefix))
    conv = list(service.send([], "hello", "tiny", "", SAMPLING))[-1]
    assert conv[-1]["ok"] is False
    assert conv[-1]["content"] == (f"Cannot reach the model server at http://127.0.0.1:{port}/v1. "
                                   "Is `neo serve` running there?")
    assert display(conv)[-1]["content"].startswith("⚠️ Cannot reach")
    assert request_messages(conv, "") == [{"role": "user", "content": "hello"}]  # the error is not sent back
    with pytest.raises(ServingUnavailable, match="Cannot reach"):
        ServingClient(down).models()


def test_a_stalled_server_times_out_readably(tmp_path, redis_prefix):
    with socket.socket() as blackhole:  # accepts connections (backlog) and never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        slow = make_settings(tmp_path, redis_prefix, f"http://127.0.0.1:{blackhole.getsockname()[1]}",
                             request_timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(ServingUnavailable, match=r"did not answer within 1 s"):
            list(ServingClient(slow).stream_chat([{"role": "user", "content": "hi"}], "tiny", SAMPLING))
        assert time.monotonic() - start < 10


def test_unknown_model_and_no_model(service):
    conv = list(service.send([], "hello", "nope", "", SAMPLING))[-1]
    assert not conv[-1]["ok"] and "has no model 'nope'" in conv[-1]["content"]
    conv = list(service.send([], "hello", None, "", SAMPLING))[-1]
    assert not conv[-1]["ok"] and "No model is selected" in conv[-1]["content"]


def test_feedback_is_stored_once_per_answer(service):
    conv = list(service.send([], "你好", "tiny", "sys", SAMPLING))[-1]
    assert service.feedback(conv, 0, True, "sys", "s1") is None  # a user turn: ignored
    first = service.feedback(conv, 1, True, "sys", "s1")
    second = service.feedback(conv, 1, False, "sys", "s1")  # changed their mind: same record
    stored = service.chatlog.feedback()
    assert first.id == second.id and len(stored) == 1 and stored[0].rating == "down"
    assert stored[0].answer == conv[1]["content"] and stored[0].messages[-1].content == "你好"
    assert add_user([], "x")[0]["ok"]


def test_picker_labels_show_version_stage_and_parent(settings):
    assert [m.label for m in ServingClient(settings).models()] == ["tiny · random", "tiny2 · random"]
    assert ServedModel("chat", version="v2", stage="dpo", parent="chat:v1").label == "chat · v2 · dpo · from chat:v1"
    assert ServedModel("chat:v1", version="v1", stage="sft").label == "chat:v1 · sft"  # pinned: no repeat
    assert ServedModel("gpt").label == "gpt"  # another server: the id only


def test_send_this_exchange_to_labeling_queues_it_once(service, settings, rds):
    prompts = PromptQueue(rds, settings.redis_prefix)
    service = ChatService(service.client, service.chatlog, prompts)
    assert service.to_labeling([], "sys").startswith("⚠️ Nothing to send")
    conv = list(service.send([], "first 你好", "tiny", "sys", SAMPLING))[-1]
    conv = list(service.send(conv, "second", "tiny2", "sys", SAMPLING))[-1]
    assert service.to_labeling(conv, "sys") == "Sent to labeling: the prompt is queued (1 waiting for labels)."
    [pid] = rds.zrange(prompts.key("queue"), 0, -1)
    prompt = prompts.get(pid)
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "sys"), ("user", "first 你好"), ("assistant", conv[1]["content"]), ("user", "second")]
    assert (prompt.source, prompt.meta["chat_model"]) == ("chat", "tiny2")
    assert service.to_labeling(conv[:3], "sys").startswith("Already in the labeling queue (1 waiting")  # no answer yet
    # the labeling app's "take prompts from chat" finds the same conversation in the log: still one prompt
    rows = service.chatlog.prompts_from_log(10)
    report = prompts.add_rows(rows, source="chat")
    assert (report.added, report.duplicates, prompts.open_count()) == (1, 1, 2)  # "first" is new, "second" is not


def test_chats_flow_into_the_labeling_queue_once_unless_the_deployment_opts_out(service, settings, rds):
    prompts = PromptQueue(rds, settings.redis_prefix)
    auto = ChatService(service.client, service.chatlog, prompts, auto_queue=True)
    conv = list(auto.send([], "first 你好", "tiny", "sys", SAMPLING))[-1]
    assert prompts.open_count() == 1
    [pid] = rds.zrange(prompts.key("queue"), 0, -1)
    prompt = prompts.get(pid)
    assert [(m.role, m.content) for m in prompt.messages] == [("system", "sys"), ("user", "first 你好")]
    assert (prompt.source, prompt.meta["chat_model"], prompt.meta["chat_turn"]) == (
        "chat", "tiny", service.chatlog.recent()[0].id)
    list(auto.retry(conv, "tiny2", "sys", SAMPLING))  # a second answer to the same conversation: the same prompt
    assert prompts.open_count() == 1 and len(service.chatlog.recent()) == 2
    assert auto.to_labeling(conv, "sys").startswith("Already in the labeling queue (1 waiting")
    # opted out (chat_to_labeling=false), or the chat log off (nothing of the chat is kept): nothing queued
    manual = ChatService(service.client, service.chatlog, prompts, auto_queue=False)
    list(manual.send(conv, "second", "tiny", "sys", SAMPLING))
    unlogged = ChatService(service.client, ChatLog(rds, settings.redis_prefix, enabled=False), prompts,
                           auto_queue=True)
    list(unlogged.send(conv, "third", "tiny", "sys", SAMPLING))
    assert prompts.open_count() == 1


def test_conversation_exports(service):
    conv = list(service.send([], "写一首诗 <b>now</b>", "tiny", "You are Neo.", SAMPLING))[-1]
    conv = [*conv, {"role": "user", "content": "more", "ok": True, "model": None},
            {"role": "assistant", "content": "⚠️ boom", "ok": False, "model": None}]
    body = json.loads(export_json(conv, "You are Neo."))
    assert body == {"model": "tiny", "messages": [
        {"role": "system", "content": "You are Neo."}, {"role": "user", "content": "写一首诗 <b>now</b>"},
        {"role": "assistant", "content": conv[1]["content"]}, {"role": "user", "content": "more"}]}
    md = export_markdown(conv, "You are Neo.")
    assert md.startswith("# Neo chat\n\n## System\n\nYou are Neo.\n\n## User\n\n写一首诗 <b>now</b>\n\n"
                         "## Assistant (tiny)")
    assert conv[1]["content"] in md and "boom" not in md and md.rstrip().endswith("## User\n\nmore")


def test_label_refs_of_followed_pinned_and_local_models():
    assert ServedModel("chat", version="v3").ref == "chat:v3"  # --model chat, at its latest version
    assert ServedModel("chat:v1", version="v1").ref == "chat:v1"  # --model chat:v1, pinned
    assert ServedModel("demo").ref == "demo:local"  # a directory, or another server without versions


def test_an_empty_finished_answer_is_logged_but_a_stop_before_any_text_is_not(tmp_path, redis_prefix, rds):
    """A server that answers nothing (a model that says EOS first): the turn is logged (finish "done"), so the
    chat log and the labeling queue see it; a stop before the first piece logs nothing."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from .conftest import ThreadServer

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat():
        done = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        return StreamingResponse(iter([f"data: {json.dumps(done)}\n\n", "data: [DONE]\n\n"]),
                                 media_type="text/event-stream")

    with ThreadServer(app) as server:
        service = ChatService(ServingClient(make_settings(tmp_path, redis_prefix, f"{server.url}/v1")),
                              ChatLog(rds, redis_prefix))
        conv = list(service.send([], "hello", "m", "", SAMPLING))[-1]
        assert conv[-1] == {"role": "assistant", "content": "", "ok": True, "model": "m"}
        [turn] = service.chatlog.recent()
        assert turn.answer == "" and turn.finish == "done"
        stream = service.send([], "again", "m", "", SAMPLING)
        next(stream)  # the empty assistant turn, then the stop button
        stream.close()
        assert len(service.chatlog.recent()) == 1
