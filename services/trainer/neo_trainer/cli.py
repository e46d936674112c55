"""``neo train``: pretraining runs, SFT/DPO/RM, the trainer queue and scaling fits; ``neo align``: DPO rounds.

    neo train pretrain run.yaml [--set train.lr=1e-3] [--resume] [--nproc 2]
    neo train pretrain run.yaml --nproc 8 --nnodes 2 --node-rank 0 --master-addr HOST0   # on each node
    neo train plan neo-7b --gpus 8 --nodes 64 --gpu h100 --mfu 0.4   # memory, steps, time, cost of a cluster run
    neo train pretrain a.jsonl.gz b.txt --tokenizer DIR --preset tiny --steps 300   # quick form (neo up)
    neo train submit run.yaml          # queue it for `neo train worker`; prints the job id
    neo train status [JOB]
    neo train worker                   # runs queued jobs one at a time
    neo train sft sft.yaml             # two-phase SFT (instruction → chat), assistant-only loss
    neo train sft-data OUT             # the bilingual demo SFT set from the parallel Debian manual
    neo train dpo dpo.yaml             # sigmoid DPO on TRL preference JSONL
    neo train rm rm.yaml               # Bradley-Terry reward model on TRL preference JSONL
    neo align round --model-name neo-chat --from-redis         # one iterative-DPO round on the labels
    neo align round --model-name neo-chat --pairs rm --reward-model RM --base-url http://127.0.0.1:8000 \
        --prompts prompts.jsonl                                  # MAP-Neo's: samples ranked by a reward model
    neo train scaling fit RUN_DIR...   # NEO / Chinchilla scaling-law fits
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

log = logging.getLogger(__name__)

app = typer.Typer(help="Train models: DeepSpeed pretraining (fundamental → decay), the trainer queue, "
                       "scaling-law fits.", no_args_is_help=True)
scaling_app = typer.Typer(help="NEO / Chinchilla scaling-law fits from training runs.", no_args_is_help=True)
app.add_typer(scaling_app, name="scaling")

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config field: section.key=value")]
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _quick_config(files: list[Path], tokenizer: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """The flag form (``neo up``'s call) as a config dict: raw text files, one process, ZeRO 0."""
    steps = opts["steps"] or 300
    run_dir = opts["run_dir"] or Path(".neo/runs/pretrain")
    out = opts["out"] or Path(".neo/models/pretrain")
    return {
        "name": out.name, "run_dir": str(run_dir),
        "model": {"preset": opts["preset"] or "tiny"},
        "data": {"text_files": [str(f) for f in files], "tokenizer": str(tokenizer),
                 "seq_len": opts["seq_len"] or 256, "max_tokens": opts["max_tokens"]},
        "train": {"steps": steps, "micro_batch_size": opts["batch_size"] or 16, "lr": opts["lr"] or 3e-3,
                  "schedule": opts["schedule"] or "wsd", "seed": opts["seed"] or 0, "warmup_steps": min(20, steps)},
        "distributed": {"zero_stage": 0},
        "checkpoint": {"export_dir": str(out)},
    }


@app.command("pretrain")
def pretrain(
    inputs: Annotated[list[Path], typer.Argument(help="a run config (YAML/JSON, or a packaged one by name: "
                                                      "neo-7b-fundamental, demo-pretrain, ...), or text/JSONL(.gz) "
                                                      "files with --tokenizer")],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's latest checkpoint")] = False,
    nproc: Annotated[int, typer.Option(help="processes on this machine (torchrun), e.g. one per GPU")] = 1,
    nnodes: Annotated[int, typer.Option(help="machines in the run: run the same command on each, with its "
                                             "--node-rank (services/trainer/README.md, Multi-node)")] = 1,
    node_rank: Annotated[int | None, typer.Option(help="this machine's rank, 0 … nnodes-1 [$NODE_RANK or 0]")] = None,
    master_addr: Annotated[str | None, typer.Option(help="node 0's address [$MASTER_ADDR or 127.0.0.1]")] = None,
    master_port: Annotated[int | None, typer.Option(help="node 0's rendezvous port [$MASTER_PORT or 29500]")] = None,
    peak_flops: Annotated[float | None, typer.Option(help="device peak FLOP/s for MFU (default: table)")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="quick form: tokenizer directory")] = None,
    preset: Annotated[str | None, typer.Option(help="quick form: model preset [tiny]")] = None,
    steps: Annotated[int | None, typer.Option(help="quick form: optimizer steps [300]")] = None,
    seq_len: Annotated[int | None, typer.Option(help="quick form: tokens per row [256]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="quick form: rows per step [16]")] = None,
    lr: Annotated[float | None, typer.Option(help="quick form: peak learning rate [3e-3]")] = None,
    schedule: Annotated[str | None, typer.Option(help="quick form: wsd | cosine | constant | map-neo [wsd]")] = None,
    seed: Annotated[int | None, typer.Option(help="quick form: seed [0]")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="quick form: tokens read per file")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="quick form: run directory")] = None,
    out: Annotated[Path | None, typer.Option(help="quick form: exported HF directory")] = None,
) -> None:
    """Pretrain with DeepSpeed: fundamental phase, then decay phase; exports an HF directory."""
    from neo_trainer.config import ConfigError, build_config, load_config, packaged_configs

    overrides = list(set_ or []) + ([f"metrics.peak_flops={peak_flops}"] if peak_flops else [])
    quick = {"preset": preset, "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "lr": lr,
             "schedule": schedule, "seed": seed, "max_tokens": max_tokens, "run_dir": run_dir, "out": out}
    is_config = tokenizer is None and len(inputs) == 1 and (inputs[0].suffix in _CONFIG_SUFFIXES
                                                             or inputs[0].name in packaged_configs())
    try:
        if is_config:
            given = [f"--{k.replace('_', '-')}" for k, v in quick.items() if v is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} belong to the quick form; with a config use --set")
            cfg = load_config(inputs[0], overrides)
        elif tokenizer is None:
            raise ConfigError("give one run config (.yaml/.json), or text files with --tokenizer")
        else:
            cfg = build_config(_quick_config(inputs, tokenizer, quick), overrides)
    except (ConfigError, FileNotFoundError) as exc:
        _fail(exc)
    if nproc > 1 or nnodes > 1:
        if not is_config:
            _fail(ValueError("--nproc/--nnodes need a run config file"))
        from neo_trainer.distributed import NodeSpec, launch_local

        try:
            node = NodeSpec.from_env(nnodes, node_rank, master_addr, master_port)
        except ValueError as exc:
            _fail(exc)
        args = [str(inputs[0]), *(a for o in overrides for a in ("--set", o)), *(["--resume"] if resume else [])]
        raise typer.Exit(launch_local(nproc, "neo_trainer.launch", args, node))
    from neo_trainer.settings import TrainerSettings
    from neo_trainer.stages.pretrain import run_pretrain

    try:
        path = run_pretrain(cfg, resume=resume, threads=TrainerSettings().threads)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"exported {path}")


