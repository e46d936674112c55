"""`neo eval` runs generated code (HumanEval) only with --allow-code-execution."""

import json

import pytest
from typer.testing import CliRunner

from neo import cli
from neo.evals.tasks import BUNDLED

CANONICAL = {row["prompt"]: row["canonical_solution"]
             for row in map(json.loads, BUNDLED["humaneval"].read_text().splitlines())}


class FakeBackend:
    """Answers HumanEval with the canonical solutions (or ``code``) and GSM8K with 8."""

    def __init__(self, name: str, code: str | None = None):
        self.name, self.code = name, code

    def loglikelihood(self, context: str, continuation: str) -> float:
        return 0.0

    def generate(self, prompt: str, max_tokens: int, stop) -> str:
        if prompt in CANONICAL:
            return self.code if self.code is not None else CANONICAL[prompt]
        return "#### 8"


@pytest.fixture
def code_runs(monkeypatch):
    """The programs handed to the sandbox; ``--model NAME`` evaluates a FakeBackend called NAME."""
    from neo.evals import runner

    runs, real = [], runner.run_python
    answers = {"good": None, "exits": "    import os; os._exit(0)\n"}
    monkeypatch.setattr(cli, "_eval_model", lambda spec: FakeBackend(spec, answers[spec]))

    def recording(program, limits):
        runs.append(program)
        return real(program, limits)

    monkeypatch.setattr(runner, "run_python", recording)
    return runs


def neo_eval(*args: str):
    return CliRunner().invoke(cli.app, ["eval", *args], env={"COLUMNS": "200"})


def test_code_tasks_are_skipped_without_the_opt_in(code_runs):
    result = neo_eval("--model", "good", "--task", "gsm8k", "--task", "humaneval", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "skipped humaneval" in result.output and "--allow-code-execution" in result.output
    assert code_runs == []
    assert "gsm8k" in result.output and "pass@1" not in result.output  # the other task still ran


def test_only_code_tasks_without_the_opt_in_is_an_error(code_runs):
    result = neo_eval("--model", "good", "--task", "humaneval")
    assert result.exit_code == 2
    assert "--allow-code-execution" in result.output and "no task left to run" in result.output
    assert code_runs == []


def test_the_opt_in_runs_humaneval_in_the_sandbox(code_runs):
    result = neo_eval("--model", "good", "--model", "exits", "--task", "humaneval", "--limit", "3",
                      "--allow-code-execution")
    assert result.exit_code == 0, result.output
    assert len(code_runs) == 6
    row = next(line for line in result.output.splitlines() if "pass@1" in line)
    assert "1.000" in row and "0.000" in row  # the canonical solutions pass; exiting early does not
