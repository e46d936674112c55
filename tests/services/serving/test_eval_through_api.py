"""`neo eval` through the OpenAI API agrees with `neo eval` in process on the same checkpoint."""

import pytest

from neo.evals.backends import APIBackend, ModelBackend
from neo.evals.runner import run_task
from neo.evals.tasks import BUNDLED


@pytest.fixture(scope="module")
def backends(server, checkpoint):
    return ModelBackend(checkpoint), APIBackend(f"{server.url}/v1", "tiny")


@pytest.mark.parametrize("context, continuation", [
    ("The following are questions.\nAnswer:", " A"),
    ("以下是中国关于计算机基础考试的单项选择题。\n答案：", "B"),
    ("def add(a, b):\n    return", " a + b\n"),
])
def test_loglikelihood_matches(backends, context, continuation):
    local, api = backends
    expected = local.loglikelihood(context, continuation)
    assert api.loglikelihood(context, continuation) == pytest.approx(expected, abs=1e-4)


def test_multiple_choice_predictions_match(backends):
    local, api = backends
    ours = run_task(local, "ceval", BUNDLED["ceval"], limit=3)
    theirs = run_task(api, "ceval", BUNDLED["ceval"], limit=3)
    assert [s["pred"] for s in ours.samples] == [s["pred"] for s in theirs.samples]
    assert ours.score == theirs.score


def test_generation_matches(backends):
    local, api = backends
    prompt = "Question: Tom has 3 apples and buys 5 more. How many apples does he have now?\nAnswer:"
    assert api.generate(prompt, 12, ["Question:"]) == local.generate(prompt, 12, ["Question:"])
