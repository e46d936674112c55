"""The torch engine on its own: continuous batching, seeds, logprobs, aborts, queueing, death.

Tests taking ``kind`` run on both front ends: the loop on a thread of this process (``TorchEngine``) and in a
spawned engine process (``ProcessEngine``, the server's default); those that hold the loop's lock to queue
requests together need the thread engine."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing

import pytest
import torch

from neo.generate import SamplingParams, generate
from neo.hf import load_hf
from neo_serving.engines.base import EngineRequest, ModelInfo
from neo_serving.engines.engine_process import ProcessEngine
from neo_serving.engines.torch_engine import TorchEngine
from neo_serving.errors import EngineUnavailableError, ServingError
from neo_serving.tokens import ServedTokenizer

ENGINES = {"thread": TorchEngine, "process": ProcessEngine}


@pytest.fixture(params=list(ENGINES))
def kind(request) -> str:
    return request.param


def make_engine(checkpoint, kind: str = "thread", **kw) -> TorchEngine | ProcessEngine:
    context = json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"]
    info = ModelInfo("tiny", "local", checkpoint, context, 0)
    return ENGINES[kind](info, ServedTokenizer.load(checkpoint), **kw)


async def collect(engine, request):
    tokens, logprobs, finish = [], [], None
    async for out in engine.generate(request):
        tokens += out.token_ids
        logprobs += [lp.logprob for lp in out.logprobs or ()]
        finish = out.finish_reason
    return tokens, logprobs, finish


def requests(tokenizer, n, max_new=20, **params):
    texts = ["Hello", "你好，世界", "The quick brown fox jumps", "def add(a, b):", "北京是中国的首都", "Neo", "12",
             "请"]
    return [EngineRequest(f"r{i}", tokenizer.encode(texts[i % len(texts)], add_bos=True),
                          SamplingParams(max_new_tokens=max_new, seed=1000 + i, **params), logprobs=2)
            for i in range(n)]


def test_matches_neo_generate_for_the_same_seed(checkpoint, tokenizer, kind):
    """One request through the engine gives exactly what ``neo.generate.generate`` gives."""
    model = load_hf(checkpoint)
    params = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01, repetition_penalty=1.3)
    reqs = requests(tokenizer, 3, max_new=24, **params)

    async def main():
        engine = make_engine(checkpoint, kind)
        await engine.start()
        try:
            return [await collect(engine, r) for r in reqs]
        finally:
            await engine.shutdown()

    for request, (tokens, _, finish) in zip(reqs, asyncio.run(main()), strict=True):
        assert tokens == generate(model, request.prompt_ids, request.params)
        assert len(tokens) == 24 and finish == "length"


@pytest.mark.parametrize("invariant", [True, False], ids=["batch-invariant", "default"])
def test_concurrent_equals_sequential(checkpoint, tokenizer, invariant, kind):
    reqs = requests(tokenizer, 8, max_new=16)

    async def main():
        engine = make_engine(checkpoint, kind, max_batch_size=8, batch_invariant=invariant)
        await engine.start()
        try:
            sequential = [await collect(engine, r) for r in reqs]
            steps = engine.steps
            concurrent = await asyncio.gather(*(collect(engine, r) for r in reqs))
            return sequential, concurrent, steps, engine.steps - steps
        finally:
            await engine.shutdown()

    sequential, concurrent, seq_steps, conc_steps = asyncio.run(main())
    assert [t for t, _, _ in concurrent] == [t for t, _, _ in sequential]
    if invariant:  # bitwise: the logprobs too
        assert [lp for _, lp, _ in concurrent] == [lp for _, lp, _ in sequential]
    else:
        torch.testing.assert_close([lp for _, lp, _ in concurrent], [lp for _, lp, _ in sequential],
                                   rtol=1e-5, atol=1e-5)
    assert conc_steps <= seq_steps / 4  # 8 requests really decoded together


def test_requests_admitted_together_share_one_prefill_and_equal_their_runs_alone(checkpoint, tokenizer):
    """Prompts of different lengths (right-padded in one forward), one with prompt logprobs and echo only:
    the same tokens and logprobs as each request gets alone, from a single prefill forward."""
    reqs = requests(tokenizer, 6, max_new=12)
    reqs[1].prompt_logprobs = 2
    reqs[2].params.max_new_tokens = 0  # scoring only: finishes in the prefill
    reqs[2].prompt_logprobs = 1
    assert len({len(r.prompt_ids) for r in reqs}) > 2

    async def collect_all(engine, request):
        outs = [out async for out in engine.generate(request)]
        return ([t for o in outs for t in o.token_ids], [lp.logprob for o in outs for lp in o.logprobs or ()],
                [lp and lp.logprob for o in outs for lp in o.prompt_logprobs or ()])

    async def main():
        engine = make_engine(checkpoint, max_batch_size=8)
        await engine.start()
        try:
            alone = [await collect_all(engine, r) for r in reqs]
            before = engine.prefills
            with engine._cond:  # the engine thread waits until all six are queued (the lock is reentrant)
                tasks = [asyncio.create_task(collect_all(engine, r)) for r in reqs]
                await asyncio.sleep(0.2)
            together = await asyncio.gather(*tasks)
            return alone, together, engine.prefills - before
        finally:
            await engine.shutdown()

    alone, together, prefills = asyncio.run(main())
    assert prefills == 1
    assert [t for t, _, _ in together] == [t for t, _, _ in alone]
    assert together[2][0] == [] and len(together[2][2]) == len(reqs[2].prompt_ids)
    assert together[1][2][0] is None and len(together[1][2]) == len(reqs[1].prompt_ids)
    for (_, lp, plp), (_, lp_alone, plp_alone) in zip(together, alone, strict=True):
        torch.testing.assert_close(lp, lp_alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plp[1:], plp_alone[1:], rtol=1e-5, atol=1e-5)


def test_more_requests_than_rows_wait_their_turn(checkpoint, tokenizer, kind):
    reqs = requests(tokenizer, 6, max_new=8)

    async def main():
        engine = make_engine(checkpoint, kind, max_batch_size=2)
        await engine.start()
        try:
            alone = [await collect(engine, r) for r in reqs]
            together = await asyncio.gather(*(collect(engine, r) for r in reqs))
            return alone, together, engine.stats()
        finally:
            await engine.shutdown()

    alone, together, stats = asyncio.run(main())
    assert [t for t, _, _ in together] == [t for t, _, _ in alone]
    assert stats.running == 0 and stats.waiting == 0


def test_closing_a_stream_aborts_and_frees_the_row(checkpoint, tokenizer, kind):
    long, short = requests(tokenizer, 2, max_new=200)

    async def main():
        engine = make_engine(checkpoint, kind, max_batch_size=1)
        await engine.start()
        try:
            got = 0
            async with aclosing(engine.generate(long)) as stream:
                async for out in stream:
                    got += len(out.token_ids)
                    if got >= 3:
                        break
            deadline = time.monotonic() + 5
            while engine.stats().running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            freed = engine.stats().running == 0
            tokens, _, finish = await asyncio.wait_for(collect(engine, short), 30)  # the one row is free again
            return freed, got, len(tokens), finish
        finally:
            await engine.shutdown()

    freed, got, n, finish = asyncio.run(main())
    assert freed and got >= 3 and n == 200 and finish == "length"


def test_stop_ids_end_generation(checkpoint, tokenizer, kind):
    (request,) = requests(tokenizer, 1, max_new=30)

    async def main():
        engine = make_engine(checkpoint, kind)
        await engine.start()
        try:
            tokens, _, _ = await collect(engine, request)
            request.params.stop_ids = (tokens[4],)
            request.request_id = "again"
            return tokens, await collect(engine, request)
        finally:
            await engine.shutdown()

    tokens, (stopped, _, finish) = asyncio.run(main())
    first = tokens.index(tokens[4])
    assert stopped == tokens[:first + 1] and finish == "stop"


def test_dead_engine_refuses_requests(checkpoint, tokenizer, kind):
    (request,) = requests(tokenizer, 1)

    async def main():
        engine = make_engine(checkpoint, kind)
        await engine.start()
        assert engine.healthy()
        await engine.shutdown()
        assert not engine.healthy()
        with pytest.raises(EngineUnavailableError, match="not running"):
            await collect(engine, request)

    asyncio.run(main())


def test_a_failing_request_fails_alone(checkpoint, tokenizer, kind):
    good, bad = requests(tokenizer, 2, max_new=10)
    bad.params.top_p = 1e-300  # below float32: every token filtered, sampling raises

    async def main():
        engine = make_engine(checkpoint, kind)
        await engine.start()
        try:
            results = await asyncio.gather(collect(engine, good), collect(engine, bad), return_exceptions=True)
            return results, engine.healthy()
        finally:
            await engine.shutdown()

    (ok, failed), healthy = asyncio.run(main())
    assert len(ok[0]) == 10 and isinstance(failed, ServingError) and "sampling failed" in failed.message
    assert healthy


def test_an_unset_batch_size_is_sized_from_the_kv_cache_budget(checkpoint, tokenizer):
    """max_batch_size=None: as many rows as kv_cache_gb holds (capped), 16 at most when batch-invariant."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    row = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * cfg["max_position_embeddings"] * 4

    async def rows(**kw):
        engine = make_engine(checkpoint, max_batch_size=None, **kw)
        await engine.start()
        try:
            tokens, _, _ = await collect(engine, requests(tokenizer, 1, max_new=3)[0])
            assert len(tokens) == 3
            return engine.max_batch_size, engine.cache.k[0].shape[0]
        finally:
            await engine.shutdown()

    assert asyncio.run(rows(kv_cache_gb=5 * row / 2**30)) == (5, 5)
    assert asyncio.run(rows(kv_cache_gb=0.5 * row / 2**30)) == (1, 1)  # at least one row
    assert asyncio.run(rows(kv_cache_gb=64)) == (128, 128)
    assert asyncio.run(rows(kv_cache_gb=64, batch_invariant=True)) == (16, 17)  # + the anchor row