@app.command("submit")
def submit(
    config: Annotated[Path, typer.Argument(help="run config (YAML/JSON)")],
    set_: SetOption = None,
    kind: Annotated[str, typer.Option(help="job kind: pretrain | sft | dpo")] = "pretrain",
    nproc: Annotated[int, typer.Option(help="processes for the job")] = 1,
) -> None:
    """Validate a run config and queue it for the trainer worker; prints the job id."""
    from neo_trainer.config import ConfigError, DPOConfig, SFTConfig, load_config, load_stage_config
    from neo_trainer.settings import TrainerSettings
    from neo_trainer.worker import submit_job

    try:
        stage_cls = {"sft": SFTConfig, "dpo": DPOConfig}.get(kind)
        cfg = (load_stage_config(stage_cls, config, list(set_ or [])) if stage_cls
               else load_config(config, list(set_ or [])))
        settings = TrainerSettings()
        job = submit_job(settings, kind, cfg.dump(), nproc=nproc)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(job)
    log.info("queued %s; status: neo train status %s", job, job)


@app.command("status")
def status(job: Annotated[str | None, typer.Argument(help="job id (default: list recent jobs)")] = None) -> None:
    """Show a queued/running/finished job (JSON), or the recent jobs."""
    from neo_trainer.settings import TrainerSettings
    from neo_trainer.worker import JobStore

    store = JobStore.from_settings(TrainerSettings())
    if job is None:
        for row in store.recent():
            typer.echo(json.dumps(row))
        return
    found = store.get(job)
    if found is None:
        _fail(KeyError(f"no job {job!r}"))
    typer.echo(json.dumps(found, indent=2))


