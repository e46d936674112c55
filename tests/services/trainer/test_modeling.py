"""neo_trainer.modeling and the fused loss: the training forward equals NeoModel + cross-entropy exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neo.config import ModelConfig
from neo.model import NeoModel
from neo_trainer.losses import IGNORE_INDEX, cross_entropy, linear_cross_entropy
from neo_trainer.modeling import CausalLM, compile_blocks


def _model(seed: int = 0) -> NeoModel:
    torch.manual_seed(seed)
    return NeoModel(ModelConfig.from_name("tiny", vocab_size=300))


def test_plain_forward_equals_the_model_forward():
    model = _model()
    ids = torch.randint(0, 300, (2, 24))
    torch.testing.assert_close(CausalLM(model)(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("rows", [1, 7, 10_000])
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(rows):
    """fp64, so any difference is the formula, not rounding: loss and both gradients to 1e-12."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (3, 50))
    targets[0, :10] = IGNORE_INDEX
    fused = linear_cross_entropy(hidden, weight, targets, chunk_rows=rows)
    plain = F.cross_entropy((hidden @ weight.t()).reshape(-1, 300), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    g_fused = torch.autograd.grad(3.0 * fused, (hidden, weight))
    g_plain = torch.autograd.grad(3.0 * plain, (hidden, weight))
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    for a, b in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():  # the evaluation path computes no gradients and gives the same number
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, rows), plain, rtol=0, atol=1e-12)


def test_linear_cross_entropy_in_bf16_accumulates_the_weight_gradient_in_fp32():
    """The GPU path: bf16 hidden and weight, fp32 softmax and fp32 weight-gradient sum across chunks; within
    bf16 rounding of the fp32 reference, and the gradients come back in bf16."""
    torch.manual_seed(0)
    hidden = torch.randn(300, 64, dtype=torch.bfloat16, requires_grad=True)
    weight = (0.1 * torch.randn(1000, 64)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 1000, (300,))
    targets[::7] = IGNORE_INDEX
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=64)
    loss.backward()
    ref_h, ref_w = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_h @ ref_w.t(), targets, ignore_index=IGNORE_INDEX)
    ref.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=0)
    for got, want in ((hidden.grad, ref_h.grad), (weight.grad, ref_w.grad)):
        assert float((got.float() - want).norm() / want.norm()) < 1e-2


def test_all_targets_ignored_gives_zero_loss_and_gradient():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert float(loss) == 0.0 and float(hidden.grad.abs().sum()) == 0.0 and float(weight.grad.abs().sum()) == 0.0


def test_training_loss_with_targets_matches_logits_then_cross_entropy():
    """Tied embeddings: the fused head's weight gradient lands on the shared embedding like the plain one."""
    ids = torch.randint(0, 300, (2, 17))
    doc_ids = torch.tensor([[0] * 8 + [1] * 8, [0] * 16])
    grads, losses = [], []
    for fused in (True, False):
        lm = CausalLM(_model(), fused_loss=fused).train()
        loss = lm(ids[:, :-1], None, doc_ids, ids[:, 1:])
        reference = cross_entropy(lm(ids[:, :-1], None, doc_ids), ids[:, 1:])
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
        loss.backward()
        losses.append(float(loss))
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_activation_checkpointing_switch_reaches_the_model():
    ids = torch.randint(0, 300, (2, 16))
    grads = []
    for ac in (False, True):
        lm = CausalLM(_model(), activation_checkpointing=ac).train()
        assert lm.model.activation_checkpointing is ac
        lm(ids[:, :-1], targets=ids[:, 1:]).backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_blocks_and_loss_train_like_eager():
    """model.compile=true (Inductor-compiled blocks) gives the eager loss and gradients."""
    ids = torch.randint(0, 300, (2, 33))
    results = []
    for compiled in (False, True):
        lm = CausalLM(_model()).train()
        if compiled:
            compile_blocks(lm.model)
        loss = lm(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in lm.named_parameters()}))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
