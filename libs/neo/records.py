"""Rows of a data file, whatever it is saved as: JSONL (``.jsonl``, ``.json`` lines, ``.gz``), Parquet, an Arrow
IPC file, or a Hugging Face ``datasets`` directory written by ``save_to_disk`` (its ``train`` split when it is a
``DatasetDict``). Training data for SFT, DPO and reward models comes in all of these (TRL's examples and the Hub
publish Parquet and ``datasets`` directories); each row is a plain dict.

Parquet and Arrow need ``pyarrow`` (in the ``train`` and ``data`` extras).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = "JSONL (.jsonl/.json, .gz), Parquet (.parquet), Arrow (.arrow) or a `datasets.save_to_disk` directory"


def _arrow_table_rows(table: Any) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=1024):
        yield from batch.to_pylist()


def _read_arrow_file(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()  # what `datasets` writes
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    yield from _arrow_table_rows(table)


def _dataset_dir_files(path: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory (its ``train`` split for a ``DatasetDict``)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if "train" not in splits:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split (has {splits}); give the split's "
                             "directory")
        path = path / "train"
    state = path / "state.json"
    if state.is_file():
        files = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    else:
        files = sorted(path.glob("*.arrow"))
    if not files:
        raise ValueError(f"{path}: no Arrow files (expected a `datasets.save_to_disk` directory)")
    return files


def iter_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """The rows of ``path`` in order; ``ValueError`` naming the file (and line) for anything unreadable."""
    path = Path(path)
    if path.is_dir():
        for file in _dataset_dir_files(path):
            yield from _read_arrow_file(file)
        return
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from _arrow_table_rows(pq.read_table(path))
        return
    if name.endswith(".arrow"):
        yield from _read_arrow_file(path)
        return
    if not name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".gz")):
        raise ValueError(f"{path}: unknown data format; expected {FORMATS}")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
                yield row
