"""Iterative DPO: one round = current policy + preferences since the last round → DPO → export → register.

    neo align round --model-name neo-chat --from-redis          # policy: the registry's latest neo-chat
    neo align round --policy .neo/models/sft --prefs prefs.jsonl --model-name neo-chat

A round

1. resolves the policy (an HF directory, or the latest registered version of ``--model-name``);
2. takes the preference rows: a TRL JSONL (``neo prefs export``), or, with ``--from-redis``, exports the
   labels since the last round from the labeling UI's Redis store through ``neo prefs export
   --since-last-round`` (the UI's CLI contract); the UI's round marker moves (``neo prefs mark-round``) only
   once the new version is registered, so a failed round leaves its labels for the next;
   With ``--pairs rm`` (or ``both``) the pairs are made, as MAP-Neo's iterative DPO does, from the policy's own
   answers: ``--samples`` answers per prompt of ``--prompts`` are sampled through the serving API
   (``--base-url``, any OpenAI-compatible server: Neo's, or its vLLM replicas behind it), ranked with the reward
   model (``--reward-model``, from ``neo train rm``), and the best and the worst become a pair
   (``rm_pairs.jsonl``); ``both`` adds the human labels with a per-row loss weight (``--human-weight``);
3. refuses to run on zero rows (``NoPreferences``), before loading any model;
4. trains DPO with the policy as its own frozen reference (``stages.dpo``), exporting an HF directory with
   ``stage="dpo"`` and ``parent`` = the policy's registry ref;
5. registers the export as the next version of the model name, so serving can switch to it; with
   ``--from-redis`` the UI's round marker moves to the export's cut-off only after success.

Progress as numbers, in the new version's ``neo.json`` metrics and printed:

* ``win_rate/rm``: on held-out prompts (``--eval-prompts``, or a seeded ``eval_fraction`` of ``--prompts``
  never trained on), the share where the reward model scores the new version's answer above the policy's (ties
  count half). The policy's answer is its first sample from the serving API, the new version's is sampled
  locally (``neo.generate``, same temperature / top-p / max tokens), as it is not served yet.
* ``win_rate/human``: among the round's human labels that compare the policy with its own parent version
  (``chosen_model`` / ``rejected_model``), the share the policy won: people can only judge versions that were
  served, so a round records how the previous round's step was judged (``win_rate/human_labels`` = how many).
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neo.registry import ModelRegistry, ModelVersion
from neo_trainer.config import DPOConfig, load_stage_config
from neo_trainer.judge import Judge

log = logging.getLogger(__name__)


class NoPreferences(ValueError):
    """A round with nothing new to learn from."""


PairSource = Literal["human", "rm", "judge", "both"]


@dataclass
class RoundResult:
    export_dir: Path
    version: ModelVersion | None
    pairs: int
    parent: str | None
    metrics: dict[str, float]
    sources: dict[str, int] = field(default_factory=dict)


@dataclass
class Sampling:
    """How a round samples the policy through an OpenAI-compatible API (``/v1/chat/completions``)."""

    base_url: str
    model: str
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0
    api_key: str | None = None
    timeout_s: float = 600.0


def _api(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def served_version(sampling: Sampling) -> str | None:
    """The registry version the server reports for ``sampling.model`` (Neo's ``/v1/models`` cards; None from
    servers that do not say, e.g. vLLM)."""
    import httpx

    headers = {"Authorization": f"Bearer {sampling.api_key}"} if sampling.api_key else {}
    resp = httpx.get(f"{_api(sampling.base_url)}/models", headers=headers, timeout=sampling.timeout_s)
    resp.raise_for_status()
    cards = {c.get("id"): c for c in resp.json().get("data", [])}
    if sampling.model not in cards:
        raise RuntimeError(f"{sampling.base_url} does not serve {sampling.model!r} (it serves {sorted(cards)})")
    return cards[sampling.model].get("version")


def sample_answers(sampling: Sampling, prompts: list[list[dict[str, Any]]], n: int | None = None) -> list[list[str]]:
    """``n`` sampled answers per chat prompt from the server (one request per prompt with ``n`` choices;
    choice ``i`` of a seeded request uses ``seed + i`` on Neo's server, so a round is repeatable)."""
    import httpx

    headers = {"Authorization": f"Bearer {sampling.api_key}"} if sampling.api_key else {}
    out = []
    with httpx.Client(timeout=sampling.timeout_s, headers=headers) as client:
        for i, messages in enumerate(prompts):
            body = {"model": sampling.model, "messages": messages, "n": n or sampling.n,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                    "seed": sampling.seed + 1000 * i}
            resp = client.post(f"{_api(sampling.base_url)}/chat/completions", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"sampling from {sampling.base_url} failed ({resp.status_code}): {resp.text[:500]}")
            choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
            out.append([c["message"].get("content") or "" for c in choices])
    return out


def read_prompts(path: Path) -> list[list[dict[str, Any]]]:
    """Chat prompts from JSONL: ``{"prompt": text | messages}`` (TRL rows too) or ``{"messages": [...]}``
    (``neo prefs import`` rows; a trailing assistant turn is dropped)."""
    from neo_trainer.sft_data import _as_messages, read_jsonl

    out = []
    for n, row in enumerate(read_jsonl(Path(path)), 1):
        value = row.get("prompt", row.get("messages"))
        if value is None:
            raise ValueError(f"{path}:{n}: expected a 'prompt' or 'messages' field")
        messages = _as_messages(value, "user")
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if messages:
            out.append(messages)
    return out


def rank_pairs(prompts: list[list[dict[str, Any]]], answers: list[list[str]], scores: list[list[float]],
               policy_ref: str, source: str) -> list[dict[str, Any]]:
    """Best-vs-worst pairs (TRL conversational rows + metadata) where the best scores strictly higher."""
    rows = []
    created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    for i, (prompt, texts, rewards) in enumerate(zip(prompts, answers, scores, strict=True)):
        best = max(range(len(texts)), key=lambda j: rewards[j])
        worst = min(range(len(texts)), key=lambda j: rewards[j])
        if rewards[best] <= rewards[worst] or texts[best] == texts[worst]:
            continue
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": texts[best]}],
                     "rejected": [{"role": "assistant", "content": texts[worst]}], "id": f"{source}-{i}",
                     "prompt_id": f"{source}-{i}", "annotator": source, "choice": "a", "chosen_model": policy_ref,
                     "rejected_model": policy_ref, "edited": False, "created": created, "weight": 1.0,
                     "chosen_reward": rewards[best], "rejected_reward": rewards[worst]})
    return rows


