"""Neo ⇄ Hugging Face ``LlamaForCausalLM`` checkpoint directories.

The one checkpoint format every service exchanges::

    config.json  model.safetensors  generation_config.json
    tokenizer.json  tokenizer_config.json (with chat_template)  special_tokens_map.json
    tokenizer.model  neo.json

``neo.model`` already uses LLaMA's rotate-half RoPE and separate q/k/v projections, so conversion is
a pure rename (``hf_name``); no permutation or QKV split exists anywhere. Loading checks the full key
set and every shape before copying: a partial or mismatched load is an error, never silent.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from neo.config import ModelConfig
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
_LAYER_NAMES = {  # neo name inside a block → HF name inside ``model.layers.{i}``
    "input_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "post_attn_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFTokenizer(Protocol):
    """What export needs from a tokenizer (``neo.tokenizer.NeoTokenizer`` provides it)."""

    bos_id: int
    eos_id: int
    pad_id: int
    im_end_id: int

    def save_hf(self, out_dir: Path, model_max_length: int | None = None) -> None: ...


def hf_name(neo_name: str) -> str:
    """``layers.3.attn.q_proj.weight`` → ``model.layers.3.self_attn.q_proj.weight``."""
    if neo_name in _TOP_NAMES:
        return _TOP_NAMES[neo_name]
    prefix, index, rest = neo_name.split(".", 2)
    if prefix != "layers" or rest not in _LAYER_NAMES:
        raise KeyError(f"no Hugging Face name for parameter {neo_name!r}")
    return f"model.layers.{index}.{_LAYER_NAMES[rest]}"


def _hf_state_dict(model: NeoModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # tied: HF re-ties it from embed_tokens (tie_word_embeddings)
        state[hf_name(name)] = tensor.detach().to("cpu", dtype).contiguous()
    return state


def hf_config(config: ModelConfig, tokenizer: HFTokenizer | None, dtype: torch.dtype) -> dict[str, Any]:
    special = {}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                   "pad_token_id": tokenizer.pad_id}
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # both spellings: ``rope_theta`` for older readers (vLLM, transformers<5), ``rope_parameters`` for newer
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
        **special,
    }


@contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """A temp directory beside ``out_dir`` that replaces it when the block succeeds (readers never see half
    an export) and is removed when it fails."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_hf(
    model: NeoModel, out_dir: str | Path, tokenizer: HFTokenizer | None = None,
    info: NeoCheckpointInfo | None = None, dtype: torch.dtype = torch.float32,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write a complete HF directory. Written to a temp dir and renamed, so readers never see half."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_dir(out_dir) as tmp:
        cfg = model.config
        save_file(_hf_state_dict(model, dtype), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer, dtype), indent=2) + "\n")
        gen: dict[str, Any] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
        if tokenizer is not None:
            tokenizer.save_hf(tmp, model_max_length=cfg.max_seq_len)
            gen |= {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
                    # a chat turn ends with <|im_end|>, a document with </s>: stop on either
                    "eos_token_id": [tokenizer.eos_id, tokenizer.im_end_id]}
        gen |= generation or {}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        info = info or NeoCheckpointInfo(name=out_dir.name, preset=cfg.name, model=cfg.to_dict())
        info.write(tmp)
    log.info("exported %s (%s, %.1fM params)", out_dir, cfg.attention_kind, cfg.num_params() / 1e6)
    return out_dir


def config_from_hf(hf: dict[str, Any], name: str = "imported") -> ModelConfig:
    """ModelConfig from an HF LLaMA ``config.json``; refuses features our model does not have."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"expected a llama checkpoint, got model_type={hf.get('model_type')!r}")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, ok) != ok:
            raise ValueError(f"unsupported {key}={hf[key]!r} (Neo supports {key}={ok!r})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"unsupported RoPE scaling {rope!r}")
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    if head_dim * n_heads != hf["hidden_size"]:
        raise ValueError(f"head_dim={head_dim} × heads={n_heads} != hidden_size={hf['hidden_size']}")
    return ModelConfig(
        name=name, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-5), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
    )


def load_hf(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
) -> NeoModel:
    """Load an HF LLaMA directory into a ``NeoModel`` (eval mode). Every key and shape is checked."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    hf = json.loads((path / "config.json").read_text())
    info = NeoCheckpointInfo.read(path)
    config = config_from_hf(hf, name=info.preset if info else path.name)
    dtype = dtype or _DTYPES.get(hf.get("dtype") or hf.get("torch_dtype") or "float32", torch.float32)
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing (sharded checkpoints are not supported yet)")
    tensors = load_file(str(weights))
    with torch.device("meta"):
        model = NeoModel(config)
    expected = {hf_name(n): (n, p.shape) for n, p in model.state_dict().items()
                if not (n == "lm_head.weight" and config.tie_embeddings)}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {missing[:5]}…({len(missing)}), "
                         f"unexpected keys {unexpected[:5]}…({len(unexpected)})")
    state = {}
    for key, (neo_key, shape) in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(f"{weights}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}")
        state[neo_key] = tensors[key]
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=not config.tie_embeddings, assign=False)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rope = model.rope.__class__(config.head_dim, config.rope_theta).to(device)  # rebuild the buffer
    return model.to(dtype).eval()


