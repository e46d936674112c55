"""Process entry point for launchers: ``torchrun``/``deepspeed`` start one of these per rank.

    torchrun --nproc_per_node 8 -m neo_trainer.launch run.yaml --set train.lr=3e-4
    deepspeed --num_gpus 8 --module neo_trainer.launch run.yaml
    neo train pretrain run.yaml --nproc 2        # the same through torchrun, on this machine

Each process reads the same config; ``neo_trainer.distributed`` takes its rank from the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neo_trainer.config import ConfigError, load_config
from neo_trainer.settings import TrainerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neo_trainer.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="YAML/JSON run config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from neo_trainer.stages.pretrain import run_pretrain

    try:
        cfg = load_config(args.config, args.overrides)
        out = run_pretrain(cfg, resume=args.resume, threads=TrainerSettings().threads)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("exported %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
