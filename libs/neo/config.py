"""Model configuration: one dataclass plus named presets stored as plain data.

Importable without torch. ``ModelConfig.from_name("tiny", vocab_size=8000)`` is the front door;
derived values and checks live in ``__post_init__`` and raise ``ValueError`` naming the field.

Attention heads, one integer (``n_kv_heads``) covers all three layouts::

    MHA  n_kv_heads == n_heads      q: ■■■■  k/v: ■■■■   one k/v head per query head
    GQA  1 < n_kv_heads < n_heads   q: ■■■■  k/v: ■ ■    query heads share k/v in groups
    MQA  n_kv_heads == 1            q: ■■■■  k/v: ■      all query heads share one k/v head
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# --- numbers from the MAP-Neo paper (arXiv 2405.19327; summary in shared/seeds/001) ---------------
#: Tokenizer vocabulary of MAP-Neo (paper §3, "vocabulary size 64000").
PAPER_VOCAB_SIZE = 64000
#: MAP-Neo's released 7B checkpoint (m-a-p/neo_7b config.json) pads the embedding to 64256 rows.
NEO_7B_EMBEDDING_ROWS = 64256


def megatron_embedding_rows(tensor_parallel: int, pieces: int = PAPER_VOCAB_SIZE) -> int:
    """Embedding rows of a MAP-Neo model trained by Megatron-LM-NEO: its SentencePieceTokenizer adds <CLS>, <SEP>,
    <EOD>, <MASK> and <PAD> to the 64000 pieces (MAP-Neo's tokenizer.model has none of them), then pads to a
    multiple of 128 x tensor-parallel size (megatron/tokenizer/tokenizer.py ``_vocab_size_with_padding``).
    The 7B ran at TP 2 (pretrain_7b.sh): 64256 rows, as its released config.json says."""
    multiple = 128 * tensor_parallel
    return -(-(pieces + 5) // multiple) * multiple


#: MAP-Neo 2B: pretrain_2b.sh runs at TP 1, so Megatron made 64128 embedding rows.
NEO_2B_EMBEDDING_ROWS = megatron_embedding_rows(tensor_parallel=1)
#: RoPE base used by MAP-Neo 7B (config.json ``rope_theta``) and LLaMA.
DEFAULT_ROPE_THETA = 10000.0


@dataclass
class ModelConfig:
    """Shape of a decoder-only transformer (pre-norm RMSNorm, RoPE, SwiGLU, MHA/GQA/MQA)."""

    name: str = "custom"
    vocab_size: int = PAPER_VOCAB_SIZE  # rows of the embedding; must cover the tokenizer's ids
    d_model: int = 768  # hidden size
    n_layers: int = 12
    n_heads: int = 12  # query heads
    n_kv_heads: int = 1  # key/value heads: 1 = MQA (MAP-Neo's choice for its ablations), n_heads = MHA
    d_ff: int = 2048  # SwiGLU inner size (``intermediate_size`` in HF)
    max_seq_len: int = 4096  # longest sequence RoPE and the KV cache are sized for
    rope_theta: float = DEFAULT_ROPE_THETA
    norm_eps: float = 1e-5  # RMSNorm epsilon, as MAP-Neo 7B's config.json
    tie_embeddings: bool = False  # share input embedding and output head (saves vocab*d_model params)
    init_std: float = 0.02  # normal init std, as LLaMA/MAP-Neo (``initializer_range``)

    def __post_init__(self) -> None:
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, f)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.name}: {f} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"{self.name}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"{self.name}: head_dim={self.head_dim} must be even for RoPE")
        if not 1 <= self.n_kv_heads <= self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"{self.name}: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(1 = MQA, n_heads = MHA, between = GQA)"
            )
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError(f"{self.name}: rope_theta, norm_eps and init_std must be positive")

    # --- derived values -----------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == 1:
            return "MQA"
        return "MHA" if self.n_kv_heads == self.n_heads else "GQA"

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of ``neo.model.NeoModel`` for this config."""
        d = self.d_model
        per_layer = self._matmul_params_per_layer() + 2 * d  # + two RMSNorm weights
        head = 0 if self.tie_embeddings else self.vocab_size * d
        total = self.n_layers * per_layer + d + head  # + final norm
        return total + self.vocab_size * d if include_embedding else total

    def _matmul_params_per_layer(self) -> int:
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        return 2 * d * d + 2 * d * kv + 3 * d * self.d_ff  # q, o; k, v; SwiGLU gate, up, down

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Model FLOPs per token (PaLM appendix B): 6N + 12·L·d·T for training, a third for forward.

        N counts every matmul weight (the embedding lookup is not a matmul, the output head is).
        """
        t = seq_len or self.max_seq_len
        n_matmul = self.n_layers * self._matmul_params_per_layer() + self.vocab_size * self.d_model
        fwd = 2 * n_matmul + 4 * self.n_layers * self.d_model * t
        return 3.0 * fwd if training else float(fwd)

    def memory_bytes(self) -> dict[str, int]:
        """Memory for weights in fp32/bf16 and for mixed-precision Adam training state.

        Mixed precision Adam (ZeRO paper, §3.1): 2 (bf16 weights) + 2 (bf16 grads) + 12 (fp32
        master weights, Adam m and v) = 16 bytes per parameter, before activations.
        """
        n = self.num_params()
        return {"weights_fp32": 4 * n, "weights_bf16": 2 * n, "train_adam_mixed": 16 * n}

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset with keyword overrides, e.g. ``from_name("tiny", vocab_size=8000)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        base = cls(name=name, **PRESETS[name])
        return replace(base, **overrides) if overrides else base

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- presets: data, not branches ------------------------------------------------------------------
#: MAP-Neo's released training code: the pretraining scripts ``neo/scripts/pretrain_{2b,7b,7b_phase2}.sh``
#: of this repository (the MAP-NEO repository's ``Megatron-LM-NEO`` submodule, commit c2054d20).
MEGATRON_NEO = "https://github.com/multimodal-art-projection/Megatron-LM-NEO/blob/c2054d20/neo/scripts"

PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the demo: trains in seconds on 2 CPU cores. GQA so that tests cover grouping.
    "tiny": dict(
        vocab_size=8000, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384,
        max_seq_len=512, tie_embeddings=True,
    ),
    # Scaling-law sizes. MAP-Neo's shapes for them were not found (PRESET_SOURCES), so these are ours:
    # LLaMA-like aspect ratios, MQA, SwiGLU width 2.5-2.9·d in multiples of 256, within 2% of the named total
    # parameter count (embeddings included, untied).
    "neo-250m": dict(
        vocab_size=PAPER_VOCAB_SIZE, d_model=1024, n_layers=12, n_heads=16, n_kv_heads=1, d_ff=2560,
        max_seq_len=4096, tie_embeddings=False,
    ),
    "neo-460m": dict(
        vocab_size=PAPER_VOCAB_SIZE, d_model=1280, n_layers=18, n_heads=20, n_kv_heads=1, d_ff=3328,
        max_seq_len=4096, tie_embeddings=False,
    ),
    "neo-980m": dict(
        vocab_size=PAPER_VOCAB_SIZE, d_model=1792, n_layers=22, n_heads=28, n_kv_heads=1, d_ff=5120,
        max_seq_len=4096, tie_embeddings=False,
    ),
    # MAP-Neo 2B as trained: pretrain_2b.sh (--num-layers 18 --hidden-size 2048 --ffn-hidden-size 16384
    # --num-attention-heads 8 --num-query-groups 1 (MQA) --max-position-embeddings 8192 --norm-epsilon 1e-5
    # --untie-embeddings-and-output-weights, Megatron's default rotary base 10000).
    "neo-2b": dict(
        vocab_size=NEO_2B_EMBEDDING_ROWS, d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, d_ff=16384,
        max_seq_len=8192, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
    ),
    # MAP-Neo 7B as released: https://huggingface.co/m-a-p/neo_7b/blob/main/config.json
    # (hidden 3072, intermediate 24576, 28 layers, 16 heads with 16 kv heads, context 8192,
    # rms_norm_eps 1e-5, rope_theta 10000, untied, vocab rows 64256 for a 64000-piece tokenizer).
    "neo-7b": dict(
        vocab_size=NEO_7B_EMBEDDING_ROWS, d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16,
        d_ff=24576, max_seq_len=8192, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
    ),
}


@dataclass(frozen=True)
class PresetSource:
    """Where a preset's numbers come from: ``ref`` (URL or file), what it ``says``, and the fields that are
    ``ours`` (no source found: chosen by Neo, not MAP-Neo's)."""

    ref: str
    says: str
    ours: tuple[str, ...] = ()


_SCALING_LAW_SOURCE = (
    "MAP-Neo released scaling-law checkpoints m-a-p/neo_scalinglaw_{250M,460M,980M} (MAP-NEO README, "
    "'Model & DATA Downloads'); their hf_ckpt/*/config.json (662 bytes) could not be read with the tools "
    "this project has (no network), and the paper gives no layer shapes. Only the size is MAP-Neo's "
    "(model.safetensors of the 980M is 1.96 GB, of the 460M 923 MB: about 0.98B and 0.46B bf16 parameters)."
)
_SHAPE = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")

#: Each preset's source. ``neo model info NAME`` prints it.
PRESET_SOURCES: dict[str, PresetSource] = {
    "tiny": PresetSource("Neo (tests and the demo)", "a toy shape that trains in seconds on a CPU",
                         ours=tuple(PRESETS["tiny"])),
    "neo-250m": PresetSource("https://huggingface.co/m-a-p/neo_scalinglaw_250M", _SCALING_LAW_SOURCE, ours=_SHAPE),
    "neo-460m": PresetSource("https://huggingface.co/m-a-p/neo_scalinglaw_460M", _SCALING_LAW_SOURCE, ours=_SHAPE),
    "neo-980m": PresetSource("https://huggingface.co/m-a-p/neo_scalinglaw_980M", _SCALING_LAW_SOURCE, ours=_SHAPE),
    "neo-2b": PresetSource(
        f"{MEGATRON_NEO}/pretrain_2b.sh",
        "18 layers, hidden 2048, ffn 16384, 8 heads, 1 query group (MQA), 8192 positions, RMSNorm eps 1e-5, "
        "SwiGLU, RoPE, untied, no biases, TP_SIZE default 1, tokenizer neo/tokenizer.model (64000 pieces), so "
        "Megatron made 64128 embedding rows (megatron_embedding_rows; the same rule gives the 7B's 64256 at TP 2). "
        "m-a-p/neo_2b_general's config.json was not readable here to confirm the rows",
    ),
    "neo-7b": PresetSource(
        "https://huggingface.co/m-a-p/neo_7b/blob/main/config.json",
        "hidden 3072, intermediate 24576, 28 layers, 16 heads, 16 kv heads, 8192 positions, rms_norm_eps 1e-5, "
        f"rope_theta 10000, untied, 64256 embedding rows; the same shape in {MEGATRON_NEO}/pretrain_7b.sh",
    ),
}
