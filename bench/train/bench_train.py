"""Training throughput: Neo's DeepSpeed trainer vs Hugging Face ``Trainer`` on ``LlamaForCausalLM``.

Same model shape (``neo.hf.hf_config`` of the preset, so both have identical parameter tensors), same
packed token rows (the sample corpus tokenized into shards by Neo's trainer), same batch, optimizer
(AdamW, weight decay 0.1, clip 1.0), fp32, same torch thread count, one process each; each side runs
in its own subprocess. Tokens/s counts forward positions (batch × seq_len) per optimizer step over the
steps after ``--warmup``, timed from the end of one step to the end of the next (median interval).

    .venv/bin/python bench/train/bench_train.py                      # tiny preset, the `neo up` workload
    .venv/bin/python bench/train/bench_train.py --preset neo-250m --steps 6 --batch 2 --seq-len 512
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


def _rates(times: list[float], warmup: int, tokens_per_step: int) -> float:
    """Median tokens/s over the step intervals after ``warmup`` steps."""
    gaps = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :], strict=False)]
    return tokens_per_step / statistics.median(gaps)


def run_neo(args: argparse.Namespace, compile_blocks: bool = False) -> dict:
    from neo_trainer.config import build_config
    from neo_trainer.metrics import read_jsonl
    from neo_trainer.stages.pretrain import run_pretrain

    cfg = build_config(_neo_config(args, compile_blocks))
    run_pretrain(cfg)
    rows = read_jsonl(cfg.run_dir / "metrics.jsonl")
    return {"tokens_per_s": _rates([r["time"] for r in rows], args.warmup, args.batch * args.seq_len),
            "mean_loss": statistics.mean(r["loss"] for r in rows), "steps": len(rows), "threads": _threads()}


def _neo_config(args: argparse.Namespace, compile_blocks: bool) -> dict:
    files = sorted((REPO / "data" / "sample").glob("*.jsonl.gz"))
    return {
        "name": "bench", "run_dir": str(args.work / ("neo-run-compiled" if compile_blocks else "neo-run")),
        "model": {"preset": args.preset, "compile": compile_blocks},
        "data": {"text_files": [str(f) for f in files], "tokenizer": str(args.tokenizer), "seq_len": args.seq_len,
                 "max_tokens": args.max_tokens, "val_fraction": 0.0},
        "train": {"steps": args.steps, "micro_batch_size": args.batch, "lr": 1e-3, "warmup_steps": 0,
                  "schedule": "constant", "seed": 0},
        "distributed": {"zero_stage": args.zero_stage},
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
    mcfg = ModelConfig.from_name(args.preset, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf_config(mcfg, tok, torch.float32).items()
                                            if k not in ("architectures", "model_type")}))
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):  # transformers' callback signature
            times.append(time.time())

    targs = TrainingArguments(
        output_dir=str(args.work / "hf-out"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        lr_scheduler_type="constant", optim="adamw_torch", logging_steps=10**9, save_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(), callbacks=[Clock()])
    out = trainer.train()
    return {"tokens_per_s": _rates(times, args.warmup, args.batch * args.seq_len),
            "mean_loss": out.training_loss, "steps": len(times) - 1, "threads": _threads(),
            "params": sum(p.numel() for p in model.parameters())}


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
    p.add_argument("--tokenizer", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path(".neo/bench/train"))
    p.add_argument("--no-compile", action="store_true", help="skip the Neo run with model.compile=true")
    p.add_argument("--which", choices=["neo", "neo-compile", "hf"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.which:
        import torch

        torch.set_num_threads(args.threads)
        result = run_hf(args) if args.which == "hf" else run_neo(args, args.which == "neo-compile")
        args.json_out.write_text(json.dumps(result))
        return
    _ensure_tokenizer(args)
    neo, hf = _child("neo", args), _child("hf", args)
    compiled = None if args.no_compile else _child("neo-compile", args)
    import transformers

    print(f"\nconfig: preset={args.preset} params={hf['params']:,} seq_len={args.seq_len} batch={args.batch} "
          f"steps={args.steps} (first {args.warmup} untimed) fp32 CPU threads={neo['threads']} "
          f"ZeRO-{args.zero_stage}; transformers {transformers.__version__}")
    print("| trainer | tokens/s | × HF Trainer | mean train loss |\n|---|---:|---:|---:|")
    print(f"| HF Trainer (LlamaForCausalLM), the baseline | {hf['tokens_per_s']:,.0f} | 1.00× | {hf['mean_loss']:.3f} |")
    rows = [("Neo (DeepSpeed engine, fused LM-head loss)", neo)]
    if compiled:
        rows.append(("Neo, model.compile=true (Inductor blocks)", compiled))
    for label, r in rows:
        print(f"| {label} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / hf['tokens_per_s']:.2f}× | "
              f"{r['mean_loss']:.3f} |")


if __name__ == "__main__":
    main()