def long_request(tokenizer, request_id: str, tokens: int, **params) -> EngineRequest:
    text = "The quick brown fox jumps over the lazy dog. 北京是中国的首都。 def add(a, b): return a + b\n" * 20
    ids = tokenizer.encode(text, add_bos=True)[:tokens]
    assert len(ids) == tokens
    return EngineRequest(request_id, ids, SamplingParams(**({"max_new_tokens": 8, "seed": 7} | params)), logprobs=2)


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_result(checkpoint, tokenizer, kind):
    """A prompt of 8 chunks: 8 prefill forwards, and the same tokens, logprobs and prompt logprobs as one forward
    (chunking off); a prompt that fits one chunk still takes one."""
    chunk, n = 16, 121  # 7 full chunks and one of 9 tokens
    scored = long_request(tokenizer, "scored", n, temperature=0.8)
    scored.prompt_logprobs = 1

    async def run(chunked: bool):
        engine = make_engine(checkpoint, kind, max_prefill_tokens=chunk, chunked_prefill=chunked)
        await engine.start()
        try:
            outs = [out async for out in engine.generate(scored)]
            prefills = engine.stats().counters["prefill_forwards"]
            short = await collect(engine, requests(tokenizer, 1)[0])
            return outs, prefills, engine.stats().counters["prefill_forwards"] - prefills, short
        finally:
            await engine.shutdown()

    outs, prefills, short_prefills, short = asyncio.run(run(True))
    ref, ref_prefills, _, ref_short = asyncio.run(run(False))
    assert (prefills, short_prefills, ref_prefills) == (8, 1, 1)
    assert [t for o in outs for t in o.token_ids] == [t for o in ref for t in o.token_ids]
    assert len([t for o in outs for t in o.token_ids]) == 8
    lps = [[lp.logprob for o in run_ for lp in o.logprobs or ()] for run_ in (outs, ref)]
    torch.testing.assert_close(lps[0], lps[1], rtol=1e-5, atol=1e-5)
    prompt_lps = [[lp and lp.logprob for o in run_ for lp in o.prompt_logprobs or ()] for run_ in (outs, ref)]
    assert len(prompt_lps[0]) == n and prompt_lps[0][0] is None
    torch.testing.assert_close(prompt_lps[0][1:], prompt_lps[1][1:], rtol=1e-5, atol=1e-5)
    assert short[0] == ref_short[0]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "one-forward"])
