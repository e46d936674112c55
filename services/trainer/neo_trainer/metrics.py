"""Training metrics: console progress, JSONL, TensorBoard; MFU against a per-device peak.

MFU (PaLM appendix B) = model FLOPs per token (``ModelConfig.flops_per_token``: 6N + 12·L·d·T, no
recompute counted) × tokens/s ÷ (peak FLOP/s per device × devices). The peak comes from ``--peak-flops``
(``metrics.peak_flops``) or the table below; a CPU peak is estimated from its vector width.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Dense (no sparsity) peak FLOP/s per device: (bf16 tensor core, fp32 non-tensor). Matched in order
# against torch.cuda.get_device_name(), so the more specific names come first.
PEAK_FLOPS: list[tuple[str, float, float]] = [
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): PCIe 756 TF bf16, 51 TF fp32; NVL 835.5/60
    ("H100 PCIe", 756e12, 51.2e12),
    ("H100 NVL", 835e12, 60e12),
    # H100 SXM5: 989.4 TF bf16 dense (1,979 with sparsity), 66.9 TF fp32
    ("H100", 989.4e12, 66.9e12),
    # NVIDIA H200 datasheet: same SXM compute as H100 (989 TF bf16 dense, 67 TF fp32)
    ("H200", 989.4e12, 66.9e12),
    # NVIDIA HGX B200 spec: 4.5 PF bf16 with sparsity per GPU → 2.25 PF dense; 75 TF fp32 (per GPU)
    ("B200", 2250e12, 75e12),
    # NVIDIA A100 datasheet: 312 TF bf16 dense, 19.5 TF fp32
    ("A100", 312e12, 19.5e12),
    # NVIDIA L40S datasheet: 362 TF bf16 dense (733 sparse), 91.6 TF fp32
    ("L40S", 362e12, 91.6e12),
    # NVIDIA L4 datasheet: 121 TF bf16 dense (242 sparse), 30.3 TF fp32
    ("L4", 121e12, 30.3e12),
    # NVIDIA A10 datasheet: 125 TF bf16 dense (250 sparse), 31.2 TF fp32
    ("A10", 125e12, 31.2e12),
    # NVIDIA Ada Lovelace whitepaper (RTX 4090): 165.2 TF bf16 dense with fp32 accumulate, 82.6 TF fp32
    ("RTX 4090", 165.2e12, 82.6e12),
    # AMD Instinct MI300X datasheet: 1,307.4 TF bf16 dense, 163.4 TF fp32 (vector)
    ("MI300X", 1307.4e12, 163.4e12),
]


def cpu_peak_flops_estimate(threads: int | None = None) -> float | None:
    """fp32 peak of the CPU threads torch uses: threads × GHz × FLOPs/cycle (2 FMA units × lanes × 2).

    AVX-512: 16 fp32 lanes, AVX2: 8 (Intel/AMD optimisation manuals). An estimate: turbo and shared
    FMA units move it; pass ``metrics.peak_flops`` for a measured number.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    threads = threads or torch.get_num_threads()
    return threads * max(mhz) * 1e6 * 2 * lanes * 2


def peak_for_name(name: str, bf16: bool) -> float | None:
    """Table lookup by device name (``NVIDIA H100 80GB HBM3`` → H100 SXM); None when unknown."""
    for key, peak_bf16, peak_fp32 in PEAK_FLOPS:
        if key in name:
            return peak_bf16 if bf16 else peak_fp32
    return None


def device_peak_flops(device: torch.device, bf16: bool) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, its name); None when the device is not in the table."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak_for_name(name, bf16)
        if peak is None:
            log.warning("%s is not in the peak-FLOPs table: pass --peak-flops for MFU", name)
        return peak, name
    return cpu_peak_flops_estimate(), "cpu (estimated peak)"


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None, devices: int) -> float | None:
    if not peak_flops:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * devices)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (a resumed run re-does them)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Rank 0's sinks: ``metrics.jsonl``, TensorBoard (``tb/``) when installed, console progress and log lines."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, log_every: int,
                 tensorboard: bool, progress: bool, enabled: bool = True):
        self.enabled, self.log_every, self.total_steps = enabled, log_every, total_steps
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = self._tb = self._progress = None
        if not enabled:
            return
        truncate_jsonl(self.path, start_step)
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed: metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        if progress and os.isatty(2):
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("pretrain {task.completed}/{task.total} [{task.fields[phase]}]"), BarColumn(),
                TextColumn("loss {task.fields[loss]:.3f} val {task.fields[val]:.3f} lr {task.fields[lr]:.2e} "
                           "{task.fields[tps]:,.0f} tok/s MFU {task.fields[mfu]}"),
                TimeRemainingColumn(), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("pretrain", total=total_steps, completed=start_step,
                                                 loss=math.nan, val=math.nan, lr=0.0, tps=0.0, mfu="-",
                                                 phase="")

    def log(self, record: dict[str, Any], force: bool = False) -> None:
        """Write one step's record; ``val_*`` and phase changes are always written."""
        if not self.enabled:
            return
        step = record["step"]
        if force or step % self.log_every == 0 or any(k.startswith("val_") for k in record):
            assert self._file is not None
            # total_steps on every line: the trainer worker mirrors it into the job's status (step/total)
            self._file.write(json.dumps(record | {"total_steps": self.total_steps}) + "\n")
            self._file.flush()
            log.info("step %d [%s] loss %.4f lr %.3e grad_norm %.3f %.0f tok/s%s%s", step, record.get("phase"),
                     record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"],
                     f" MFU {record['mfu']:.1%}" if record.get("mfu") is not None else "",
                     f" val {record['val_loss']:.4f}" if "val_loss" in record else "")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step" and value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=record["loss"], lr=record["lr"],
                                  tps=record["tokens_per_s"], phase=record.get("phase", ""),
                                  mfu="-" if record.get("mfu") is None else f"{record['mfu']:.1%}",
                                  **({"val": record["val_loss"]} if "val_loss" in record else {}))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
