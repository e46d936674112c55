"""The API through the official ``openai`` client against a real server (torch engine, tiny model)."""

from __future__ import annotations

import asyncio

import httpx
import openai

from .helpers import missing_dashboard_series

CHAT = [{"role": "system", "content": "You are Neo."}, {"role": "user", "content": "你好, who are you?"}]


def test_models_lists_both_with_context(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "plain"}
    assert models["tiny"].max_model_len == 256 and models["tiny"].owned_by == "neo"
    assert models["tiny"].stage == "random" and models["tiny"].version == "local"


def test_chat_completion_counts_tokens(client, server, tokenizer):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, seed=3,
                                       extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    prompt = tokenizer.encode_chat(CHAT)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == len(prompt) + 12
    assert isinstance(choice.message.content, str)


def test_same_seed_same_output_other_seed_differs(client):
    def ask(seed):
        return client.completions.create(model="tiny", prompt="The cat", max_tokens=16, seed=seed,
                                         extra_body={"ignore_eos": True}).choices[0].text

    a, b, c = ask(7), ask(7), ask(8)
    assert a == b and a != c


def test_greedy_is_deterministic_without_seed(client):
    texts = {client.completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0).choices[0].text
             for _ in range(2)}
    assert len(texts) == 1


def test_completions_stream_matches_full_response(client):
    kw = dict(model="tiny", prompt="机器学习", max_tokens=20, seed=11, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_chat_stream_role_first_then_content_then_finish(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, seed=5, stream=True,
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage is None
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    full = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, seed=5,
                                          extra_body={"ignore_eos": True})
    assert streamed == full.choices[0].message.content


def test_n_choices_and_multiple_prompts(client):
    r = client.completions.create(model="tiny", prompt=["Hello", "你好"], n=3, max_tokens=5, seed=1,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == list(range(6))
    assert r.usage.completion_tokens == 30
    first = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, seed=1,
                                      extra_body={"ignore_eos": True})
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == first.choices[0].text  # choice j of seed s is the n=1 output of seed s + j
    assert len({by_index[0], by_index[1], by_index[2]}) > 1


def test_token_id_prompts_and_echo_logprobs_like_lm_eval(client, tokenizer):
    ids = tokenizer.encode("The quick brown fox", add_bos=True)
    r = client.completions.create(model="tiny", prompt=[ids], max_tokens=1, echo=True, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)
    greedy = lp.top_logprobs[-1]
    assert max(greedy.values()) == lp.token_logprobs[-1]  # temperature 0 picks the top token
    assert r.choices[0].text.startswith(tokenizer.decode(ids))
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 1


def test_echo_with_zero_max_tokens_scores_the_prompt_only(client, tokenizer):
    ids = tokenizer.encode("你好，世界", add_bos=True)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) and r.usage.completion_tokens == 0
    assert r.choices[0].text == tokenizer.decode(ids)


def test_stop_strings_cut_across_token_boundaries(client, tokenizer):
    kw = dict(model="tiny", prompt="The cat sat", max_tokens=40, seed=21, extra_body={"ignore_eos": True})
    full = client.completions.create(logprobs=0, **kw | {"extra_body": {"ignore_eos": True,
                                                                        "return_tokens_as_token_ids": True}})
    text = full.choices[0].text
    ids = [int(t.removeprefix("token_id:")) for t in full.choices[0].logprobs.tokens]
    stop = None
    for i in range(5, len(ids) - 5):  # a 3-character stop with the token boundary inside it
        b = len(tokenizer.decode(ids[:i]))
        candidate = text[b - 1:b + 2]
        if len(candidate) == 3 and "\ufffd" not in candidate and text.index(candidate) == b - 1:
            stop = candidate
            break
    assert stop is not None, text
    cut = client.completions.create(stop=[stop, "never-there"], **kw).choices[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop" and cut.stop_reason == stop
    streamed = list(client.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_chat_logprobs_shape(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3,
                                       seed=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3 and entry.bytes is not None
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_concurrent_requests_equal_sequential(server):
    prompts = ["Hello", "你好，世界", "The quick brown fox", "def add(a, b):", "北京", "Neo is", "1024", "请写"]

    async def one(client, i, prompt):
        r = await client.completions.create(model="tiny", prompt=prompt, max_tokens=24, seed=100 + i,
                                            temperature=1.0, extra_body={"ignore_eos": True})
        return r.choices[0].text, r.usage.completion_tokens

    async def run(concurrent):
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        async with client:
            if concurrent:
                return await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))
            return [await one(client, i, p) for i, p in enumerate(prompts)]

    steps_before = server.models.get("tiny").engine.steps
    sequential = asyncio.run(run(False))
    sequential_steps = server.models.get("tiny").engine.steps - steps_before
    concurrent = asyncio.run(run(True))
    concurrent_steps = server.models.get("tiny").engine.steps - steps_before - sequential_steps
    assert concurrent == sequential
    assert all(n == 24 for _, n in concurrent)
    assert concurrent_steps < sequential_steps / 2  # they really shared decode steps


def test_tokenize_detokenize_round_trip(server, tokenizer):
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/tokenize", json={"model": "tiny", "prompt": "你好 world", "return_token_strs": True}).json()
        assert r["tokens"] == tokenizer.encode("你好 world", add_bos=True) and r["count"] == len(r["tokens"])
        assert r["max_model_len"] == 256 and len(r["token_strs"]) == r["count"]
        chat = http.post("/tokenize", json={"model": "tiny", "messages": CHAT}).json()
        assert chat["tokens"] == tokenizer.encode_chat(CHAT)
        text = http.post("/detokenize", json={"model": "tiny", "tokens": r["tokens"]}).json()
        assert text == {"prompt": "你好 world"}


def test_health_and_metrics(server, client):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").json() == {
            "status": "ok", "watcher": None,  # not following the registry
            "models": {"tiny": {"version": "local", "healthy": True}, "plain": {"version": "local", "healthy": True}}}
        text = http.get("/metrics").text
    for name in ("neo_http_requests_total", "neo:time_to_first_token_seconds_bucket",
                 "neo:inter_token_latency_seconds_bucket", "neo:e2e_request_latency_seconds_count",
                 "neo:prompt_tokens_total", "neo:generation_tokens_total", "neo:num_requests_waiting",
                 "neo:num_requests_running", "neo:request_success_total", 'neo:kv_cache_usage_perc{model_name="tiny"}',
                 "# TYPE neo_engine_decode_steps_total counter", 'neo_engine_decode_steps_total{model="tiny"}'):
        assert name in text, name
    registry = server.app.state.services.metrics.registry
    assert registry.get_sample_value("neo:request_queue_time_seconds_count", {"model_name": "tiny"}) >= 1
    assert registry.get_sample_value("neo:request_generation_tokens_sum", {"model_name": "tiny"}) >= 3
    assert registry.get_sample_value("neo:request_success_total",
                                     {"model_name": "tiny", "finished_reason": "length"}) >= 1
    assert missing_dashboard_series(text, "neo") == []  # monitoring/grafana's dashboard reads Neo's engine
    series = 'neo:generation_tokens_total{model_name="tiny"}'
    generated = [line for line in text.splitlines() if line.startswith(series)]
    assert float(generated[0].split()[-1]) >= 3
