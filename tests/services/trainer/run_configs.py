"""Test helper, run under torchrun: train several configs in the same processes (one import, one group).

    python -m torch.distributed.run --standalone --nproc_per_node 2 run_configs.py a.json b.json
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from neo_trainer.config import load_config
from neo_trainer.stages.pretrain import run_pretrain

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in sys.argv[1:]:
        run_pretrain(load_config(Path(path)))
