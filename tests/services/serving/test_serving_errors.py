"""Every error the issue lists: OpenAI's error JSON with the right status, never a 500 for bad input."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from neo_serving.settings import ServingSettings

from .helpers import LONG_SEQ_LEN, LiveServer

CHAT = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_unknown_model_is_404(http, client):
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": "nope", "messages": CHAT}),
                                404, "model_not_found")
    assert "nope" in error["message"] and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)


def test_context_length_is_400_with_the_numbers(http, tokenizer):
    prompt = "The quick brown fox jumps over the lazy dog. " * 8
    n = len(tokenizer.encode(prompt, add_bos=True))
    error = assert_openai_error(http.post("/v1/completions", json={"model": "tiny", "prompt": prompt,
                                                                   "max_tokens": 256 - n + 1}),
                                400, "context_length_exceeded")
    assert "maximum context length is 256 tokens" in error["message"]
    assert f"requested 257 tokens ({n} in the prompt, {256 - n + 1} in the completion)" in error["message"]
    ok = http.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 256 - n})
    assert ok.status_code == 200 and ok.json()["usage"]["total_tokens"] <= 256
    long_chat = [{"role": "user", "content": prompt * 3}]
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": "tiny", "messages": long_chat}),
                                400, "context_length_exceeded")
    assert "messages" in error["message"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "temperature": 5}, "temperature"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "n": 0}, "n"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "top_p": 0}, "top_p"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "tiny"}, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "top_logprobs": 2}, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "stream_options": {"include_usage": True}}, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "presence_penalty": 1}, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "stop": [""]}, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "n": 50}, "n"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, None),
    ("/v1/completions", {"model": "tiny", "prompt": ""}, None),
    ("/v1/completions", {"model": "tiny", "prompt": [[1, 2, 10**6]]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "best_of": 3}, None),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": "abc"}, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": {"a": 1}}, None),
    ("/tokenize", {"model": "tiny"}, None),
    ("/detokenize", {"model": "tiny", "tokens": [-1]}, "tokens"),
])
def test_invalid_fields_are_400(http, path, body, param):
    error = assert_openai_error(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] is not None and param in error["param"]


def test_malformed_json_and_unknown_routes(http):
    bad_json = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(bad_json, 400)
    assert_openai_error(http.get("/v1/nothing"), 404)
    assert_openai_error(http.get("/v1/completions"), 405)


def test_unknown_fields_are_accepted(http):
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2, "brand_new_field": 1})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_model_without_chat_template_is_400_for_chat_only(http):
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": "plain", "messages": CHAT}),
                                400, "chat_template_missing")
    assert "chat_template" in error["message"] and "tokenizer_config.json" in error["message"]
    ok = http.post("/v1/completions", json={"model": "plain", "prompt": "Hello", "max_tokens": 3})
    assert ok.status_code == 200


def aborted(server) -> float:
    registry = server.app.state.services.metrics.registry
    return registry.get_sample_value("neo:request_success_total",
                                     {"model_name": "tiny", "finished_reason": "abort"}) or 0


def test_client_disconnect_mid_stream_frees_the_request(long_server):
    """The engine stops decoding at once (a full run would take thousands of steps: seconds)."""
    server = long_server
    before, steps = aborted(server), server.models.get("tiny").engine.steps
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": LONG_SEQ_LEN - 64, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.url, timeout=30) as http, http.stream("POST", "/v1/completions", json=body) as r:
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data:")
            if lines == 3:
                break
        assert server.running() == 1
    deadline = time.monotonic() + 10
    while server.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.running() == 0
    assert aborted(server) == before + 1
    time.sleep(0.2)  # were it still decoding, steps would go on
    assert server.models.get("tiny").engine.steps - steps < (LONG_SEQ_LEN - 64) // 4


def test_client_disconnect_before_a_full_response_frees_the_request(long_server):
    server = long_server
    before, steps = aborted(server), server.models.get("tiny").engine.steps
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": LONG_SEQ_LEN - 64, "ignore_eos": True, "n": 4}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.15) as http:
        http.post("/v1/completions", json=body)
    deadline = time.monotonic() + 10
    while server.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.running() == 0
    assert aborted(server) == before + 4
    time.sleep(0.2)
    assert server.models.get("tiny").engine.steps - steps < (LONG_SEQ_LEN - 64) // 4


def test_api_keys_guard_everything_but_health_and_metrics(checkpoint):
    settings = ServingSettings(models=[f"tiny={checkpoint}"], api_keys=["sk-one", "sk-two"], max_batch_size=2)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
        for path in ("/v1/models", "/openapi.json"):
            assert_openai_error(http.get(path), 401, "invalid_api_key")
        assert_openai_error(http.post("/tokenize", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-bad"}),
                            401)
        assert http.get("/v1/models", headers={"Authorization": "Bearer sk-two"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            live.client("sk-wrong").models.list()
        r = live.client("sk-one").completions.create(model="tiny", prompt="Hi", max_tokens=2)
        assert r.usage.completion_tokens <= 2


def test_dead_engine_is_503(checkpoint):
    with LiveServer(ServingSettings(models=[f"tiny={checkpoint}"], max_batch_size=2)) as live, \
            httpx.Client(base_url=live.url) as http:
        assert http.get("/health").status_code == 200
        engine = live.models.get("tiny").engine
        asyncio.run_coroutine_threadsafe(engine.shutdown(), engine._loop).result(timeout=30)  # the engine dies
        assert_openai_error(http.get("/health"), 503, "engine_unavailable")
        assert_openai_error(http.post("/v1/completions", json={"model": "tiny", "prompt": "x"}), 503)
        assert 'neo_engine_healthy{model="tiny"} 0.0' in http.get("/metrics").text
