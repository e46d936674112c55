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
import re
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
INDEX_FILE = "model.safetensors.index.json"  # sharded: {"metadata": {"total_size"}, "weight_map": {name: file}}
SHARD_FILE = "model-{index:05d}-of-{total:05d}.safetensors"  # transformers/huggingface_hub shard names
#: Export shards weights above this many bytes: huggingface_hub's default ``max_shard_size`` ("5GB",
#: huggingface_hub/serialization/_base.py MAX_SHARD_SIZE; transformers 5's save_pretrained uses 50GB). MAP-Neo's
#: released 7B comes in several ``model-0000N-of-0000M.safetensors`` shards with an index.
MAX_SHARD_BYTES = 5 * 10**9
#: Keys some LLaMA exports carry that are recomputed, not weights (old transformers saved RoPE's inverse
#: frequencies); loading ignores them.
_IGNORED_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
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


def write_weights(state: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """``model.safetensors``, or, when the tensors pass ``max_shard_bytes``, ``model-0000i-of-0000n.safetensors``
    shards (tensors in order, a new shard when the next would pass the limit; a tensor larger than the limit
    gets a shard of its own, as huggingface_hub does) and ``model.safetensors.index.json``."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    size = {k: t.numel() * t.element_size() for k, t in state.items()}
    if sum(size.values()) <= max_shard_bytes:
        save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        return [out_dir / WEIGHTS_FILE]
    shards: list[list[str]] = [[]]
    used = 0
    for key in state:
        if shards[-1] and used + size[key] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size[key]
    files, weight_map = [], {}
    for i, keys in enumerate(shards, 1):
        name = SHARD_FILE.format(index=i, total=len(shards))
        save_file({k: state[k] for k in keys}, str(out_dir / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(keys, name)
        files.append(out_dir / name)
    index = {"metadata": {"total_size": sum(size.values())}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` names (each file read once; a missing shard is an error)."""
    index_file = path / INDEX_FILE
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys(weight_map.values()):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} is missing (named by {index_file})")
            shard = load_file(str(path / name))
            if stray := sorted(k for k in shard if weight_map.get(k) != name):
                raise ValueError(f"{path / name} holds {stray[:3]}, which {index_file} puts elsewhere")
            tensors |= shard
    elif (path / WEIGHTS_FILE).is_file():
        tensors = load_file(str(path / WEIGHTS_FILE))
    else:
        other = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (PyTorch .bin weights {other[:2]} are not read: convert them to safetensors)" if other else ""
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    return {k: v for k, v in tensors.items() if not _IGNORED_KEYS.fullmatch(k)}


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
    generation: dict[str, Any] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write a complete HF directory, and a model card (``README.md``) from ``info``. Weights above
    ``max_shard_bytes`` are sharded with an index. Written to a temp dir and renamed, so readers never see half."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_dir(out_dir) as tmp:
        cfg = model.config
        write_weights(_hf_state_dict(model, dtype), tmp, max_shard_bytes)
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
        (tmp / "README.md").write_text(model_card(info), encoding="utf-8")
    log.info("exported %s (%s, %.1fM params)", out_dir, cfg.attention_kind, cfg.num_params() / 1e6)
    return out_dir


#: Model card front matter (https://huggingface.co/docs/hub/model-cards#model-card-metadata). The license is
#: Neo's own (pyproject.toml ``license = "Apache-2.0"``; ours: a checkpoint is licensed as the code that made
#: it unless its data says otherwise); languages are MAP-Neo's (bilingual English/Chinese, arXiv 2405.19327 §1).
CARD_LICENSE = "apache-2.0"
CARD_LANGUAGES = ("en", "zh")
CARD_TAGS = ("neo", "map-neo", "llama", "text-generation")


def model_card(info: NeoCheckpointInfo, license: str = CARD_LICENSE) -> str:
    """``README.md`` for a checkpoint: Hugging Face model-card YAML front matter (license, language, tags,
    base_model when the parent is a Hub id) and what ``neo.json`` knows: stage, parent, model shape, training
    data, eval scores, training config."""
    def scalar(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar

    lines = ["---", f"license: {scalar(license)}", "language:", *(f"- {lang}" for lang in CARD_LANGUAGES),
             "library_name: transformers", "pipeline_tag: text-generation", "tags:",
             *(f"- {scalar(t)}" for t in (*CARD_TAGS, f"stage-{info.stage}"))]
    if info.parent and re.fullmatch(r"[\w.-]+/[\w.-]+", info.parent):
        lines.append(f"base_model: {scalar(info.parent)}")
    lines += ["---", "", f"# {info.name}", "",
              f"A {info.preset} LlamaForCausalLM checkpoint written by Neo (stage: {info.stage}"
              + (f", trained from `{info.parent}`" if info.parent else "") + f", created {info.created}).", "",
              "| | |", "|---|---|", f"| stage | {info.stage} |", f"| parent | {info.parent or '—'} |",
              f"| preset | {info.preset} |"]
    model = info.model
    for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "max_seq_len"):
        if key in model:
            lines.append(f"| {key} | {model[key]} |")
    if info.tokenizer_sha256:
        lines.append(f"| tokenizer sha256 | `{info.tokenizer_sha256}` |")
    for title, table in (("Training data", info.data), ("Evaluation", info.metrics)):
        lines += ["", f"## {title}", ""]
        if not table:
            lines.append("None recorded.")
            continue
        lines += ["| | |", "|---|---|"]
        for key, value in table.items():
            shown = f"{value:.4g}" if isinstance(value, float) else (
                f"`{json.dumps(value, ensure_ascii=False)}`" if isinstance(value, dict | list) else str(value))
            lines.append(f"| {key} | {shown} |")
    if info.train_config:
        lines += ["", "## Training configuration", "", "```json",
                  json.dumps(info.train_config, indent=2, ensure_ascii=False, default=str), "```"]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'model = AutoModelForCausalLM.from_pretrained("{info.name}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{info.name}")', "```", ""]
    return "\n".join(lines)


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
    weights = path / (INDEX_FILE if (path / INDEX_FILE).is_file() else WEIGHTS_FILE)
    tensors = read_weights(path)
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
        write_weights(state, tmp)
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
    tensors = read_weights(path)
    with torch.device("meta"):
        model = NeoModel(config)
    expected = {hf_name(n): (n, p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}
    expected[SCORE_NAME] = (SCORE_NAME, torch.Size([1, config.d_model]))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, (_, shape) in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(f"{path / WEIGHTS_FILE}: {key} has shape {tuple(tensors[key].shape)}, "
                             f"expected {tuple(shape)}")
    score = tensors.pop(SCORE_NAME)
    state = {neo: tensors[key] for key, (neo, _) in expected.items() if key != SCORE_NAME}
    model = model.to_empty(device=device)
    state["lm_head.weight"] = torch.zeros(model.lm_head.weight.shape, dtype=score.dtype)
    model.load_state_dict(state)
    model.rope = model.rope.__class__(config.head_dim, config.rope_theta).to(device)  # rebuild the buffer
    return model.to(device, dtype).eval(), score.to(device, dtype)
