"""DPO: preference rows in the UI's TRL export shape, completion-only targets, a run that widens the margin.

Pairs come from the parallel Debian manual: the request asks to translate one section; ``chosen`` is that
section's real translation, ``rejected`` another section's. The loss formula itself is checked against
the reference computation in test_sft (value and gradient, 1e-5), the whole stage against TRL's
``DPOTrainer`` in test_trl_parity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from neo.hf import load_hf
from neo.schemas import PreferenceAnswer, PreferencePair, PreferenceRecord
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import DPOConfig, load_stage_config
from neo_trainer.losses import IGNORE_INDEX
from neo_trainer.sft_data import encode_preference, read_jsonl
from neo_trainer.stages.dpo import evaluate_margin, reference_logps, run_dpo

from .helpers import neo_train, records
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)


def preference_records(sft_files: dict[str, Path], n: int = 8) -> list[PreferenceRecord]:  # noqa: F811
    """Labels as the UI stores them: a translation request, the right answer (A or B) and a wrong one."""
    rows = [r for r in read_jsonl(sft_files["instruction"]) if r["task"] == "en2zh"][:n + 1]
    out = []
    for i, (row, other) in enumerate(zip(rows, rows[1:] + rows[:1], strict=True)):
        good, bad = row["messages"][1]["content"], other["messages"][1]["content"]
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        out.append(PreferenceRecord(
            id=f"label{i}", prompt_id=f"p{i}", pair_id=f"pair{i}", annotator="tester",
            prompt=[{"role": "system", "content": "You are Neo."}, row["messages"][0]],
            answer_a=PreferenceAnswer(id=f"pair{i}:0", text=a, model="neo", model_version="neo:v1"),
            answer_b=PreferenceAnswer(id=f"pair{i}:1", text=b, model="neo", model_version="neo:v1"),
            choice="a" if i % 2 == 0 else "b", time_spent_s=1.0))
    return out[:n]


def write_prefs(path: Path, sft_files, fmt: str = "conversational", n: int = 8) -> Path:  # noqa: F811
    """The rows ``neo prefs export`` writes (``neo.schemas.PreferencePair``, TRL format) for those labels."""
    rows = []
    for r in preference_records(sft_files, n):
        chosen, rejected = r.chosen.text, r.rejected.text
        if fmt == "conversational":
            prompt: Any = [m.model_dump() for m in r.prompt]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        else:
            prompt = r.prompt[-1].content
        rows.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, id=r.id, prompt_id=r.prompt_id,
                                   annotator=r.annotator, choice=r.choice, chosen_model=r.chosen.model_version,
                                   rejected_model=r.rejected.model_version, edited=False, created=r.created))
    path.write_text("".join(row.model_dump_json() + "\n" for row in rows))
    return path


def preference_rows(sft_files: dict[str, Path]) -> list[dict[str, Any]]:  # noqa: F811
    """8 TRL conversational rows: 4 single-turn translation requests (as the UI exports them), then 4 two-turn
    chats whose prompt holds an earlier assistant reply; chosen is the real second reply, rejected another
    section's."""
    rows = [{"prompt": [{"role": m.role, "content": m.content} for m in r.prompt],
             "chosen": [{"role": "assistant", "content": r.chosen.text}],
             "rejected": [{"role": "assistant", "content": r.rejected.text}]}
            for r in preference_records(sft_files, n=4)]
    chats = list(read_jsonl(sft_files["chat"]))
    for task in ("chat_en_zh", "chat_zh_en"):
        same = [r["messages"] for r in chats if r["task"] == task][:3]
        rows += [{"prompt": m[:4], "chosen": [m[4]], "rejected": [other[4]]}
                 for m, other in zip(same[:-1], same[1:], strict=True)]
    return rows


