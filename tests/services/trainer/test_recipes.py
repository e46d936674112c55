"""#21: MAP-Neo's released pretraining recipes as run configs (configs/neo-{7b,2b}-{fundamental,decay}.yaml) and
the ``map-neo`` LR schedule they use (Megatron-LM-NEO neo/scripts/pretrain_7b.sh, pretrain_2b.sh,
pretrain_7b_phase2.sh)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from neo.config import ModelConfig
from neo_trainer.config import load_config
from neo_trainer.schedule import PAPER_MIN_LR, PAPER_PEAK_LR, PAPER_WARMUP_STEPS, LRSchedule
from neo_trainer.stages.pretrain import run_pretrain

from .helpers import records

CONFIGS = Path(__file__).resolve().parents[3] / "services/trainer/neo_trainer/configs"
RECIPES = ["neo-7b-fundamental", "neo-7b-decay", "neo-2b-fundamental", "neo-2b-decay"]


def test_map_neo_schedule_is_megatron_neos():
    # fundamental run: warmup, then Megatron's cosine from the peak to --min-lr over the rest of the run
    f = LRSchedule(peak_lr=2e-4, total_steps=102, warmup_steps=2, kind="map-neo", decay_fraction=0, min_lr_ratio=0.1)
    assert f.decay_start == 102 and {f.phase(s) for s in range(102)} == {"fundamental"}
    assert f(0) == pytest.approx(1e-4) and f(1) == pytest.approx(2e-4)
    assert f(2) == pytest.approx(2e-4) and f(52) == pytest.approx(1.1e-4)  # half-way: (peak + min) / 2
    assert f(101) == pytest.approx(2e-5 + 1.8e-4 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    # decay run (--finetune, --lr-warmup-iters 0, wsd with --lr_stable_steps 0): back to the peak, then
    # lr = max(min_lr, peak * 0.5 ** (k / half_life)), half_life = 0.5 * decay steps + 1
    d = LRSchedule(peak_lr=2e-4, total_steps=1100, kind="map-neo", decay_steps=100, min_lr_ratio=0.1)
    assert d.decay_start == 1000 and d.half_life == 51
    for k in (0, 1, 25, 51, 99):
        assert d(1000 + k) == pytest.approx(max(2e-5, 2e-4 * 0.5 ** (k / 51)))
    assert d(1051) == pytest.approx(1e-4) and d(1099) > 5e-5  # one half-life halves it; ends near peak/4
    floor = LRSchedule(peak_lr=2e-4, total_steps=10, kind="map-neo", decay_steps=10, min_lr_ratio=0.5)
    assert floor(9) == pytest.approx(1e-4)  # 2e-4 * 0.5 ** (9 / 6) is below the floor


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_configs_carry_the_released_schedule(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    t, model = cfg.train, ModelConfig.from_name(cfg.model.preset)
    assert (t.schedule, t.lr, t.lr * t.min_lr_ratio) == ("map-neo", PAPER_PEAK_LR, pytest.approx(PAPER_MIN_LR))
    assert (t.weight_decay, t.betas, t.eps, t.grad_clip, t.seed) == (0.1, (0.9, 0.95), 1e-8, 1.0, 42)
    assert cfg.data.seq_len == 8192 == model.max_seq_len
    assert cfg.distributed.precision == "bf16" and cfg.checkpoint.every == 2000
    decay = name.endswith("decay")
    assert t.start_phase == ("decay" if decay else "fundamental")
    assert t.decay_fraction == (1 if decay else 0)  # each file is one phase
    assert t.warmup_steps == (0 if decay else PAPER_WARMUP_STEPS)
    assert (t.init_from is not None) == decay
    rows = t.micro_batch_size * t.grad_accum * (128 if "7b" in name else 64)
    assert rows == 1024  # mixture_cfg.yml's GLOBAL_BATCH_SIZE on the process count the comment names
    if name.startswith("neo-7b"):
        assert model.n_kv_heads == 16 and t.tokens == (778e9 if decay else 3726e9)  # paper §6
        assert cfg.total_steps(128) == (92_745 if decay else 444_174)  # tokens / (1024 x 8192)
    else:
        assert model.attention_kind == "MQA" and t.steps == (6000 if decay else 600_400)


def _tiny(name: str, run_dir: Path, shard_dir: Path, steps: int, init_from: Path | None = None) -> list[str]:
    """A recipe with the tiny shape and a few short steps on the fixture shards; its schedule untouched."""
    sets = [f"run_dir={run_dir}", "model.preset=tiny", f"data.manifest={shard_dir}", "data.seq_len=32",
            "train.tokens=null", f"train.steps={steps}", "train.micro_batch_size=2", "train.grad_accum=1",
            "distributed.precision=fp32", "distributed.zero_stage=0", "checkpoint.every=0", "metrics.log_every=1",
            "metrics.eval_every=100", "metrics.eval_rows=2", "metrics.tensorboard=false", "metrics.progress=false"]
    if not name.endswith("decay"):
        sets.append("train.warmup_steps=2")
    if init_from is not None:
        sets.append(f"train.init_from={init_from}")
    return sets


@pytest.mark.slow
@pytest.mark.parametrize("size", ["7b", "2b"])
def test_recipes_run_with_a_tiny_shape(size, shard_dir, tmp_path):
    """Each recipe, shrunk to the tiny preset, trains: the fundamental run warms up and follows the cosine, the
    decay run starts from its checkpoint at the peak LR again and halves it every half-life."""
    first = tmp_path / "fundamental"
    run_pretrain(load_config(CONFIGS / f"neo-{size}-fundamental.yaml", _tiny("f", first, shard_dir, 6)))
    f = records(first)
    assert [r["step"] for r in f] == [1, 2, 3, 4, 5, 6] and {r["phase"] for r in f} == {"fundamental"}
    expect = LRSchedule(2e-4, 6, warmup_steps=2, kind="map-neo", decay_fraction=0)
    assert [r["lr"] for r in f] == pytest.approx([expect(s) for s in range(6)])
    assert f[1]["lr"] == f[2]["lr"] == pytest.approx(2e-4) and f[2]["lr"] > f[3]["lr"] > f[5]["lr"]

    second = tmp_path / "decay"
    run_pretrain(load_config(CONFIGS / f"neo-{size}-decay.yaml",
                             _tiny("neo-decay", second, shard_dir, 4, init_from=first / "checkpoints")))
    d = records(second)
    assert [r["step"] for r in d] == [7, 8, 9, 10] and {r["phase"] for r in d} == {"decay"}
    assert [r["lr"] for r in d] == pytest.approx([2e-4 * 0.5 ** (k / 3) for k in range(4)])  # half-life 4/2+1
    assert all(r["loss"] == r["loss"] and r["loss"] < 20 for r in f + d)
