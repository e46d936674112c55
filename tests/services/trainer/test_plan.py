"""`neo train plan`: its numbers against arithmetic done by hand here, and one-line errors for bad clusters."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from neo_trainer.cli import app

runner = CliRunner()
GIB = 2**30


def _plan(*args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_neo_250m_on_one_a100_node_by_hand(tmp_path):
    # neo-250m: V=64000, d=1024, L=12, 16 query heads, 1 kv head of 64, SwiGLU f=2560, untied embeddings.
    # per layer matmuls: q,o 2·1024² = 2,097,152; k,v 2·1024·64 = 131,072; gate,up,down 3·1024·2560 = 7,864,320
    matmul_per_layer = 2_097_152 + 131_072 + 7_864_320  # 10,092,544
    params = 12 * (matmul_per_layer + 2 * 1024) + 1024 + 2 * 64000 * 1024  # + 2 norms/layer, final norm, emb+head
    assert params == 252_208_128
    # FLOPs/token at s=4096 (PaLM): 3·(2·(12·10,092,544 + 64000·1024) + 4·12·1024·4096)
    flops_per_token = 3 * (2 * (12 * matmul_per_layer + 64000 * 1024) + 4 * 12 * 1024 * 4096)
    assert flops_per_token == 1_723_858_944
    config = {"name": "r250", "model": {"preset": "neo-250m"}, "data": {"manifest": "shards", "seq_len": 4096},
              "train": {"tokens": 10_000_000_000, "micro_batch_size": 2}, "distributed": {"zero_stage": 2}}
    path = tmp_path / "r250.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = _plan(str(path), "--gpus", "8", "--nodes", "1", "--gpu", "a100-80g", "--mfu", "0.5",
                 "--global-batch", "256")

    # 256 rows ÷ (2 rows × 8 GPUs) = 16 accumulation steps; 256 × 4096 = 1,048,576 tokens per step
    assert plan["batch"] == {"seq_len": 4096, "micro_batch_size": 2, "grad_accum": 16, "global_batch_rows": 256,
                             "tokens_per_step": 1_048_576}
    assert plan["model"]["params"] == params and plan["model"]["flops_per_token"] == flops_per_token
    # 1e10 / 1,048,576 = 9,536.74 → 9,537 steps
    assert plan["budget"]["steps"] == 9537
    # seconds = 9,537 · 1,048,576 · 1,723,858,944 FLOPs ÷ (8 GPUs · 312e12 FLOP/s (A100 bf16) · 0.5)
    seconds = 9537 * 1_048_576 * 1_723_858_944 / (8 * 312e12 * 0.5)
    assert plan["budget"]["hours"] == pytest.approx(seconds / 3600, rel=1e-12)
    assert plan["budget"]["hours"] == pytest.approx(3.837, abs=1e-3)  # 1.0e10 tokens · 1.72e9 ÷ 1.248e15
    assert plan["budget"]["cost_usd"] == pytest.approx(8 * seconds / 3600 * 1.30, rel=1e-12)  # $1.30/GPU-hour

    # model states, ZeRO paper §3.1: 2Ψ weights, 2Ψ grads, 12Ψ Adam; /8 where partitioned
    stage = {row["zero_stage"]: row for row in plan["memory"]}
    assert (stage[0]["weights"], stage[0]["grads"], stage[0]["optimizer"]) == (504_416_256, 504_416_256,
                                                                               3_026_497_536)
    assert (stage[1]["weights"], stage[1]["grads"], stage[1]["optimizer"]) == (504_416_256, 504_416_256, 378_312_192)
    assert (stage[2]["weights"], stage[2]["grads"], stage[2]["optimizer"]) == (504_416_256, 63_052_032, 378_312_192)
    assert (stage[3]["weights"], stage[3]["grads"], stage[3]["optimizer"]) == (63_052_032, 63_052_032, 378_312_192)
    # activations (bf16, bytes per token): per layer 20h + 4kv + 8f + 4a + 8 = 20·1024 + 4·64 + 8·2560 + 4·16 + 8
    per_layer = 20_480 + 256 + 20_480 + 64 + 8  # 41,288
    outside = 6 * 1024 + 4 + 2 * 1024 + 8 * 64 + 8  # final norm, loss's d_hidden, RoPE cos/sin, ids: 8,716
    lm_head_grad = 4 * 64000 * 1024  # the fused loss's fp32 LM-head gradient: 262,144,000
    # s·b = 4096·2 = 8192 tokens
    assert stage[0]["activations"] == 8192 * (12 * per_layer + outside) + lm_head_grad == 4_392_321_024
    # checkpointing: 12 block inputs of 2h, one block recomputed, the rest as above
    assert stage[0]["activations_ckpt"] == 8192 * (12 * 2048 + per_layer + outside) + lm_head_grad == 873_103_360
    assert stage[2]["total"] == 504_416_256 + 63_052_032 + 378_312_192 + 4_392_321_024
    assert all(row["fits"] for row in plan["memory"])  # ~7.9 GiB at most, on 72 usable GiB
    assert plan["config"] == {"zero_stage": 2, "grad_accum": 1, "activation_checkpointing": False}


def test_neo_7b_paper_budget_on_512_h100_by_hand():
    # neo-7b as released: V=64256, d=3072, L=28, 16 heads with 16 kv heads (kv width 3072), f=24576
    matmul_per_layer = 4 * 3072**2 + 3 * 3072 * 24576  # q,k,v,o + SwiGLU = 264,241,152
    params = 28 * (matmul_per_layer + 2 * 3072) + 3072 + 2 * 64256 * 3072
    assert params == 7_793_716_224
    plan = _plan("neo-7b", "--gpus", "8", "--nodes", "64", "--gpu", "h100", "--mfu", "0.4")

    # a preset: seq_len = max_seq_len 8192, 1 row per GPU, ~4M tokens/step → 4,194,304 / (8192·512) = 1 accumulation
    assert plan["batch"]["tokens_per_step"] == 512 * 8192 == 4_194_304 and plan["batch"]["grad_accum"] == 1
    # the paper's 4.5T = 3,726B + 778B = 4,504e9 tokens; ceil(4.504e12 / 4,194,304) = 1,073,838 steps
    assert plan["budget"]["tokens"] == 4_504_000_000_000 and plan["budget"]["steps"] == 1_073_838
    flops_per_token = 3 * (2 * (28 * matmul_per_layer + 64256 * 3072) + 4 * 28 * 3072 * 8192)
    seconds = 1_073_838 * 4_194_304 * flops_per_token / (512 * 989.4e12 * 0.4)  # H100 SXM bf16 dense
    assert plan["budget"]["hours"] == pytest.approx(seconds / 3600, rel=1e-12)
    assert plan["budget"]["days"] == pytest.approx(13.9, abs=0.05)
    assert plan["budget"]["cost_usd"] == pytest.approx(512 * seconds / 3600 * 3.00, rel=1e-12)

    stage = {row["zero_stage"]: row for row in plan["memory"]}
    assert sum(stage[3][k] for k in ("weights", "grads", "optimizer")) == pytest.approx(16 * params / 512)
    assert sum(stage[0][k] for k in ("weights", "grads", "optimizer")) == 16 * params  # 116 GiB: never fits
    # activations per token: per layer 20·3072 + 4·3072 + 8·24576 + 4·16 + 8 = 270,408 bytes; outside the layers
    # 6·3072 + 4 + 2·3072 + 8·192 + 8 = 26,124; plus the loss's fp32 LM-head gradient 4·64256·3072
    per_layer, outside, lm_head_grad = 270_408, 26_124, 4 * 64256 * 3072
    assert stage[3]["activations"] == 8192 * (28 * per_layer + outside) + lm_head_grad  # 58.7 GiB
    assert stage[3]["activations_ckpt"] == 8192 * (28 * 2 * 3072 + per_layer + outside) + lm_head_grad  # 4.3 GiB
    usable = 80 * GIB * 0.9
    assert not stage[0]["fits"] and not stage[0]["fits_ckpt"]
    assert not stage[1]["fits"] and stage[1]["fits_ckpt"]  # 87.9 GiB without checkpointing, 33.5 with
    assert stage[1]["total"] > usable > stage[1]["total_ckpt"]
    assert stage[3]["fits"]


def test_table_output_names_the_numbers():
    result = runner.invoke(app, ["plan", "neo-250m", "--gpus", "8", "--tokens", "20B"])
    assert result.exit_code == 0, result.output
    assert "4,194,304 tokens per step" in result.output and "20,000,000,000 tokens → 4,769 steps" in result.output
    assert "ZeRO" in result.output and "1 (config)" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["neo-7b", "--gpu", "x100"], "error: unknown GPU 'x100'; choose one of: a100-40g, a100-80g, h100, h200, b200"),
    (["neo-7b", "--gpus", "8", "--nodes", "3", "--global-batch", "1000"],
     "error: global batch 1000 rows is not a multiple of micro_batch_size 1 × 24 GPUs = 24 rows"),
    (["neo-7b", "--seq-len", "16384"], "error: data.seq_len 16384 exceeds neo-7b's max_seq_len 8192"),
    (["neo-7b", "--nodes", "0"], "error: --gpus (8) and --nodes (0) must be at least 1"),
    (["neo-7b", "--mfu", "1.5"], "error: --mfu 1.5: must be in (0, 1]"),
    (["neo-7b", "--tokens", "lots"], "error: --tokens 'lots': expected a count like 4.5T"),
    (["neo-9b"], "error: 'neo-9b' is neither a config file nor a preset"),
    (["neo-7b", "--set", "train.micro_batch_size=0"], "error: invalid training config: train.micro_batch_size"),
])
def test_invalid_cluster_is_one_clear_line(args, message):
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output


def _saved_bytes(model, ids):
    """Bytes autograd keeps for backward after one forward of ``model`` (parameters not counted)."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.data_ptr() not in params:
            storages.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids, positions, None, ids)
    return sum(storages.values())