def human_win_rate(rows: list[dict[str, Any]], version: str | None, parent: str | None) -> tuple[float | None, int]:
    """(share of labels ``version`` won against ``parent``, ties half; labels counted)."""
    if not version or not parent:
        return None, 0
    score, n = 0.0, 0
    for row in rows:
        models = {row.get("chosen_model"), row.get("rejected_model")}
        if models != {version, parent}:
            continue
        n += 1
        if row.get("choice") in ("tie", "both_bad"):
            score += 0.5
        elif row.get("chosen_model") == version:
            score += 1.0
    return (score / n if n else None), n


def rm_win_rate(scorer: Any, prompts: list[list[dict[str, Any]]], old: list[str], new: list[str]) -> float:
    """Share of prompts where the reward model prefers ``new``'s answer to ``old``'s (ties half)."""
    wins = 0.0
    for prompt, a, b in zip(prompts, old, new, strict=True):
        r_old, r_new = scorer.score(prompt, [a, b])
        wins += 1.0 if r_new > r_old else 0.5 if r_new == r_old else 0.0
    return wins / len(prompts)


def sample_locally(model_dir: Path, prompts: list[list[dict[str, Any]]], sampling: Sampling) -> list[str]:
    """One answer per prompt from a checkpoint on this machine (``neo.generate``), with the round's sampling."""
    import torch

    from neo.generate import SamplingParams, generate
    from neo.hf import load_hf
    from neo.tokenizer import NeoTokenizer

    model, tok = load_hf(model_dir, dtype=torch.float32), NeoTokenizer.load(model_dir)
    out = []
    for i, messages in enumerate(prompts):
        ids = tok.encode_chat(messages, add_generation_prompt=True)
        params = SamplingParams(max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, stop_ids=(tok.im_end_id, tok.eos_id),
                                seed=sampling.seed + 1000 * i)
        new = generate(model, ids, params)
        if new and new[-1] in (tok.im_end_id, tok.eos_id):
            new = new[:-1]
        out.append(tok.decode(new))
    return out


