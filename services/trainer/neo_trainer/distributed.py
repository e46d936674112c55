"""Everything that knows about DeepSpeed and launchers: the one place reading launcher variables.

A run is one or more processes that each call ``setup()``. Under a launcher (``deepspeed``,
``torchrun``) the process group comes from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT``; a bare process (tests, ``neo up``) gets a one-process group set up here. Without a GPU
DeepSpeed runs on its CPU accelerator (``DS_ACCELERATOR=cpu``) over gloo, so ZeRO 0-3, gradient
accumulation, clipping and checkpoints are the same code on a laptop and on a GPU node.

The optimizer is a plain ``torch.optim.AdamW`` handed to ``deepspeed.initialize``: DeepSpeed's own
CPU Adam would JIT-compile a C++ op on first use (minutes on 2 cores) for no gain at our sizes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from neo.net import free_port

log = logging.getLogger(__name__)

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: steps_per_print for DeepSpeed's own logger: never (our metrics module logs).
_NEVER = 2**31 - 1


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ensure_single_process_env() -> None:
    """Give a process started without a launcher the variables of a one-process group."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))


def clean_launcher_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) without launcher variables, for child processes."""
    return {k: v for k, v in (env if env is not None else os.environ).items() if k not in LAUNCHER_ENV}


def setup(threads: int = 0) -> DistEnv:
    """Join (or create) the process group; idempotent within a process."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read by DeepSpeed at first accelerator lookup
    if threads > 0:
        torch.set_num_threads(threads)
    ensure_single_process_env()
    import deepspeed

    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=device, backend=backend)


def deepspeed_config(
    *, micro_batch_size: int, grad_accum: int, world_size: int, zero_stage: int, grad_clip: float, bf16: bool,
) -> dict[str, Any]:
    """The DeepSpeed JSON config of a run (the only place its keys are spelled)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: see the module docstring
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }


def initialize(module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> Any:
    """``deepspeed.initialize`` → the engine (forward, backward, step, checkpoints)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def global_grad_norm(engine: Any) -> float:
    """Pre-clip global grad norm of the step just taken (ZeRO ≥ 1 reports it; stage 0 is measured)."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        return float("nan")
    return float(norm)


def grad_norm_now(module: torch.nn.Module) -> float:
    """Global grad norm of a replicated (ZeRO 0) module after the all-reduce, before the step."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def all_reduce_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over all ranks."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone().float()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def full_parameters(module: torch.nn.Module, zero_stage: int) -> Iterator[None]:
    """Inside, every rank sees whole parameters (ZeRO-3 gathers its partitions; others already have)."""
    if zero_stage < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


#: torchrun's default rendezvous port (``torch.distributed.run --master-port``).
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class NodeSpec:
    """This machine's place in a multi-node run: node rank, how many nodes, where rank 0 listens."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT

    @classmethod
    def from_env(cls, nnodes: int = 1, node_rank: int | None = None, master_addr: str | None = None,
                 master_port: int | None = None) -> NodeSpec:
        """Given values, else ``NODE_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` (as a scheduler sets them)."""
        env = os.environ
        spec = cls(nnodes=nnodes,
                   node_rank=node_rank if node_rank is not None else int(env.get("NODE_RANK", "0")),
                   master_addr=master_addr or env.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=master_port or int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)))
        if spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
            raise ValueError(f"--node-rank {spec.node_rank} must be in [0, --nnodes {spec.nnodes})")
        return spec


def launch_local(nproc: int, module: str, args: list[str], node: NodeSpec | None = None) -> int:
    """Run ``python -m module args`` on ``nproc`` processes of this machine through torchrun; returns its exit
    code. With ``node.nnodes > 1`` this machine is one node of a static rendezvous at ``master_addr:port``
    (the same command on every node, each with its ``node_rank``); otherwise a standalone group."""
    node = node or NodeSpec()
    if node.nnodes > 1:
        where = [f"--nnodes={node.nnodes}", f"--node-rank={node.node_rank}", f"--master-addr={node.master_addr}",
                 f"--master-port={node.master_port}"]
    else:
        where = ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", "-m", module, *args]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    env = {k: v for k, v in clean_launcher_env().items() if k != "NODE_RANK"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    report = TorchrunReportFilter()
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write("".join(report.feed(line)))
    sys.stderr.write("".join(report.flush()))
    code = proc.wait()
    if report.failure:
        print(f"error: {module} failed ({report.failure}); its processes' messages are above", file=sys.stderr)
    return code


class TorchrunReportFilter:
    """Passes the training processes' stderr through and drops torchrun's own failure report: its
    ``ChildFailedError`` traceback and the ``=====`` box after it, which repeat that a rank failed after the
    rank already said why in one line (``error: ...``). A training process's own traceback (a bug) is kept.
    ``failure`` then holds the report's gist (``rank 0, exit code 2``) for a one-line summary."""

    _ELASTIC_LOG = re.compile(r"^[EW]\d{4} .*torch/distributed/elastic/")

    def __init__(self) -> None:
        self._traceback: list[str] | None = None
        self._in_report = False
        self._rules = 0
        self._errors: set[str] = set()
        self.failure = ""

    def feed(self, line: str) -> list[str]:
        if self._in_report:
            self._read_report(line)
            return []
        if self._traceback is not None:
            self._traceback.append(line)
            if line.startswith("torch.distributed.elastic.multiprocessing.errors.ChildFailedError"):
                self._traceback, self._in_report, self._rules = None, True, 0
                return []
            if line[:1] not in (" ", "\t", "") and not line.startswith("Traceback"):  # the exception line: done
                return self.flush()
            return []
        if self._ELASTIC_LOG.match(line):
            return []
        if line.startswith("error: "):  # every rank says the same one-line error: say it once
            if line in self._errors:
                return []
            self._errors.add(line)
        if line.startswith("Traceback (most recent call last):"):
            self._traceback = [line]
            return []
        return [line]

    def _read_report(self, line: str) -> None:
        """The box lists each failure, its root cause last: keep the last rank and exit code it names."""
        if line.startswith("====="):
            self._rules += 1
            self._in_report = self._rules < 2
        elif found := re.match(r"\s*rank\s*:\s*(\d+)", line):
            self.failure = f"rank {found.group(1)}"
        elif found := re.match(r"\s*exitcode\s*:\s*(-?\d+)", line):
            self.failure = f"{self.failure or 'a process'}, exit code {found.group(1)}"

    def flush(self) -> list[str]:
        lines, self._traceback = self._traceback or [], None
        return lines