# --- reward models: ``LlamaForSequenceClassification`` with one label ------------------------------------
SCORE_NAME = "score.weight"  # HF's scalar head: Linear(hidden_size, num_labels=1, bias=False)


def export_reward_hf(
    model: NeoModel, score: torch.Tensor, out_dir: str | Path, tokenizer: HFTokenizer | None = None,
    meta: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32,
) -> Path:
    """A reward model (Neo backbone + scalar head ``score`` (1, d_model)) as an HF directory that
    ``AutoModelForSequenceClassification`` loads as ``LlamaForSequenceClassification`` (num_labels=1): the
    reward is the score of the last non-pad token. No ``lm_head`` and no ``neo.json`` (it is not a chat model:
    ``load_hf`` refuses it); ``meta`` is written as ``reward_model.json`` (stage, base, metrics)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if tuple(score.shape) != (1, model.config.d_model):
        raise ValueError(f"score head must be (1, {model.config.d_model}), got {tuple(score.shape)}")
    with _atomic_dir(out_dir) as tmp:
        state = {k: v for k, v in _hf_state_dict(model, dtype).items() if k != "lm_head.weight"}
        state[SCORE_NAME] = score.detach().to("cpu", dtype).contiguous()
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = hf_config(model.config, tokenizer, dtype) | {
            "architectures": ["LlamaForSequenceClassification"], "num_labels": 1,
            "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "problem_type": "regression",
            "tie_word_embeddings": False, "use_cache": False}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_hf(tmp, model_max_length=model.config.max_seq_len)
        (tmp / "reward_model.json").write_text(json.dumps(meta or {}, indent=2, ensure_ascii=False) + "\n")
    log.info("exported reward model %s", out_dir)
    return out_dir


def is_reward_hf(path: str | Path) -> bool:
    """Whether ``path`` holds a sequence-classification (reward) checkpoint."""
    config = Path(path) / "config.json"
    return config.is_file() and "LlamaForSequenceClassification" in json.loads(config.read_text()).get(
        "architectures", [])


def load_reward_hf(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
) -> tuple[NeoModel, torch.Tensor]:
    """(backbone, score head (1, d_model)) of a reward directory written by ``export_reward_hf`` (or any
    one-label ``LlamaForSequenceClassification`` Neo supports). The backbone's ``lm_head`` is unused (zeros)."""
    path = Path(path)
    if not is_reward_hf(path):
        raise ValueError(f"{path} is not a LlamaForSequenceClassification checkpoint")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("num_labels", len(hf.get("id2label") or {0: 0})) != 1:
        raise ValueError(f"{path}: a reward model has num_labels=1")
    config = config_from_hf(hf | {"tie_word_embeddings": False}, name=path.name)
    dtype = dtype or _DTYPES.get(hf.get("dtype") or hf.get("torch_dtype") or "float32", torch.float32)
    tensors = load_file(str(path / WEIGHTS_FILE))
    with torch.device("meta"):
        model = NeoModel(config)
    expected = {hf_name(n): (n, p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}
    expected[SCORE_NAME] = (SCORE_NAME, torch.Size([1, config.d_model]))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, (_, shape) in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(f"{path / WEIGHTS_FILE}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}")
    score = tensors.pop(SCORE_NAME)
    state = {neo: tensors[key] for key, (neo, _) in expected.items() if key != SCORE_NAME}
    model = model.to_empty(device=device)
    state["lm_head.weight"] = torch.zeros(model.lm_head.weight.shape, dtype=score.dtype)
    model.load_state_dict(state)
    model.rope = model.rope.__class__(config.head_dim, config.rope_theta).to(device)  # rebuild the buffer
    return model.to(device, dtype).eval(), score.to(device, dtype)
