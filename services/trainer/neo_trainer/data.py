"""Pretraining data: memory-mapped shards → a weighted, seeded mixture of packed rows per phase.

The layout (``neo.shards``): each source's files, concatenated in manifest order, are one token
stream of ``<s> doc </s>`` documents, so EOS marks document boundaries. A source is cut into rows of
``seq_len + 1`` tokens at stride ``seq_len`` (inputs and shifted targets, no token wasted); the last
``val_fraction`` of each stream is held out for validation.

Which rows a step trains on is a pure function of (seed, step, rows consumed so far per source):

* the source of each row in the global batch is drawn from the phase's mixture with a generator
  seeded by ``(seed, step)``;
* the c-th row taken from a source is row ``(a·k + b) mod n`` of its epoch ``c // n`` (``k = c mod n``),
  an affine permutation whose ``a`` (coprime to ``n``) and ``b`` are drawn from ``(seed, source, epoch)``:
  a full shuffle in O(1) memory, whatever the corpus size.

So the data position is ``DataState`` (next step, rows consumed per source): it goes into every
checkpoint, and the plan of a step does not depend on the number of processes (each rank then reads
only its slice of the global batch).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from neo.schemas import ShardManifest
from neo.shards import files_for, open_shard

log = logging.getLogger(__name__)

PHASES = ("fundamental", "decay")
_MIX_SALT = 0x6D6978  # "mix": keeps mixture draws apart from permutation draws of the same seed


class SourceStream:
    """One source's shard files as one stream, cut into ``seq_len + 1``-token rows at stride ``seq_len``."""

    def __init__(self, name: str, arrays: list[np.ndarray], seq_len: int, val_fraction: float):
        self.name, self.arrays, self.seq_len = name, arrays, seq_len
        self.starts = np.cumsum([0, *(len(a) for a in arrays)])
        self.total = int(self.starts[-1])
        rows = (self.total - 1) // seq_len if self.total else 0
        n_val = min(rows - 1, math.ceil(rows * val_fraction)) if val_fraction > 0 else 0
        if rows - n_val < 1:
            raise ValueError(f"source {name!r}: {self.total} tokens make no training row of {seq_len + 1} tokens")
        self.n_train = rows - n_val
        self.val_start = self.n_train * seq_len + 1  # first held-out token: no token shared with training
        self.n_val = max(0, (self.total - self.val_start - 1) // seq_len) if n_val else 0

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from stream offset ``start`` (crossing file boundaries as needed)."""
        out, pos = [], start
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while length > 0:
            local = pos - int(self.starts[i])
            take = min(length, len(self.arrays[i]) - local)
            out.append(np.asarray(self.arrays[i][local : local + take]))
            pos, length, i = pos + take, length - take, i + 1
        return np.concatenate(out) if len(out) > 1 else out[0]

    def train_row(self, k: int) -> np.ndarray:
        return self.read(k * self.seq_len, self.seq_len + 1)

    def val_row(self, j: int) -> np.ndarray:
        return self.read(self.val_start + j * self.seq_len, self.seq_len + 1)


def open_sources(directory: Path, manifest: ShardManifest, seq_len: int,
                 val_fraction: float) -> dict[str, SourceStream]:
    """Every source of a shard directory, memory-mapped (files in manifest order)."""
    sources = {}
    for name in sorted(manifest.sources):
        files = files_for(manifest, name)
        arrays = [open_shard(Path(directory) / f.path, manifest.dtype) for f in files]
        if sum(len(a) for a in arrays) <= seq_len:
            log.warning("source %r has %d tokens, not one row of %d: skipped", name,
                        sum(len(a) for a in arrays), seq_len + 1)
            continue
        sources[name] = SourceStream(name, arrays, seq_len, val_fraction)
    if not sources:
        raise ValueError(f"{directory}: no source has more than seq_len={seq_len} tokens")
    return sources


def resolve_mixture(weights: dict[str, float], sources: dict[str, SourceStream], field_name: str) -> dict[str, float]:
    """Normalised source → probability; ``{}`` means by training tokens. Unknown sources are errors."""
    unknown = sorted(set(weights) - set(sources))
    if unknown:
        raise ValueError(f"data.{field_name}.{unknown[0]}: no such source in the manifest "
                         f"(has: {', '.join(sorted(sources))})")
    raw = weights or {name: float(s.n_train) for name, s in sources.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"data.{field_name}: weights sum to 0")
    return {name: w / total for name, w in sorted(raw.items()) if w > 0}


@lru_cache(maxsize=4096)
def _affine(n: int, seed: int, source: str, epoch: int) -> tuple[int, int]:
    """(a, b) of the permutation k → (a·k + b) mod n of one source's epoch; gcd(a, n) = 1."""
    if n == 1:
        return 1, 0
    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), epoch])
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a, int(rng.integers(0, n))


@dataclass
class DataState:
    """Where the data stream is: the next step to plan and rows taken from each source so far."""

    step: int = 0
    consumed: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # each source's training rows when saved (#21)

    def to_dict(self) -> dict:
        return {"step": self.step, "consumed": dict(self.consumed), "rows": dict(self.rows)}

    @classmethod
    def from_dict(cls, d: dict) -> DataState:
        return cls(step=int(d["step"]), consumed={k: int(v) for k, v in d["consumed"].items()},
                   rows={k: int(v) for k, v in d.get("rows", {}).items()})