@pytest.mark.parametrize("shape", [{"vocab_size": 500},  # GQA, tied embeddings
                                   {"vocab_size": 300, "d_model": 96, "n_heads": 4, "n_kv_heads": 1, "d_ff": 256,
                                    "n_layers": 3, "tie_embeddings": False}])  # MQA
def test_activation_formula_is_what_autograd_saves(shape):
    """The plan's activation bytes equal what the trainer's bf16 CausalLM (fused loss) really keeps."""
    from neo.config import ModelConfig
    from neo.model import NeoModel
    from neo_trainer.modeling import CausalLM
    from neo_trainer.plan import activation_bytes

    cfg = ModelConfig.from_name("tiny", **shape)
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = CausalLM(NeoModel(cfg)).to(torch.bfloat16).train()
    assert _saved_bytes(model, ids) == activation_bytes(cfg, 2, 48, checkpointing=False)
    # with checkpointing, what stays after the forward: block inputs + outside the layers (within 0.2%);
    # the plan adds one block's activations, recomputed during that block's backward
    ckpt = CausalLM(NeoModel(cfg), activation_checkpointing=True).to(torch.bfloat16).train()
    one_block = 96 * (20 * cfg.d_model + 4 * cfg.n_kv_heads * cfg.head_dim + 8 * cfg.d_ff + 4 * cfg.n_heads + 8)
    held = activation_bytes(cfg, 2, 48, checkpointing=True) - one_block
    assert _saved_bytes(ckpt, ids) == pytest.approx(held, rel=2e-3)
