"""A judge model as the round's ranker: real HTTP judges on 127.0.0.1 (stand-in judge services written here, and
Neo's own server with a tiny model), both orders per comparison, skipped comparisons counted, and a judge-ranked
DPO round that registers the next version."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from neo.net import free_port
from neo.registry import ModelRegistry
from neo_trainer.align import Sampling, rank_pairs, run_round
from neo_trainer.judge import Judge, parse_verdict
from neo_trainer.sft_data import read_jsonl

from .test_reward import write_rows
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT = [{"role": "user", "content": "Say something 说点什么"}]


def judge_app(decide) -> FastAPI:
    """An OpenAI-compatible judge service: ``decide(answer_a, answer_b)`` writes its reply."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        a, b = re.search(r"## Answer A\n(.*)\n\n## Answer B\n(.*)\n\nWhich answer", text, re.S).groups()
        return {"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": decide(a, b)}}]}

    return app


class Served:
    """An ASGI app on 127.0.0.1 in a thread (a context manager)."""

    def __init__(self, app: FastAPI):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "judge did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def longer(a: str, b: str) -> str:
    return "[[A]]" if len(a) > len(b) else "[[B]]"


def test_verdicts_are_parsed_or_refused():
    assert [parse_verdict(t) for t in ("[[A]]", "[[ b ]]", "B", "A. Because", "Answer: [[B]] clearly")] == [
        "A", "B", "B", "A", "B"]
    assert [parse_verdict(t) for t in ("", "Both are fine", "Apples", "\n\n\n")] == [None] * 4


def test_a_consistent_judge_ranks_and_a_biased_one_ranks_nothing():
    answers = [["a", "bbb", "cc"], ["same", "same"]]
    prompts = [PROMPT, PROMPT]
    with Served(judge_app(longer)) as fair:
        judge = Judge(fair.url, "longer")
        scores = judge.scores(prompts, answers)
    assert scores == [[0.0, 2.0, 1.0], [0.0, 0.0]]  # identical answers are never compared
    assert judge.stats.to_dict() == {"comparisons": 3, "consistent": 3, "position_flips": 0, "unparseable": 0,
                                     "failed": 0, "skipped": 0}
    [row] = rank_pairs(prompts, answers, scores, "neo:v1", "judge:longer")
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("bbb", "a")

    with Served(judge_app(lambda a, b: "[[A]]")) as biased:  # always the first position
        judge = Judge(biased.url, "first")
        assert judge.scores(prompts, answers) == [[0.0, 0.0, 0.0], [0.0, 0.0]]
    assert (judge.stats.comparisons, judge.stats.position_flips, judge.stats.skipped) == (3, 3, 3)
    assert rank_pairs(prompts, answers, [[0.0, 0.0, 0.0], [0.0, 0.0]], "neo:v1", "judge:first") == []

    with Served(judge_app(lambda a, b: "I cannot decide.")) as vague:
        judge = Judge(vague.url, "vague")
        judge.scores(prompts[:1], answers[:1])
    assert (judge.stats.unparseable, judge.stats.skipped) == (6, 3)  # both orders of each of 3 pairs

    judge = Judge(f"http://127.0.0.1:{free_port()}", "nobody", timeout_s=2)  # no server: failed, not raised
    assert judge.scores(prompts[:1], [["x", "yy"]]) == [[0.0, 0.0]] and judge.stats.failed == 2


@pytest.mark.slow
def test_judge_ranked_round_registers_the_next_version_and_counts_what_it_skipped(
        tmp_path, base_model, sft_files, redis_prefix):  # noqa: F811
    from neo_serving.settings import ServingSettings  # test-only: a real server samples the policy
    from tests.services.serving.helpers import LiveServer

    registry = ModelRegistry.from_url(REDIS_URL, redis_prefix)
    v1 = registry.register("neo-chat", base_model, stage="sft")
    prompts = write_rows(tmp_path / "prompts.jsonl",
                         [{"prompt": [r["messages"][0]]} for r in list(read_jsonl(sft_files["instruction"]))[:6]])
    settings = ServingSettings(models=["neo-chat"], redis_url=REDIS_URL, redis_prefix=redis_prefix, max_batch_size=8)
    with LiveServer(settings) as server, Served(judge_app(longer)) as fair:
        # Neo's own tiny random model as a judge: its replies name no answer, every comparison is skipped
        tiny_judge = Judge(server.url, "neo-chat", max_tokens=6)
        tiny_judge.scores([PROMPT], [["short", "a longer answer"]])
        assert tiny_judge.stats.skipped == 1 and tiny_judge.stats.unparseable >= 1

        sampling = Sampling(base_url=server.url, model="neo-chat", n=3, max_tokens=16, temperature=1.0, seed=1)
        judge = Judge(fair.url, "longer")
        result = run_round(run_dir=tmp_path / "round", model_name="neo-chat", registry=registry, pairs="judge",
                           judge=judge, sampling=sampling, prompts=prompts, eval_fraction=0.34,
                           overrides=["train.steps=2", "train.lr=2e-3", "seq_len=256"])
    assert result.parent == v1.ref and result.sources["judge"] > 0 and result.sources["human"] == 0
    assert registry.latest("neo-chat").version == "v2" and registry.latest("neo-chat").parent == v1.ref
    ranked = list(read_jsonl(tmp_path / "round" / "judge_pairs.jsonl"))
    assert ranked and all(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in ranked)
    info = json.loads((Path(result.export_dir) / "neo.json").read_text())
    assert info["data"]["pairs_from"] == "judge" and info["data"]["judge"]["model"] == "longer"
    assert info["metrics"]["round/judge_pairs"] == len(ranked)
    assert 0.0 <= info["metrics"]["win_rate/judge"] <= 1.0 and info["metrics"]["win_rate/judge_prompts"] == 2
    assert info["metrics"]["judge/comparisons"] == info["metrics"]["judge/consistent"] + info["metrics"][
        "judge/skipped"]


def test_the_cli_asks_for_what_a_judged_round_needs(tmp_path):
    from typer.testing import CliRunner

    from neo_trainer.cli import align_app

    runner = CliRunner()
    args = ["--policy", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    result = runner.invoke(align_app, [*args, "--pairs", "judge", "--base-url", "http://127.0.0.1:9",
                                       "--served-model", "m"])
    assert result.exit_code != 0 and "--judge-url URL and --judge-model NAME" in result.output
    result = runner.invoke(align_app, [*args, "--pairs", "judge", "--judge-url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "--judge-url needs --judge-model" in result.output
