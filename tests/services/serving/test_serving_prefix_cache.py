"""Prefix caching in the torch engine: a hit gives what a cold run gives, counters, LRU eviction, and
aborted requests letting go of their blocks. Real engine threads on the random tiny checkpoint (float32).

Tolerance: a hit prefills only the prompt's tail, so its keys/values come from forwards of other shapes than
a cold run's; float32 rounding then differs, so logprobs are compared to 1e-4 (absolute) and tokens exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import aclosing

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from neo.generate import SamplingParams
from neo_serving.engines.base import EngineRequest, ModelInfo
from neo_serving.engines.engine_process import ProcessEngine
from neo_serving.engines.prefix_cache import PrefixCache, block_hashes
from neo_serving.engines.torch_engine import TorchEngine
from neo_serving.tokens import ServedTokenizer

from .helpers import LONG_SEQ_LEN

BLOCK = 16


def make_engine(checkpoint, process: bool = False, **kw) -> TorchEngine | ProcessEngine:
    """The thread engine, or (``process``) the same loop in an engine process."""
    context = json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"]
    cls = ProcessEngine if process else TorchEngine
    return cls(ModelInfo("tiny", "local", checkpoint, context, 0), ServedTokenizer.load(checkpoint), **kw)


def block_mb(checkpoint, blocks: int) -> float:
    """The prefix_cache_mb that holds exactly ``blocks`` blocks of the tiny checkpoint (float32)."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    per_block = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * BLOCK * head_dim * 4
    return blocks * per_block / 2**20


def prompt(seed: int, n: int, vocab: int = 800) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, vocab) for _ in range(n)]


def request(rid: str, ids: list[int], max_new: int = 12, **params) -> EngineRequest:
    params.setdefault("temperature", 0.0)  # greedy unless asked
    return EngineRequest(rid, ids, SamplingParams(max_new_tokens=max_new, **params), logprobs=3)


async def collect(engine, req):
    tokens, logprobs = [], []
    async for out in engine.generate(req):
        tokens += out.token_ids
        logprobs += [lp.logprob for lp in out.logprobs or ()]
    return tokens, logprobs


def run(engine, body):
    async def main():
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def test_block_hashes_chain_the_prefix():
    a, b = list(range(40)), list(range(40))
    b[3] = 999  # differs in the first block: every later block's name differs too
    assert len(block_hashes(a, BLOCK)) == 2  # full blocks only
    assert block_hashes(a[:32], BLOCK) == block_hashes(a, BLOCK)
    assert not set(block_hashes(a, BLOCK)) & set(block_hashes(b, BLOCK))
    assert block_hashes(a, BLOCK)[1:] == block_hashes(a, BLOCK, block_hashes(a, BLOCK)[0], start=16)


def test_lru_store_keeps_held_blocks_and_evicts_the_oldest_free_one():
    cache, kv = PrefixCache(capacity=2, block_size=BLOCK), torch.zeros(1, 2, 1, BLOCK, 4)
    assert cache.put(b"a", kv) and cache.put(b"b", kv) and cache.blocks_in_use == 2
    assert not cache.put(b"c", kv)  # both held: nothing to evict
    cache.release([b"a", b"b"])
    assert cache.match([b"a"], 1, 16) == [b"a"]  # a is now the most recent and held
    cache.release([b"a"])
    assert cache.put(b"c", kv) and cache.match([b"b"], 1, 16) == [] and cache.match([b"a"], 1, 16) == [b"a"]
    assert cache.stats.evictions == 1 and cache.stats.queries == 48 and cache.stats.hits == 32


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_hit_gives_the_cold_runs_tokens_and_logprobs(checkpoint, process):
    """Greedy and seeded sampling, the same prompt again and another prompt sharing its first 48 tokens."""
    shared = prompt(1, 50)
    other = shared[:48] + prompt(2, 9)
    cases = [dict(temperature=0.0), dict(temperature=0.9, top_p=0.95, seed=7)]
    reqs = [request(f"{name}{i}", ids, **params) for i, params in enumerate(cases)
            for name, ids in (("first", shared), ("again", shared), ("other", other))]

    async def cold(engine):
        return [await collect(engine, r) for r in reqs]

    async def cached(engine):
        out, hits = [], []
        for r in reqs:
            before = engine.stats().prefix_cache_hits
            out.append(await collect(engine, r))
            hits.append(engine.stats().prefix_cache_hits - before)
        return out, hits, engine.stats()

    reference = run(make_engine(checkpoint, prefix_cache_mb=0), cold)
    got, hits, stats = run(make_engine(checkpoint, process, prefix_cache_mb=64), cached)
    assert hits == [0, 48, 48, 48, 48, 48]  # (50 - 1) // 16 = 3 blocks: the last token is always prefilled
    assert stats.prefix_cache_queries == 4 * 50 + 2 * 57  # every prompt token is queried once
    for (tokens, lps), (ref_tokens, ref_lps) in zip(got, reference, strict=True):
        assert tokens == ref_tokens
        torch.testing.assert_close(lps, ref_lps, rtol=0, atol=1e-4)