@app.command("plan")
def plan_cmd(
    config: Annotated[str, typer.Argument(help="a run config (YAML/JSON) or a preset name (neo-250m … neo-7b: "
                                               "full context, the paper's 4.5T tokens, ~4M tokens per step)")],
    gpus: Annotated[int, typer.Option(help="GPUs per node")] = 8,
    nodes: Annotated[int, typer.Option(help="nodes")] = 1,
    gpu: Annotated[str, typer.Option(help="GPU type: a100-40g | a100-80g | h100 | h200 | b200")] = "h100",
    mfu: Annotated[float, typer.Option(help="model FLOPs utilisation to assume, in (0, 1]")] = 0.4,
    tokens: Annotated[str | None, typer.Option(help="token budget, e.g. 4.5T, 300B, 5e9 (default: the "
                                                    "config's; a preset: the paper's 4.5T)")] = None,
    global_batch: Annotated[int | None, typer.Option(help="rows per optimizer step; grad_accum = rows ÷ "
                                                          "(micro batch × GPUs), which must be whole")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="rows per GPU per forward (default: the config's; "
                                                         "a preset: 1)")] = None,
    seq_len: Annotated[int | None, typer.Option(help="tokens per row (default: the config's; a preset: its "
                                                     "max_seq_len)")] = None,
    price: Annotated[float | None, typer.Option(help="USD per GPU-hour (default: the GPU table's)")] = None,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON (bytes, seconds, USD)")] = False,
) -> None:
    """Plan a pretraining run on a GPU cluster: batch checks, memory per GPU for ZeRO 0-3, steps, time, cost."""
    from neo_trainer.plan import PlanError, load_for_plan, parse_tokens, plan, preset_grad_accum, render

    overrides = list(set_ or []) + ([f"train.micro_batch_size={micro_batch}"] if micro_batch is not None else [])
    try:
        cfg, is_preset = load_for_plan(config, overrides, seq_len)
        if is_preset and global_batch is None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
                update={"grad_accum": preset_grad_accum(cfg, max(gpus, 1) * max(nodes, 1))})})
        result = plan(cfg, gpu=gpu, gpus_per_node=gpus, nodes=nodes, mfu=mfu, global_batch=global_batch,
                      tokens=parse_tokens(tokens) if tokens else None, price=price)
    except PlanError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console

    Console(width=140).print(render(result))


