"""The Neo decoder, readable top to bottom: RMSNorm → RoPE → attention → SwiGLU → block → model.

MAP-Neo's architecture (arXiv 2405.19327 §5): a LLaMA-style decoder with pre-norm RMSNorm, rotary
position embeddings, SwiGLU MLPs and multi-query / grouped-query attention. Weights and RoPE use the
Hugging Face ``LlamaForCausalLM`` layout (rotate-half RoPE, separate q/k/v projections), so export in
``neo.hf`` is a rename with no permutation.

This module knows nothing of training, parallelism or serving: ``NeoModel.forward`` returns logits.
Incremental decoding uses a ``KVCache`` whose slot index equals the token position, so one cache can
hold a batch of sequences of different lengths (the serving engine's continuous batching).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from neo.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 as LLaMA does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021) in the rotate-half layout: dims [0, hd/2) pair with [hd/2, hd)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) int → cos, sin each (B, 1, T, hd) in fp32."""
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, T, hd) rotated by the angles in cos/sin (B, 1, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of past tokens, one slot per position: k[layer] is (B, n_kv_heads, S, hd).

    A row's token at position p lives in slot p. Rows may hold sequences of different lengths; the
    attention mask built from the query positions keeps each row from seeing slots past its own end.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(
        cls, config: ModelConfig, batch_size: int, max_len: int | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> KVCache:
        max_len = max_len or config.max_seq_len
        if max_len > config.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len={config.max_seq_len}")
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        return cls(
            k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)],
            v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)],
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows ``start..stop-1`` (writes through it land in this cache)."""
        return KVCache(k=[k[start:stop] for k in self.k], v=[v[start:stop] for v in self.v])


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d, kv_dim = config.d_model, config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.qkv_weight: torch.Tensor | None = None  # q/k/v stacked, set by NeoModel.fuse_projections

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        positions: torch.Tensor | None = None, cache: KVCache | None = None, layer: int = 0,
        mask: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """``mask``: None (causal over these T tokens), a (B, 1, T, S) bool/additive mask, or with a cache an int
        ``offset``: every row's queries sit at positions offset..offset+T-1 and see slots 0..their own."""
        B, T, _ = x.shape
        if self.qkv_weight is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # one matmul instead of three (inference: the weights are views of this one tensor)
            kv_dim = self.n_kv_heads * self.head_dim
            q, k, v = F.linear(x, self.qkv_weight).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = q.reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, T, hd)
        k = k.reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, kv, T, hd)
        v = v.reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:
            # write this step's keys/values at their positions, then attend over the whole cache
            rows = torch.arange(B, device=x.device)[:, None].expand(B, T)  # (B, T)
            cache.k[layer][rows, :, positions] = k.transpose(1, 2).to(cache.k[layer].dtype)
            cache.v[layer][rows, :, positions] = v.transpose(1, 2).to(cache.v[layer].dtype)
            span = mask + T if isinstance(mask, int) else mask.shape[-1]  # only the slots any row can see
            k, v = cache.k[layer][:, :, :span].to(q.dtype), cache.v[layer][:, :, :span].to(q.dtype)

        # GQA/MQA: SDPA shares each k/v head with its group of query heads (no repeated copies)
        gqa = self.n_kv_heads != self.n_heads
        if isinstance(mask, int):
            y = attend_from(q, k, v, mask, gqa)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def attend_from(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, gqa: bool) -> torch.Tensor:
    """Causal attention of queries at positions offset..offset+T-1 over keys at slots 0..offset+T-1.

    Prefill from the start (offset 0) is SDPA's causal kernel. A later chunk (chunked prefill, a prefix-cache
    hit) on CPU is two flash-kernel calls, the chunk's queries over the earlier keys (no mask) and over the chunk
    itself (causal), whose outputs are merged by their log-sum-exp: ~2x faster on CPU than one call with a
    (T, offset + T) mask, which computes the masked triangle too. Other devices take the mask.
    """
    if offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    T = q.shape[2]
    if q.device.type != "cpu":
        seen = torch.arange(offset + T, device=q.device) <= torch.arange(offset, offset + T, device=q.device)[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, enable_gqa=gqa)
    if gqa:  # the flash op wants one k/v head per query head
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    past, lse_past = flash(q, k[:, :, :offset], v[:, :, :offset])[:2]
    new, lse_new = flash(q, k[:, :, offset:], v[:, :, offset:], is_causal=True)[:2]
    lse = torch.logaddexp(lse_past, lse_new)  # (B, h, T), fp32: the merge is done in fp32 for bf16 models too
    weight_past, weight_new = ((part - lse).exp().unsqueeze(-1) for part in (lse_past, lse_new))
    return (past.float() * weight_past + new.float() * weight_new).to(q.dtype)


