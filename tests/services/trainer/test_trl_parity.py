"""Neo's SFT and DPO against TRL's own trainers (``trl`` in the test extra, pinned), not against a formula.

Like with like: one tiny random Neo model exported with ``export_hf`` (transformers loads it as
``LlamaForCausalLM``; no download), its tokenizer (ChatML), fp32 on CPU, no dropout, one batch holding every
example (so shuffling cannot matter), one AdamW step (β 0.9/0.999, eps 1e-8, no weight decay, grad norm
clipped at 1, constant LR). Neo runs its stage as users do (``run_dpo`` / ``run_sft`` on the DeepSpeed
engine); TRL runs ``DPOTrainer`` / ``SFTTrainer`` with ``train()`` and ``evaluate()``. Per-sequence log-probs
on TRL's side are read from its own forward (a hook on the ``log_probs`` of TRL's fused LM head), in the
order of TRL's (unshuffled) eval loader.

DPO: 8 EN/ZH pairs, 4 of them with a multi-turn prompt (an earlier assistant reply is context, never
scored), β 0.1, sigmoid loss. SFT: 8 conversations (4 single-turn instructions, 4 two-turn chats with a
system prompt), assistant-only loss, TRL given Neo's ChatML with ``{% generation %}`` around each assistant
turn's targets (as TRL's own ChatML training templates, e.g. ``qwen3_instruct_2507_training.jinja``, mark
``content<|im_end|>\\n``), once for each ``completion_end``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from neo.hf import load_hf
from neo.tokenizer import CHAT_TEMPLATE, NeoTokenizer
from neo_trainer.config import DPOConfig, SFTConfig, load_stage_config
from neo_trainer.losses import IGNORE_INDEX, sequence_logps, sft_loss
from neo_trainer.modeling import CausalLM
from neo_trainer.sft_data import encode_conversation, encode_preference, pack, read_jsonl, to_example
from neo_trainer.stages.dpo import evaluate_margin, reference_logps, run_dpo
from neo_trainer.stages.sft import run_sft

from .helpers import records
from .test_dpo import preference_rows
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

LR = 1e-3
#: per-sequence log-probs (sums of up to ~670 nats over ~30-90 tokens; measured ≤ 5e-5) and losses, Neo vs TRL
ATOL = 1e-4
ADAMW = {"weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0, "warmup_steps": 0, "lr": LR}


def trl_args(config_cls: type, out: Path, **extra: Any) -> Any:
    """TRL/HF ``TrainingArguments`` for one fp32 CPU step on one batch of 8 with Neo's AdamW settings."""
    # TRL turns activation (gradient) checkpointing on by default; transformers 5 renamed the option
    names = {f.name for f in dataclasses.fields(config_cls)}
    extra.setdefault("activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing",
                     False)
    return config_cls(
        output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=1,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        seed=0, data_seed=0, dataloader_num_workers=0, max_length=None, disable_tqdm=True, **extra)


def hf_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