@app.command("worker")
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run the trainer worker: Celery on the `trainer` queue, one job at a time."""
    from neo_trainer.settings import TrainerSettings
    from neo_trainer.worker import run_worker

    run_worker(TrainerSettings(), loglevel=loglevel)


# --- alignment: SFT, DPO, iterative DPO rounds -----------------------------------------------------------

align_app = typer.Typer(help="Iterative DPO: train on the labels since the last round, export, register.",
                        no_args_is_help=True)
# mounted as `neo align` (entry point neo.cli): each command has one place


NprocOption = Annotated[int, typer.Option(help="local processes (torchrun), each taking a share of every batch")]


def _run_stage(kind: str, config: Path, overrides: list[str], nproc: int = 1) -> None:
    from neo_trainer.config import ConfigError, DPOConfig, RewardConfig, SFTConfig, load_stage_config
    from neo_trainer.settings import TrainerSettings

    try:
        cfg = load_stage_config({"sft": SFTConfig, "dpo": DPOConfig, "rm": RewardConfig}[kind], config, overrides)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if nproc > 1:
        from neo_trainer.distributed import launch_local

        if kind == "dpo":  # as in one process: `neo train dpo` exports; `neo align round` registers
            overrides = [*overrides, "register_export=false"]
        args = [str(config), *(a for o in overrides for a in ("--set", o))]
        raise typer.Exit(launch_local(nproc, f"neo_trainer.stages.{kind}", args))
    try:
        if kind == "sft":
            from neo_trainer.stages.sft import run_sft as run
        elif kind == "rm":
            from neo_trainer.stages.rm import run_rm as run
        else:
            from neo_trainer.stages.dpo import run_dpo as run
        path = run(cfg, threads=TrainerSettings().threads)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"exported {path}")
    if kind == "rm":
        found = json.loads((cfg.run_dir / "rm_eval.json").read_text())
        if found.get("eval/pairs"):
            typer.echo(f"held-out accuracy {found['eval/accuracy']:.3f} on {int(found['eval/pairs'])} pairs "
                       f"(before training {found['eval_before/accuracy']:.3f}), loss {found['eval/loss']:.4f}")


@app.command("sft")
def sft(config: Annotated[Path, typer.Argument(help="SFT config (YAML/JSON): base_model, phases, train")],
        set_: SetOption = None, nproc: NprocOption = 1) -> None:
    """Supervised fine-tuning on chat JSONL: assistant-only loss, packing, phases (instruction → chat)."""
    _run_stage("sft", config, list(set_ or []), nproc)


@app.command("dpo")
def dpo(config: Annotated[Path, typer.Argument(help="DPO config (YAML/JSON): base_model, data.preferences")],
        set_: SetOption = None, nproc: NprocOption = 1) -> None:
    """Sigmoid DPO on TRL preference JSONL against a frozen reference (default: base_model)."""
    _run_stage("dpo", config, list(set_ or []), nproc)


@app.command("rm")
def rm(config: Annotated[Path, typer.Argument(help="reward-model config (YAML/JSON): base_model, data.preferences")],
       set_: SetOption = None, nproc: NprocOption = 1) -> None:
    """Bradley-Terry reward model (backbone + scalar head) on TRL preference JSONL; held-out accuracy in
    <run_dir>/rm_eval.json; exports a LlamaForSequenceClassification (num_labels=1) HF directory."""
    _run_stage("rm", config, list(set_ or []), nproc)


@app.command("sft-data")
def sft_data(
    out_dir: Annotated[Path, typer.Argument(help="directory for instruction.jsonl and chat.jsonl")],
    corpus: Annotated[Path | None, typer.Option(help="folder with debian-reference.{en,zh}.jsonl.gz")] = None,
    max_chars: Annotated[int, typer.Option(help="characters per answer (cut at a sentence end)")] = 240,
    limit: Annotated[int | None, typer.Option(help="sections to use (default: all shared ones)")] = None,
) -> None:
    """Build the bilingual demo SFT set from the parallel EN/ZH Debian Reference in the sample corpus."""
    from neo.stack import SAMPLE_CORPUS
    from neo_trainer.sft_data import build_debian_sft

    root = corpus or SAMPLE_CORPUS
    try:
        paths = build_debian_sft(root / "debian-reference.en.jsonl.gz", root / "debian-reference.zh.jsonl.gz",
                                 out_dir, max_chars=max_chars, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@align_app.command("round")
def align_round(
    policy: Annotated[Path | None, typer.Option(help="policy HF directory (default: latest --model-name)")] = None,
    model_name: Annotated[str | None, typer.Option(help="registry name: policy source and where to register")] = None,
    prefs: Annotated[Path | None, typer.Option(help="TRL preference JSONL (neo prefs export --since-last-round)")]
    = None,
    from_redis: Annotated[bool, typer.Option(help="export the labels since the last round from the UI's store")]
    = False,
    run_dir: Annotated[Path | None, typer.Option(help="run directory [<runs>/dpo-round-<time>]")] = None,
    out: Annotated[Path | None, typer.Option(help="exported HF directory [<run_dir>/hf]")] = None,
    register: Annotated[bool, typer.Option(help="register the export as the next version of --model-name")] = True,
    pairs: Annotated[str, typer.Option(help="where pairs come from: human (labels) | rm (the policy's samples "
                                            "ranked by --reward-model) | judge (ranked by --judge-url, each pair "
                                            "judged in both orders) | both (labels + rm, or + judge when "
                                            "--judge-url is given)")] = "human",
    reward_model: Annotated[Path | None, typer.Option(help="reward model directory (neo train rm)")] = None,
    judge_url: Annotated[str | None, typer.Option(help="OpenAI-compatible API of a judge model, e.g. "
                                                       "http://127.0.0.1:8001")] = None,
    judge_model: Annotated[str | None, typer.Option(help="the judge's model id there")] = None,
    judge_key_file: Annotated[Path | None, typer.Option(help="file holding the judge's Bearer key (one line); "
                                                             "else $NEO_JUDGE_API_KEY")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible API serving the policy (Neo's or vLLM), "
                                                      "e.g. http://127.0.0.1:8000")] = None,
    served_model: Annotated[str | None, typer.Option(help="the policy's model id there [--model-name]")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key for --base-url")] = None,
    prompts: Annotated[Path | None, typer.Option(help="prompts JSONL to sample ({prompt} or {messages}) "
                                                      "[the human labels' prompts]")] = None,
    eval_prompts: Annotated[Path | None, typer.Option(help="held-out prompts for win rates "
                                                           "[--eval-fraction of --prompts]")] = None,
    eval_fraction: Annotated[float, typer.Option(help="share of --prompts held out for the RM win rate")] = 0.2,
    samples: Annotated[int, typer.Option(help="answers sampled per prompt (best vs worst become a pair)")] = 4,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.8,
    top_p: Annotated[float, typer.Option(help="sampling top-p")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="tokens per sampled answer")] = 256,
    seed: Annotated[int, typer.Option(help="sampling seed (prompt i, choice j: seed + 1000 i + j)")] = 0,
    human_weight: Annotated[float, typer.Option(help="--pairs both: loss weight of a human pair (RM pairs: 1)")]
    = 1.0,
    set_: SetOption = None,
) -> None:
    """One iterative-DPO round: policy + new preferences (human labels and/or the policy's own answers ranked by a
    reward model) → DPO → HF export → next registry version, with win rates against the previous version."""
    import time

    from neo.registry import ModelRegistry
    from neo_trainer.align import NoPreferences, Sampling, run_round
    from neo_trainer.config import ConfigError
    from neo_trainer.settings import TrainerSettings

    settings = TrainerSettings()
    registry = (ModelRegistry.from_url(settings.redis_url, settings.redis_prefix)
                if (register or policy is None) and model_name else None)
    run_dir = run_dir or settings.runs_dir / f"dpo-round-{time.strftime('%Y%m%d-%H%M%S')}"
    sampling = None
    if base_url is not None:
        from neo.schemas import NeoCheckpointInfo

        info = NeoCheckpointInfo.read(policy) if policy is not None else None
        served = served_model or model_name or (info.name if info else None)
        if served is None:
            _fail(ValueError("give --served-model (the policy's model id at --base-url)"))
        sampling = Sampling(base_url=base_url, model=served, n=samples, temperature=temperature, top_p=top_p,
                            max_tokens=max_tokens, seed=seed, api_key=api_key)
    judge = None
    if judge_url is not None:
        import os

        from neo.settings import read_secrets
        from neo_trainer.judge import Judge

        if not judge_model:
            _fail(ValueError("--judge-url needs --judge-model (the judge's model id there)"))
        key = read_secrets(judge_key_file)[0] if judge_key_file else os.environ.get("NEO_JUDGE_API_KEY")
        judge = Judge(judge_url, judge_model, api_key=key)
    try:
        result = run_round(run_dir=run_dir, prefs=prefs, policy=policy, model_name=model_name, registry=registry,
                           from_redis=from_redis, overrides=list(set_ or []), export_dir=out,
                           pairs=pairs, reward_model=reward_model, sampling=sampling,  # type: ignore[arg-type]
                           prompts=prompts, eval_prompts=eval_prompts, eval_fraction=eval_fraction,
                           human_weight=human_weight, judge=judge)
    except NoPreferences as exc:
        typer.echo(f"refusing to run: {exc}", err=True)
        raise typer.Exit(3) from exc
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(exc)
    typer.echo(json.dumps({"export_dir": str(result.export_dir), "pairs": result.pairs, "sources": result.sources,
                           "parent": result.parent, "version": result.version.ref if result.version else None,
                           "metrics": result.metrics}, indent=2))
    m = result.metrics
    parts = [f"reward model {m['win_rate/rm']:.3f} on {int(m['win_rate/rm_prompts'])} held-out prompts (new vs "
             f"{result.parent})"] if "win_rate/rm" in m else []
    if "win_rate/judge" in m:
        parts.append(f"judge {m['win_rate/judge']:.3f} on {int(m['win_rate/judge_prompts'])} held-out prompts "
                     f"({int(m['judge/skipped'])} of {int(m['judge/comparisons'])} comparisons skipped)")
    if "win_rate/human" in m:
        parts.append(f"people {m['win_rate/human']:.3f} on {int(m['win_rate/human_labels'])} labels "
                     f"({result.parent} vs its parent)")
    # stdout is the JSON above (scripts parse it); the human summary goes to stderr
    typer.echo("win rate: " + ("; ".join(parts) if parts else "none measured (no held-out prompts or "
                                                                "version-vs-parent labels)"), err=True)


@scaling_app.command("fit")
def scaling_fit(
    runs: Annotated[list[Path], typer.Argument(help="run directories (config.json + metrics.jsonl) or a points "
                                                    "JSON/CSV file")],
    holdout: Annotated[int, typer.Option(help="hold out the N points with the most compute")] = 2,
    plot: Annotated[Path, typer.Option(help="PNG to write")] = Path("scaling.png"),
    out: Annotated[Path | None, typer.Option(help="write the fits as JSON here")] = None,
    non_embedding: Annotated[bool, typer.Option(help="N without embedding parameters")] = False,
) -> None:
    """Fit Chinchilla and NEO laws to (params, tokens, loss) points; report held-out errors; plot."""
    from neo_trainer.scaling import fit_report, load_points

    try:
        points = load_points(runs, non_embedding=non_embedding)
        report = fit_report(points, holdout=holdout, plot=plot)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)
    typer.echo(f"plot: {plot}", err=True)


if __name__ == "__main__":  # `python -m neo_trainer.cli`
    app(sys.argv[1:])