def test_running_streams_decode_between_the_chunks_of_a_long_prompt(checkpoint, tokenizer, chunked):
    """While a 40-chunk prompt is prefilled, a running stream gets a token after every chunk (39 before the long
    prompt's first token), and a short request sent meanwhile is admitted and answered before the long prompt's
    first token, with what it gets alone; with chunking off the running stream waits for the whole prefill.
    What the running stream logs after the submission but before the long prompt's first token is otherwise
    only tokens already on their way (0-1 seen; the bound leaves room for an event loop that falls behind the
    engine thread on a loaded machine)."""
    running, short = requests(tokenizer, 2, max_new=200)
    short.params.max_new_tokens = 6
    long = long_request(tokenizer, "long", 160, max_new_tokens=2)
    log: list[str] = []

    async def main():
        engine = make_engine(checkpoint, max_prefill_tokens=4, chunked_prefill=chunked)
        await engine.start()
        alone = await collect(engine, short)
        started, chunking = asyncio.Event(), asyncio.Event()

        async def stream_running():
            async for out in engine.generate(running):
                log.extend("r" * len(out.token_ids))
                if len(log) >= 3:
                    started.set()
                if "submit" in log and log.count("r") >= log.index("submit") + 5:
                    chunking.set()

        async def stream_long():
            await started.wait()
            log.append("submit")  # the request is queued in this same step of this task
            async for _ in engine.generate(long):
                log.append("long")

        async def stream_short():
            await chunking.wait()  # 5 iterations since the long prompt came: its chunks are under way
            log.append("short sent")
            tokens, _, _ = await collect(engine, short)
            log.append("short done")
            return tokens

        try:
            *_, tokens = await asyncio.gather(stream_running(), stream_long(), stream_short())
            return engine.prefills, tokens, alone[0]
        finally:
            await engine.shutdown()

    prefills, tokens, alone = asyncio.run(main())
    between = log[log.index("submit"):log.index("long")].count("r")
    assert tokens == alone
    if chunked:
        assert prefills == 2 + 40 + 1 and between >= 39, log[:60]
        assert log.index("short done") < log.index("long"), log[:60]
    else:
        assert prefills == 4 and between <= 12, log[:60]


