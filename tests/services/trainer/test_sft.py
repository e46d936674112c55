"""SFT: assistant-only masks, packing, the bilingual Debian set, a two-phase run that lowers the loss.

Also the SFT/DPO loss functions against independent reference computations (value and gradient, 1e-5).
The fixtures here (``base_model``, ``sft_files``) are imported by test_dpo and test_align.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo.stack import SAMPLE_CORPUS
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import ConfigError, SFTConfig, load_stage_config
from neo_trainer.losses import IGNORE_INDEX, dpo_loss, sequence_logps, sft_loss
from neo_trainer.modeling import CausalLM
from neo_trainer.sft_data import build_debian_sft, encode_conversation, load_sft_examples, pack, read_jsonl
from neo_trainer.stages.sft import assistant_loss, run_sft

from .helpers import records

EN, ZH = SAMPLE_CORPUS / "debian-reference.en.jsonl.gz", SAMPLE_CORPUS / "debian-reference.zh.jsonl.gz"


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, tokenizer_dir):
    """A random ``tiny`` model with the fixture tokenizer, exported as an HF directory (stage random)."""
    torch.manual_seed(0)
    tok = NeoTokenizer.load(tokenizer_dir)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=256))
    out = tmp_path_factory.mktemp("base") / "hf"
    return export_hf(model, out, tokenizer=tok,
                     info=NeoCheckpointInfo(name="base", preset="tiny", model=model.config.to_dict(), stage="pretrain"))


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory):
    return build_debian_sft(EN, ZH, tmp_path_factory.mktemp("sft-data"), max_chars=80, limit=12)


# --- losses ---------------------------------------------------------------------------------------------


def test_sequence_logps_and_sft_loss_match_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, :3] = IGNORE_INDEX
    targets[2, 5:] = IGNORE_INDEX
    ours = sequence_logps(logits, targets)
    ref = torch.stack([sum(torch.log_softmax(logits[b, t], -1)[targets[b, t]] for t in range(7)
                           if targets[b, t] != IGNORE_INDEX) for b in range(3)])
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_ours.double(), g_ref, atol=1e-5)
    n = int((targets != IGNORE_INDEX).sum())
    assert torch.allclose(sft_loss(logits, targets).double(), -ref.sum() / n, atol=1e-5)


def test_dpo_loss_and_gradient_match_trl_formula():
    """TRL ``sigmoid``: -logsigmoid(β·((πc−πr)−(rc−rr))) (label_smoothing 0); rewards β·(π−ref)."""
    torch.manual_seed(1)
    beta = 0.1
    pc, pr = (torch.randn(8, dtype=torch.float64, requires_grad=True) * 5 for _ in range(2))
    pc.retain_grad()
    pr.retain_grad()
    rc, rr = torch.randn(8, dtype=torch.float64) * 5, torch.randn(8, dtype=torch.float64) * 5
    out = dpo_loss(pc, pr, rc, rr, beta)
    # independent: log σ(x) = -log(1 + e^{-x})
    x = beta * ((pc - pr) - (rc - rr))
    ref = torch.log1p(torch.exp(-x)).mean()
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    g_ours = torch.autograd.grad(out["loss"], (pc, pr), retain_graph=True)
    g_ref = torch.autograd.grad(ref, (pc, pr))
    # analytic: d/dπc = -β·σ(-x)/B
    assert torch.allclose(g_ref[0], -beta * torch.sigmoid(-x).detach() / 8, atol=1e-8)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    chosen, rejected = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    assert torch.allclose(out["rewards/chosen"], chosen.mean())
    assert torch.allclose(out["rewards/rejected"], rejected.mean())
    assert torch.allclose(out["rewards/margins"], (chosen - rejected).mean())
    assert out["rewards/accuracies"] == (chosen > rejected).double().mean()


def test_dpo_loss_through_a_model_matches_reference(base_model):
    """End to end through the tiny model: loss and parameter gradients equal the reference formula."""
    from neo.hf import load_hf

    model = load_hf(base_model, dtype=torch.float64)
    torch.manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (4, 12))
    targets = torch.roll(ids, -1, 1)
    targets[:, :5] = IGNORE_INDEX
    targets[:, -1] = IGNORE_INDEX
    ref_logps = torch.randn(4, dtype=torch.float64)
    logps = sequence_logps(model(ids), targets)
    out = dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], 0.5)
    g_ours = torch.autograd.grad(out["loss"], list(model.parameters()))
    lp = F.log_softmax(model(ids), -1)
    seq = torch.stack([sum(lp[b, t, targets[b, t]] for t in range(5, 11)) for b in range(4)])
    x = 0.5 * ((seq[:2] - seq[2:]) - (ref_logps[:2] - ref_logps[2:]))
    ref = torch.log1p(torch.exp(-x)).mean()
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    assert abs(float(out["loss"].detach()) - float(ref.detach())) < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(g_ours, g_ref, strict=True)) < 1e-5


# --- data -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion_end", ["template", "im_end"])
def test_masks_cover_exactly_the_assistant_replies(tokenizer_dir, completion_end):
    """Each assistant turn's reply and <|im_end|>, and with completion_end="template" (TRL's ChatML training
    templates) the newline the template renders after it."""
    tok = NeoTokenizer.load(tokenizer_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is apt?"},
                {"role": "assistant", "content": "A package manager."}, {"role": "user", "content": "中文？"},
                {"role": "assistant", "content": "软件包管理器。"}]
    ids, train = encode_conversation(tok, messages, completion_end)
    # the ids are the chat template's rendering of the whole conversation
    assert tok.decode(ids, skip_special=False).replace(" ", "") == tok.render_chat(messages, False).replace(" ", "")
    trained = [i for i, m in zip(ids, train, strict=True) if m]
    spans, cur = [], []
    for i, m in zip(ids, train, strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    newline = tok.encode("\n")
    if completion_end == "template":
        assert all(s[-len(newline):] == newline for s in spans)
        spans = [s[:-len(newline)] for s in spans]
    assert [tok.decode(s) for s in spans] == ["A package manager.", "软件包管理器。"]
    assert all(s[-1] == tok.im_end_id for s in spans)
    assert trained.count(tok.im_end_id) == 2 and sum(train) == len(trained)
    # everything else (system, user, role headers, with "im_end" the newline after im_end) is masked
    untrained = [i for i, m in zip(ids, train, strict=True) if not m]
    assert untrained.count(tok.im_start_id) == 5 and untrained.count(tok.im_end_id) == 3


def test_packing_keeps_examples_apart(tokenizer_dir, sft_files):
    tok = NeoTokenizer.load(tokenizer_dir)
    examples = load_sft_examples([sft_files["instruction"]], tok, 256)
    b = pack(examples, 256, tok.pad_id, True)
    unpacked = pack(examples, 256, tok.pad_id, False)
    assert b.input_ids.shape[0] < unpacked.input_ids.shape[0] == len(examples)
    assert int((b.targets != IGNORE_INDEX).sum()) == sum(sum(t != IGNORE_INDEX for t in e.targets) for e in examples)
    assert int(b.doc_ids.max()) >= 1  # several conversations share a row
    # packing changes no example's loss: the packed and unpacked batches give the same assistant loss
    torch.manual_seed(0)
    module = CausalLM(NeoModel(ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, n_layers=1)))
    with torch.no_grad():
        separate = float(sft_loss(module(unpacked.input_ids, unpacked.positions, unpacked.doc_ids), unpacked.targets))
    assert abs(assistant_loss(module, examples, 256, tok.pad_id) - separate) < 1e-4


def test_debian_set_is_parallel_and_bilingual(sft_files):
    inst = list(read_jsonl(sft_files["instruction"]))
    chat = list(read_jsonl(sft_files["chat"]))
    assert len(inst) == 4 * 12 and len(chat) == 2 * 12
    tasks = {r["task"] for r in inst}
    assert tasks == {"en2zh", "zh2en", "explain_en", "explain_zh"}
    en2zh = next(r for r in inst if r["task"] == "en2zh")
    zh2en = next(r for r in inst if r["task"] == "zh2en" and r["section"] == en2zh["section"])
    # the answer of one direction is the question of the other: real parallel text, not templates
    assert en2zh["messages"][1]["content"] in zh2en["messages"][0]["content"]
    assert any("\u4e00" <= c <= "\u9fff" for c in en2zh["messages"][1]["content"])
    assert all(sum(m["role"] == "assistant" for m in r["messages"]) == 2 for r in chat)


def test_config_errors_name_fields(tmp_path):
    with pytest.raises(ConfigError, match="phases"):
        load_stage_config(SFTConfig, {"base_model": str(tmp_path), "phases": []})


# --- a run ----------------------------------------------------------------------------------------------


def test_two_phase_sft_lowers_assistant_loss(tmp_path, base_model, sft_files, tokenizer_dir):
    cfg = load_stage_config(SFTConfig, {
        "name": "neo-sft", "run_dir": str(tmp_path / "run"), "base_model": str(base_model), "seq_len": 256,
        "phases": [{"name": "instruction", "data": [str(sft_files["instruction"])], "steps": 8},
                   {"name": "chat", "data": [str(sft_files["chat"])], "steps": 6}],
        "train": {"micro_batch_size": 4, "lr": 3e-3},
        "checkpoint": {"export_dir": str(tmp_path / "out")}, "metrics": {"log_every": 1, "progress": False}})
    tok = NeoTokenizer.load(tokenizer_dir)
    held = load_sft_examples([sft_files["instruction"], sft_files["chat"]], tok, 256)[:16]
    from neo.hf import load_hf

    before = assistant_loss(CausalLM(load_hf(base_model)), held, 256, tok.pad_id)
    out = run_sft(cfg)
    after = assistant_loss(CausalLM(load_hf(out)), held, 256, tok.pad_id)
    assert after < before - 0.5, (before, after)
    rows = records(tmp_path / "run")
    assert [r["phase"] for r in rows] == ["instruction"] * 8 + ["chat"] * 6
    assert rows[-1]["loss"] < rows[0]["loss"]
    info = json.loads((out / "neo.json").read_text())
    assert info["stage"] == "sft" and info["parent"] == "base" and info["name"] == "neo-sft"


@pytest.mark.slow
def test_cli_builds_the_demo_set_and_runs_the_shipped_config(tmp_path, base_model):
    """The demo set, then the shipped config on the DeepSpeed engine: 2 processes (torchrun, gloo), ZeRO-2."""
    from .helpers import REPO, neo_train

    proc = neo_train("sft-data", str(tmp_path / "data"), "--max-chars", "60", "--limit", "6", timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = REPO / "services/trainer/neo_trainer/configs/align/sft-demo.yaml"
    data = tmp_path / "data"
    phases = (f"phases=[{{name: instruction, data: [{data / 'instruction.jsonl'}], steps: 2}}, "
              f"{{name: chat, data: [{data / 'chat.jsonl'}], steps: 1}}]")
    proc = neo_train("sft", str(config), "--set", f"base_model={base_model}", "--set", f"run_dir={tmp_path / 'run'}",
                     "--set", phases, "--set", "train.micro_batch_size=1", "--set", "distributed.zero_stage=2",
                     "--set", "metrics.log_every=1",
                     "--set", f"checkpoint.export_dir={tmp_path / 'out'}", "--nproc", "2", timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count(f"exported {tmp_path / 'out'}") == 1  # rank 0 reports
    rows = records(tmp_path / "run")
    assert [(r["step"], r["phase"]) for r in rows] == [(1, "instruction"), (2, "instruction"), (3, "chat")]
    assert all(r["loss"] > 0 and r["tokens"] > 0 for r in rows)
    info = json.loads((tmp_path / "out" / "neo.json").read_text())
    assert info["stage"] == "sft" and info["train_config"]["distributed"]["zero_stage"] == 2


def test_bundled_alignment_configs_validate():
    from neo_trainer.config import DPOConfig

    from .helpers import REPO

    root = REPO / "services/trainer/neo_trainer/configs/align"
    assert load_stage_config(SFTConfig, root / "sft-demo.yaml").phases[1].name == "chat"
    assert load_stage_config(DPOConfig, root / "dpo-demo.yaml").train.beta == 0.1


def test_sft_reads_trl_shapes_from_parquet_and_datasets_dirs(tokenizer_dir, sft_files, tmp_path):
    """The same conversations as messages JSONL, as prompt/completion Parquet, and as a `datasets.save_to_disk`
    directory give the same training examples; a row of neither shape is refused with both shapes named."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    tok = NeoTokenizer.load(tokenizer_dir)
    rows = list(read_jsonl(sft_files["instruction"]))[:6]
    single = [r for r in rows if len(r["messages"]) == 2]
    assert single
    pq.write_table(pa.Table.from_pylist([{"prompt": r["messages"][0]["content"],
                                          "completion": r["messages"][1]["content"]} for r in single]),
                   tmp_path / "pc.parquet")
    Dataset.from_list([{"messages": r["messages"]} for r in single]).save_to_disk(str(tmp_path / "ds"))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in single))
    examples = [load_sft_examples([p], tok, 256) for p in (jsonl, tmp_path / "pc.parquet", tmp_path / "ds")]
    assert examples[0] == examples[1] == examples[2] and len(examples[0]) == len(single)
    (tmp_path / "bad.jsonl").write_text('{"text": "plain text is pretraining data"}\n')
    with pytest.raises(ValueError, match=r'bad\.jsonl: row 1: expected \{"messages".*"prompt".*"completion".*'
                                         r"got the fields \['text'\]"):
        load_sft_examples([tmp_path / "bad.jsonl"], tok, 256)


