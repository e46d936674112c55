"""``neo train plan``: what a pretraining run needs on a GPU cluster, before it is started.

For a run config (or a preset with the paper's 4.5T tokens) on ``nodes × gpus`` of one GPU type it checks
that the batch fits the cluster and works out, per GPU and for each ZeRO stage, the memory of the model
states and of the activations (with and without activation checkpointing), then the tokens per step, the
number of steps, and the run's time and cost at a stated MFU. Everything is arithmetic on the config; no
torch, no GPU.

Model states, mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020, arXiv 1910.02054, §3.1 and
§5.1/Fig. 1), Ψ parameters, N_d data-parallel ranks (all GPUs: Neo's trainer is data parallel only)::

    stage   bf16 weights   bf16 grads   fp32 master + Adam m, v (K = 12 bytes)
      0        2Ψ             2Ψ           12Ψ
      1        2Ψ             2Ψ           12Ψ / N_d          (P_os)
      2        2Ψ             2Ψ / N_d     12Ψ / N_d          (P_os+g)
      3        2Ψ / N_d       2Ψ / N_d     12Ψ / N_d          (P_os+g+p)

Activations, after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
arXiv 2205.05198, §4.1): count the tensors each layer saves for backward. They get s·b·h·(34 + 5·a·s/h)
bytes per GPT layer with 16-bit activations (GeLU MLP 4h wide, dropout masks, the s×s attention scores
stored). The same count for Neo's bf16 block (``neo.model``; no dropout, SDPA's flash kernel stores no s×s
scores, SwiGLU of width f, k/v of width kv = n_kv_heads·head_dim, RMSNorm in fp32 as LLaMA), per token, in
bytes; their sum equals what autograd really saves in a bf16 ``CausalLM`` on CPU (``tests/services/trainer/
test_plan.py`` counts it with ``saved_tensors_hooks``). On GPUs, SDPA kernels that do not take GQA natively
expand k/v to all heads (then 4kv becomes 4h)::

    each RMSNorm: the fp32 copy of its input 4h, 1/rms 4, the normalised bf16 input of the weight product 2h,
                  its output (the next projections' input) 2h                         → 2 norms: 16h + 8
    attention:    q 2h, k and v 2·2kv, output 2h (also o_proj's input: the same memory), log-sum-exp 4a
                                                                                       → 4h + 4kv + 4a
    SwiGLU:       gate, up, silu(gate), silu(gate)·up (down_proj's input) 4·2f         → 8f
    per layer     A = 20h + 4kv + 8f + 4a + 8   (a = query heads)
    outside:      final norm 6h + 4, the fused loss's d_hidden 2h, RoPE cos and sin 2·4·head_dim,
                  token ids 8                                                          → E
    fixed:        the fused loss's fp32 LM-head gradient, 4·V·h bytes (not per token)

    without checkpointing: s·b·(L·A + E) + 4Vh
    with per-block recomputation (Korthikanti §4.2, Chen et al. 2016): each block keeps its bf16 input 2h and
    one block's activations exist again during its backward:  s·b·(L·2h + A + E) + 4Vh

Not counted: temporaries of the kernels (the loss's logits chunk, ~4M fp32 logits = 16 MiB), communication
buckets, allocator fragmentation and the CUDA context; ``USABLE_MEMORY_FRACTION`` leaves room for them.

Time = steps × tokens per step × model FLOPs per token (``ModelConfig.flops_per_token``, PaLM appendix B,
recomputation not counted: that is what MFU means) ÷ (GPUs × peak bf16 dense FLOP/s × MFU).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from neo.config import PRESETS, ModelConfig
from neo_trainer.config import ConfigError, PretrainConfig, build_config
from neo_trainer.schedule import PAPER_DECAY_TOKENS, PAPER_FUNDAMENTAL_TOKENS

#: MAP-Neo 7B's pretraining budget: "trained from scratch on 4.5T high-quality tokens" (arXiv 2405.19327,
#: abstract), split 3,726B fundamental + 778B decay (§6) = 4,504B; ``neo_trainer.schedule`` holds the split.
PAPER_TOKENS = PAPER_FUNDAMENTAL_TOKENS + PAPER_DECAY_TOKENS
#: A preset has no batch of its own; ours: 4M tokens per optimizer step, LLaMA 2's global batch (Touvron et
#: al. 2023, arXiv 2307.09288, §2.2 "global batch-size of 4M tokens"). Override with --global-batch.
DEFAULT_GLOBAL_BATCH_TOKENS = 4 * 2**20
#: Ours: the share of a GPU's memory the estimate may fill; the rest is for what it does not count (CUDA
#: context ~0.5-1 GiB, allocator fragmentation, NCCL buffers, kernel workspaces).
USABLE_MEMORY_FRACTION = 0.9
#: ZeRO paper §3.1: fp32 master weights + Adam momentum + variance = 12 bytes per parameter (K).
ADAM_STATE_BYTES = 12
#: bf16 weights and bf16 gradients, 2 bytes each per parameter (ZeRO paper §3.1, "2Ψ + 2Ψ").
BF16_BYTES = 2
GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    """One GPU type: memory, dense bf16 peak (``metrics.PEAK_FLOPS``, by ``table_name``) and a rental price."""

    key: str
    table_name: str
    memory_gib: float
    price_per_gpu_hour: float  # USD, on demand
    price_source: str


# Memory: NVIDIA datasheets (H100 SXM5 80 GB, H200 141 GB, A100 SXM 80/40 GB, HGX B200 1,440 GB per 8 GPUs).
# Prices, on-demand USD per GPU-hour: the middle of the "specialty cloud" range in Mercatus' "Cloud GPU
# pricing" (mercatus-ai.com/blog/cloud-gpu-pricing, May 2026: A100 80GB $1.10-1.50, H100 SXM5 $2.50-3.50,
# H200 SXM5 $3.50-4.50); B200: the middle of the specialised-cloud on-demand range $4.50-6.00 in Lyceum's
# "NVIDIA B200 GPU cloud pricing 2026" (lyceum.technology, 2026-03-11); A100 40GB: ours, no quote found, so
# the low end of that A100 80GB range ($1.10). Hyperscalers charge about 1.5-3× these; spot and reserved less.
# Indicative only: pass --price for a quote.
GPUS: dict[str, Gpu] = {g.key: g for g in (
    Gpu("a100-40g", "A100", 40, 1.10, "ours: low end of the A100 80GB range, mercatus-ai.com, May 2026"),
    Gpu("a100-80g", "A100", 80, 1.30, "mercatus-ai.com/blog/cloud-gpu-pricing, May 2026, specialty-cloud mid"),
    Gpu("h100", "H100", 80, 3.00, "mercatus-ai.com/blog/cloud-gpu-pricing, May 2026, specialty-cloud mid"),
    Gpu("h200", "H200", 141, 4.00, "mercatus-ai.com/blog/cloud-gpu-pricing, May 2026, specialty-cloud mid"),
    Gpu("b200", "B200", 180, 5.25, "lyceum.technology B200 cloud pricing 2026-03-11, specialised-cloud mid"),
)}


class PlanError(ValueError):
    """A run that cannot be planned on that cluster; the message is one line saying why."""


def parse_tokens(text: str) -> int:
    """``4.5T``, ``300B``, ``20M``, ``5e9`` or ``5000000000`` → a token count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    if not match:
        raise PlanError(f"--tokens {text!r}: expected a count like 4.5T, 300B, 20M or 5e9")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    tokens = round(float(match.group(1)) * scale)
    if tokens <= 0:
        raise PlanError(f"--tokens {text!r}: must be positive")
    return tokens