@pytest.mark.parametrize("completion_end", ["template", "im_end"])
def test_completion_only_targets(tokenizer_dir, sft_files, tmp_path, completion_end):  # noqa: F811
    """TRL's completion: all the template renders after the prompt (reply<|im_end|>\\n), or up to <|im_end|>."""
    tok = NeoTokenizer.load(tokenizer_dir)
    newline = tok.encode("\n")
    for fmt in ("conversational", "text"):
        row = next(read_jsonl(write_prefs(tmp_path / f"{fmt}.jsonl", sft_files, fmt, n=1)))
        chosen, rejected = encode_preference(tok, row, 256, completion_end)
        for ex, key in ((chosen, "chosen"), (rejected, "rejected")):
            text = row[key] if isinstance(row[key], str) else row[key][0]["content"]
            trained = [t for t in ex.targets if t != IGNORE_INDEX]
            if completion_end == "template":
                assert trained[-len(newline):] == newline and tok.decode(trained) == text + "\n"
                trained = trained[:-len(newline)]
            assert trained[-1] == tok.im_end_id
            assert tok.decode(trained) == text
        # the prompt part is identical for both and never trained on
        k = next(i for i, t in enumerate(chosen.targets) if t != IGNORE_INDEX)
        assert chosen.input_ids[:k] == rejected.input_ids[:k]


def test_multi_turn_prompt_is_context(tokenizer_dir, sft_files):  # noqa: F811
    """An assistant reply inside the prompt is context: only the completion is scored (it once was scored too,
    as SFT's encoding trains every assistant turn)."""
    tok = NeoTokenizer.load(tokenizer_dir)
    rows = preference_rows(sft_files)
    assert all(len(r["prompt"]) == 4 and r["prompt"][2]["role"] == "assistant" for r in rows[4:])
    for row in rows[4:]:
        prompt = tok.encode_chat(row["prompt"], add_generation_prompt=True)
        for ex, key in zip(encode_preference(tok, row, 512), ("chosen", "rejected"), strict=True):
            ids = ex.input_ids + [ex.targets[-1]]
            assert ids == tok.encode_chat(row["prompt"] + row[key], add_generation_prompt=False)
            # targets[j] is token j+1: everything after the prompt's ids, nothing before
            assert [t != IGNORE_INDEX for t in ex.targets] == [j + 1 >= len(prompt) for j in range(len(ex.targets))]
            assert tok.decode([t for t in ex.targets if t != IGNORE_INDEX]) == row[key][0]["content"] + "\n"


def test_long_pairs_keep_the_completion_with_keep_end(tokenizer_dir, sft_files):  # noqa: F811
    tok = NeoTokenizer.load(tokenizer_dir)
    row = preference_rows(sft_files)[4]
    full, _ = encode_preference(tok, row, 512)
    cut, _ = encode_preference(tok, row, 40, truncation_mode="keep_end")
    assert len(cut.input_ids) == 40 and len(full.input_ids) > 40
    assert cut.targets == full.targets[-40:] and cut.input_ids == full.input_ids[-40:]


def test_long_pairs_lose_the_completions_end_with_keep_start_as_in_trl(tokenizer_dir, sft_files):  # noqa: F811
    """TRL's default: the first tokens are kept; a row whose prompt alone fills seq_len is dropped (None)."""
    tok = NeoTokenizer.load(tokenizer_dir)
    row = preference_rows(sft_files)[4]
    prompt = len(tok.encode_chat(row["prompt"], add_generation_prompt=True))
    full, _ = encode_preference(tok, row, 512)
    seq_len = prompt + 3  # room for 4 tokens of the completion (the last one only as a target)
    cut, _ = encode_preference(tok, row, seq_len)
    assert len(full.input_ids) > seq_len and len(cut.input_ids) == seq_len
    assert cut.input_ids == full.input_ids[:seq_len] and cut.targets == full.targets[:seq_len]
    assert sum(t != IGNORE_INDEX for t in cut.targets) == 4
    assert encode_preference(tok, row, prompt) is None and encode_preference(tok, row, prompt - 5) is None
    assert encode_preference(tok, row, prompt, truncation_mode="keep_end") is not None


def test_ui_job_config_validates(tmp_path):
    cfg = load_stage_config(DPOConfig, {
        "name": "neo-chat", "stage": "dpo", "run_dir": str(tmp_path / "run"), "base_model": str(tmp_path / "m"),
        "data": {"preferences": [str(tmp_path / "p.jsonl")], "format": "conversational"},
        "checkpoint": {"export_dir": str(tmp_path / "out")}})
    assert cfg.export_dir == tmp_path / "out" and cfg.train.beta == 0.1


