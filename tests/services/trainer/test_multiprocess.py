"""Real processes: a run killed with SIGKILL and resumed, world size 2 over gloo, the `neo up` quick form."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neo.schemas import NeoCheckpointInfo
from neo_trainer.config import build_config
from neo_trainer.stages.pretrain import run_pretrain

from .helpers import REPO, losses, neo_train, records, trainer_env, write_config

pytestmark = pytest.mark.slow


def _popen(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "neo.cli", "train", "pretrain", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=trainer_env(), cwd=REPO)


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def test_killed_run_resumes_with_identical_losses(make_config, tmp_path):
    """SIGKILL mid-run, `--resume`: every step's loss equals the uninterrupted run's, bit for bit."""
    common = {"train": {"steps": 24, "warmup_steps": 3, "decay_fraction": 0.25},
              "data": {"decay_mixture": {"code": 1, "zh": 1}},
              "distributed": {"zero_stage": 2},
              "checkpoint": {"every": 4, "keep": 2}, "metrics": {"log_every": 1, "eval_every": 8, "eval_rows": 4,
                                                                 "tensorboard": False, "progress": False}}
    ref_cfg, cut_cfg = make_config("reference", **common), make_config("killed", **common)
    cut = _popen(write_config(tmp_path / "cut.json", cut_cfg))
    cut_dir = Path(cut_cfg["run_dir"])
    deadline = time.time() + 180
    while _last_step(cut_dir) < 10 and cut.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    cut.send_signal(signal.SIGKILL)
    cut.wait(timeout=30)
    killed_at = _last_step(cut_dir)
    assert cut.returncode == -signal.SIGKILL and 10 <= killed_at < 24, (cut.returncode, killed_at)
    resumed = _popen(tmp_path / "cut.json", "--resume")
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out[-3000:]
    assert "loaded checkpoint" in out
    run_pretrain(build_config(ref_cfg))  # uninterrupted, in this process (one thread, as the children)

    expected, got = losses(Path(ref_cfg["run_dir"])), losses(cut_dir)
    assert sorted(got) == list(range(1, 25))  # the steps after the checkpoint were re-done, logged once
    assert got == expected
    vals = [(r["step"], r["val_loss"]) for r in records(cut_dir) if "val_loss" in r]
    assert vals == [(r["step"], r["val_loss"]) for r in records(Path(ref_cfg["run_dir"])) if "val_loss" in r]


def test_two_processes_match_one(make_config, tmp_path):
    """World size 2 over gloo (torchrun; ZeRO 1, 2, 3) trains to the losses of one process on the same batches."""
    train = {"steps": 6, "warmup_steps": 1, "grad_clip": 0.5}
    one = make_config("one", train=train | {"micro_batch_size": 4, "grad_accum": 1})
    run_pretrain(build_config(one))
    twos = {stage: make_config(f"two-zero{stage}", train=train | {"micro_batch_size": 2, "grad_accum": 1},
                               distributed={"zero_stage": stage}) for stage in (1, 2, 3)}
    paths = [str(write_config(tmp_path / f"two-{s}.json", cfg)) for s, cfg in twos.items()]
    # one torchrun for the three runs: the processes import DeepSpeed and join the group once
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(Path(__file__).with_name("run_configs.py")), *paths],
                            capture_output=True, text=True, timeout=400, env=trainer_env(), cwd=REPO)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    expected = list(losses(Path(one["run_dir"])).values())
    for stage, cfg in twos.items():
        got = losses(Path(cfg["run_dir"]))
        assert sorted(got) == list(range(1, 7)), stage
        assert list(got.values()) == pytest.approx(expected, rel=2e-5), stage
        info = NeoCheckpointInfo.read(Path(cfg["run_dir"]) / "hf")
        assert info is not None and info.train_config["distributed"]["zero_stage"] == stage


def test_quick_form_trains_on_text_files(tmp_path, tokenizer_dir):
    """`neo up`'s call: text files + flags, through the same DeepSpeed path (text tokenized into shards)."""
    sample = sorted((REPO / "data" / "sample").glob("*.jsonl.gz"))[:2]
    out = tmp_path / "model"
    result = neo_train("pretrain", *map(str, sample), "--tokenizer", str(tokenizer_dir), "--preset", "tiny",
                       "--steps", "4", "--seq-len", "32", "--batch-size", "2", "--max-tokens", "20000",
                       "--run-dir", str(tmp_path / "run"), "--out", str(out))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    info = NeoCheckpointInfo.read(out)
    assert info.stage == "pretrain" and info.train_config["data"]["text_files"]
    assert set(info.data["tokens_seen"]) == {"debian-reference.en", "debian-reference.zh"}
    assert len(losses(tmp_path / "run")) >= 1
