"""The gateway engine, with real Neo servers as its upstream replicas (what ``vllm serve`` is in production)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest

from neo.generate import SamplingParams
from neo.net import free_port
from neo_serving.engines.base import EngineRequest, ModelInfo
from neo_serving.engines.upstream import UpstreamEngine
from neo_serving.settings import ServingSettings
from neo_serving.tokens import ServedTokenizer

from .helpers import LiveServer

UP_KEY, GW_KEY = "sk-upstream", "sk-gateway"
CHAT = [{"role": "user", "content": "请写一首关于春天的短诗"}]


def upstream_settings(checkpoint) -> ServingSettings:
    return ServingSettings(models=[f"tiny={checkpoint}"], api_keys=[UP_KEY], max_batch_size=4)


def gateway_settings(checkpoint, *urls, interval=0.2, relay=True) -> ServingSettings:
    return ServingSettings(engine="gateway", models=[f"tiny={checkpoint}"], upstreams=[f"tiny={u}" for u in urls],
                           upstream_api_key=UP_KEY, api_keys=[GW_KEY], health_interval_s=interval, relay=relay)


@pytest.fixture(scope="module")
def upstreams(checkpoint):
    with LiveServer(upstream_settings(checkpoint)) as a, LiveServer(upstream_settings(checkpoint)) as b:
        yield a, b


@pytest.fixture(scope="module", params=[True, False], ids=["relay", "tokens"])
def gateway(request, checkpoint, upstreams):
    """The gateway relaying requests and responses as they are, and re-tokenizing them (NEO_RELAY=false)."""
    with LiveServer(gateway_settings(checkpoint, *(u.url for u in upstreams), relay=request.param)) as gw:
        yield gw


def completions_served(server, route="/v1/completions") -> float:
    registry = server.app.state.services.metrics.registry
    return registry.get_sample_value("neo_http_requests_total",
                                     {"method": "POST", "route": route, "status": "200"}) or 0


def test_gateway_gives_the_upstreams_output_and_balances(gateway, upstreams):
    direct, via = upstreams[0].client(UP_KEY), gateway.client(GW_KEY)
    served = [completions_served(u) for u in upstreams]
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=12, seed=9, logprobs=2,
              extra_body={"ignore_eos": True})
    want = direct.completions.create(**kw)
    for _ in range(4):
        got = via.completions.create(**kw)
        assert got.choices[0].text == want.choices[0].text
        assert got.choices[0].logprobs.token_logprobs == want.choices[0].logprobs.token_logprobs
        assert got.choices[0].logprobs.top_logprobs == want.choices[0].logprobs.top_logprobs
        assert got.usage == want.usage
    # an upstream counts a streamed request when its response has ended, which can be just after the gateway's
    deadline = time.monotonic() + 10
    while sum(map(completions_served, upstreams)) - sum(served) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    after = [completions_served(u) for u in upstreams]
    assert after[0] - served[0] >= 3 and after[1] - served[1] >= 2  # in turn over both replicas


def test_gateway_chat_streams_through(gateway, upstreams):
    direct, via = upstreams[1].client(UP_KEY), gateway.client(GW_KEY)
    kw = dict(model="tiny", messages=CHAT, max_tokens=10, seed=4, extra_body={"ignore_eos": True})
    want = direct.chat.completions.create(**kw).choices[0].message.content
    relayed = sum(completions_served(u, "/v1/chat/completions") for u in upstreams)
    chunks = list(via.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == 10
    # relay: the upstream answered the chat request itself; tokens: the gateway's template made a completion
    want_asked = 1 if gateway.settings.relay else 0
    deadline = time.monotonic() + 10  # counted when the upstream's response has ended (maybe after ours)
    while (asked := sum(completions_served(u, "/v1/chat/completions") for u in upstreams) - relayed) < want_asked \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asked == want_asked
    # without include_usage the client gets no usage chunk (the relay asks for it, for metrics, and drops it)
    plain = list(via.chat.completions.create(stream=True, **kw))
    assert all(c.usage is None for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == want
    echo = via.completions.create(model="tiny", prompt="Hello", max_tokens=2, echo=True, logprobs=1, seed=1)
    assert echo.choices[0].logprobs.token_logprobs[0] is None and echo.choices[0].text.startswith("Hello")
    assert len(echo.choices[0].logprobs.tokens) == echo.usage.prompt_tokens + 2


def test_gateway_keeps_its_own_keys_and_metrics(gateway, upstreams):
    with httpx.Client(base_url=gateway.url) as http:
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {UP_KEY}"}).status_code == 401
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {GW_KEY}"}).json()["data"][0]["id"] == "tiny"
        metrics = http.get("/metrics").text
        replicas = http.get("/metrics/replicas")  # the replicas' own series, one scrape target, apart by label
    assert replicas.status_code == 200 and replicas.headers["content-type"].startswith("text/plain")
    for upstream in upstreams:
        assert (f'neo:num_requests_running{{model_name="tiny",replica="{upstream.url}",served_model="tiny"}} 0.0'
                in replicas.text)
    assert 'neo_engine_healthy_replicas{model="tiny"} 2.0' in metrics
    assert 'neo:time_to_first_token_seconds_count{model_name="tiny"}' in metrics
    generated = gateway.app.state.services.metrics.registry.get_sample_value(
        "neo:generation_tokens_total", {"model_name": "tiny"})
    assert generated and generated >= 10  # counted from the upstreams' usage in relay mode too


def test_gateway_passes_on_upstream_errors_and_checks_its_own_limits(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {GW_KEY}"}) as http:
        too_long = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi " * 400, "max_tokens": 4})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["type"] == "invalid_request_error"
        too_many = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "n": 99})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
        bad = http.post("/v1/chat/completions", json={"model": "tiny", "messages": "not a list"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_gateway_disconnect_frees_the_upstream(gateway, upstreams):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 250, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {GW_KEY}"}) as http, \
            http.stream("POST", "/v1/completions", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
        assert sum(u.running() for u in upstreams) == 1
    deadline = time.monotonic() + 10
    while sum(u.running() for u in upstreams) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(u.running() for u in upstreams) == 0


def test_failover_when_a_replica_dies_then_503_when_none_is_left(checkpoint):
    with LiveServer(upstream_settings(checkpoint)) as a:
        b = LiveServer(upstream_settings(checkpoint)).__enter__()
        with LiveServer(gateway_settings(checkpoint, b.url, a.url, interval=60)) as gw:
            client = gw.client(GW_KEY)
            engine = gw.models.get("tiny").engine
            assert [r.healthy for r in engine.replicas] == [True, True]
            b.__exit__(None, None, None)  # replica b dies; the next health check is a minute away
            for seed in range(4):  # every request still succeeds: b's turns fail over to a
                r = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, seed=seed,
                                              extra_body={"ignore_eos": True})
                assert r.usage.completion_tokens == 3
            now = time.monotonic()
            assert [r.available(now) for r in engine.replicas] == [False, True]  # b is ejected, a serves
            # ejected once, or again if a request outlived the 1 s backoff on a busy machine
            assert "request failed" in engine.replicas[0].error and engine.replicas[0].ejections >= 1
        a_url = a.url
    dead = free_port()
    with LiveServer(gateway_settings(checkpoint, f"http://127.0.0.1:{dead}", a_url)) as gw, \
            httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {GW_KEY}"}) as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "engine_unavailable" and "no healthy upstream" in error["message"]
        assert http.get("/health").status_code == 503


def engine_over(checkpoint, *urls, **kw) -> UpstreamEngine:
    info = ModelInfo(name="tiny", version="local", path=checkpoint, max_model_len=256, created=0)
    return UpstreamEngine(info, ServedTokenizer.load(checkpoint), list(urls), api_key=UP_KEY,
                          health_interval_s=3600, **kw)


def request(seed: int, max_new: int = 3) -> EngineRequest:
    return EngineRequest(request_id=f"r{seed}-{time.monotonic_ns()}", prompt_ids=[5, 6, 7],
                         params=SamplingParams(max_new_tokens=max_new, seed=seed))


def test_a_replica_goes_down_only_after_consecutive_failed_checks(checkpoint):
    """One slow or failed /health under load must not take a healthy replica out (it did, and a test flaked)."""
    async def scenario(up_url: str, stop_upstream) -> list[bool]:
        engine = engine_over(checkpoint, up_url, unhealthy_after=3)
        await engine.start()
        try:
            seen = [engine.replicas[0].healthy]
            await asyncio.to_thread(stop_upstream)
            for _ in range(3):
                await engine.check_health()
                seen.append(engine.replicas[0].healthy)
            return seen
        finally:
            await engine.shutdown()

    live = LiveServer(upstream_settings(checkpoint)).__enter__()
    seen = asyncio.run(scenario(live.url, lambda: live.__exit__(None, None, None)))
    assert seen == [True, True, True, False]


def test_least_outstanding_routing_and_ejection_backoff(checkpoint, upstreams):
    a, b = upstreams
    dead = f"http://127.0.0.1:{free_port()}"

    async def busy_then_route() -> tuple[int, list[int]]:
        engine = engine_over(checkpoint, a.url, b.url)
        await engine.start()
        try:
            long = engine.generate(request(0, max_new=200))
            await anext(long)  # one long request holds a replica
            busy = next(i for i, r in enumerate(engine.replicas) if r.outstanding == 1)
            for seed in range(4):  # short requests all go to the idle one
                async for _ in engine.generate(request(seed + 1)):
                    pass
            await long.aclose()
            return busy, [r.served for r in engine.replicas]
        finally:
            await engine.shutdown()

    busy, served = asyncio.run(busy_then_route())
    assert served[1 - busy] == 4 and served[busy] == 1  # the long one

    async def ejections() -> list[float]:
        engine = engine_over(checkpoint, dead, a.url)
        await engine.start()
        engine.replicas[0].healthy = True  # as if it had been up and just died: only passive checks see it
        try:
            backoffs = []
            for seed in range(2):
                engine.replicas[0].ejected_until = 0.0  # let the next request try it again
                engine._turn = itertools.count(0)  # and try it first
                async for _ in engine.generate(request(seed)):
                    pass  # served by a after failing over
                backoffs.append(round(engine.replicas[0].ejected_until - time.monotonic()))
            return backoffs
        finally:
            await engine.shutdown()

    assert asyncio.run(ejections()) == [1, 2]  # the backoff doubles while the replica keeps failing


async def _dies_after_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A replica that is healthy but dies once a generation request has its response headers (a SIGKILL
    between vLLM's headers and its first token)."""
    request = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next((int(h.split(":")[1]) for h in request.split("\r\n") if h.lower().startswith("content-length")), 0)
    await reader.readexactly(length)
    if request.startswith("GET /health"):
        body = b"{}"
    elif request.startswith("GET /v1/models"):
        body = json.dumps({"data": [{"id": "tiny"}]}).encode()
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()
    writer.close()


def test_relay_fails_over_when_a_replica_dies_before_its_first_byte(checkpoint, upstreams):
    async def scenario() -> tuple[str, str]:
        faulty = await asyncio.start_server(_dies_after_headers, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{faulty.sockets[0].getsockname()[1]}"
        engine = engine_over(checkpoint, url, upstreams[0].url)
        await engine.start()
        try:
            assert engine.can_relay() and [r.healthy for r in engine.replicas] == [True, True]
            engine._turn = itertools.count(0)  # the faulty replica first
            body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 3, "stream": True}).encode()
            relayed = await engine.relay("/v1/completions", body)
            text = b"".join([chunk async for chunk in relayed.chunks]).decode()
            return text, engine.replicas[0].error
        finally:
            await engine.shutdown()
            faulty.close()

    text, error = asyncio.run(scenario())
    assert '"finish_reason":"length"' in text and text.rstrip().endswith("data: [DONE]")  # the good replica's
    assert "before its first byte" in error  # and the faulty one ejected