def preset_config(preset: str, seq_len: int | None = None, micro_batch_size: int = 1) -> PretrainConfig:
    """A run config for a bare preset: its full context, the paper's 4.5T tokens, ZeRO-1."""
    if preset not in PRESETS:
        raise PlanError(f"{preset!r} is neither a config file nor a preset; presets: {', '.join(PRESETS)}")
    model = ModelConfig.from_name(preset)
    return build_config({
        "name": preset, "model": {"preset": preset},
        "data": {"manifest": "shards", "seq_len": seq_len or model.max_seq_len},
        "train": {"tokens": PAPER_TOKENS, "micro_batch_size": micro_batch_size},
        "distributed": {"zero_stage": 1},
    })


def model_config(cfg: PretrainConfig) -> ModelConfig:
    """The model a run trains (the preset's vocabulary: the tokenizer's is known only at run time)."""
    try:
        return ModelConfig.from_name(cfg.model.preset, **cfg.model.overrides)
    except (ValueError, TypeError) as exc:
        raise PlanError(f"model: {exc}") from None


def model_state_bytes(params: int, world: int, stage: int) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer state under ZeRO ``stage`` (table in the docstring)."""
    weights, grads, optim = BF16_BYTES * params, BF16_BYTES * params, ADAM_STATE_BYTES * params
    return {"weights": weights / world if stage >= 3 else weights,
            "grads": grads / world if stage >= 2 else grads,
            "optimizer": optim / world if stage >= 1 else optim}


def activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, checkpointing: bool) -> float:
    """Per-GPU bytes of saved activations for one micro batch in bf16 (formula in the module docstring)."""
    h, kv, f, heads = model.d_model, model.n_kv_heads * model.head_dim, model.d_ff, model.n_heads
    per_layer = 20 * h + 4 * kv + 8 * f + 4 * heads + 8
    outside = 6 * h + 4 + 2 * h + 8 * model.head_dim + 8
    per_token = (model.n_layers * 2 * h + per_layer if checkpointing else model.n_layers * per_layer) + outside
    return seq_len * micro_batch * per_token + 4 * model.vocab_size * h


def plan(cfg: PretrainConfig, *, gpu: str, gpus_per_node: int, nodes: int, mfu: float,
         tokens: int | None = None, global_batch: int | None = None, price: float | None = None) -> dict[str, Any]:
    """The plan as a JSON-ready dict; ``PlanError`` (one line) when the run does not fit the cluster."""
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU {gpu!r}; choose one of: {', '.join(GPUS)}")
    if gpus_per_node < 1 or nodes < 1:
        raise PlanError(f"--gpus ({gpus_per_node}) and --nodes ({nodes}) must be at least 1")
    if not 0 < mfu <= 1:
        raise PlanError(f"--mfu {mfu}: must be in (0, 1], e.g. 0.4")
    if price is not None and price < 0:
        raise PlanError(f"--price {price}: must be >= 0")
    from neo_trainer.metrics import peak_for_name

    spec = GPUS[gpu]
    peak = peak_for_name(spec.table_name, bf16=True)
    model = model_config(cfg)
    seq_len, micro, world = cfg.data.seq_len, cfg.train.micro_batch_size, gpus_per_node * nodes
    if seq_len > model.max_seq_len:
        raise PlanError(f"data.seq_len {seq_len} exceeds {model.name}'s max_seq_len {model.max_seq_len}")
    grad_accum = cfg.train.grad_accum
    if global_batch is not None:
        per_pass = micro * world
        if global_batch < per_pass or global_batch % per_pass:
            raise PlanError(f"global batch {global_batch} rows is not a multiple of micro_batch_size {micro} × "
                            f"{world} GPUs = {per_pass} rows (grad_accum would be {global_batch / per_pass:g})")
        grad_accum = global_batch // per_pass
    rows = micro * grad_accum * world
    tokens_per_step = rows * seq_len
    if tokens is not None:
        budget = tokens
    elif cfg.train.tokens is not None:
        budget = cfg.train.tokens
    else:
        budget = cfg.train.steps * tokens_per_step  # type: ignore[operator]
    steps = math.ceil(budget / tokens_per_step)
    flops_per_token = model.flops_per_token(seq_len, training=True)
    total_flops = steps * tokens_per_step * flops_per_token
    seconds = total_flops / (world * peak * mfu)  # type: ignore[operator]
    price_per_hour = spec.price_per_gpu_hour if price is None else price
    params = model.num_params()
    capacity = spec.memory_gib * GIB * USABLE_MEMORY_FRACTION
    act = activation_bytes(model, micro, seq_len, checkpointing=False)
    act_ckpt = activation_bytes(model, micro, seq_len, checkpointing=True)
    memory = []
    for stage in range(4):
        states = model_state_bytes(params, world, stage)
        total = sum(states.values())
        memory.append({"zero_stage": stage, **states, "activations": act, "activations_ckpt": act_ckpt,
                       "total": total + act, "total_ckpt": total + act_ckpt,
                       "fits": total + act <= capacity, "fits_ckpt": total + act_ckpt <= capacity})
    return {
        "run": cfg.name,
        "model": {"preset": model.name, "params": params, "non_embedding_params": model.num_params(False),
                  "flops_per_token": flops_per_token, "max_seq_len": model.max_seq_len},
        "cluster": {"gpu": gpu, "nodes": nodes, "gpus_per_node": gpus_per_node, "gpus": world,
                    "memory_gib": spec.memory_gib, "usable_memory_fraction": USABLE_MEMORY_FRACTION,
                    "peak_bf16_flops": peak, "price_per_gpu_hour": price_per_hour,
                    "price_source": spec.price_source if price is None else "--price"},
        "batch": {"seq_len": seq_len, "micro_batch_size": micro, "grad_accum": grad_accum,
                  "global_batch_rows": rows, "tokens_per_step": tokens_per_step},
        "config": {"zero_stage": cfg.distributed.zero_stage, "grad_accum": cfg.train.grad_accum,
                   "activation_checkpointing": cfg.model.activation_checkpointing},
        "budget": {"tokens": budget, "steps": steps, "tokens_trained": steps * tokens_per_step,
                   "mfu": mfu, "total_flops": total_flops, "hours": seconds / 3600, "days": seconds / 86400,
                   "gpu_hours": world * seconds / 3600, "cost_usd": world * seconds / 3600 * price_per_hour},
        "memory": memory,
    }


def preset_grad_accum(cfg: PretrainConfig, world: int) -> int:
    """Accumulation for a bare preset: the nearest to ``DEFAULT_GLOBAL_BATCH_TOKENS`` per step (at least 1)."""
    per_pass = cfg.train.micro_batch_size * world * cfg.data.seq_len
    return max(1, round(DEFAULT_GLOBAL_BATCH_TOKENS / per_pass))


def load_for_plan(source: str, overrides: list[str], seq_len: int | None = None) -> tuple[PretrainConfig, bool]:
    """A config file (YAML/JSON) or a preset name → (config, is_preset)."""
    from pathlib import Path

    from neo_trainer.config import load_config

    path = Path(source)
    try:
        if path.suffix in (".yaml", ".yml", ".json") or path.exists():
            cfg = load_config(path, overrides + ([f"data.seq_len={seq_len}"] if seq_len else []))
            return cfg, False
        cfg = preset_config(source, seq_len)
        return (build_config(cfg.dump(), overrides) if overrides else cfg), True
    except (ConfigError, FileNotFoundError) as exc:
        raise PlanError(" ".join(str(exc).split())) from None


def _gib(value: float) -> str:
    return f"{value / GIB:,.1f}"


def render(result: dict[str, Any]) -> Any:
    """The plan as rich renderables (a summary and the memory table)."""
    from rich.console import Group
    from rich.table import Table

    m, c, b, r = result["model"], result["cluster"], result["batch"], result["budget"]
    summary = Table.grid(padding=(0, 2))
    summary.add_row("model", f"{m['preset']}: {m['params'] / 1e9:.2f}B parameters "
                             f"({m['non_embedding_params'] / 1e9:.2f}B without embeddings), "
                             f"{m['flops_per_token'] / 1e9:.1f} GFLOPs/token at seq_len {b['seq_len']}")
    summary.add_row("cluster", f"{c['nodes']} node(s) × {c['gpus_per_node']} {c['gpu']} = {c['gpus']} GPUs, "
                               f"{c['memory_gib']:g} GiB each, {c['peak_bf16_flops'] / 1e12:,.1f} TFLOP/s bf16 "
                               f"dense, ${c['price_per_gpu_hour']:.2f}/GPU-hour ({c['price_source']})")
    summary.add_row("batch", f"{b['micro_batch_size']} rows × {b['grad_accum']} accumulation × {c['gpus']} GPUs "
                             f"= {b['global_batch_rows']:,} rows × {b['seq_len']:,} = {b['tokens_per_step']:,} "
                             f"tokens per step")
    if b["grad_accum"] != result["config"]["grad_accum"]:
        summary.add_row("", f"[bold]set train.grad_accum={b['grad_accum']}[/] for this cluster "
                            f"(the config has {result['config']['grad_accum']})")
    summary.add_row("budget", f"{r['tokens']:,} tokens → {r['steps']:,} steps "
                              f"({r['tokens_trained']:,} tokens trained)")
    summary.add_row("time", f"{r['hours']:,.1f} h ({r['days']:,.1f} days) at {r['mfu']:.0%} MFU, "
                            f"{r['gpu_hours']:,.0f} GPU-hours, ${r['cost_usd']:,.0f}")
    table = Table(title=f"memory per GPU (GiB; {c['usable_memory_fraction']:.0%} of {c['memory_gib']:g} "
                        f"GiB usable; mixed-precision Adam)")
    for col in ("ZeRO", "weights", "grads", "optimizer", "activations", "total", "act. ckpt", "total ckpt"):
        table.add_column(col, justify="right")
    cfg = result["config"]
    for row in result["memory"]:
        mark = " (config)" if row["zero_stage"] == cfg["zero_stage"] else ""
        table.add_row(f"{row['zero_stage']}{mark}", _gib(row["weights"]), _gib(row["grads"]),
                      _gib(row["optimizer"]), _gib(row["activations"]),
                      _gib(row["total"]) + ("" if row["fits"] else " ✗"), _gib(row["activations_ckpt"]),
                      _gib(row["total_ckpt"]) + ("" if row["fits_ckpt"] else " ✗"))
    return Group(summary, table)
