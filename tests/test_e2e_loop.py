"""The whole loop end to end, on real components, every step's output checked (not just exit codes):

1. a small subset of the bundled sample corpus (plus planted duplicates, a short and a French document)
   → a dataproc job on a real Celery data worker (``neo data worker``) → clean documents + report;
2. a tokenizer trained on those clean documents (``neo tokenizer train``), then the same job with the
   tokenizer → tokenized shards + ``manifest.json``;
3. DeepSpeed pretraining of the ``tiny`` preset on CPU/gloo (``neo train pretrain``, fundamental → decay)
   → HF export that loads in ``transformers``;
4. two-phase SFT (``neo train sft-data`` + ``neo train sft``) → registered as version v1
   (``neo serve register``);
5. ``neo serve --model NAME --watch-registry`` on a free port answers from v1;
6. preferences labeled through the labeling app's functions (``neo_ui.labeling.Labeler``: prompt upload,
   pairs sampled from the server, blinded A/B, edits, a tie) into Redis;
7. ``neo prefs export`` → TRL JSONL;
8. ``neo align round --from-redis`` → DPO export (stage ``dpo``, parent v1) registered as v2;
9. the server switches to v2 by itself and answers from it;
10. ``neo eval`` on both versions in process and on the served model over the API.

Redis is the machine's (a fresh key prefix, deleted afterwards); every subprocess is stopped at the end.
About 80-90 s on 2 CPU cores (each step's time is printed; see them with -s or on failure).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import zstandard

from neo.hf import load_hf
from neo.net import NotHealthy, free_port, wait_http
from neo.registry import ModelRegistry
from neo.schemas import NeoCheckpointInfo, PreferencePair
from neo.shards import read_manifest
from neo.stack import SAMPLE_CORPUS, neo_command, sample_files
from neo.tokenizer import NeoTokenizer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "neo-e2e"
DOCS_PER_FILE = 16  # of each of the 7 sample files: ~80 documents and ~100k tokens survive cleaning
VOCAB = 2000
STEP_TIMEOUT_S = 300  # per command: generous, a loaded 2-core CI box is slow
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
EN_TEXT = "Debian is a free operating system; apt installs packages.\n\tdef f(x):  return x + 1"
ZH_TEXT = "Debian 是一个自由的操作系统，用 apt 安装软件包。你好，世界！"


# --- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path, redis_prefix) -> dict[str, str]:
    """Environment of every `neo` subprocess: one workspace, this prefix, one thread per process."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    return base | {
        "NEO_HOME": str(tmp_path / "home"), "NEO_REDIS_URL": REDIS_URL, "NEO_REDIS_PREFIX": redis_prefix,
        "OMP_NUM_THREADS": "1", "NEO_THREADS": "1",  # busy-waiting OpenMP threads slow tiny models on 2 cores
        "PYTHONUNBUFFERED": "1", "NEO_DATAPROC_POLL_S": "0.1", "NEO_WATCH_INTERVAL_S": "0.5",
        "COLUMNS": "1000",  # rich tables (neo eval) unwrapped, whole paths in the header
    }


class Laps:
    """Seconds per step, printed as they end (pytest shows them with a failure, or with -s)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        print(f"e2e {step}: {now - self.last:.1f} s (total {now - self.start:.1f} s)", flush=True)
        self.last = now


class Services:
    """Long-running `neo` subprocesses, each logging to a file; ``stop()`` ends them all."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(neo_command(*args), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def wait_http(self, name: str, url: str, timeout_s: float = 120) -> None:
        try:
            wait_http(url, self.procs[name], timeout_s)
        except NotHealthy as exc:
            raise AssertionError(f"{name}: {exc}\n{self.log(name)}") from None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()  # Celery: warm shutdown; uvicorn: graceful
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def services(tmp_path, env) -> Iterator[Services]:
    s = Services(tmp_path / "logs", env)
    try:
        yield s
    finally:
        s.stop()


