import json

import pytest
import torch

from neo.config import ModelConfig
from neo.evals.backends import ModelBackend
from neo.evals.runner import CodeExecutionNotAllowed, run_task
from neo.evals.sandbox import run_python
from neo.evals.tasks import BUNDLED, extract_gsm8k_answer, load_items, normalize_number
from neo.hf import export_hf
from neo.model import NeoModel
from neo.tokenizer import NeoTokenizer, TokenizerConfig, train_tokenizer


@pytest.mark.parametrize("kind", list(BUNDLED))
def test_bundled_sets_load(kind):
    items = load_items(kind, BUNDLED[kind])
    assert len(items) >= 5
    assert len({i.id for i in items}) == len(items)


def test_multiple_choice_prompts_follow_the_official_formats():
    mmlu = load_items("mmlu", BUNDLED["mmlu"])[0]
    assert mmlu.prompt.startswith("The following are multiple choice questions (with answers) about debian and linux.")
    assert mmlu.prompt.endswith("\nD. man apt\nAnswer:") and mmlu.answer == "A"
    ceval = load_items("ceval", BUNDLED["ceval"])[1]
    assert ceval.prompt.startswith("以下是中国关于计算机基础考试的单项选择题") and ceval.prompt.endswith("答案：")
    assert ceval.answer == "B"


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    for line in BUNDLED["humaneval"].read_text().splitlines():
        row = json.loads(line)
        item = next(i for i in load_items("humaneval", BUNDLED["humaneval"]) if i.id == row["task_id"])
        assert run_python(item.prompt + row["canonical_solution"] + "\n\n" + item.answer).passed, item.id
        assert not run_python(item.prompt + "    return None\n\n" + item.answer).passed, item.id


def test_gsm8k_answer_extraction():
    assert normalize_number("costs $1,234.50 total") == "1234.5"
    assert extract_gsm8k_answer("so 3 + 5 = 8\n#### 8") == "8"
    assert extract_gsm8k_answer("The answer is 140 pages.") == "140"
    assert extract_gsm8k_answer("no idea") is None
    assert [i.answer for i in load_items("gsm8k", BUNDLED["gsm8k"])][:3] == ["8", "48", "140"]


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "x_test.csv"
    bad.write_text("question,A,B,C,D,E\n")
    with pytest.raises(ValueError, match=r"x_test.csv:1: expected question, A, B, C, D and an answer letter"):
        load_items("mmlu", bad)
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match="####"):
        load_items("gsm8k", bad)
    with pytest.raises(ValueError, match="unknown task 'bbh'"):
        load_items("bbh", bad)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalmodel")
    text = root / "corpus.txt"
    text.write_text("The answer is A. 答案是 B。 def add(a, b): return a + b\n" * 200
                    + "Question: 1 + 1? Answer: 2\n" * 50)
    train_tokenizer([text], root / "tok", TokenizerConfig(vocab_size=340), progress=False)
    tok = NeoTokenizer.load(root / "tok")
    torch.manual_seed(0)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=256))
    return export_hf(model, root / "model", tokenizer=tok)


def test_model_backend_loglikelihood_is_the_sum_of_continuation_logprobs(tiny_dir):
    backend = ModelBackend(tiny_dir)
    context, continuation = "Question: 1 + 1? Answer:", " 2"
    ids = backend.tokenizer.encode(context + continuation, add_bos=True)
    n_ctx = len(backend.tokenizer.encode(context, add_bos=True))
    assert ids[:n_ctx] == backend.tokenizer.encode(context, add_bos=True)  # a clean token boundary here
    with torch.no_grad():
        logprobs = backend.model(torch.tensor([ids]))[0].log_softmax(-1)
    expected = sum(logprobs[i - 1, ids[i]].item() for i in range(n_ctx, len(ids)))
    assert backend.loglikelihood(context, continuation) == pytest.approx(expected, abs=1e-5)


def test_runner_scores_every_item(tiny_dir):
    backend = ModelBackend(tiny_dir)
    result = run_task(backend, "mmlu", BUNDLED["mmlu"], limit=4)
    assert result.n == 4 and result.metric == "accuracy"
    for sample in result.samples:  # the prediction is the highest-scoring option
        assert sample["pred"] == max(sample["scores"], key=sample["scores"].get)
        assert sample["correct"] == (sample["pred"] == sample["gold"])
    assert result.score == sum(s["correct"] for s in result.samples) / 4
    he = run_task(backend, "humaneval", BUNDLED["humaneval"], limit=2, max_tokens=16, allow_code_execution=True)
    assert he.metric == "pass@1" and all(s["status"] in ("passed", "failed", "timeout") for s in he.samples)


def test_humaneval_needs_an_explicit_opt_in_to_run_generated_code(tiny_dir, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("generated code was run without the opt-in")

    monkeypatch.setattr("neo.evals.runner.run_python", never)
    with pytest.raises(CodeExecutionNotAllowed, match="--allow-code-execution"):
        run_task(ModelBackend(tiny_dir), "humaneval", BUNDLED["humaneval"], limit=1, max_tokens=4)
