import pytest

from neo.config import (
    NEO_7B_EMBEDDING_ROWS,
    PAPER_VOCAB_SIZE,
    PRESET_SOURCES,
    PRESETS,
    ModelConfig,
    megatron_embedding_rows,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_count_like_the_model(name):
    cfg = ModelConfig.from_name(name)
    assert cfg.name == name
    assert cfg.num_params() > cfg.num_params(include_embedding=False) > 0
    mem = cfg.memory_bytes()
    assert mem["train_adam_mixed"] == 16 * cfg.num_params() == 4 * mem["weights_fp32"]


def test_named_sizes_are_near_their_names():
    # neo-250m etc. are sized to their names (embeddings included); neo-7b is MAP-Neo 7B as released
    for name, target in (("neo-250m", 250e6), ("neo-460m", 460e6), ("neo-980m", 980e6), ("neo-7b", 7.8e9)):
        assert abs(ModelConfig.from_name(name).num_params() / target - 1) < 0.02, name
    assert ModelConfig.from_name("neo-250m").vocab_size == PAPER_VOCAB_SIZE
    assert ModelConfig.from_name("neo-250m").attention_kind == "MQA"


def test_overrides_and_roundtrip():
    cfg = ModelConfig.from_name("tiny", vocab_size=1234, n_kv_heads=1)
    assert (cfg.vocab_size, cfg.attention_kind) == (1234, "MQA")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_heads=3), "not divisible by n_heads=3"),
        (dict(n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
        (dict(n_kv_heads=0), "n_kv_heads must be a positive integer"),
        (dict(d_model=120, n_heads=8), "head_dim=15 must be even"),
        (dict(vocab_size=-1), "vocab_size must be a positive integer"),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_name("tiny", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field.*n_embd"):
        ModelConfig.from_dict({"n_embd": 3})


def test_flops_per_token_matches_6n_rule_when_attention_is_small():
    cfg = ModelConfig.from_name("neo-7b")
    n_matmul = cfg.num_params() - cfg.vocab_size * cfg.d_model - (2 * cfg.n_layers + 1) * cfg.d_model
    # at seq_len 1 the attention term is negligible: 6N within 0.1 %
    assert cfg.flops_per_token(seq_len=1) == pytest.approx(6 * n_matmul, rel=1e-3)
    assert cfg.flops_per_token(2048, training=False) == pytest.approx(cfg.flops_per_token(2048) / 3)


@pytest.mark.parametrize("name", ["neo-2b", "neo-7b", "neo-250m"])
def test_parameter_count_is_the_models_and_transformers_llamas(name):
    """num_params() = the parameters NeoModel allocates = transformers' LlamaForCausalLM with the release's
    config.json fields (meta tensors: nothing is allocated)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from neo.model import NeoModel

    c = ModelConfig.from_name(name)
    with torch.device("meta"):
        ours = sum(p.numel() for p in NeoModel(c).parameters())
        llama = LlamaForCausalLM(LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, tie_word_embeddings=False))
        theirs = sum(p.numel() for p in llama.parameters())
    assert c.num_params() == ours == theirs


def test_released_shapes_by_hand():
    # MAP-Neo 7B (m-a-p/neo_7b config.json): 28 layers of q,k,v,o 3072² (16 kv heads = MHA) + SwiGLU 3·3072·24576
    # + 2 norms, a final norm, untied 64256-row embedding and head. 7.79B, as the Hub lists it.
    per_layer = 4 * 3072 * 3072 + 3 * 3072 * 24576 + 2 * 3072
    assert ModelConfig.from_name("neo-7b").num_params() == 28 * per_layer + 3072 + 2 * 64256 * 3072 == 7_793_716_224
    # MAP-Neo 2B (pretrain_2b.sh): MQA, 8 heads of 256 so k and v are 2048×256 each; 64128 rows at TP 1.
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 16384 + 2 * 2048
    assert ModelConfig.from_name("neo-2b").num_params() == 18 * per_layer + 2048 + 2 * 64128 * 2048
    two_b = ModelConfig.from_name("neo-2b")
    assert (two_b.attention_kind, two_b.head_dim, two_b.max_seq_len) == ("MQA", 256, 8192)


def test_megatron_padding_explains_the_released_embedding_rows():
    assert megatron_embedding_rows(tensor_parallel=2) == NEO_7B_EMBEDDING_ROWS == 64256  # the 7B ran at TP 2
    assert megatron_embedding_rows(tensor_parallel=1) == 64128 == ModelConfig.from_name("neo-2b").vocab_size
    assert megatron_embedding_rows(tensor_parallel=1, pieces=64123) == 64128 < megatron_embedding_rows(1, 64124)


def test_every_preset_names_its_source_and_what_is_ours():
    assert set(PRESET_SOURCES) == set(PRESETS)
    for name in ("neo-250m", "neo-460m", "neo-980m"):  # no released shape found: the shape is marked ours
        src = PRESET_SOURCES[name]
        assert src.ref.endswith(name.removeprefix("neo-").upper()) and "could not be read" in src.says
        assert {"d_model", "n_layers", "n_kv_heads", "d_ff"} <= set(src.ours)
    for name in ("neo-2b", "neo-7b"):
        assert PRESET_SOURCES[name].ours == () and PRESET_SOURCES[name].ref.startswith("https://")
    assert set(PRESET_SOURCES["tiny"].ours) == set(PRESETS["tiny"])