# --- helpers ---------------------------------------------------------------------------------------------
def run_neo(env: dict[str, str], *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run one `neo` command to the end; fail with its output unless it exits 0."""
    proc = subprocess.run(neo_command(*args), env=env, capture_output=True, text=True, timeout=timeout)
    output = (proc.stdout + proc.stderr)[-5000:]
    assert proc.returncode == 0, f"neo {' '.join(args)} exited {proc.returncode}:\n{output}"
    return proc


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_corpus(out: Path) -> Path:
    """The first documents of every sample file, plus documents the pipeline must drop."""
    out.mkdir(parents=True)
    firsts = {}
    for path in sample_files():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in itertools.islice(f, DOCS_PER_FILE)]
        (out / path.name).write_bytes(gzip.compress("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                            for r in rows).encode(), mtime=0))
        firsts[path.name] = rows[0]
    en, zh = firsts["debian-reference.en.jsonl.gz"], firsts["debian-reference.zh.jsonl.gz"]
    planted = [
        en | {"id": "planted/dup-en"}, zh | {"id": "planted/dup-zh"},  # exact duplicates
        {"id": "planted/short", "text": "Too short.", "source": "fortunes"},
        {"id": "planted/fr", "source": "fortunes",
         "text": "Le marché du village ouvre tôt le samedi matin, et tout le monde y va pour acheter du pain."},
    ]
    (out / "planted.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in planted))
    return out


def clean_documents(job_dir: Path) -> list[dict]:
    docs = []
    for path in sorted((job_dir / "docs").glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f if line.strip()]
    return docs


def metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def models_card(url: str) -> dict:
    data = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [c["id"] for c in data] == [MODEL], data
    return data[0]


def chat(url: str, text: str) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12, "seed": 1,
        "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["usage"]["completion_tokens"] == 12, body
    assert isinstance(body["choices"][0]["message"]["content"], str)
    return body


# --- the loop --------------------------------------------------------------------------------------------
def test_corpus_to_dpo_round_served_and_evaluated(tmp_path, env, redis_prefix, rds, services):
    home = Path(env["NEO_HOME"])
    registry = ModelRegistry(rds, redis_prefix)
    lap = Laps()

    # 1. dataproc on Celery: clean documents and the report ----------------------------------------------
    corpus = write_corpus(tmp_path / "corpus")
    services.start("data-worker", "data", "worker", "--pool", "solo", "--loglevel", "warning")
    job = {"docs_per_shard": 40,
           "inputs": [{"path": str(corpus / "*.jsonl.gz")}, {"path": str(corpus / "planted.jsonl")}]}
    run = run_neo(env, "data", "run", str(write_json(tmp_path / "clean.json", {"name": "e2e-clean", **job})))
    assert "celery executor" in run.stderr  # tasks went through the worker, not in process
    clean_dir = home / "data" / "e2e-clean"
    clean_report = json.loads((clean_dir / "report.json").read_text())
    docs = clean_documents(clean_dir)
    assert clean_report["input"]["records"] == 7 * DOCS_PER_FILE + 4
    assert len(docs) == clean_report["documents"]["final"] > 50
    assert {d["lang"] for d in docs} == {"en", "zh", "code"}
    ids = {d["meta"]["id"] for d in docs}
    assert not ids & {"planted/dup-en", "planted/dup-zh", "planted/short", "planted/fr"}  # all dropped
    assert not (clean_dir / "shards").exists()  # no tokenizer yet: stops at clean documents
    lap("1 dataproc (clean)")

    # 2. tokenizer on the clean documents, then the job again with it: shards + manifest -----------------
    tok_corpus = tmp_path / "tokenizer-corpus.jsonl"
    tok_corpus.write_text("".join(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n" for d in docs))
    tok_dir = home / "tokenizers" / "e2e"
    run_neo(env, "tokenizer", "train", str(tok_corpus), "--vocab-size", str(VOCAB), "--out", str(tok_dir))
    tok = NeoTokenizer.load(tok_dir)
    assert tok.vocab_size == VOCAB
    for text in (EN_TEXT, ZH_TEXT):
        ids_ = tok.encode(text)
        assert tok.decode(ids_) == text and len(ids_) < len(text.encode())
    assert tok.decode(tok.encode_chat([{"role": "user", "content": ZH_TEXT}]), skip_special=False) == (
        f"<s><|im_start|>user\n{ZH_TEXT}<|im_end|>\n<|im_start|>assistant\n")

    run = run_neo(env, "data", "run", str(write_json(tmp_path / "shards.json", {
        "name": "e2e", **job, "tokenize": {"tokenizer": str(tok_dir), "tokens_per_shard": 65536}})))
    shard_dir = home / "data" / "e2e" / "shards"
    manifest = read_manifest(shard_dir)
    assert manifest.tokenizer_path == str(tok_dir.resolve()) and manifest.vocab_size == VOCAB
    assert manifest.dtype == "uint16" and manifest.bos_id == tok.bos_id and manifest.eos_id == tok.eos_id
    assert set(manifest.sources) == {"debian-reference", "fortunes", "manpages", "python-stdlib"}
    assert sum(s.documents for s in manifest.sources.values()) == len(docs)  # the same survivors as step 1
    assert sum(s.tokens for s in manifest.sources.values()) == sum(f.tokens for f in manifest.files) > 50_000
    for f in manifest.files:
        assert (shard_dir / f.path).stat().st_size == 2 * f.tokens  # uint16 tokens
    stages = manifest.report["stages"]
    assert stages["dedup"]["dropped_dedup_exact"] >= 2  # the planted duplicates
    assert stages["langid"]["dropped"] >= 1  # the French document
    for name, counts in stages.items():  # every drop has a reason, and every document is accounted for
        assert counts.get("dropped", 0) == sum(v for k, v in counts.items() if k.startswith("dropped_")), name
    assert sum(s.get("dropped", 0) for s in stages.values()) == clean_report["input"]["records"] - len(docs)
    assert manifest.report["documents"]["final"] == len(docs) and manifest.report["error_count"] == 0
    lap("2 tokenizer + dataproc (shards)")

    # 3. DeepSpeed pretraining of the tiny preset on CPU/gloo, fundamental → decay ------------------------
    pre_run, base_dir = home / "runs" / "pretrain", home / "models" / "base"
    steps = 16
    run = run_neo(env, "train", "pretrain", str(write_json(tmp_path / "pretrain.json", {
        "name": "e2e-pretrain", "run_dir": str(pre_run), "model": {"preset": "tiny"},
        "data": {"manifest": str(shard_dir), "seq_len": 128},
        "train": {"steps": steps, "micro_batch_size": 8, "lr": 5e-3, "warmup_steps": 2},
        "checkpoint": {"export_dir": str(base_dir)},
        "metrics": {"log_every": 1, "eval_every": 8, "eval_rows": 8, "tensorboard": False, "progress": False}})))
    assert f"exported {base_dir}" in run.stdout
    rows = metrics(pre_run)
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.5)  # starts at chance
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # and learns
    assert rows[0]["phase"] == "fundamental" and rows[-1]["phase"] == "decay"
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < math.log(VOCAB) - 0.5, vals  # held-out rows too
    base_info = NeoCheckpointInfo.read(base_dir)
    assert base_info.stage == "pretrain" and base_info.preset == "tiny"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ids_ = tok.encode(EN_TEXT + ZH_TEXT, add_bos=True)
    assert list(AutoTokenizer.from_pretrained(base_dir)(EN_TEXT + ZH_TEXT)["input_ids"]) == ids_
    with torch.no_grad():
        assert (hf(torch.tensor([ids_])).logits - load_hf(base_dir)(torch.tensor([ids_]))).abs().max() < 1e-4
    del hf
    lap("3 pretrain")

    # 4. two-phase SFT, registered as v1 ----------------------------------------------------------------
    sft_data, sft_run, sft_dir = home / "data" / "sft", home / "runs" / "sft", home / "models" / "sft"
    run_neo(env, "train", "sft-data", str(sft_data), "--corpus", str(SAMPLE_CORPUS), "--max-chars", "80",
            "--limit", "8")
    instruction = read_jsonl(sft_data / "instruction.jsonl")
    assert {r["task"] for r in instruction} == {"en2zh", "zh2en", "explain_en", "explain_zh"}
    run = run_neo(env, "train", "sft", str(write_json(tmp_path / "sft.json", {
        "name": MODEL, "run_dir": str(sft_run), "base_model": str(base_dir), "seq_len": 256,
        "phases": [{"name": "instruction", "data": [str(sft_data / "instruction.jsonl")], "steps": 4},
                   {"name": "chat", "data": [str(sft_data / "chat.jsonl")], "steps": 2}],
        "train": {"micro_batch_size": 4, "lr": 1e-3, "warmup_steps": 1},
        "checkpoint": {"export_dir": str(sft_dir)}, "metrics": {"log_every": 1, "progress": False}})))
    assert f"exported {sft_dir}" in run.stdout
    rows = metrics(sft_run)
    assert [r["phase"] for r in rows] == ["instruction"] * 4 + ["chat"] * 2
    assert all(math.isfinite(r["loss"]) for r in rows)
    sft_info = NeoCheckpointInfo.read(sft_dir)
    assert sft_info.stage == "sft" and sft_info.parent == "e2e-pretrain" and sft_info.name == MODEL
    run = run_neo(env, "serve", "register", MODEL, str(sft_dir), "--stage", "sft")
    assert f"registered {MODEL}:v1" in run.stdout
    v1 = registry.latest(MODEL)
    assert (v1.version, v1.stage, v1.path) == ("v1", "sft", str(sft_dir.resolve()))
    lap("4 SFT + register")

    # 5. served, following the registry ---------------------------------------------------------------
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    services.start("serving", "serve", "--model", MODEL, "--watch-registry", "--port", str(port),
                   "--threads", "1", "--max-batch-size", "2", "--log-level", "warning")
    services.wait_http("serving", f"{url}/health")
    card = models_card(url)
    assert (card["version"], card["stage"], card["root"]) == ("v1", "sft", v1.path)
    chat(url, "Translate into Chinese:\n\nDebian is a free operating system.")
    lap("5 serving v1")

    # 6. preferences labeled through the labeling app's functions, against the server --------------------
    from neo_ui.client import ServingClient
    from neo_ui.labeling import Labeler
    from neo_ui.prompts import PromptQueue
    from neo_ui.settings import UISettings
    from neo_ui.store import PreferenceStore

    ui = UISettings(home=home, redis_url=REDIS_URL, redis_prefix=redis_prefix, api_url=url, label_models=[MODEL],
                    labels_per_prompt=1, label_max_tokens=16, label_temperature=1.0, request_timeout_s=120)
    client = ServingClient(ui)
    labeler = Labeler(ui, PreferenceStore(rds, redis_prefix), PromptQueue(rds, redis_prefix), client,
                      rng=random.Random(0))
    tasks = [r for r in instruction if r["task"] in ("en2zh", "zh2en")][:4]
    reference = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in tasks}
    upload = labeler.prompts.add_jsonl("\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in reference))
    assert (upload.added, upload.errors) == (4, [])
    labels = []
    for choice in ("A better", "B better", "A better", "Tie"):
        view = labeler.next_task("alice")
        assert view is not None and view.prompt == [{"role": "user", "content": view.prompt[-1]["content"]}]
        better = reference[view.prompt[-1]["content"]]  # the annotator rewrites the better answer
        result = labeler.submit("alice", view.task_id, choice, comment="e2e", edit=better)
        record = result.record
        assert result.created and record.annotator == "alice" and record.choice == {
            "A better": "a", "B better": "b", "Tie": "tie"}[choice]
        assert (record.answer_a.text, record.answer_b.text) == (view.answer_a, view.answer_b)
        assert record.answer_a.model_version == record.answer_b.model_version == f"{MODEL}:v1"
        assert record.edited == (None if choice == "Tie" else better)
        labels.append((view, record))
    assert labeler.next_task("alice") is None and labeler.prompts.open_count() == 0
    assert labeler.store.label_count() == 4
    client.close()
    lap("6 labeling")

    # 7. neo prefs export → TRL JSONL --------------------------------------------------------------------
    prefs = tmp_path / "prefs.jsonl"
    run = run_neo(env, "prefs", "export", str(prefs))
    assert f"wrote 3 pairs from 4 labels to {prefs} (left out: 1 ties)" in run.stdout
    exported = read_jsonl(prefs)
    assert [r["id"] for r in exported] == [rec.id for _, rec in labels[:3]]
    for row, (view, rec) in zip(exported, labels, strict=False):
        PreferencePair.model_validate(row)
        rejected = view.answer_b if rec.choice == "a" else view.answer_a
        assert row["prompt"] == view.prompt
        assert row["chosen"] == [{"role": "assistant", "content": rec.edited}] and row["edited"] is True
        assert row["rejected"] == [{"role": "assistant", "content": rejected}]
        assert row["chosen_model"] == row["rejected_model"] == f"{MODEL}:v1" and row["annotator"] == "alice"
    lap("7 prefs export")

    # 8. a DPO round on the labels since the last round: v1 → v2 --------------------------------------------
    dpo_run = home / "runs" / "dpo-round-1"
    run = run_neo(env, "align", "round", "--model-name", MODEL, "--from-redis", "--run-dir", str(dpo_run),
                  "--set", "train.steps=3", "--set", "train.micro_batch_size=2", "--set", "train.lr=1e-3",
                  "--set", "seq_len=256", "--set", "metrics.log_every=1")
    result = json.loads(run.stdout[run.stdout.index("{"):])
    dpo_dir = dpo_run / "hf"
    assert result["export_dir"] == str(dpo_dir) and result["pairs"] == 3
    assert result["parent"] == f"{MODEL}:v1" and result["version"] == f"{MODEL}:v2"
    assert result["metrics"]["rewards/margins"] > 0  # the labeled answers became more likely than the others
    assert [r["id"] for r in read_jsonl(dpo_run / "prefs.jsonl")] == [r["id"] for r in exported]
    assert labeler.store.last_round()["round"] == 1 and labeler.store.last_round()["labels"] == 4
    rows = metrics(dpo_run)
    assert [r["phase"] for r in rows] == ["dpo"] * 3
    assert rows[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)  # the policy starts as its own reference
    dpo_info = NeoCheckpointInfo.read(dpo_dir)
    assert dpo_info.stage == "dpo" and dpo_info.parent == f"{MODEL}:v1" and dpo_info.name == MODEL
    assert dpo_info.data["pairs"] == 3
    v2 = registry.latest(MODEL)
    assert (v2.version, v2.stage, v2.parent, v2.path) == ("v2", "dpo", f"{MODEL}:v1", str(dpo_dir.resolve()))
    lap("8 DPO round")

    # 9. serving switches to v2 by itself and answers from it ---------------------------------------------
    deadline = time.monotonic() + 120
    while (card := models_card(url))["version"] != "v2" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (card["version"], card["stage"], card["root"], card["parent"]) == ("v2", "dpo", v2.path, f"{MODEL}:v1")
    chat(url, "请把下面这段文字翻译成英文：\n\n你好，世界！")  # that it answers from v2's weights: step 10
    assert httpx.get(f"{url}/health").status_code == 200
    lap("9 serving v2")

    # 10. neo eval: both versions in process (named by registry ref), and the served one over the API ---
    api = f"{MODEL}@{url}/v1"
    first, second = f"{MODEL}:v1 (sft)", f"{MODEL}:v2 (dpo)"
    report_path = tmp_path / "eval.json"
    run = run_neo(env, "eval", "--model", f"{MODEL}:v1", "--model", f"{MODEL}:v2", "--api", api, "--task", "ceval",
                  "--task", "mmlu", "--limit", "3", "--out", str(report_path))
    report = json.loads(report_path.read_text())
    assert list(report) == [first, second, api]
    for name, results in report.items():
        assert [r["task"] for r in results] == ["ceval", "mmlu"], name
        for r in results:
            assert r["metric"] == "accuracy" and r["n"] == 3 and 0 <= r["score"] <= 1
            assert all(math.isfinite(s) for sample in r["samples"] for s in sample["scores"].values())
    table = run.stdout  # one score column per model, headed by its name
    assert first in table and second in table and api in table, table
    for i, kind in enumerate(("ceval", "mmlu")):
        row = next(line for line in table.splitlines() if line.startswith(f"│ {kind} "))
        cells = [c.strip() for c in row.split("│")]
        assert cells[-4:-1] == [f"{report[name][i]['score']:.3f}" for name in report], table

    def scores(name: str) -> list[float]:
        return [s for r in report[name] for sample in r["samples"] for s in sample["scores"].values()]

    # the API answers from v2 (its log-likelihoods are v2's), and v2 is not v1
    assert scores(api) == pytest.approx(scores(second), abs=1e-3)
    assert max(abs(a - b) for a, b in zip(scores(first), scores(second), strict=True)) > 1e-4
    lap("10 eval")
