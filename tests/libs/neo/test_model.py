import pytest
import torch
import torch.nn.functional as F

from neo.config import ModelConfig
from neo.model import KVCache, NeoModel, document_causal_mask


def tiny(**kw):
    torch.manual_seed(0)
    return NeoModel(ModelConfig.from_name("tiny", vocab_size=300, max_seq_len=64, **kw)).eval()


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_param_count_matches_config(n_kv_heads):
    for tie in (True, False):
        model = tiny(n_kv_heads=n_kv_heads, tie_embeddings=tie)
        unique = sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights
        assert unique == model.config.num_params()


def test_forward_shape_and_causality():
    model = tiny()
    ids = torch.randint(0, 300, (2, 10))
    logits = model(ids)
    assert logits.shape == (2, 10, 300)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 300
    logits2 = model(changed)
    torch.testing.assert_close(logits[:, :7], logits2[:, :7])  # the past never sees the future
    assert not torch.allclose(logits[:, 7:], logits2[:, 7:])


def test_cache_prefill_and_decode_equal_full_pass():
    model = tiny(n_kv_heads=1)
    ids = torch.randint(0, 300, (1, 12))
    full = model(ids)
    cache = KVCache.empty(model.config, 1, 32)
    pre = model(ids[:, :8], positions=torch.arange(8)[None], cache=cache)
    steps = [model(ids[:, t : t + 1], positions=torch.tensor([[t]]), cache=cache) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat([pre] + steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_prefilled_through_the_cache_equal_the_full_pass(n_kv_heads, dtype):
    """Chunked prefill (and prefix-cache hits): chunks at offsets 0, 16, 40 of two rows (the flash kernels'
    log-sum-exp merge on CPU) give the full causal pass's hidden states, as does one chunk from 0; the same chunk
    through an explicit mask (the path for rows at different positions) agrees too."""
    model = tiny(n_kv_heads=n_kv_heads).to(dtype)
    ids = torch.randint(0, 300, (2, 56))
    full = model.hidden_states(ids)
    cache = KVCache.empty(model.config, 2, 64, dtype=dtype)
    parts = [model.hidden_states(ids[:, a:b], positions=torch.arange(a, b).expand(2, -1), cache=cache)
             for a, b in ((0, 16), (16, 40), (40, 56))]
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **tol)
    whole = model.hidden_states(ids, positions=torch.arange(56).expand(2, -1), cache=KVCache.empty(
        model.config, 2, 64, dtype=dtype))
    torch.testing.assert_close(whole, full, **tol)
    # row 1 one position behind row 0: no common offset, so the masked path; row 0 repeats its last chunk
    positions = torch.stack([torch.arange(40, 56), torch.arange(39, 55)])
    masked = model.hidden_states(torch.stack([ids[0, 40:56], ids[1, 39:55]]), positions=positions, cache=cache)
    torch.testing.assert_close(masked[0], parts[2][0], **tol)


def test_cache_rows_of_different_lengths_batch_like_single_rows():
    """Continuous batching: rows at different positions in one call give each row's own result."""
    model = tiny()
    a, b = torch.randint(0, 300, (1, 5)), torch.randint(0, 300, (1, 9))
    cache = KVCache.empty(model.config, 2, 32)
    model(a, positions=torch.arange(5)[None], cache=KVCache(k=[k[:1] for k in cache.k], v=[v[:1] for v in cache.v]))
    model(b, positions=torch.arange(9)[None], cache=KVCache(k=[k[1:] for k in cache.k], v=[v[1:] for v in cache.v]))
    step = torch.tensor([[7], [8]])
    batched = model(step, positions=torch.tensor([[5], [9]]), cache=cache)[:, 0]
    ref_a = model(torch.cat([a, step[:1]], 1))[0, -1]
    ref_b = model(torch.cat([b, step[1:]], 1))[0, -1]
    torch.testing.assert_close(batched, torch.stack([ref_a, ref_b]), atol=1e-5, rtol=1e-5)


def test_errors_name_the_numbers():
    model = tiny()
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = KVCache.empty(model.config, 1, 8)
    with pytest.raises(ValueError, match="past the KV cache length 8"):
        model(torch.zeros(1, 1, dtype=torch.long), positions=torch.tensor([[8]]), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        KVCache.empty(model.config, 1, 65)


def test_loss_decreases_when_overfitting_one_batch():
    model = tiny().train()
    ids = torch.randint(0, 300, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 300), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_document_mask_shape_and_values():
    mask = document_causal_mask(torch.tensor([[1, 1, 2, 2]]))
    assert mask.shape == (1, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


def test_doc_ids_make_packed_documents_independent():
    """Logits of a packed row's second document equal those of that document alone at position 0."""
    torch.manual_seed(0)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=300)).eval()
    doc_a, doc_b = [1, 17, 18, 19, 20, 2], [1, 30, 31, 32, 33, 34, 2]
    row = torch.tensor([doc_a + doc_b])
    doc_ids = torch.tensor([[0] * len(doc_a) + [1] * len(doc_b)])
    positions = torch.tensor([list(range(len(doc_a))) + list(range(len(doc_b)))])
    with torch.no_grad():
        packed = model(row, positions, doc_ids=doc_ids)
        alone = model(torch.tensor([doc_b]))
        unmasked = model(row, positions)
    torch.testing.assert_close(packed[0, len(doc_a):], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[0, len(doc_a):], alone[0], atol=1e-3)  # without the mask it leaks


def test_gqa_shares_kv_heads_like_repeated_heads():
    """SDPA's enable_gqa path equals attention over explicitly repeated k/v heads (HF's repeat_kv)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=300, n_heads=4, n_kv_heads=2)
    gqa = NeoModel(cfg).eval()
    mha = NeoModel(ModelConfig.from_name("tiny", vocab_size=300, n_heads=4, n_kv_heads=4)).eval()
    state = gqa.state_dict()
    for i in range(cfg.n_layers):  # kv head j serves query heads 2j and 2j+1
        for name in ("k_proj", "v_proj"):
            w = state[f"layers.{i}.attn.{name}.weight"].view(2, cfg.head_dim, cfg.d_model)
            state[f"layers.{i}.attn.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(-1, cfg.d_model)
    mha.load_state_dict(state)
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 300, (2, 16))
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = NeoModel(ModelConfig.from_name("tiny", vocab_size=300)).train()
        model.activation_checkpointing = recompute
        F.cross_entropy(model(ids[:, :-1]).reshape(-1, 300), ids[:, 1:].reshape(-1)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_fused_projections_give_the_same_logits_and_state_dict(n_kv_heads):
    """fuse_projections (the serving engine's): q/k/v and gate/up as one matmul each; on CPU the logits are
    bitwise those of the separate matmuls, for prefill and cached decode, and state_dict is unchanged."""
    plain, fused = tiny(n_kv_heads=n_kv_heads), tiny(n_kv_heads=n_kv_heads)
    fused.fuse_projections()
    assert fused.layers[0].attn.qkv_weight is not None and fused.layers[0].mlp.gate_up_weight is not None
    attn = fused.layers[0].attn  # the separate weights are views of the stacked one: no second copy
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()
    for key, value in plain.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    ids = torch.randint(0, 300, (3, 20))
    with torch.inference_mode():
        assert torch.equal(fused(ids), plain(ids))
        caches = [KVCache.empty(m.config, 3, 32) for m in (plain, fused)]
        positions = torch.arange(20).expand(3, 20)
        for model, cache in zip((plain, fused), caches, strict=True):
            model(ids, positions=positions, cache=cache)
        step = torch.randint(0, 300, (3, 1))
        out = [m(step, positions=torch.full((3, 1), 20), cache=c) for m, c in zip((plain, fused), caches, strict=True)]
        assert torch.equal(out[0], out[1])
    fused.fuse_projections()  # idempotent
    assert torch.equal(fused(ids), plain(ids))