def test_map_neo_two_phase_sft_config_runs_shrunk_on_parquet_and_datasets_dirs(base_model, sft_files, tmp_path):
    """configs/align/map-neo-sft.yaml: the paper's two phases (instruction, then multi-turn chat) with their data
    sizes; shrunk to the tiny model, each phase reading a format the paper's data ships in."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from tests.services.trainer.helpers import REPO

    path = REPO / "services/trainer/neo_trainer/configs/align/map-neo-sft.yaml"
    cfg = load_stage_config(SFTConfig, path)
    assert [p.name for p in cfg.phases] == ["instruction", "chat"] and cfg.seq_len == 8192
    assert (cfg.phases[0].steps, cfg.phases[1].steps) == (2_000_000 // 128, -(-100_000 // 128))  # one epoch
    instruction = [{"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"]}
                   for r in read_jsonl(sft_files["instruction"]) if len(r["messages"]) == 2]
    pq.write_table(pa.Table.from_pylist(instruction), tmp_path / "instruction.parquet")
    Dataset.from_list([{"messages": r["messages"]} for r in read_jsonl(sft_files["chat"])]).save_to_disk(
        str(tmp_path / "chat"))
    phases = (f"phases=[{{name: instruction, data: [{tmp_path / 'instruction.parquet'}], steps: 2}}, "
              f"{{name: chat, data: [{tmp_path / 'chat'}], steps: 1}}]")
    small = load_stage_config(SFTConfig, path, [
        f"base_model={base_model}", f"run_dir={tmp_path / 'run'}", phases, "seq_len=256", "train.micro_batch_size=2",
        "train.warmup_steps=0", "distributed.zero_stage=0", "distributed.precision=fp32",
        f"checkpoint.export_dir={tmp_path / 'out'}", "metrics.tensorboard=false", "metrics.progress=false",
        "metrics.log_every=1"])
    out = run_sft(small)
    assert (out / "config.json").is_file()
    logged = records(tmp_path / "run")
    assert [r["phase"] for r in logged] == ["instruction", "instruction", "chat"]
