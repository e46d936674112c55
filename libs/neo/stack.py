"""``neo up``: build what the demo needs, reusing whatever a previous run already built.

The stack is composed from the outside: services run as ``neo`` subcommands in subprocesses (never
imported here), so each keeps its own settings and dependencies.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from neo.settings import NeoSettings

log = logging.getLogger(__name__)

#: The bundled sample corpus (see data/README.md); a repo checkout carries it.
SAMPLE_CORPUS = Path(__file__).resolve().parents[2] / "data" / "sample"
#: Demo tokenizer size: large enough for both scripts on the sample corpus, small enough to train fast.
DEMO_VOCAB_SIZE = 8000


def sample_files(corpus: Path = SAMPLE_CORPUS) -> list[Path]:
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no sample corpus under {corpus} (expected *.jsonl.gz; see data/README.md)")
    return files


def neo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "neo.cli", *args]


def build_demo_model(settings: NeoSettings, steps: int = 300, rebuild: bool = False) -> Path:
    """tokenizer → quick pretrain of the ``tiny`` preset; returns the exported model directory."""
    from neo.tokenizer import TokenizerConfig, train_tokenizer

    files = sample_files()
    tok_dir = settings.tokenizers_dir / "demo"
    model_dir = settings.models_dir / "demo"
    if (model_dir / "config.json").exists() and not rebuild:
        log.info("reusing %s (pass --rebuild to train again)", model_dir)
        return model_dir
    if not (tok_dir / "tokenizer.json").exists() or rebuild:
        log.info("step 1/2: training a %d-piece tokenizer on %d sample files", DEMO_VOCAB_SIZE, len(files))
        train_tokenizer(files, tok_dir, TokenizerConfig(vocab_size=DEMO_VOCAB_SIZE))
    log.info("step 2/2: pretraining the tiny preset for %d steps", steps)
    subprocess.run(
        neo_command("train", "pretrain", *map(str, files), "--tokenizer", str(tok_dir), "--preset", "tiny",
                    "--steps", str(steps), "--run-dir", str(settings.runs_dir / "demo-pretrain"),
                    "--out", str(model_dir)),
        check=True,
    )
    return model_dir