def count_rows(path: Path) -> int:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file not found: {path}")
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _ui_cli(args: list[str], env: dict[str, str] | None) -> str:
    """Run ``neo prefs ARGS`` (the UI's CLI contract: services never import each other); returns stdout."""
    proc = subprocess.run([sys.executable, "-m", "neo.cli", "prefs", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"`neo prefs {args[0]}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def export_from_redis(out: Path, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Labels since the last round → TRL JSONL at ``out`` (``neo prefs export OUT --since-last-round --json``),
    without moving the round marker; returns the export's report (rows, labels, until_ts, since_round)."""
    return json.loads(_ui_cli(["export", str(out), "--since-last-round", "--json"], env).splitlines()[-1])


def mark_round(report: dict[str, Any], job: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Move the UI's round marker to ``report``'s cut-off (``neo prefs mark-round``), refused if another round
    was marked since that export."""
    out = _ui_cli(["mark-round", "--until", repr(report["until_ts"]), "--labels", str(report["labels"]),
                   "--path", report["path"], "--expect-round", str(report["since_round"]), "--job", job], env)
    return json.loads(out.splitlines()[-1])


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_round(
    *, run_dir: Path, prefs: Path | None = None, policy: Path | None = None, model_name: str | None = None,
    registry: ModelRegistry | None = None, from_redis: bool = False, env: dict[str, str] | None = None,
    overrides: list[str] | None = None, export_dir: Path | None = None, pairs: PairSource = "human",
    reward_model: Path | None = None, sampling: Sampling | None = None, prompts: Path | None = None,
    eval_prompts: Path | None = None, eval_fraction: float = 0.2, human_weight: float = 1.0,
    judge: Judge | None = None,
) -> RoundResult:
    """One iterative-DPO round (see the module docstring). ``overrides`` are ``--set`` items for ``DPOConfig``."""
    from neo_trainer.sft_data import load_preferences
    from neo_trainer.stages.dpo import run_dpo

    if pairs not in ("human", "rm", "judge", "both"):
        raise ValueError(f"--pairs must be human, rm, judge or both, got {pairs!r}")
    # the ranker of the policy's own answers: both = human labels + the judge when one is given, else the RM
    ranker = None if pairs == "human" else "judge" if pairs == "judge" or (pairs == "both" and judge) else "rm"
    use_rm = ranker is not None
    if ranker == "rm" and (reward_model is None or sampling is None):
        raise ValueError(f"--pairs {pairs} needs --reward-model DIR (or --judge-url) and --base-url URL "
                         "(the serving API to sample)")
    if ranker == "judge" and (judge is None or sampling is None):
        raise ValueError(f"--pairs {pairs} needs --judge-url URL and --judge-model NAME, and --base-url URL "
                         "(the serving API to sample)")
    parent, known, grandparent = None, None, None
    if policy is None:
        if model_name is None or registry is None:
            raise ValueError("give --policy DIR, or --model-name NAME with a registry to take its latest version")
        latest = registry.latest(model_name)
        if latest is None:
            raise ValueError(f"no registered versions of {model_name!r}; give --policy DIR for the first round")
        policy, parent, grandparent = Path(latest.path), latest.ref, latest.parent
    elif registry is not None:
        known = registry.version_of(policy)
        parent = known.ref if known else str(policy)
        grandparent = known.parent if known else None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # --- human labels ---
    human: list[dict[str, Any]] = []
    exported: dict[str, Any] | None = None
    if pairs in ("human", "both"):
        if from_redis:
            # the marker stays until the new version is registered (below): a refused or failed round loses nothing
            prefs = run_dir / "prefs.jsonl"
            exported = export_from_redis(prefs, env=env)
            log.info("preferences: %d pairs from %d labels since round %d", exported["rows"], exported["labels"],
                     exported["since_round"])
        if prefs is None and pairs == "human":
            raise ValueError("give --prefs JSONL or --from-redis")
        if prefs is not None and count_rows(prefs) > 0:
            human = load_preferences([prefs])
        if not human and pairs == "human":
            raise NoPreferences("no new preferences since the last round: nothing to train on. Label more pairs in "
                                f"the UI (neo ui), then run the round again. (read {prefs})")

    # --- the policy's own answers, ranked by the reward model ---
    ranked: list[dict[str, Any]] = []
    held: list[list[dict[str, Any]]] = []
    held_answers: list[str] = []
    if use_rm:
        assert sampling is not None
        from neo_trainer.sft_data import _as_messages

        train_prompts = (read_prompts(prompts) if prompts is not None
                         else [_as_messages(r["prompt"], "user") for r in human])
        if not train_prompts:
            raise ValueError(f"--pairs {pairs} needs --prompts JSONL (prompts to sample the policy on)")
        if eval_prompts is not None:
            held = read_prompts(eval_prompts)
        elif eval_fraction > 0 and len(train_prompts) > 1:
            order = list(range(len(train_prompts)))
            random.Random(sampling.seed).shuffle(order)
            k = min(len(order) - 1, max(1, round(eval_fraction * len(order))))
            held = [train_prompts[i] for i in sorted(order[:k])]
            train_prompts = [train_prompts[i] for i in sorted(order[k:])]
        version = served_version(sampling)
        if version not in (None, "local") and parent and ":" in parent and parent.rsplit(":", 1)[1] != version:
            raise RuntimeError(f"{sampling.base_url} serves {sampling.model!r} at {version}, but the round's policy is "
                               f"{parent}: point serving at it (or pass --served-model {parent})")
        t0 = time.perf_counter()
        answers = sample_answers(sampling, train_prompts)
        held_answers = [a[0] for a in sample_answers(sampling, held, n=1)] if held else []
        log.info("sampled %d answers for %d prompts (+%d held out) in %.1fs", sum(map(len, answers)),
                 len(train_prompts), len(held), time.perf_counter() - t0)
        if ranker == "judge":
            assert judge is not None
            scores = judge.scores(train_prompts, answers)
            source = f"judge:{judge.model}"
            log.info("judge %s: %s", judge.model, judge.stats.to_dict())
        else:
            assert reward_model is not None
            from neo_trainer.reward import RewardScorer

            scorer = RewardScorer(reward_model, device=_device())
            scores = [scorer.score(p, a) for p, a in zip(train_prompts, answers, strict=True)]
            del scorer
            source = f"rm:{Path(reward_model).name}"
        ranked = rank_pairs(train_prompts, answers, scores, parent or str(policy), source)
        key = "rewards" if ranker == "rm" else "wins"  # reward-model scores, or consistent judge wins
        _write_rows(run_dir / f"{ranker}_samples.jsonl", [{"prompt": p, "answers": a, key: r}
                                                          for p, a, r in zip(train_prompts, answers, scores,
                                                                             strict=True)])
        _write_rows(run_dir / f"{ranker}_pairs.jsonl", ranked)

    rows = [r | {"weight": human_weight if pairs == "both" else r.get("weight", 1.0)} for r in human] + ranked
    if not rows:
        raise NoPreferences("nothing to train on: no human labels since the last round and no sampled prompt whose "
                            f"answers the {'judge' if ranker == 'judge' else 'reward model'} told apart "
                            f"(run dir {run_dir})")
    train_file = _write_rows(run_dir / "round_pairs.jsonl", rows) if use_rm else prefs
    assert train_file is not None
    n = len(rows)
    name = model_name or (known.name if known else Path(policy).name)
    raw = {"name": name, "stage": "dpo", "run_dir": str(run_dir), "base_model": str(policy), "parent": parent,
           "register_export": False,
           "data": {"preferences": [str(train_file)], "format": "conversational"},
           "checkpoint": {"export_dir": str(export_dir or run_dir / "hf")},
           "metrics": {"progress": False, "log_every": 1, "tensorboard": False}}
    cfg = load_stage_config(DPOConfig, raw, overrides)
    out = run_dpo(cfg)
    metrics = json.loads((cfg.run_dir / "dpo_eval.json").read_text())

    # --- progress: win rates against the previous version ---
    win: dict[str, float] = {"round/human_pairs": float(len(human)),
                             f"round/{ranker or 'rm'}_pairs": float(len(ranked))}
    if ranker == "rm" and held:
        assert sampling is not None and reward_model is not None
        from neo_trainer.reward import RewardScorer

        new_answers = sample_locally(out, held, sampling)
        scorer = RewardScorer(reward_model, device=_device())
        win["win_rate/rm"] = rm_win_rate(scorer, held, held_answers, new_answers)
        win["win_rate/rm_prompts"] = float(len(held))
        del scorer
    if ranker == "judge" and judge is not None:
        if held:
            assert sampling is not None
            rate = judge.win_rate(held, held_answers, sample_locally(out, held, sampling))
            if rate is not None:
                win["win_rate/judge"], win["win_rate/judge_prompts"] = rate, float(len(held))
        win |= {f"judge/{k}": float(v) for k, v in judge.stats.to_dict().items()}
    rate, labels = human_win_rate(human, parent, grandparent)
    if rate is not None:
        win["win_rate/human"], win["win_rate/human_labels"] = rate, float(labels)
    from neo.schemas import NeoCheckpointInfo

    info = NeoCheckpointInfo.read(out)
    if info is not None:
        info.metrics.update(win)
        info.data.update({"human_pairs": len(human), f"{ranker or 'rm'}_pairs": len(ranked), "pairs_from": pairs,
                          **({"reward_model": str(Path(reward_model).resolve())}
                             if reward_model and ranker == "rm" else {}),
                          **({"judge": {"url": judge.base_url, "model": judge.model, **judge.stats.to_dict()}}
                             if ranker == "judge" and judge else {})})
        info.write(out)
    metrics.update(win)
    version = registry.register(name, out, stage="dpo", parent=parent) if registry is not None else None
    if exported is not None and exported["rows"]:
        marker = mark_round(exported, job=str(run_dir), env=env)
        log.info("labels' round marker moved to round %s", marker["round"])
    log.info("DPO round: %d pairs (%d human, %d ranked by the %s) → %s%s", n, len(human), len(ranked),
             "judge" if ranker == "judge" else "reward model", out, f" registered as {version.ref}" if version else "")
    return RoundResult(export_dir=out, version=version, pairs=n, parent=parent, metrics=metrics,
                       sources={"human": len(human), ranker or "rm": len(ranked)})
