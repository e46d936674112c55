"""`neo up` end to end: build the demo model through the real data worker and trainer, then run the
API and UI on an embedded Redis, answer a chat request, and stop every process on Ctrl-C."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import redis
import torch

from neo.hf import load_hf
from neo.net import free_port
from neo.stack import SEED_PROMPTS
from neo.tokenizer import NeoTokenizer


@pytest.fixture(scope="module")
def built_home(tmp_path_factory):
    """A workspace with the demo model built by `neo up --build-only` (machine Redis)."""
    home = tmp_path_factory.mktemp("neohome")
    env = os.environ | {"NEO_HOME": str(home), "NEO_REDIS_URL": "redis://127.0.0.1:6379/14",
                        "NEO_REDIS_PREFIX": f"neo-test-{os.getpid()}:"}
    cmd = [sys.executable, "-m", "neo.cli", "up", "--build-only", "--steps", "30", "--external-redis"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    yield home, env, run
    import redis

    r = redis.Redis.from_url(env["NEO_REDIS_URL"])
    for key in r.scan_iter(f"{env['NEO_REDIS_PREFIX']}*"):
        r.delete(key)


@pytest.mark.slow
def test_build_goes_through_every_stage(built_home):
    home, env, run = built_home
    manifest = json.loads((home / "data/demo/shards/manifest.json").read_text())
    assert sum(f["tokens"] for f in manifest["files"]) > 1_000_000  # the sample corpus is ~2M tokens after cleaning
    assert set(manifest["sources"]) >= {"fortunes", "manpages", "python-stdlib", "debian-reference"}
    report = json.loads((home / "data/demo/report.json").read_text())
    assert report  # the data job's per-stage counts exist
    info = json.loads((home / "models/demo/neo.json").read_text())
    assert info["stage"] == "sft" and info["parent"]  # pretrain → SFT
    assert "[5/5] register" in run.stdout
    again = subprocess.run([sys.executable, "-m", "neo.cli", "up", "--build-only", "--external-redis"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing the demo model" in again.stdout


@pytest.mark.slow
def test_exported_model_loads_in_transformers_with_parity(built_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = built_home[0] / "models/demo"
    ours_tok, hf_tok = NeoTokenizer.load(model_dir), AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "你好，Debian 是什么？\n\tdef f():  return 1"}]
    ids = ours_tok.encode_chat(messages)
    assert list(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]) == ids
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - load_hf(model_dir)(torch.tensor([ids]))).abs().max() < 1e-4


@pytest.mark.slow
def test_up_serves_api_and_ui_on_embedded_redis_and_stops_cleanly(built_home):
    home, env, _ = built_home
    env = env | {"NEO_REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing there: the embedded Redis is used
    api, ui = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "up", "--api-port", str(api), "--ui-port", str(ui)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines, deadline = [], time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        out = "".join(lines)
        assert "Neo is up" in out, out[-3000:]
        assert "embedded server" in out
        models = httpx.get(f"http://127.0.0.1:{api}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["neo"]
        reply = httpx.post(f"http://127.0.0.1:{api}/v1/chat/completions", timeout=60, json={
            "model": "neo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "seed": 1})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
        assert httpx.get(f"http://127.0.0.1:{ui}/chat/", follow_redirects=True).status_code == 200
        # the labeling queue is seeded with the bundled bilingual prompts on first run
        embedded = re.search(r"embedded server on (redis://\S+)", out)[1]
        seeds = sum(1 for line in SEED_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip())
        assert redis.Redis.from_url(embedded).zcard(f"{env['NEO_REDIS_PREFIX']}prefs:queue") == seeds == 264
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # data worker, trainer worker, serving, ui (+ their own children)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