class SwiGLU(nn.Module):
    """MLP with a SiLU-gated linear unit (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # gate/up stacked, set by NeoModel.fuse_projections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.post_attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, positions=None, cache=None, layer=0, mask=None) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), cos, sin, positions, cache, layer, mask)
        return x + self.mlp(self.post_attn_norm(x))


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B, T) → bool mask (B, 1, T, T): query t sees key s iff s ≤ t and both are in one document."""
    T = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


class NeoModel(nn.Module):
    #: recompute each block's activations in backward instead of storing them (training memory; the
    #: same switch as HF's ``gradient_checkpointing``). Off by default; the trainer turns it on.
    activation_checkpointing: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual outputs scaled by 1/sqrt(2·n_layers) (GPT-2 §2.3)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Inference: q/k/v and gate/up each become one matmul (fewer, larger kernels per decode step). The
        separate weights become frozen views of the stacked ones, so memory and ``state_dict`` stay as they
        were. For inference only: the stacked tensors are what the forward uses, and nothing trains them."""
        for block in self.layers:
            attn, mlp = block.attn, block.mlp
            projections = [(attn, "qkv_weight", (attn.q_proj, attn.k_proj, attn.v_proj)),
                           (mlp, "gate_up_weight", (mlp.gate_proj, mlp.up_proj))]
            for module, name, linears in projections:
                if getattr(module, name) is not None:
                    continue
                stacked = torch.cat([lin.weight for lin in linears])
                start = 0
                for lin in linears:
                    rows = lin.weight.shape[0]
                    lin.weight = nn.Parameter(stacked[start:start + rows], requires_grad=False)
                    start += rows
                setattr(module, name, stacked)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
        cache: KVCache | None = None, doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, vocab_size). See ``hidden_states`` for the arguments."""
        return self.lm_head(self.hidden_states(input_ids, positions, cache, doc_ids))

    def hidden_states(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
        cache: KVCache | None = None, doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) → final-norm hidden states (B, T, d_model), the input of ``lm_head``.

        Without a cache: a causal pass over positions 0..T-1 (training, scoring). ``doc_ids`` (B, T)
        keep attention inside each document of a packed row (block-diagonal causal mask); pass the
        matching ``positions`` that restart at each document.
        With a cache: ``positions`` (B, T) gives each token's position (= its cache slot); each row
        attends to its own slots 0..position. Use it for prefill and for one-token decode steps.
        """
        B, T = input_ids.shape
        mask = None
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
            if positions is None:
                positions = torch.arange(T, device=input_ids.device).expand(B, T)
            if doc_ids is not None:
                mask = document_causal_mask(doc_ids)
        else:
            if positions is None:
                raise ValueError("positions (B, T) are required when decoding with a KV cache")
            if doc_ids is not None:
                raise ValueError("doc_ids apply to training passes, not to decoding with a KV cache")
            span = int(positions.max()) + 1
            if span > cache.max_len:
                raise ValueError(f"position {span - 1} is past the KV cache length {cache.max_len}")
            offset = int(positions[0, 0])
            if T > 1 and bool((positions == torch.arange(offset, offset + T, device=positions.device)).all()):
                mask = offset  # every row's tokens at offset..offset+T-1 (a prefill): causal kernels, no mask
            else:  # rows at their own positions (decode steps, mixed prefix hits): one additive mask for all layers
                slots = torch.arange(span, device=input_ids.device)
                seen = (slots[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, span)
                dtype = self.embed.weight.dtype
                mask = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, float("-inf"))
        cos, sin = self.rope(positions)
        x = self.embed(input_ids)  # (B, T, d)
        recompute = self.activation_checkpointing and self.training and cache is None
        for i, block in enumerate(self.layers):
            if recompute:
                x = checkpoint(block, x, cos, sin, positions, None, i, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, positions, cache, i, mask)
        return self.norm(x)
