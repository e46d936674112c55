"""Training throughput: Neo's DeepSpeed trainer vs Hugging Face ``Trainer`` on ``LlamaForCausalLM``.

Same model shape (``neo.hf.hf_config`` of the preset, so both have identical parameter tensors), same
packed token rows (the sample corpus tokenized into shards by Neo's trainer), same batch, optimizer
(AdamW, weight decay 0.1, clip 1.0), fp32, same torch thread count, one process each; each side runs
in its own subprocess. Tokens/s counts forward positions (batch × seq_len) per optimizer step over the
steps after ``--warmup``, timed from the end of one step to the end of the next (median interval).

MFU (model FLOPs per token, PaLM appendix B, × tokens/s) is reported against the fp32 sgemm rate measured
in the same run, before and after the trainers, on this step's own matrix shapes with the same thread
count (``run_sgemm``): the target is the share of a step its matmuls alone would take.

    .venv/bin/python bench/train/bench_train.py                      # tiny preset, the `neo up` workload
    .venv/bin/python bench/train/bench_train.py --preset neo-250m --steps 6 --batch 2 --seq-len 512

On a GPU (``--device cuda``) both trainers run in bf16 (Neo: DeepSpeed's bf16 mode; HF: ``bf16=True`` autocast),
tokens/s are wall-clock, and MFU is reported against the bf16 GEMM rate at the step's shapes (timed with CUDA
events) and against the device's datasheet peak (``neo_trainer.metrics.PEAK_FLOPS``). ``bench/train/gpu/run.sh``
is that run for neo-250m at MAP-Neo's 64,000-piece vocabulary, prepared here by ``bench/train/gpu/prepare.sh``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_train")
REPO = Path(__file__).resolve().parents[2]


def _gaps(times: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(times[warmup:], times[warmup + 1 :], strict=False)]


def _rates(times: list[float], warmup: int, tokens_per_step: int) -> float:
    """Median tokens/s over the step intervals after ``warmup`` steps."""
    return tokens_per_step / statistics.median(_gaps(times, warmup))


class CpuClock:
    """The main thread's CPU time, sampled every ``period`` s by a side thread, read back at any wall time.

    On a shared machine a step's wall time counts the time other processes held the core; its CPU time does
    not. With one torch thread every op of a step runs on the main thread, so tokens per CPU-second is the
    speed the step would have on a quiet core (cache and memory-bandwidth sharing still count).
    """

    def __init__(self, period: float = 0.002):
        import threading

        self.clock = time.pthread_getcpuclockid(threading.main_thread().ident)
        self.samples: list[tuple[float, float]] = []
        self.period, self.stop = period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.samples.append((time.time(), time.clock_gettime(self.clock)))

    def __enter__(self) -> CpuClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def at(self, wall_times: list[float]) -> list[float]:
        import numpy as np

        walls, cpus = zip(*self.samples, strict=True)
        return [float(x) for x in np.interp(wall_times, walls, cpus)]


def _cpu_rates(cpu_times: list[float], warmup: int, tokens_per_step: int) -> float:
    """Median tokens per CPU-second of the main thread over the steps after ``warmup``."""
    return tokens_per_step / statistics.median(_gaps(cpu_times, warmup))


def run_neo(args: argparse.Namespace, compile_blocks: bool = False) -> dict:
    from neo_trainer.config import build_config
    from neo_trainer.metrics import read_jsonl
    from neo_trainer.stages.pretrain import run_pretrain

    cfg = build_config(_neo_config(args, compile_blocks))
    with CpuClock() as clock:
        run_pretrain(cfg)
    rows = read_jsonl(cfg.run_dir / "metrics.jsonl")
    times = [r["time"] for r in rows]
    tokens = args.batch * args.seq_len
    wall = _rates(times, args.warmup, tokens)
    return {"tokens_per_s": wall,  # on a GPU the host thread waits for the device: CPU time means nothing there
            "cpu_tokens_per_s": wall if args.device == "cuda" else _cpu_rates(clock.at(times), args.warmup, tokens),
            "mean_loss": statistics.mean(r["loss"] for r in rows), "steps": len(rows), "threads": _threads()}


def _neo_config(args: argparse.Namespace, compile_blocks: bool) -> dict:
    files = sorted((REPO / "data" / "sample").glob("*.jsonl.gz"))
    return {
        "name": "bench", "run_dir": str(args.work / ("neo-run-compiled" if compile_blocks else "neo-run")),
        "model": {"preset": args.preset, "compile": compile_blocks,
                  "overrides": {"vocab_size": args.vocab_size} if args.vocab_size else {}},
        "data": {"text_files": [str(f) for f in files], "tokenizer": str(args.tokenizer), "seq_len": args.seq_len,
                 "max_tokens": args.max_tokens, "val_fraction": 0.0},
        "train": {"steps": args.steps, "micro_batch_size": args.batch, "lr": 1e-3, "warmup_steps": 0,
                  "schedule": "constant", "seed": 0},
        "distributed": {"zero_stage": args.zero_stage, "precision": "bf16" if args.device == "cuda" else "fp32"},
        "metrics": {"log_every": 1, "eval_every": 10**9, "tensorboard": False, "progress": False},
        "checkpoint": {"export_dir": str(args.work / "neo-export")},
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_hf(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from neo.config import ModelConfig
    from neo.hf import hf_config
    from neo.shards import open_shard, read_manifest
    from neo.tokenizer import NeoTokenizer

    shard_dir = args.work / "neo-run" / "data"  # the rows Neo trained on (run_neo writes them first)
    manifest = read_manifest(shard_dir)
    stream = np.concatenate([np.asarray(open_shard(shard_dir / f.path, manifest.dtype)) for f in manifest.files])
    n = len(stream) // args.seq_len
    rows = torch.from_numpy(stream[: n * args.seq_len].astype(np.int64)).view(n, args.seq_len)
    rows = rows[torch.randperm(n, generator=torch.Generator().manual_seed(0))]

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": rows[i], "labels": rows[i]}

    tok = NeoTokenizer.load(args.tokenizer)
    mcfg = ModelConfig.from_name(args.preset, vocab_size=args.vocab_size or tok.vocab_size)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf_config(mcfg, tok, torch.float32).items()
                                            if k not in ("architectures", "model_type")}))
    times: list[float] = []
    cpu_times: list[float] = []
    cuda = args.device == "cuda"

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):  # transformers' callback signature
            if cuda:  # HF keeps the loss on the device: wait for the step (Neo's trainer reads its loss each step)
                torch.cuda.synchronize()
            times.append(time.time())
            cpu_times.append(time.thread_time())  # the main thread: one torch thread runs every op here

    targs = TrainingArguments(
        output_dir=str(args.work / "hf-out"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        lr_scheduler_type="constant", optim="adamw_torch", logging_steps=10**9, save_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(), callbacks=[Clock()])
    out = trainer.train()
    wall = _rates(times, args.warmup, args.batch * args.seq_len)
    return {"tokens_per_s": wall,
            "cpu_tokens_per_s": wall if cuda else _cpu_rates(cpu_times, args.warmup, args.batch * args.seq_len),
            "mean_loss": out.training_loss, "steps": len(times) - 1, "threads": _threads(),
            "params": sum(p.numel() for p in model.parameters())}


def step_gemms(preset: str, vocab_size: int, batch: int, seq_len: int) -> list[tuple[str, str, int, int, int, int]]:
    """Every matrix product of one training step, as (name, layout, count, batch, m, k, n) → C[m,n] = A[m,k]·B[k,n].

    Per linear layer Y = X·Wᵀ (nn.Linear keeps W as [out, in]): forward X·Wᵀ, input grad dY·W, weight grad
    dYᵀ·X, in those memory layouts (what autograd calls). Attention per (row, head): forward Q·Kᵀ and P·V,
    backward dO·Vᵀ, Pᵀ·dO, dS·K, dSᵀ·Q, all full S×S (no causal skipping), as the model FLOPs count them.
    Their FLOPs add up to ``ModelConfig.flops_per_token(seq_len) · batch · seq_len`` exactly (checked).
    """
    from neo.config import ModelConfig

    cfg = ModelConfig.from_name(preset, vocab_size=vocab_size)
    rows, d, hd = batch * seq_len, cfg.d_model, cfg.head_dim
    kv = cfg.n_kv_heads * hd
    linears = [("q_proj", d, d), ("k_proj", d, kv), ("v_proj", d, kv), ("o_proj", d, d), ("gate_proj", d, cfg.d_ff),
               ("up_proj", d, cfg.d_ff), ("down_proj", cfg.d_ff, d)]
    out = []
    for name, n_in, n_out in linears:
        out += [(f"{name} fwd", "nt", cfg.n_layers, 1, rows, n_in, n_out),
                (f"{name} dX", "nn", cfg.n_layers, 1, rows, n_out, n_in),
                (f"{name} dW", "tn", cfg.n_layers, 1, n_out, rows, n_in)]
    out += [("lm_head fwd", "nt", 1, 1, rows, d, cfg.vocab_size), ("lm_head dX", "nn", 1, 1, rows, cfg.vocab_size, d),
            ("lm_head dW", "tn", 1, 1, cfg.vocab_size, rows, d)]
    bh = batch * cfg.n_heads
    out += [("attn Q·Kᵀ fwd", "nt", cfg.n_layers, bh, seq_len, hd, seq_len),
            ("attn P·V fwd", "nn", cfg.n_layers, bh, seq_len, seq_len, hd),
            ("attn dO·Vᵀ", "nt", cfg.n_layers, bh, seq_len, hd, seq_len),
            ("attn Pᵀ·dO", "tn", cfg.n_layers, bh, seq_len, seq_len, hd),
            ("attn dS·K", "nn", cfg.n_layers, bh, seq_len, seq_len, hd),
            ("attn dSᵀ·Q", "tn", cfg.n_layers, bh, seq_len, seq_len, hd)]
    total = sum(2 * c * b * m * k * n for _, _, c, b, m, k, n in out)
    assert total == cfg.flops_per_token(seq_len) * batch * seq_len, (total, cfg.flops_per_token(seq_len))
    return out


def run_sgemm(args: argparse.Namespace) -> dict:
    """fp32 torch.mm/bmm on the step's matrix shapes, same thread count: the step's GEMM-bound time and rate.

    Each shape's time is the least CPU time of this thread over ``--sgemm-repeats`` calls in each of
    ``--sgemm-passes`` passes over all shapes (with one torch thread the product runs on the calling thread;
    CPU time leaves out the time other processes held the core, as the trainers' tokens per CPU-second do). The
    peak is the FLOP-weighted rate of
    all of them: model FLOPs of a step ÷ the time its GEMMs take standalone, so MFU against it is the share of
    a step that would remain if everything but the matmuls cost nothing. The best single shape's rate (about
    the core's FMA peak) is kept as a stricter reference. The attention products are counted as full S×S bmm
    calls (the model FLOPs count them so); the trainer runs them inside SDPA's causal flash kernel.
    """
    import torch

    from neo.tokenizer import NeoTokenizer

    vocab = args.vocab_size or NeoTokenizer.load(args.tokenizer).vocab_size
    cuda = args.device == "cuda"
    dtype, device = (torch.bfloat16, "cuda") if cuda else (torch.float32, "cpu")
    shapes: dict[tuple, list] = {}
    for name, layout, count, b, m, k, n in step_gemms(args.preset, vocab, args.batch, args.seq_len):
        shapes.setdefault((layout, b, m, k, n), []).append((name, count))
    gen = torch.Generator().manual_seed(0)
    calls = {}
    for layout, b, m, k, n in shapes:
        a = torch.randn(b, *((k, m) if layout == "tn" else (m, k)), generator=gen).to(device, dtype)
        w = torch.randn(b, *((n, k) if layout == "nt" else (k, n)), generator=gen).to(device, dtype)
        a, w = (a.transpose(1, 2) if layout == "tn" else a), (w.transpose(1, 2) if layout == "nt" else w)
        out = torch.empty(b, m, n, device=device, dtype=dtype)
        calls[(layout, b, m, k, n)] = (torch.mm, a[0], w[0], out[0]) if b == 1 else (torch.bmm, a, w, out)
    best = dict.fromkeys(shapes, float("inf"))
    for _ in range(args.sgemm_passes):
        for key, (mm, a, w, out) in calls.items():
            mm(a, w, out=out)  # warm: caches, page faults
            for _ in range(args.sgemm_repeats):
                if cuda:  # device time of the one kernel, from CUDA events
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    mm(a, w, out=out)
                    end.record()
                    end.synchronize()
                    best[key] = min(best[key], start.elapsed_time(end) / 1e3)
                    continue
                t0 = time.thread_time()  # one torch thread: the product runs on this thread
                mm(a, w, out=out)
                best[key] = min(best[key], time.thread_time() - t0)
    per_shape = []
    for (layout, b, m, k, n), users in shapes.items():
        seconds, flops, count = best[(layout, b, m, k, n)], 2 * b * m * k * n, sum(c for _, c in users)
        per_shape.append({"gemms": ", ".join(name for name, _ in users), "weights": b == 1,
                          "shape": f"{b}×({m}×{k})·({k}×{n}) {layout}", "per_step": count,
                          "flops_per_step": count * flops, "s_per_step": count * seconds,
                          "gflops_per_s": flops / seconds / 1e9})
    weights = [r for r in per_shape if r["weights"]]
    attention = [r for r in per_shape if not r["weights"]]

    def rate(rows: list[dict]) -> float:
        return sum(r["flops_per_step"] for r in rows) / sum(r["s_per_step"] for r in rows)

    datasheet = None
    if cuda:
        from neo_trainer.metrics import device_peak_flops

        datasheet = device_peak_flops(torch.device("cuda"), bf16=True)
    return {"peak_flops_per_s": rate(per_shape), "weights_flops_per_s": rate(weights), "datasheet": datasheet,
            "attention_bmm_flops_per_s": rate(attention), "step_gemm_s": sum(r["s_per_step"] for r in per_shape),
            "step_flops": sum(r["flops_per_step"] for r in per_shape),
            "best_flops_per_s": max(r["gflops_per_s"] for r in per_shape) * 1e9, "shapes": per_shape,
            "threads": _threads()}


def _ensure_tokenizer(args: argparse.Namespace) -> None:
    if args.tokenizer and Path(args.tokenizer).exists():
        return
    from neo.stack import DEMO_VOCAB_SIZE, sample_files
    from neo.tokenizer import TokenizerConfig, train_tokenizer

    args.tokenizer = args.work / "tokenizer"
    if not (args.tokenizer / "tokenizer.json").exists():
        train_tokenizer(sample_files(), args.tokenizer, TokenizerConfig(vocab_size=DEMO_VOCAB_SIZE))


def _child(which: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--which", which, "--json-out", str(args.work / f"{which}.json"),
           *(a for k, v in vars(args).items() if k not in ("which", "json_out") and v not in (None, False)
             for a in ((f"--{k.replace('_', '-')}",) if v is True else (f"--{k.replace('_', '-')}", str(v))))]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")} | {"OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads((args.work / f"{which}.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps not timed")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=300_000, help="tokens read per sample file")
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both (1: stable numbers on a shared 2-core box; OpenMP threads "
                        "busy-wait, so two contending ones can be 10× slower)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: both trainers in bf16, wall-clock rates, MFU against bf16 GEMMs and the datasheet")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="model vocabulary (default: the tokenizer's); e.g. 64000, MAP-Neo's, with the demo tokenizer")
    p.add_argument("--tokenizer", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path(".neo/bench/train"))
    p.add_argument("--no-compile", action="store_true", help="skip the Neo run with model.compile=true")
    p.add_argument("--json-summary", type=Path, default=None, help="also write every number as JSON here")
    p.add_argument("--sgemm-repeats", type=int, default=3, help="timed torch.mm calls per GEMM shape and pass")
    p.add_argument("--sgemm-passes", type=int, default=3, help="passes over all shapes (fastest call counts)")
    p.add_argument("--which", choices=["neo", "neo-compile", "hf", "sgemm"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.which:
        import torch

        torch.set_num_threads(args.threads)
        runs = {"hf": run_hf, "sgemm": run_sgemm}
        result = runs[args.which](args) if args.which in runs else run_neo(args, args.which == "neo-compile")
        args.json_out.write_text(json.dumps(result))
        return
    _ensure_tokenizer(args)
    before = _child("sgemm", args)
    neo, hf = _child("neo", args), _child("hf", args)
    compiled = None if args.no_compile else _child("neo-compile", args)
    after = _child("sgemm", args)  # before and after the trainers: the faster (higher peak) counts
    sgemm = max(before, after, key=lambda r: r["peak_flops_per_s"])
    import transformers

    from neo.config import ModelConfig
    from neo.tokenizer import NeoTokenizer

    vocab = args.vocab_size or NeoTokenizer.load(args.tokenizer).vocab_size
    mcfg = ModelConfig.from_name(args.preset, vocab_size=vocab)
    flops_per_token = mcfg.flops_per_token(args.seq_len)
    peak = sgemm["peak_flops_per_s"]
    cuda = args.device == "cuda"
    where = (f"bf16 on {sgemm['datasheet'][1]}" if cuda else f"fp32 CPU threads={neo['threads']}")
    print(f"\nconfig: preset={args.preset} vocab={vocab} params={hf['params']:,} seq_len={args.seq_len} "
          f"batch={args.batch} steps={args.steps} (first {args.warmup} untimed) {where} "
          f"ZeRO-{args.zero_stage}; transformers {transformers.__version__}")
    best = sgemm["best_flops_per_s"]
    if cuda and sgemm["datasheet"][0]:  # on a GPU the stricter reference is the datasheet's dense bf16 peak
        best = sgemm["datasheet"][0]
        print(f"datasheet peak (dense bf16, neo_trainer.metrics.PEAK_FLOPS): {best / 1e12:.1f} TFLOP/s")
    kind = "torch.mm/bmm bf16, CUDA events" if cuda else f"torch.mm/bmm fp32, {sgemm['threads']} thread(s)"
    print(f"GEMMs at the step's shapes ({kind}, this run): the step's "
          f"{sgemm['step_flops'] / 1e9:.2f} GFLOP take {sgemm['step_gemm_s'] * 1e3:.0f} ms as standalone GEMMs = "
          f"{peak / 1e9:.1f} GFLOP/s (weight matmuls {sgemm['weights_flops_per_s'] / 1e9:.1f}, attention as bmm "
          f"{sgemm['attention_bmm_flops_per_s'] / 1e9:.1f}); best shape {sgemm['best_flops_per_s'] / 1e9:.1f} GFLOP/s; "
          f"model FLOPs/token {flops_per_token:,.0f} (peak before the trainers {before['peak_flops_per_s'] / 1e9:.1f}, "
          f"after {after['peak_flops_per_s'] / 1e9:.1f} GFLOP/s)")
    print("| trainer | tokens/s (wall, median step) | × HF | tokens per CPU-second (median step) | × HF | "
          + ("MFU vs bf16 GEMMs at the step's shapes | MFU vs datasheet |" if cuda else
             "MFU vs sgemm at the step's shapes (CPU time) | MFU vs best shape |")
          + " mean train loss |\n|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(label: str, r: dict) -> str:
        achieved = flops_per_token * r["cpu_tokens_per_s"]
        return (f"| {label} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / hf['tokens_per_s']:.2f}× | "
                f"{r['cpu_tokens_per_s']:,.0f} | {r['cpu_tokens_per_s'] / hf['cpu_tokens_per_s']:.2f}× | "
                f"{achieved / peak:.1%} | {achieved / best:.1%} | {r['mean_loss']:.3f} |")

    print(row("HF Trainer (LlamaForCausalLM), the baseline", hf))
    print(row("Neo (DeepSpeed engine, fused LM-head loss)", neo))
    if compiled:
        print(row("Neo, model.compile=true (Inductor blocks)", compiled))
    print(f"\nGEMMs of one step (ms per step = count × least {'device' if cuda else 'CPU'} time of a call):")
    for r in sorted(sgemm["shapes"], key=lambda r: -r["s_per_step"]):
        print(f"  {r['s_per_step'] * 1e3:8.1f} ms  {r['gflops_per_s']:6.1f} GFLOP/s  ×{r['per_step']:<3} {r['shape']}  "
              f"[{r['gemms']}]")
    if args.json_summary:
        args.json_summary.write_text(json.dumps({"sgemm": sgemm, "neo": neo, "hf": hf, "neo_compile": compiled,
                                                 "flops_per_token": flops_per_token}, indent=2))


if __name__ == "__main__":
    main()
