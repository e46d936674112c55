"""``neo train``: training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train models: pretraining now; SFT and DPO arrive with the alignment issue.",
                  no_args_is_help=True)


@app.command("pretrain")
def pretrain(
    data: Annotated[list[Path], typer.Argument(help="text/JSONL(.gz) training files")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer directory")],
    preset: Annotated[str, typer.Option(help="model preset")] = "tiny",
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 300,
    seq_len: Annotated[int, typer.Option(help="tokens per row")] = 256,
    batch_size: Annotated[int, typer.Option(help="rows per step")] = 16,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 3e-3,
    schedule: Annotated[str, typer.Option(help="wsd | cosine | constant (WSD decays over the paper's last 17%)")] = "wsd",
    seed: Annotated[int, typer.Option(help="seed for init and data order")] = 0,
    max_tokens: Annotated[int | None, typer.Option(help="read at most this many tokens")] = None,
    run_dir: Annotated[Path, typer.Option(help="metrics.jsonl and config.json go here")] = Path(".neo/runs/pretrain"),
    out: Annotated[Path, typer.Option(help="exported HF checkpoint directory")] = Path(".neo/models/pretrain"),
) -> None:
    """Pretrain a model on one process (CPU or one GPU) and export it as an HF directory."""
    from pydantic import ValidationError

    from neo_trainer.config import PretrainConfig
    from neo_trainer.stages.pretrain import run_pretrain

    try:
        cfg = PretrainConfig(
            preset=preset, tokenizer=tokenizer, data=data, steps=steps, seq_len=seq_len,
            batch_size=batch_size, lr=lr, schedule=schedule, seed=seed, max_tokens=max_tokens,
            run_dir=run_dir, export_dir=out, warmup_steps=min(20, steps),
        )
        path = run_pretrain(cfg)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"exported {path}")