def test_aborting_a_prompt_between_its_chunks_frees_its_row(checkpoint, tokenizer, kind):
    """A 40-chunk prompt whose client leaves while a running stream decodes beside it: its chunks stop, its row is
    freed (nothing runs once the other stream ends) and a request after it is served from the freed row."""
    running, after = requests(tokenizer, 2, max_new=60)
    long = long_request(tokenizer, "long", 160, max_new_tokens=2)

    async def main():
        engine = make_engine(checkpoint, kind, max_batch_size=2, max_prefill_tokens=4)
        await engine.start()
        try:
            stream = engine.generate(long)
            pending = asyncio.ensure_future(stream.__anext__())  # queues it; its first output is 40 chunks away
            got = 0
            async for out in engine.generate(running):
                got += len(out.token_ids)
                if got == 5:  # the long prompt is being chunked beside this stream: its client leaves
                    pending.cancel()  # the stream ends inside its read, as when a server task is cancelled
                    await asyncio.gather(pending, return_exceptions=True)
                    await stream.aclose()
            deadline = time.monotonic() + 5
            while engine.stats().running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            idle = engine.stats().running == 0
            prefills = engine.stats().counters["prefill_forwards"]
            tokens, _, finish = await asyncio.wait_for(collect(engine, after), 30)
            return idle, prefills, got, len(tokens), finish
        finally:
            await engine.shutdown()

    idle, prefills, got, n, finish = asyncio.run(main())
    assert idle and got == 60 and n == 60 and finish == "length"
    assert prefills < 1 + 40  # the running stream's, then chunks until the abort: not all 40
