import pytest
import torch

from neo.config import ModelConfig
from neo.generate import SamplingParams, filter_logits, generate, sample_next
from neo.model import NeoModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return NeoModel(ModelConfig.from_name("tiny", vocab_size=300, max_seq_len=96)).eval()


PROMPT = [1, 17, 42, 99, 7]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=20, temperature=0),
        SamplingParams(max_new_tokens=20, temperature=0.8, seed=5),
        SamplingParams(max_new_tokens=20, temperature=1.0, top_k=10, seed=6),
        SamplingParams(max_new_tokens=20, temperature=1.2, top_p=0.7, seed=7),
        SamplingParams(max_new_tokens=20, temperature=1.0, min_p=0.05, repetition_penalty=1.3, seed=8),
    ],
    ids=["greedy", "temperature", "top_k", "top_p", "min_p+rep"],
)
def test_cache_equals_no_cache(model, params):
    with_cache = generate(model, PROMPT, params, use_cache=True)
    without = generate(model, PROMPT, params, use_cache=False)
    assert len(with_cache) == 20
    assert with_cache == without


def test_seed_reproducible_and_different_seeds_differ(model):
    a = generate(model, PROMPT, SamplingParams(max_new_tokens=30, seed=1))
    b = generate(model, PROMPT, SamplingParams(max_new_tokens=30, seed=1))
    c = generate(model, PROMPT, SamplingParams(max_new_tokens=30, seed=2))
    assert a == b and a != c


def test_stop_ids_end_generation_and_budget_respects_context(model):
    greedy = generate(model, PROMPT, SamplingParams(max_new_tokens=20, temperature=0))
    stop = greedy[5]
    out = generate(model, PROMPT, SamplingParams(max_new_tokens=20, temperature=0, stop_ids=[stop]))
    assert out == greedy[: greedy.index(stop) + 1]
    long_prompt = list(range(1, 90))
    assert len(generate(model, long_prompt, SamplingParams(max_new_tokens=50, temperature=0))) == 96 - 89
    with pytest.raises(ValueError, match="leaves no room"):
        generate(model, list(range(96)), SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], SamplingParams())


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    kept = lambda p: torch.isfinite(filter_logits(logits, p)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(SamplingParams(top_k=2)) == [0, 1]
    assert kept(SamplingParams(top_p=0.7)) == [0, 1]  # 0.5 < 0.7 ≤ 0.75
    assert kept(SamplingParams(top_p=0.5)) == [0]
    assert kept(SamplingParams(min_p=0.4)) == [0, 1]  # p ≥ 0.4·0.5 = 0.2
    assert sample_next(logits, SamplingParams(temperature=0)) == 0
    # repetition penalty demotes a seen token below the runner-up
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=10.0), seen=torch.tensor([0])) == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2),
                                 dict(repetition_penalty=0), dict(max_new_tokens=-1)])
def test_bad_params(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