@dataclass
class Batch:
    """One micro batch: inputs/targets (B, T); with document masking, positions and document ids (B, T)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        return Batch(*(None if t is None else t.to(device, non_blocking=True)
                       for t in (self.input_ids, self.targets, self.positions, self.doc_ids)))

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


def make_batch(rows: np.ndarray, eos_id: int, document_mask: bool) -> Batch:
    """(B, T+1) token rows → a ``Batch``. A document starts at a row's first token and after every EOS."""
    t = torch.from_numpy(rows.astype(np.int64))
    inputs, targets = t[:, :-1], t[:, 1:]
    if not document_mask:
        return Batch(inputs, targets)
    B, T = inputs.shape
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = inputs[:, :-1] == eos_id
    doc_ids = starts.long().cumsum(dim=1)  # (B, T): 1, 1, 1, 2, 2, ...
    index = torch.arange(T).expand(B, T)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # start of each token's doc
    return Batch(inputs, targets, positions=index - first, doc_ids=doc_ids)


class PretrainData:
    """The seeded mixture of packed rows, one global batch per optimizer step, resumable via ``state``."""

    def __init__(self, sources: dict[str, SourceStream], mixtures: dict[str, dict[str, float]], *,
                 rows_per_step: int, seed: int, eos_id: int, document_mask: bool):
        self.sources, self.mixtures = sources, mixtures
        self.rows_per_step, self.seed = rows_per_step, seed
        self.eos_id, self.document_mask = eos_id, document_mask
        self.state = DataState(consumed={name: 0 for name in sources},
                               rows={name: src.n_train for name, src in sources.items()})

    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's data state, which may predate this run's corpus (#21).

        A source the checkpoint never saw (a decay mixture adding data) starts at row 0. A source whose
        training row count changed since the checkpoint (re-tokenized, re-sharded) restarts at row 0 of a
        fresh permutation: its old position would index different rows, so it is not reused. Both are logged
        as warnings. Sources in the checkpoint but not in this corpus are dropped with a warning.
        """
        old = DataState.from_dict(saved)
        consumed = {}
        for name, src in self.sources.items():
            if name not in old.consumed:
                log.warning("data source %r is a new source (not in the checkpoint): it starts at row 0", name)
                consumed[name] = 0
            elif name in old.rows and old.rows[name] != src.n_train:
                log.warning("data source %r was re-tokenized (%d training rows, checkpoint had %d): its position "
                            "restarts at row 0", name, src.n_train, old.rows[name])
                consumed[name] = 0
            else:
                consumed[name] = old.consumed[name]
        for name in sorted(set(old.consumed) - set(self.sources)):
            log.warning("data source %r is in the checkpoint but not in this corpus: dropped", name)
        self.state = DataState(step=old.step, consumed=consumed,
                               rows={name: src.n_train for name, src in self.sources.items()})

    def plan_step(self, phase: str) -> list[tuple[str, int]]:
        """(source, row) for each row of the next global batch; advances the state by one step."""
        names = list(self.mixtures[phase])
        probs = np.array([self.mixtures[phase][n] for n in names])
        rng = np.random.default_rng([self.seed, _MIX_SALT, self.state.step])
        picks = rng.choice(len(names), size=self.rows_per_step, p=probs / probs.sum())
        plan = []
        for i in picks:
            name = names[int(i)]
            src, c = self.sources[name], self.state.consumed[name]
            epoch, k = divmod(c, src.n_train)
            if k == 0 and epoch > 0:
                log.info("source %r starts epoch %d (its data repeats)", name, epoch + 1)
            a, b = _affine(src.n_train, self.seed, name, epoch)
            plan.append((name, (a * k + b) % src.n_train))
            self.state.consumed[name] = c + 1
        self.state.step += 1
        return plan

    def micro_batch(self, plan: list[tuple[str, int]], micro: int, rank: int, world_size: int, size: int) -> Batch:
        """This rank's rows of micro step ``micro``: global rows ``[(micro·world + rank)·size, +size)``."""
        start = (micro * world_size + rank) * size
        rows = np.stack([self.sources[name].train_row(k) for name, k in plan[start : start + size]])
        return make_batch(rows, self.eos_id, self.document_mask)

    def val_batches(self, source: str, rows: int, size: int) -> list[Batch]:
        """The first ``rows`` held-out rows of ``source`` (the same every evaluation) in batches of ``size``."""
        src = self.sources[source]
        n = min(rows, src.n_val)
        out = []
        for i in range(0, n, size):
            block = np.stack([src.val_row(j) for j in range(i, min(n, i + size))])
            out.append(make_batch(block, self.eos_id, self.document_mask))
        return out

    def tokens_seen(self) -> dict[str, int]:
        """Training tokens (targets) taken from each source so far."""
        return {name: c * self.sources[name].seq_len for name, c in self.state.consumed.items()}
