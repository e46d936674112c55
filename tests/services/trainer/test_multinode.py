"""Two "nodes" on one machine: two launchers (node ranks 0 and 1, one process each, rank 0 at 127.0.0.1) train
one model over gloo with one shared run directory: `neo train pretrain --nnodes 2` (torchrun) and DeepSpeed's
own launcher (`deepspeed --hostfile H --no_ssh --node_rank R`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neo.hf import hf_name
from neo.net import free_port
from neo_trainer.config import build_config
from neo_trainer.stages.pretrain import run_pretrain

from .helpers import REPO, losses, neo_train, records, trainer_env, write_config

#: one node vs two after 6 steps: the gradient all-reduce sums in another order (fp32) and Adam's
#: normalised update turns the last bits of tiny gradients into steps of up to lr (3e-3); seen: 1.3e-5
ATOL = 1e-4


def _node(launcher: str, config: Path, rank: int, port: int, hostfile: Path) -> subprocess.Popen:
    if launcher == "neo":  # torchrun, static rendezvous
        cmd = [sys.executable, "-m", "neo.cli", "train", "pretrain", str(config), "--nnodes", "2",
               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    else:  # DeepSpeed's launcher without ssh: started on each node by hand (or a scheduler)
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "--module", "neo_trainer.launch", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=trainer_env(DS_ACCELERATOR="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["neo", "deepspeed"])
def test_two_nodes_train_one_model_and_checkpoint_once(launcher, make_config, tmp_path):
    train = {"steps": 6, "warmup_steps": 1, "grad_clip": 0.5}
    metrics = {"log_every": 1, "eval_every": 100, "tensorboard": False, "progress": False}
    one = make_config("one-node", train=train | {"micro_batch_size": 4}, distributed={"zero_stage": 1},
                      metrics=metrics)
    two = make_config("two-nodes", train=train | {"micro_batch_size": 2}, distributed={"zero_stage": 1},
                      metrics=metrics, checkpoint={"every": 3, "keep": 1})
    path = write_config(tmp_path / "two.json", two)
    port = free_port()
    hostfile = tmp_path / "hostfile"  # DeepSpeed's: one line per node, slots = processes (GPUs) on it
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    nodes = [_node(launcher, path, rank, port, hostfile) for rank in (0, 1)]
    outs = [node.communicate(timeout=400)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    assert "2 process(es)" in outs[0]  # node 0 logs the run: world size 2 across the two launchers

    # the same model as one process on the same global batches (2 nodes × 2 rows = 1 × 4 rows)
    run_pretrain(build_config(one))
    run_dir = Path(two["run_dir"])
    expected = list(losses(Path(one["run_dir"])).values())
    assert [r["step"] for r in records(run_dir)] == list(range(1, 7))  # logged once, by rank 0
    assert list(losses(run_dir).values()) == pytest.approx(expected, rel=2e-5)

    # one checkpoint in the shared directory, written once: the model states by rank 0 only, each rank's
    # ZeRO-1 optimizer shard and RNG state; step 3's periodic checkpoint pruned (keep=1) by rank 0 alone
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000006"
    assert sorted(p.name for p in ckpt.iterdir()) == ["fundamental_end", "latest", "step_00000006",
                                                        "zero_to_fp32.py", "zero_to_torch.py"]
    files = sorted(p.name for p in (ckpt / "step_00000006").iterdir())
    assert files == ["mp_rank_00_model_states.pt", "rng_rank0.pt", "rng_rank1.pt",
                     "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert sorted(p.name for p in (run_dir / "hf").iterdir()).count("model.safetensors") == 1

    # both nodes hold the same model: node 0's and node 1's fp32 master shards, joined by DeepSpeed's
    # zero_to_fp32, equal the weights node 0 exported; and those equal the one-node run's
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    merged = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="step_00000006")
    exported = load_file(run_dir / "hf" / "model.safetensors")
    reference = load_file(Path(one["run_dir"]) / "hf" / "model.safetensors")
    merged = {hf_name(k.removeprefix("model.")): v for k, v in merged.items()}
    assert set(exported) <= set(merged) and len(exported) == len(reference) > 20
    for name, weight in exported.items():
        assert torch.equal(weight, merged[name]), name
        gap = (weight - reference[name]).abs().max()
        assert torch.allclose(weight, reference[name], rtol=0, atol=ATOL), (name, gap)


def test_node_rank_outside_the_nodes_is_one_line(make_config, tmp_path):
    path = write_config(tmp_path / "run.json", make_config())
    result = neo_train("pretrain", str(path), "--nnodes", "2", "--node-rank", "2", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == "error: --node-rank 2 must be in [0, --nnodes 2)"
    assert "Traceback" not in result.stderr