@pytest.mark.parametrize("fmt", ["conversational"])
def test_dpo_widens_the_margin_on_its_pairs(tmp_path, base_model, sft_files, tokenizer_dir, fmt):  # noqa: F811
    prefs = write_prefs(tmp_path / "prefs.jsonl", sft_files, fmt)
    cfg = load_stage_config(DPOConfig, {
        "name": "neo-dpo", "run_dir": str(tmp_path / "run"), "base_model": str(base_model), "seq_len": 256,
        "data": {"preferences": [str(prefs)], "format": fmt},
        "train": {"steps": 16, "micro_batch_size": 4, "lr": 1e-3, "beta": 0.1},
        "checkpoint": {"export_dir": str(tmp_path / "out")}, "metrics": {"progress": False, "log_every": 1}})
    tok = NeoTokenizer.load(tokenizer_dir)
    pairs = [encode_preference(tok, r, 256) for r in read_jsonl(prefs)]
    ref = reference_logps(load_hf(base_model), pairs, 256, tok.pad_id)
    before = evaluate_margin(load_hf(base_model), pairs, ref, 256, tok.pad_id, 0.1)
    assert abs(before["rewards/margins"]) < 1e-4 and abs(before["loss"] - float(torch.log(torch.tensor(2.0)))) < 1e-4
    out = run_dpo(cfg)
    after = evaluate_margin(load_hf(out), pairs, ref, 256, tok.pad_id, 0.1)
    assert after["rewards/margins"] > 0.3, after
    assert after["rewards/accuracies"] > 0.5 and after["loss"] < before["loss"] - 0.1
    rows = records(tmp_path / "run")
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(rows[-1])
    # step 1 logs 0 (policy = reference); one batch of 4 is noisy at this LR, the last two epochs are not
    last = [r["rewards/margins"] for r in rows[-4:]]
    assert sum(last) / len(last) > rows[0]["rewards/margins"] + 0.2, [r["rewards/margins"] for r in rows]
    info = json.loads((out / "neo.json").read_text())
    assert info["stage"] == "dpo" and info["parent"] == "base" and info["data"]["pairs"] == 8
    assert info["metrics"]["rewards/margins"] == pytest.approx(after["rewards/margins"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_dpo_on_two_processes_matches_one(tmp_path, base_model, sft_files, zero_stage):  # noqa: F811
    """The DeepSpeed engine over gloo: 2 processes × 2 pairs (ZeRO-2/3) take the steps of 1 process × 4 pairs."""
    prefs = write_prefs(tmp_path / "prefs.jsonl", sft_files)

    def config(name: str, pairs_per_process: int, stage: int) -> dict[str, Any]:
        return {"name": name, "run_dir": str(tmp_path / name), "base_model": str(base_model), "seq_len": 256,
                "data": {"preferences": [str(prefs)]}, "distributed": {"zero_stage": stage},
                "train": {"steps": 4, "micro_batch_size": pairs_per_process, "lr": 1e-3, "beta": 0.1},
                "checkpoint": {"export_dir": str(tmp_path / name / "hf")},
                "metrics": {"progress": False, "log_every": 1}}

    run_dpo(load_stage_config(DPOConfig, config("one", 4, 0)))
    path = tmp_path / "two.json"
    path.write_text(json.dumps(config("two", 2, zero_stage)))
    result = neo_train("dpo", str(path), "--nproc", "2", timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "rewards/accuracies"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-6), key
    info = json.loads((tmp_path / "two" / "hf" / "neo.json").read_text())
    assert info["stage"] == "dpo" and info["train_config"]["distributed"]["zero_stage"] == zero_stage
    # the gathered export (ZeRO-3 partitions the weights) equals the one-process model; Adam's normalized
    # steps turn float-rounding differences of near-zero gradients into ≤ 1e-4 (one step moves 1e-3)
    a, b = load_hf(tmp_path / "one" / "hf"), load_hf(tmp_path / "two" / "hf")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-4, msg=name)