class SequenceLogps:
    """Forward hook on a TRL model: each call's per-row sum of TRL's per-token completion log-probs."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[torch.Tensor] = []
        self.handle = model.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        log_probs = getattr(output, "log_probs", None)
        if log_probs is not None:  # the fused-head forward (``fused_lm_head=True``): zero off the completion
            self.calls.append(log_probs.detach().double().sum(-1))

    def take(self) -> torch.Tensor:
        out, self.calls = torch.cat(self.calls), []
        return out


def worst(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    d = (a.double() - b.double()).abs()
    return float(d.max()), int(d.argmax())


def table(name: str, neo: torch.Tensor, trl: torch.Tensor) -> str:
    rows = [f"{name}[{i}]: neo {float(x):.6f} trl {float(y):.6f} Δ {float(x) - float(y):+.2e}"
            for i, (x, y) in enumerate(zip(neo, trl, strict=True))]
    return "\n".join(rows)


# --- the training template TRL needs for assistant-only SFT -------------------------------------------


CHATML_TURN = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
#: what each ``completion_end`` trains in an assistant turn, inside ``{% generation %}``
GENERATION = {
    "template": "{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}",
    "im_end": "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}",
}


def generation_template(completion_end: str) -> str:
    """Neo's ChatML with ``{% generation %}`` around what Neo's SFT trains in an assistant turn."""
    assert CHAT_TEMPLATE.count(CHATML_TURN) == 1, "neo.tokenizer.CHAT_TEMPLATE changed: update this test"
    turn = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
            f"{GENERATION[completion_end]}{{% else %}}{CHATML_TURN}{{% endif %}}")
    return CHAT_TEMPLATE.replace(CHATML_TURN, turn)


@pytest.mark.parametrize("completion_end", ["template", "im_end"])
def test_generation_template_renders_as_neo_and_marks_the_trained_tokens(base_model, sft_files,  # noqa: F811
                                                                         completion_end):
    from transformers import AutoTokenizer

    tok = NeoTokenizer.load(base_model)
    hf = AutoTokenizer.from_pretrained(base_model)
    template = generation_template(completion_end)
    for row in list(read_jsonl(sft_files["chat"]))[:3] + list(read_jsonl(sft_files["instruction"]))[:3]:
        out = hf.apply_chat_template(row["messages"], chat_template=template, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
        assert hf.apply_chat_template(row["messages"], chat_template=template, tokenize=False) == \
            tok.render_chat(row["messages"], False)
        ids, train = encode_conversation(tok, row["messages"], completion_end)
        assert out["input_ids"] == ids
        assert out["assistant_masks"] == [int(t) for t in train]


# --- DPO ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dpo_matches_trl_dpo_trainer(tmp_path, base_model, sft_files):  # noqa: F811
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    rows = preference_rows(sft_files)
    assert len(rows) == 8 and sum(len(r["prompt"]) > 2 for r in rows) == 4  # 4 multi-turn prompts
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tok = NeoTokenizer.load(base_model)
    pairs = [encode_preference(tok, r, 256) for r in rows]

    # TRL: its tokenization, then evaluate (step 0) → one train step → evaluate (step 1)
    policy, reference = hf_model(base_model), hf_model(base_model)
    trainer = DPOTrainer(
        model=policy, ref_model=reference, processing_class=AutoTokenizer.from_pretrained(base_model),
        args=trl_args(TRLDPOConfig, tmp_path / "trl", beta=0.1, loss_type=["sigmoid"],
                      precompute_ref_log_probs=False),
        train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows))
    for i, ((chosen, rejected), trl_row) in enumerate(zip(pairs, trainer.train_dataset, strict=True)):
        k = len(trl_row["prompt_ids"])
        for ex, key in ((chosen, "chosen_ids"), (rejected, "rejected_ids")):
            ids = ex.input_ids + [ex.targets[-1]]
            assert ids == trl_row["prompt_ids"] + trl_row[key], f"pair {i} {key}: token ids differ"
            assert [t != IGNORE_INDEX for t in ex.targets] == [j >= k - 1 for j in range(len(ex.targets))], \
                f"pair {i} {key}: completion differs (TRL's starts after {k} prompt tokens)"
    hooks = SequenceLogps(trainer.model), SequenceLogps(trainer.ref_model)
    before = trainer.evaluate()
    trl_policy0, trl_ref = (h.take() for h in hooks)
    result = trainer.train()
    hooks[0].take(), hooks[1].take()
    trl_step = next(r for r in trainer.state.log_history if "grad_norm" in r)
    after = trainer.evaluate()
    trl_policy1 = hooks[0].take()

    # Neo: the stage as users run it
    cfg = load_stage_config(DPOConfig, {
        "name": "neo", "run_dir": str(tmp_path / "neo"), "base_model": str(base_model), "seq_len": 256,
        "data": {"preferences": [str(prefs)]}, "train": {"steps": 1, "micro_batch_size": 8, "beta": 0.1, **ADAMW},
        "checkpoint": {"export_dir": str(tmp_path / "neo" / "hf")}, "metrics": {"progress": False}})
    ref = reference_logps(load_hf(base_model), pairs, 256, tok.pad_id)
    out = run_dpo(cfg)
    neo_step = records(tmp_path / "neo")[0]
    trained = load_hf(out)
    neo_after = reference_logps(trained, pairs, 256, tok.pad_id)
    neo_loss = evaluate_margin(trained, pairs, ref, 256, tok.pad_id, 0.1)["loss"]

    trl_c0, trl_r0 = trl_ref.chunk(2)
    assert torch.equal(trl_policy0, trl_ref)
    trl_c1, trl_r1 = trl_policy1.chunk(2)
    report = "\n".join([table("ref chosen", ref[0], trl_c0), table("ref rejected", ref[1], trl_r0),
                        table("step-1 chosen", neo_after[0], trl_c1), table("step-1 rejected", neo_after[1], trl_r1),
                        f"loss before: neo {neo_step['loss']:.7f} trl {before['eval_loss']:.7f} (train "
                        f"{result.training_loss:.7f})",
                        f"grad norm: neo {neo_step['grad_norm']:.6g} trl {trl_step['grad_norm']:.6g}",
                        f"loss after one step: neo {neo_loss:.7f} trl {after['eval_loss']:.7f} "
                        f"Δ {neo_loss - after['eval_loss']:+.2e} (moved {math.log(2) - neo_loss:.4f})"])
    print(report)
    deltas = {name: worst(a, b) for name, a, b in (
        ("ref chosen", ref[0], trl_c0), ("ref rejected", ref[1], trl_r0),
        ("step-1 chosen", neo_after[0], trl_c1), ("step-1 rejected", neo_after[1], trl_r1))}
    for name, (delta, i) in deltas.items():
        assert delta <= ATOL, f"{name} log-prob of pair {i} differs by {delta:.2e}\n{report}"
    assert abs(neo_step["loss"] - math.log(2)) < 1e-6 and abs(before["eval_loss"] - math.log(2)) < 1e-6, report
    assert neo_step["grad_norm"] == pytest.approx(trl_step["grad_norm"], rel=1e-3), report
    assert abs(neo_loss - after["eval_loss"]) <= ATOL, report
    assert math.log(2) - neo_loss > 100 * ATOL, f"the step barely moved the loss: nothing compared\n{report}"


# --- SFT ------------------------------------------------------------------------------------------------


def sft_conversations(sft_files) -> list[list[dict[str, Any]]]:  # noqa: F811
    inst = [r["messages"] for r in read_jsonl(sft_files["instruction"])][:4]
    chat = [r["messages"] for r in read_jsonl(sft_files["chat"])][:4]
    return inst + chat


@pytest.mark.slow
@pytest.mark.parametrize("completion_end", ["template", "im_end"])
def test_sft_matches_trl_sft_trainer(tmp_path, base_model, sft_files, completion_end):  # noqa: F811
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    conversations = sft_conversations(sft_files)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations))
    tok = NeoTokenizer.load(base_model)
    encoded = [encode_conversation(tok, m, completion_end) for m in conversations]

    hf_tok = AutoTokenizer.from_pretrained(base_model)
    hf_tok.chat_template = generation_template(completion_end)
    dataset = Dataset.from_list([{"messages": m} for m in conversations])
    trainer = SFTTrainer(model=hf_model(base_model), processing_class=hf_tok, train_dataset=dataset,
                         eval_dataset=dataset,
                         args=trl_args(TRLSFTConfig, tmp_path / "trl", assistant_only_loss=True, packing=False,
                                       padding_free=False))
    for i, ((ids, train), trl_row) in enumerate(zip(encoded, trainer.train_dataset, strict=True)):
        assert ids == trl_row["input_ids"], f"conversation {i}: token ids differ"
        assert [t if m else IGNORE_INDEX for t, m in zip(ids, train, strict=True)] == trl_row["labels"], \
            f"conversation {i}: trained tokens differ"
    hook = SequenceLogps(trainer.model)
    before = trainer.evaluate()
    trl_logps0 = hook.take()
    trainer.train()
    hook.take()
    trl_step = next(r for r in trainer.state.log_history if "grad_norm" in r)
    after = trainer.evaluate()
    trl_logps1 = hook.take()

    cfg = load_stage_config(SFTConfig, {
        "name": "neo", "run_dir": str(tmp_path / "neo"), "base_model": str(base_model), "seq_len": 256,
        "packing": False, "completion_end": completion_end,
        "phases": [{"name": "one", "data": [str(data)], "steps": 1}],
        "train": {"micro_batch_size": 8, **ADAMW}, "checkpoint": {"export_dir": str(tmp_path / "neo" / "hf")},
        "metrics": {"progress": False, "log_every": 1}})
    out = run_sft(cfg)
    neo_step = records(tmp_path / "neo")[0]
    examples = [to_example(ids, train, 256) for ids, train in encoded]
    batch = pack(examples, 256, tok.pad_id, packing=False)

    def neo_eval(path: Path) -> tuple[torch.Tensor, float]:
        model = load_hf(path)
        model.eval()
        with torch.no_grad():
            logits = CausalLM(model)(batch.input_ids, batch.positions, batch.doc_ids)
        return sequence_logps(logits, batch.targets), float(sft_loss(logits, batch.targets))

    neo_logps0, neo_loss0 = neo_eval(base_model)
    neo_logps1, neo_loss1 = neo_eval(out)
    report = "\n".join([table("step-0 logp", neo_logps0, trl_logps0), table("step-1 logp", neo_logps1, trl_logps1),
                        f"loss before: neo {neo_loss0:.7f} (train {neo_step['loss']:.7f}) "
                        f"trl {before['eval_loss']:.7f}",
                        f"grad norm: neo {neo_step['grad_norm']:.6g} trl {trl_step['grad_norm']:.6g}",
                        f"loss after one step: neo {neo_loss1:.7f} trl {after['eval_loss']:.7f} "
                        f"Δ {neo_loss1 - after['eval_loss']:+.2e} (moved {neo_loss0 - neo_loss1:.4f})"])
    print(report)
    for name, a, b in (("step-0", neo_logps0, trl_logps0), ("step-1", neo_logps1, trl_logps1)):
        delta, i = worst(a, b)
        assert delta <= ATOL, f"{name} log-prob of conversation {i} differs by {delta:.2e}\n{report}"
    assert abs(neo_step["loss"] - neo_loss0) <= 1e-5 and abs(neo_loss0 - before["eval_loss"]) <= ATOL, report
    assert neo_step["grad_norm"] == pytest.approx(trl_step["grad_norm"], rel=1e-3), report
    assert abs(neo_loss1 - after["eval_loss"]) <= ATOL, report
    assert neo_loss0 - neo_loss1 > 100 * ATOL, f"the step barely moved the loss: nothing compared\n{report}"