def test_a_long_prompt_prefilled_in_chunks_reuses_and_stores_blocks(checkpoint):
    """Chunked prefill (chunks of 16 < the prompts): a cold 100-token prompt takes 7 chunk forwards and stores its
    6 full blocks; the same prompt again prefills from block 6 (one forward for its last 4 tokens), and another
    sharing 80 tokens hits 5 blocks and chunks only its tail: each gives a cold unchunked run's tokens/logprobs."""
    shared = prompt(3, 100)
    other = shared[:80] + prompt(4, 60)
    reqs = [request("first", shared), request("again", shared), request("other", other, temperature=0.8, seed=3)]

    async def cold(engine):
        return [await collect(engine, r) for r in reqs]

    async def cached(engine):
        out, hits, forwards = [], [], []
        for r in reqs:
            before, prefills = engine.stats().prefix_cache_hits, engine.prefills
            out.append(await collect(engine, r))
            hits.append(engine.stats().prefix_cache_hits - before)
            forwards.append(engine.prefills - prefills)
        return out, hits, forwards

    reference = run(make_engine(checkpoint, prefix_cache_mb=0, chunked_prefill=False), cold)
    got, hits, forwards = run(make_engine(checkpoint, prefix_cache_mb=64, max_prefill_tokens=16), cached)
    assert hits == [0, 96, 80]  # (100 - 1) // 16 = 6 blocks; the other prompt shares 5 full ones
    assert forwards == [7, 1, 4]  # ceil(100 / 16); 4 tokens; ceil(60 / 16)
    for (tokens, lps), (ref_tokens, ref_lps) in zip(got, reference, strict=True):
        assert tokens == ref_tokens
        torch.testing.assert_close(lps, ref_lps, rtol=0, atol=1e-4)


def test_requests_admitted_together_with_hits_of_different_lengths(checkpoint):
    """One batched prefill mixing a long hit, a short hit and a miss, right-padded at different offsets."""
    base = prompt(3, 70)
    reqs = [request("long", base + [7, 8, 9]), request("short", base[:33]), request("miss", prompt(4, 20))]

    async def together(engine):
        await collect(engine, request("warm", base))  # stores the 4 blocks of base's first 64 tokens
        with engine._cond:  # the engine thread waits until all three are queued
            tasks = [asyncio.create_task(collect(engine, r)) for r in reqs]
            await asyncio.sleep(0.2)
        return await asyncio.gather(*tasks), engine.stats().prefix_cache_hits

    async def alone(engine):
        return [await collect(engine, r) for r in reqs]

    reference = run(make_engine(checkpoint, prefix_cache_mb=0), alone)
    got, hits = run(make_engine(checkpoint, prefix_cache_mb=64), together)
    assert hits == 64 + 32
    for (tokens, lps), (ref_tokens, ref_lps) in zip(got, reference, strict=True):
        assert tokens == ref_tokens
        torch.testing.assert_close(lps, ref_lps, rtol=0, atol=1e-4)


def test_prompt_logprobs_skip_the_lookup(checkpoint):
    ids = prompt(5, 40)
    scoring = EngineRequest("score", ids, SamplingParams(max_new_tokens=0), prompt_logprobs=1)

    async def body(engine):
        await collect(engine, request("warm", ids))
        outs = [out async for out in engine.generate(scoring)]
        return engine.stats(), outs[0].prompt_logprobs

    stats, prompt_lp = run(make_engine(checkpoint, prefix_cache_mb=64), body)
    assert stats.prefix_cache_hits == 0 and stats.prefix_cache_queries == 40
    assert len(prompt_lp) == 40


