"""neo_trainer.distributed: the DeepSpeed config, and the LR we set reaching every ZeRO optimizer."""

from __future__ import annotations

import pytest
import torch

from neo.config import ModelConfig
from neo.model import NeoModel
from neo_trainer import distributed
from neo_trainer.config import build_config
from neo_trainer.losses import cross_entropy
from neo_trainer.modeling import CausalLM
from neo_trainer.stages.pretrain import build_optimizer


def test_deepspeed_config_spells_the_batch():
    cfg = distributed.deepspeed_config(micro_batch_size=4, grad_accum=3, world_size=2, zero_stage=2,
                                       grad_clip=1.0, bf16=True)
    assert cfg["train_batch_size"] == 24 and cfg["zero_optimization"] == {"stage": 2}
    assert cfg["bf16"] == {"enabled": True} and cfg["gradient_clipping"] == 1.0


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_lr_set_on_the_basic_optimizer_is_the_lr_used(stage, make_config):
    """LR comes from our schedule, written into the client optimizer's groups each step: check it bites."""
    distributed.setup()
    torch.manual_seed(0)
    module = CausalLM(NeoModel(ModelConfig.from_name("tiny", vocab_size=300)))
    cfg = build_config(make_config())
    engine = distributed.initialize(module, build_optimizer(module, cfg), distributed.deepspeed_config(
        micro_batch_size=2, grad_accum=1, world_size=1, zero_stage=stage, grad_clip=1.0, bf16=False))
    ids = torch.randint(0, 300, (2, 17))

    def step(lr: float) -> float:
        for group in engine.basic_optimizer.param_groups:
            group["lr"] = lr
        with distributed.full_parameters(engine.module, stage):
            before = engine.module.model.layers[0].mlp.up_proj.weight.detach().clone()
        engine.backward(cross_entropy(engine(ids[:, :-1]), ids[:, 1:]))
        engine.step()
        with distributed.full_parameters(engine.module, stage):
            after = engine.module.model.layers[0].mlp.up_proj.weight.detach().clone()
        return float((after - before).abs().max())

    assert step(0.0) == 0.0  # AdamW with lr 0 (decoupled decay scales with lr too): nothing moves
    assert step(1e-2) > 1e-4
