"""lm-evaluation-harness itself (lm-eval 0.4.13, as its users run it) against ``neo serve``, on local task
files (no Hub): multiple choice, generation and rolling perplexity through ``local-completions``, with the
Hugging Face tokenizer of the checkpoint and with ``tokenizer_backend=remote`` (our ``/tokenizer_info``,
``/tokenize``, ``/detokenize``). docs/evaluation.md gives the same command lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neo_serving.settings import ServingSettings

from .helpers import LiveServer

pytestmark = pytest.mark.slow

MC = [{"question": "Debian's package manager is called", "choices": ["apt", "pip", "npm"], "answer": 0},
      {"question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
      {"question": "中国的首都是", "choices": ["北京", "上海", "广州"], "answer": 0}]
PPL = [{"text": "Debian is a free operating system for your computer."}, {"text": "软件包管理器会让你的系统保持最新。"}]
TASKS = {
    "neo_mc": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
              "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n",
    "neo_gen": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{choices[answer]}}'\n"
               "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
               "metric_list:\n  - metric: exact_match\n",
    "neo_ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
               "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm-eval-tasks")
    for name, rows in (("mc", MC), ("ppl", PPL)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for task, body in TASKS.items():
        data = out / ("ppl.jsonl" if task == "neo_ppl" else "mc.jsonl")
        (out / f"{task}.yaml").write_text(f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                          f"    test: {data}\ntest_split: test\n{body}metadata:\n  version: 1\n")
    return out


@pytest.fixture(scope="module")
def live(checkpoint):
    with LiveServer(ServingSettings(models=[f"tiny={checkpoint}"], max_batch_size=4)) as server:
        yield server


def lm_eval(live, task_dir: Path, out: Path, tasks: str, model_args: str) -> dict:
    args = f"model=tiny,base_url={live.url}/v1/completions,max_length=256,num_concurrent=1,max_retries=1,{model_args}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # local task files: nothing from the Hub
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                          "--tasks", tasks, "--include_path", str(task_dir), "--output_path", str(out),
                          "--log_samples", "--batch_size", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {task: [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
               for task in tasks.split(",")}
    return {"results": results, "samples": samples}


def direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | <s> context) computed by transformers on the same checkpoint."""
    ctx = [tok.bos_token_id] + tok.encode(context, add_special_tokens=False)
    whole = [tok.bos_token_id] + tok.encode(context + continuation, add_special_tokens=False)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_lm_eval_multiple_choice_and_generation_match_transformers(live, task_dir, checkpoint, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    got = lm_eval(live, task_dir, tmp_path / "hf", "neo_mc,neo_gen",
                  f"tokenizer_backend=huggingface,tokenizer={checkpoint},add_bos_token=True")
    assert 0 <= got["results"]["neo_mc"]["acc,none"] <= 1 and "exact_match,none" in got["results"]["neo_gen"]
    model = LlamaForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    deltas = []
    for sample in got["samples"]["neo_mc"]:
        for args, resp in zip(sample["arguments"].values(), sample["resps"], strict=True):
            want = direct_loglikelihood(model, tok, args["arg_0"], args["arg_1"])
            deltas.append(abs(float(resp[0][0]) - want))
    assert len(deltas) == 8 and max(deltas) < 1e-4, deltas
    assert all(len(s["resps"][0][0]) >= 0 for s in got["samples"]["neo_gen"])  # every prompt was answered


def test_lm_eval_remote_tokenizer_gives_the_hf_tokenizers_scores(live, task_dir, checkpoint, tmp_path):
    """``tokenizer_backend=remote`` needs GET /tokenizer_info and HF's reading of special tokens in /tokenize
    (lm-eval takes ``</s>`` from it as the rolling windows' first token)."""
    hf = lm_eval(live, task_dir, tmp_path / "hf", "neo_ppl", f"tokenizer_backend=huggingface,tokenizer={checkpoint}")
    remote = lm_eval(live, task_dir, tmp_path / "remote", "neo_ppl", "tokenizer_backend=remote")
    a, b = hf["results"]["neo_ppl"], remote["results"]["neo_ppl"]
    assert b["bits_per_byte,none"] == pytest.approx(a["bits_per_byte,none"], rel=1e-9), (a, b)
    assert [s["resps"] for s in remote["samples"]["neo_ppl"]] == [s["resps"] for s in hf["samples"]["neo_ppl"]]