def test_the_cap_evicts_the_least_recently_used_block(checkpoint):
    p1, p2, p3 = (prompt(10 + i, BLOCK + 1) for i in range(3))  # one full block each

    async def body(engine):
        hits = []
        for rid, ids in (("p1", p1), ("p2", p2), ("p1b", p1), ("p3", p3), ("p1c", p1), ("p2b", p2)):
            before = engine.stats().prefix_cache_hits
            await collect(engine, request(rid, ids, max_new=1))
            hits.append(engine.stats().prefix_cache_hits - before)
        return hits, engine.stats()

    hits, stats = run(make_engine(checkpoint, prefix_cache_mb=block_mb(checkpoint, 2)), body)
    # p3 evicts p2 (least recently used: p1 was hit after it); p2 comes back by evicting p3
    assert hits == [0, 0, BLOCK, 0, BLOCK, 0]
    assert stats.counters["prefix_cache_evictions"] == 2
    assert stats.extra["prefix_cache_blocks"] == 2 and stats.extra["prefix_cache_blocks_in_use"] == 0


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_an_aborted_request_lets_go_of_its_blocks(checkpoint, process):
    """A hit holds its matched blocks while it runs; closing its stream gives them back (and stores what it
    generated), and the LRU can then evict them."""
    ids = prompt(20, 2 * BLOCK + 1)

    async def body(engine):
        await collect(engine, request("warm", ids, max_new=1))
        held, got = [], 0
        async with aclosing(engine.generate(request("long", ids, max_new=200))) as stream:
            async for out in stream:
                held.append(engine.stats().extra["prefix_cache_blocks_in_use"])
                got += len(out.token_ids)
                if got >= 40:
                    break
        deadline = time.monotonic() + 5
        while engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return held, engine.stats()

    held, stats = run(make_engine(checkpoint, process, prefix_cache_mb=64), body)
    assert held[0] == 2  # the two prompt blocks it matched
    assert stats.running == 0 and stats.extra["prefix_cache_blocks_in_use"] == 0
    assert stats.extra["prefix_cache_blocks"] >= 4  # + the blocks its 40+ generated tokens completed (72+ slots)


def test_metrics_have_vllms_prefix_cache_names(server):
    """The default server has the cache on: a repeated prompt moves neo:prefix_cache_hits_total."""
    ids = prompt(30, 3 * BLOCK + 1)
    body = {"model": "tiny", "prompt": ids, "max_tokens": 2, "temperature": 0}

    def series(text: str, name: str) -> float:
        lines = [line for line in text.splitlines()
                 if line.startswith(name + "{") and ('model_name="tiny"' in line or 'model="tiny"' in line)]
        return float(lines[0].rsplit(" ", 1)[1])

    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.get("/metrics").text
        for _ in range(2):
            assert client.post("/v1/completions", json=body).status_code == 200
        after = client.get("/metrics").text
    assert series(after, "neo:prefix_cache_queries_total") - series(before, "neo:prefix_cache_queries_total") == 98
    assert series(after, "neo:prefix_cache_hits_total") - series(before, "neo:prefix_cache_hits_total") == 48
    assert series(after, "neo_engine_prefix_cache_blocks_in_use") == 0


def test_a_client_disconnect_lets_go_of_the_blocks(long_server):
    """Over HTTP: a streaming request that hit the cache holds its blocks until the client hangs up (a long-context
    model: the request could not finish on its own before the hang-up)."""
    server = long_server
    ids = prompt(31, 2 * BLOCK + 1)
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0}

    def in_use(client: httpx.Client) -> float:
        text = client.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith('neo_engine_prefix_cache_blocks_in_use{model="tiny"}'))
        return float(line.rsplit(" ", 1)[1])

    def aborted(client: httpx.Client) -> float:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return sum(s.value for f in families for s in f.samples if s.name == "neo:request_success_total"
                   and s.labels == {"model_name": "tiny", "finished_reason": "abort"})

    with httpx.Client(base_url=server.url, timeout=60) as client, \
            httpx.Client(base_url=server.url, timeout=60) as streamer:
        assert client.post("/v1/completions", json=body).status_code == 200  # stores the prompt's 2 blocks
        assert in_use(client) == 0
        aborts = aborted(client)
        stream_body = {**body, "max_tokens": LONG_SEQ_LEN - 64, "ignore_eos": True, "stream": True}
        with streamer.stream("POST", "/v1/completions", json=stream_body) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: {")
                if chunks == 3:
                    break
            held = in_use(client)
        streamer.close()  # hang up mid-stream
        deadline = time.monotonic() + 10
        while (in_use(client) or server.running()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held == 2 and in_use(client) == 0 and server.running() == 0
        assert aborted(client) == aborts + 1  # it ended by the hang-up, not by finishing its tokens
