"""neo_trainer.modeling: the training forward equals NeoModel's, masks documents, recomputes exactly."""

from __future__ import annotations

import numpy as np
import torch

from neo.config import ModelConfig
from neo.model import NeoModel
from neo_trainer.data import make_batch
from neo_trainer.losses import cross_entropy
from neo_trainer.modeling import CausalLM, document_causal_mask


def _model(seed: int = 0) -> NeoModel:
    torch.manual_seed(seed)
    return NeoModel(ModelConfig.from_name("tiny", vocab_size=300))


def test_plain_forward_equals_the_model_forward():
    model = _model()
    ids = torch.randint(0, 300, (2, 24))
    torch.testing.assert_close(CausalLM(model)(ids), model(ids), rtol=0, atol=0)


def test_document_mask_makes_documents_independent():
    """Logits of a packed row's second document equal those of that document alone at position 0."""
    model, eos = _model(), 2
    doc_a = [1, 17, 18, 19, 20, eos]
    doc_b = [1, 30, 31, 32, 33, 34, eos]
    row = np.array([doc_a + doc_b + [1]])
    batch = make_batch(row, eos, document_mask=True)
    lm = CausalLM(model).eval()
    with torch.no_grad():
        packed = lm(batch.input_ids, batch.positions, batch.doc_ids)
        alone = model(torch.tensor([doc_b]))
        unmasked = lm(batch.input_ids)
    torch.testing.assert_close(packed[0, len(doc_a):], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[0, len(doc_a):], alone[0], atol=1e-3)  # without the mask it leaks


def test_mask_shape_and_values():
    mask = document_causal_mask(torch.tensor([[1, 1, 2, 2]]))
    assert mask.shape == (1, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 300, (2, 16))
    grads = []
    for ac in (False, True):
        lm = CausalLM(_model(), activation_checkpointing=ac).train()
        cross_entropy(lm(ids[:, :-1]), ids[:, 1:]).backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
