"""Browser tests: Debian's Chromium (apt ``chromium``) driven by playwright against the real UI.

- chat: send a message, watch the answer stream in, rate it (thumbs up lands in Redis);
- labeling: sign in, upload prompts, label a pair (double click: one record), find it in Redis and in
  the export, restart the UI process, find the label still there;
- a ``<script>``/``onerror`` in model output is shown as text and never runs (a fake upstream serves it).
- with accounts: Gradio's login form on /chat/ (a wrong password refused), one login for both apps.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from neo_ui.cli import prefs_app

from .conftest import LiveUI, ThreadServer, UIProcess, make_settings

pytestmark = pytest.mark.slow

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> 你好 **bold**'

# Records every distinct length of the newest bot message, to see the answer grow.
WATCH_STREAM = """() => {
  window.__lengths = [];
  const root = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = root.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const n = bots[bots.length - 1].innerText.length;
    if (window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def open_chat(page, url: str) -> None:
    page.goto(f"{url}/chat/")
    page.wait_for_selector("#models-status :text('model(s) served')")


def send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-input textarea").press("Enter")


def test_chat_streams_an_answer_and_stores_a_thumbs_up(page, settings, rds):
    # seeded: a random model sampled freely ends its answer at once (EOS) about once in 200 runs, and then
    # there is nothing to watch stream in (greedy is no better: it writes only newlines); with the seed, every
    # run gets the same 96-token answer
    settings = settings.model_copy(update={"max_tokens": 96, "seed": 0})
    with LiveUI(settings) as ui:
        open_chat(page, ui.url)
        page.evaluate(WATCH_STREAM)
        send(page, "你好! Write a poem <b>now</b>")
        log_key = f"{settings.redis_prefix}chat:log"
        wait_for(lambda: rds.llen(log_key) == 1, what="the answer to finish")  # logged when the stream ends
        logged = json.loads(rds.lindex(log_key, 0))
        answer = logged["answer"]
        assert logged["sampling"]["seed"] == 0  # NEO_SEED reaches serving
        bot = page.locator('[data-testid="bot"]').last
        wait_for(lambda: bot.inner_text().strip(), what="the answer on the page")
        lengths = page.evaluate("window.__lengths")
        assert len([n for n in lengths if n > 0]) >= 3, lengths  # it grew in steps: streamed
        assert page.locator('[data-testid="user"]').last.inner_text().strip() == "你好! Write a poem <b>now</b>"
        assert answer.split()[:1] == bot.inner_text().split()[:1] or not answer.strip()

        page.locator('button[aria-label="Like"]').last.click()
        feedback_key = f"{settings.redis_prefix}chat:feedback"
        wait_for(lambda: rds.hlen(feedback_key) == 1, what="the feedback record")
        record = json.loads(next(iter(rds.hvals(feedback_key))))
        assert record["rating"] == "up" and record["answer"] == answer and record["model"] == "tiny"


def fake_upstream() -> FastAPI:
    """An OpenAI-compatible stand-in whose every answer is PAYLOAD (streamed in pieces, or whole)."""
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "evil", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "evil",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": PAYLOAD}}]})

        def events():
            for i in range(0, len(PAYLOAD), 7):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "evil",
                         "choices": [{"index": 0, "delta": {"content": PAYLOAD[i:i + 7]}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_script_in_model_output_is_not_executed(page, tmp_path, redis_prefix, rds):
    with ThreadServer(fake_upstream()) as upstream:
        settings = make_settings(tmp_path, redis_prefix, upstream.url)
        with LiveUI(settings) as ui:
            open_chat(page, ui.url)
            send(page, "say something <i>dangerous</i>")
            bot = page.locator('[data-testid="bot"]').last
            wait_for(lambda: "你好" in bot.inner_text(), what="the whole payload")
            text = bot.inner_text()
            assert '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">' in text
            assert bot.locator("strong").inner_text() == "bold"  # Markdown still renders
            time.sleep(0.5)
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("#chatbot script").count() == 0
            assert page.locator('#chatbot img[src="x"]').count() == 0

            # the labeling app shows the same payload as both answers: text there too
            rds_queue = f"{redis_prefix}prefs:queue"
            page.goto(f"{ui.url}/label/")
            page.locator("#annotator-name textarea, #annotator-name input").first.fill("eve")
            page.locator("#sign-in").click()
            page.wait_for_selector("#signed-in :text('Signed in as')")
            from neo_ui.prompts import PromptQueue

            PromptQueue(rds, redis_prefix).add_jsonl(json.dumps({"prompt": "<img src=y onerror='window.__pwned=3'>"}))
            assert rds.zcard(rds_queue) == 1
            page.locator("#next-pair").click()
            wait_for(lambda: "你好" in page.locator("#answer-a").inner_text(), what="answers")
            assert "<script>window.__pwned=1</script>" in page.locator("#answer-b").inner_text()
            assert "<img src=y onerror='window.__pwned=3'>" in page.locator("#prompt").inner_text()
            time.sleep(0.5)
            assert page.evaluate("typeof window.__pwned") == "undefined"


def test_label_in_browser_survives_a_restart(page, settings, rds, tmp_path, redis_prefix):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "请写一首关于春天的短诗"}, ensure_ascii=False) + "\n"
                       + json.dumps({"prompt": "Say hello"}) + "\n", encoding="utf-8")
    with UIProcess(settings, tmp_path / "ui.log") as ui:
        page.goto(f"{ui.url}/label/")
        page.locator("#annotator-name textarea, #annotator-name input").first.fill("alice")
        page.locator("#sign-in").click()
        page.wait_for_selector("#signed-in :text('Signed in as')")

        page.get_by_role("tab", name="Prompts").click()
        page.locator('input[type="file"]').set_input_files(str(prompts))
        page.wait_for_selector("#queue-info :text('2 prompts added')")

        page.get_by_role("tab", name="Label").click()
        page.locator("#next-pair").click()
        page.wait_for_selector("#prompt :text('请写一首关于春天的短诗')")
        wait_for(lambda: page.locator("#answer-a").inner_text().strip(), what="answer A")
        page.get_by_label("B better").check()
        page.locator("#comment textarea, #comment input").first.fill("更通顺")
        page.locator("#submit-label").dblclick()
        page.wait_for_selector("#label-status :text('Saved label')")
        page.wait_for_selector("#prompt :text('Say hello')")  # the next pair came up

        ids = rds.zrange(f"{redis_prefix}prefs:labels", 0, -1)
        assert len(ids) == 1  # a double click stores one label
        record = json.loads(rds.get(f"{redis_prefix}prefs:label:{ids[0]}"))
        assert (record["annotator"], record["choice"], record["comment"]) == ("alice", "b", "更通顺")
        assert record["prompt"][-1]["content"] == "请写一首关于春天的短诗"

        out = tmp_path / "prefs.jsonl"
        env = {"NEO_REDIS_PREFIX": redis_prefix, "NEO_HOME": str(settings.home)}
        result = CliRunner().invoke(prefs_app, ["export", str(out)], env=env)
        assert result.exit_code == 0, result.output
        [row] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert row["id"] == ids[0] and row["chosen"][0]["content"] == record["answer_b"]["text"]

        page.goto("about:blank")
        ui.stop()
        ui.start()  # a new UI process: the label lives in Redis, not in the UI
        page.goto(f"{ui.url}/label/")
        page.get_by_role("tab", name="Stats").click()
        page.locator("#refresh-stats").click()
        page.wait_for_selector("#stats-summary :text('1 labels')")
        assert "alice" in page.locator("#stats-annotators").inner_text()
        assert json.loads(rds.get(f"{redis_prefix}prefs:label:{ids[0]}")) == record


def test_one_login_in_the_browser_for_chat_and_labeling(page, tmp_path, redis_prefix, serving, rds):
    """With accounts, /chat/ shows Gradio's login form first; after signing in there, /label/ knows the
    account without asking again, and the chat log records who chatted."""
    settings = make_settings(tmp_path / "home", redis_prefix, serving, ui_users=["alice:s3cret"])
    with LiveUI(settings) as ui:
        page.goto(f"{ui.url}/chat/")
        page.wait_for_selector("h2:text('Login')")
        assert "one login for chat and labeling" in page.content()
        assert page.locator("#chat-input").count() == 0  # no chat before the login
        page.locator("input[type=text]").fill("alice")
        page.locator("input[type=password]").fill("wrong")
        page.get_by_role("button", name="Login").click()
        time.sleep(1)
        assert page.locator("#chat-input").count() == 0 and page.get_by_text("Incorrect Credentials").count() == 1
        page.locator("input[type=text]").fill("alice")  # Gradio clears the form after a refusal
        page.locator("input[type=password]").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#models-status :text('model(s) served')")
        send(page, "hello from alice")
        log_key = f"{redis_prefix}chat:log"
        wait_for(lambda: rds.llen(log_key) == 1, what="the answer to be logged")
        assert json.loads(rds.lindex(log_key, 0))["user"] == "alice"

        page.goto(f"{ui.url}/label/")  # the same session: no second login
        page.wait_for_selector("#signed-in :text('Signed in as')")
        assert "alice" in page.locator("#signed-in").inner_text()
        assert page.locator("#annotator-name").is_hidden()
