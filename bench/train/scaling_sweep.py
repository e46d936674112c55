"""A small scaling sweep on CPU: several tiny model sizes × token budgets → (N, D, L) points → both fits.

Every run is a full Neo pretraining run (fundamental → decay, WSD) on the bundled sample corpus, one
process, ZeRO 0; its final validation loss is a point. The points then go through ``neo train scaling fit``'s
code (``neo_trainer.scaling``): Chinchilla vs NEO, held-out error on the runs with the most compute,
and a PNG. N is counted without embeddings (the tiny sizes are mostly embedding otherwise).

    .venv/bin/python bench/train/scaling_sweep.py            # 4 sizes × 3 budgets, ~10 min on 2 cores
    .venv/bin/neo train scaling fit .neo/bench/scaling/runs/* --non-embedding --plot scaling.png
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Model sizes: (d_model, n_layers, n_heads, n_kv_heads, d_ff), the `tiny` preset's family.
SIZES = {
    "s64": (64, 2, 2, 1, 192),
    "s96": (96, 3, 3, 1, 256),
    "s128": (128, 4, 4, 2, 384),
    "s192": (192, 4, 6, 2, 512),
}
BUDGETS = (100_000, 200_000, 400_000)  # training tokens per run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".neo/bench/scaling"))
    p.add_argument("--tokenizer", type=Path, default=None, help="default: train an 8000-piece one on the sample")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--holdout", type=int, default=2)
    p.add_argument("--sizes", nargs="*", default=list(SIZES))
    p.add_argument("--budgets", nargs="*", type=int, default=list(BUDGETS))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from neo.stack import DEMO_VOCAB_SIZE, sample_files
    from neo.tokenizer import TokenizerConfig, train_tokenizer
    from neo_trainer.config import build_config
    from neo_trainer.scaling import fit_report, load_points
    from neo_trainer.stages.pretrain import run_pretrain

    torch.set_num_threads(1)  # tiny models: one thread is faster than two contending ones
    tok = args.tokenizer or args.out / "tokenizer"
    if not (Path(tok) / "tokenizer.json").exists():
        train_tokenizer(sample_files(), tok, TokenizerConfig(vocab_size=DEMO_VOCAB_SIZE))
    runs = []
    for size in args.sizes:
        d, layers, heads, kv, ff = SIZES[size]
        for budget in args.budgets:
            run_dir = args.out / "runs" / f"{size}-{budget // 1000}k"
            runs.append(run_dir)
            if (run_dir / "hf" / "neo.json").exists():
                continue
            cfg = build_config({
                "name": run_dir.name, "run_dir": str(run_dir),
                "model": {"preset": "tiny", "overrides": {"d_model": d, "n_layers": layers, "n_heads": heads,
                                                          "n_kv_heads": kv, "d_ff": ff}},
                "data": {"text_files": [str(f) for f in sample_files()], "tokenizer": str(tok),
                         "seq_len": args.seq_len, "max_tokens": 200_000, "val_fraction": 0.02},
                "train": {"tokens": budget, "micro_batch_size": args.batch, "lr": 3e-3, "warmup_steps": 10},
                "distributed": {"zero_stage": 0},
                "metrics": {"log_every": 50, "eval_every": 10**9, "eval_rows": 64, "tensorboard": False,
                            "progress": False},
            })
            run_pretrain(cfg)
    points = load_points(runs, non_embedding=True)
    (args.out / "points.json").write_text(json.dumps([p.__dict__ for p in points], indent=2))
    report = fit_report(points, holdout=args.holdout, plot=args.out / "scaling.png")
    (args.out / "fit.json").write_text(json.dumps(report, indent=2))
    print("| run | N (non-emb.) | D | val loss | Chinchilla pred. | NEO pred. |\n|---|---:|---:|---:|---:|---:|")
    held = {e["run"]: e for e in report["chinchilla"]["heldout"]}
    neo_held = {e["run"]: e for e in report["neo"]["heldout"]}
    for pt in sorted(points, key=lambda q: (q.params, q.tokens)):
        mark = " (held out)" if pt.run in held else ""
        preds = (f"{held[pt.run]['predicted']:.3f} | {neo_held[pt.run]['predicted']:.3f}" if mark else "— | —")
        print(f"| {Path(pt.run).name}{mark} | {pt.params:,.0f} | {pt.tokens:,.0f} | {pt.loss:.3f} | {preds} |")
    for law in ("chinchilla", "neo"):
        r = report[law]
        params = ", ".join(f"{k}={v:.4g}" for k, v in r["params"].items())
        print(f"\n{law}: {params}\n  fit mean rel. error {r['fit_mean_rel_error']:.2%}, held-out "
              f"{r['heldout_mean_rel_error']:.2%}")
    print(f"\nplot: {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
