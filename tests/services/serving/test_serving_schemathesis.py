"""Property-based requests from our own OpenAPI schema, valid and invalid ones: no 500, ever.

(schemathesis' pytest loader does not run on pytest 9, so the operations are parametrized here and each
runs a hypothesis test against the live server.)
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from neo_serving.app import build_app
from neo_serving.settings import ServingSettings

from .helpers import LiveServer

SCHEMA = schemathesis.openapi.from_dict(build_app(ServingSettings()).openapi())  # the app, not started
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# invalid input only exists where there is input: the POST bodies
CASES = [(op, mode) for op in OPERATIONS for mode in GenerationMode
         if mode == GenerationMode.POSITIVE or op.method.upper() == "POST"]


@pytest.fixture(scope="module")
def fuzzed_server(checkpoint, plain_checkpoint):
    # a short context and small n keep every generated request quick; reload-by-name looks up an unused prefix
    settings_ = ServingSettings(models=[f"tiny={checkpoint}", f"plain={plain_checkpoint}"], max_model_len=48,
                                max_n=3, max_batch_size=4, redis_prefix="test-serving-fuzz-unused:")
    with LiveServer(settings_) as live:
        yield live


def test_schema_covers_every_route():
    assert {op.label for op in OPERATIONS} == {
        "GET /health", "GET /metrics", "GET /metrics/replicas", "GET /v1/models", "POST /v1/chat/completions",
        "POST /v1/completions", "POST /tokenize", "GET /tokenizer_info", "POST /detokenize", "POST /v1/admin/reload"}


@pytest.mark.slow
@pytest.mark.parametrize("operation, mode", CASES, ids=[f"{op.label}-{mode.value}" for op, mode in CASES])
def test_no_server_errors(fuzzed_server, operation, mode):
    statuses = []

    @given(case=operation.as_strategy(mode), served=st.sampled_from([None, "tiny", "plain"]))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case, served):
        if served and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = served  # random names are all 404s: reach the engine too
        response = case.call(base_url=fuzzed_server.url, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{case.as_curl_command()} -> {response.status_code}: {response.text[:500]}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert fuzzed_server.models.healthy() and statuses


SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True), "top_k": st.integers(-1, 1000),
    "min_p": st.floats(0, 1), "repetition_penalty": st.floats(0.01, 10),
    "seed": st.integers(-(2**63), 2**64 - 1), "n": st.integers(1, 3), "max_tokens": st.integers(1, 8),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3), "stop_token_ids": st.lists(st.integers(0, 799)),
    "ignore_eos": st.booleans(), "stream": st.booleans(),
})


@pytest.mark.slow
@given(params=SAMPLING, prompt=st.one_of(st.text(min_size=1, max_size=20), st.lists(st.integers(0, 799), min_size=1,
                                                                                    max_size=20)),
       logprobs=st.one_of(st.none(), st.integers(0, 5)), echo=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_valid_sampling_requests_always_succeed(fuzzed_server, params, prompt, logprobs, echo):
    """Any mix of valid sampling parameters generates (top_p = 1e-300 once killed the engine); a prompt that
    leaves no room for max_tokens (rare characters are one byte token each) gets the OpenAI 400 instead.
    Without max_tokens the default (16) is capped to the room left, so only a prompt filling the context
    is refused."""
    body = {"model": "tiny", "prompt": prompt, "logprobs": logprobs, "echo": echo, **params}
    with httpx.Client(base_url=fuzzed_server.url, timeout=60) as http:
        if isinstance(prompt, str):
            size = http.post("/tokenize", json={"model": "tiny", "prompt": prompt}).json()
            n_prompt, limit = size["count"], size["max_model_len"]
        else:
            n_prompt, limit = len(prompt), 48
        r = http.post("/v1/completions", json=body)
    requested = params.get("max_tokens")
    if (n_prompt >= limit) if requested is None else (n_prompt + requested > limit):
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        return
    assert r.status_code == 200, r.text
    if not params.get("stream"):
        usage = r.json()["usage"]
        assert 0 < usage["completion_tokens"] <= params.get("n", 1) * params.get("max_tokens", 16)
    assert fuzzed_server.models.healthy()
