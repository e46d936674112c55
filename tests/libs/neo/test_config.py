import pytest

from neo.config import PAPER_VOCAB_SIZE, PRESETS, ModelConfig


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
