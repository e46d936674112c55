import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from neo.config import ModelConfig
from neo.hf import INDEX_FILE, config_from_hf, export_hf, load_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo


def random_tiny(**kw):
    torch.manual_seed(1)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=512, max_seq_len=128, **kw))
    with torch.no_grad():  # non-trivial norm weights so a norm-name mix-up cannot hide
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=4),  # MHA
        dict(n_kv_heads=2),  # GQA
        dict(n_kv_heads=1),  # MQA
        dict(n_kv_heads=1, tie_embeddings=False, rope_theta=500000.0),
    ],
    ids=["MHA", "GQA", "MQA", "MQA-untied-theta"],
)
def test_transformers_logits_match_ours(tmp_path, kw):
    model = random_tiny(**kw)
    out = export_hf(model, tmp_path / "ckpt")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    # and back: re-imported weights are bit-identical
    again = load_hf(out)
    assert again.config.to_dict() | {"name": "x"} == model.config.to_dict() | {"name": "x"}
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    with torch.no_grad():
        assert torch.equal(again(ids), ours)


def test_directory_contents(tmp_path):
    model = random_tiny()
    out = export_hf(model, tmp_path / "ckpt", dtype=torch.bfloat16)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json", "neo.json"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    tensors = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in tensors  # tied
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert NeoCheckpointInfo.read(out).preset == "tiny"
    assert load_hf(out).embed.weight.dtype == torch.bfloat16
    assert not list(tmp_path.glob(".ckpt.*")), "temp dir left behind"


def test_load_refuses_partial_or_mismatched_checkpoints(tmp_path):
    from safetensors.torch import save_file

    out = export_hf(random_tiny(), tmp_path / "ckpt")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['model.layers.1.mlp.up_proj.weight'\]"):
        load_hf(out)

    out = export_hf(random_tiny(), tmp_path / "ckpt2")
    tensors = load_file(str(out / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(7)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(7,\), expected \(128,\)"):
        load_hf(out)

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(tmp_path)


def test_config_from_hf_refuses_unsupported_features():
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16}
    assert config_from_hf(base).n_kv_heads == 2
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        config_from_hf(base | {"model_type": "gpt2"})
    with pytest.raises(ValueError, match="attention_bias=True"):
        config_from_hf(base | {"attention_bias": True})
    with pytest.raises(ValueError, match="RoPE scaling"):
        config_from_hf(base | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_export_shards_above_the_limit_and_transformers_reads_them(tmp_path):
    model = random_tiny(n_kv_heads=2, tie_embeddings=False)
    total = sum(p.numel() * 4 for p in model.parameters())
    out = export_hf(model, tmp_path / "sharded", max_shard_bytes=total // 3)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert not (out / "model.safetensors").exists() and len(shards) >= 3
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert sorted(set(index["weight_map"].values())) == shards and index["metadata"]["total_size"] == total
    for name in shards:  # every tensor sits in the shard the index names, and no shard passes the limit
        tensors = load_file(str(out / name))
        assert {k for k, v in index["weight_map"].items() if v == name} == set(tensors)
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= total // 3
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(5))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4
        assert torch.equal(load_hf(out)(ids), model(ids))
    # under the limit: one file, no index
    single = export_hf(model, tmp_path / "single")
    assert (single / "model.safetensors").is_file() and not (single / INDEX_FILE).exists()
    with pytest.raises(ValueError, match="max_shard_bytes"):
        export_hf(model, tmp_path / "bad", max_shard_bytes=0)


def test_model_card_from_neo_json(tmp_path):
    model = random_tiny()
    info = NeoCheckpointInfo(name="neo-tiny-sft", preset="tiny", model=model.config.to_dict(), stage="sft",
                             parent="m-a-p/neo_7b", data={"sft_examples": 1200, "manifest": "ab12"},
                             metrics={"mmlu": 0.4125, "ceval": 0.38}, train_config={"lr": 2e-5})
    out = export_hf(model, tmp_path / "card", info=info)
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    import yaml  # the Hub parses the front matter as YAML

    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "zh"]
    assert {"neo", "map-neo", "stage-sft"} <= set(meta["tags"]) and meta["base_model"] == "m-a-p/neo_7b"
    assert "| parent | m-a-p/neo_7b |" in body and "| mmlu | 0.4125 |" in body and "| sft_examples | 1200 |" in body
    assert '"lr": 2e-05' in body and "# neo-tiny-sft" in body
    # a local parent (a registry version) is no Hub base_model; no scores: said so
    local = export_hf(model, tmp_path / "local", info=info.model_copy(update={"parent": "neo:v3", "metrics": {}}))
    meta = yaml.safe_load((local / "README.md").read_text().split("---\n")[1])
    assert "base_model" not in meta
    assert "## Evaluation\n\nNone recorded." in (local / "README.md").read_text()
