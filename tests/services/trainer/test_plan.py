"""`neo train plan`: its numbers against arithmetic done by hand here, and one-line errors for bad clusters."""

from __future__ import annotations

import json

import pytest
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
    # activations: s·b = 4096·2 = 8192; per layer 8192·(12·1024 + 4·64 + 8·2560) = 8192·33,024 = 270,532,608
    # no checkpointing: 12 layers + 4·8192·1024 (final norm + head input) = 3,246,391,296 + 33,554,432
    assert stage[0]["activations"] == 3_279_945_728
    # checkpointing: block inputs 12·2·8192·1024 + one block 270,532,608 + 33,554,432
    assert stage[0]["activations_ckpt"] == 201_326_592 + 270_532_608 + 33_554_432
    assert stage[2]["total"] == 504_416_256 + 63_052_032 + 378_312_192 + 3_279_945_728
    assert all(row["fits"] for row in plan["memory"])  # ~4.9 GiB at most, on 72 usable GiB
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
    # activations: s·b = 8192; per layer 8192·(12·3072 + 4·3072 + 8·24576) = 2,013,265,920 bytes
    per_layer = 8192 * (12 * 3072 + 4 * 3072 + 8 * 24576)
    assert stage[3]["activations"] == 28 * per_layer + 4 * 8192 * 3072  # 52.6 GiB
    assert stage[3]["activations_ckpt"] == 28 * 2 * 8192 * 3072 + per_layer + 4 * 8192 * 3072  # 3.3 GiB
    usable = 80 * GIB * 0.9
    assert not stage[0]["fits"] and not stage[0]["fits_ckpt"]
    assert not stage[1]["fits"] and stage[1]["fits_ckpt"]  # 81.8 GiB without checkpointing, 32.5 with
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
