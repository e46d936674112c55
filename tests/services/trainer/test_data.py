"""neo_trainer.data: shard streams, the seeded mixture, rank slicing, resumable state, document masks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from neo.shards import read_manifest
from neo_trainer.data import (
    DataState,
    PretrainData,
    SourceStream,
    _affine,
    make_batch,
    open_sources,
    resolve_mixture,
)


def _data(shard_dir, rows_per_step=8, seed=0, decay=None, seq_len=32):
    manifest = read_manifest(shard_dir)
    sources = open_sources(shard_dir, manifest, seq_len, val_fraction=0.05)
    fundamental = resolve_mixture({}, sources, "fundamental_mixture")
    mixtures = {"fundamental": fundamental, "decay": resolve_mixture(decay, sources, "decay_mixture")
                if decay else fundamental}
    return PretrainData(sources, mixtures, rows_per_step=rows_per_step, seed=seed, eos_id=manifest.eos_id,
                        document_mask=False)


def test_stream_reads_across_files_and_holds_out_the_tail(shard_dir):
    manifest = read_manifest(shard_dir)
    sources = open_sources(shard_dir, manifest, 32, val_fraction=0.05)
    en = sources["en"]
    assert len(en.arrays) >= 2  # the fixture writes 16k-token files: the source spans several
    flat = np.concatenate([np.asarray(a) for a in en.arrays])
    assert en.total == len(flat) == manifest.sources["en"].tokens
    boundary = len(en.arrays[0])
    np.testing.assert_array_equal(en.read(boundary - 5, 10), flat[boundary - 5 : boundary + 5])
    k = boundary // 32  # a row that crosses the first file boundary
    np.testing.assert_array_equal(en.train_row(k), flat[k * 32 : k * 32 + 33])
    # held-out rows start after the last training token: no token is shared
    last_train_token = (en.n_train - 1) * 32 + 32
    assert en.val_start > last_train_token and en.n_val > 0
    np.testing.assert_array_equal(en.val_row(0), flat[en.val_start : en.val_start + 33])


def test_affine_permutation_visits_every_row_once_per_epoch():
    for n in (1, 2, 97, 1000):
        a, b = _affine(n, 0, "en", 0)
        assert sorted((a * k + b) % n for k in range(n)) == list(range(n))
    assert _affine(1000, 0, "en", 0) != _affine(1000, 0, "en", 1)  # each epoch reshuffles


def test_mixture_is_deterministic_by_seed_and_follows_weights(shard_dir):
    a, b, c = _data(shard_dir, seed=1), _data(shard_dir, seed=1), _data(shard_dir, seed=2)
    plans_a = [a.plan_step("fundamental") for _ in range(5)]
    assert plans_a == [b.plan_step("fundamental") for _ in range(5)]
    assert plans_a != [c.plan_step("fundamental") for _ in range(5)]

    d = _data(shard_dir, rows_per_step=400, decay={"code": 3, "en": 1, "zh": 0})
    counts = Counter(name for name, _ in d.plan_step("decay"))
    assert set(counts) == {"code", "en"}  # zero weight: never drawn
    assert counts["code"] / 400 == pytest.approx(0.75, abs=0.07)


def test_unknown_source_names_the_field(shard_dir):
    manifest = read_manifest(shard_dir)
    sources = open_sources(shard_dir, manifest, 32, 0.05)
    with pytest.raises(ValueError, match=r"data\.decay_mixture\.wiki: no such source.*code, en, zh"):
        resolve_mixture({"wiki": 1.0}, sources, "decay_mixture")


def test_state_round_trip_resumes_the_same_stream(shard_dir):
    a = _data(shard_dir)
    for _ in range(3):
        a.plan_step("fundamental")
    saved = DataState.from_dict(a.state.to_dict())
    expected = [a.plan_step("decay") for _ in range(3)]
    b = _data(shard_dir)
    b.state = saved
    assert [b.plan_step("decay") for _ in range(3)] == expected
    assert sum(b.state.consumed.values()) == 6 * 8


def test_rank_slices_cover_the_global_batch(shard_dir):
    """Two ranks × micro 2 × accum 2 read exactly the rows one rank with micro 8 reads."""
    one, two = _data(shard_dir, rows_per_step=8), _data(shard_dir, rows_per_step=8)
    plan = one.plan_step("fundamental")
    assert plan == two.plan_step("fundamental")
    whole = one.micro_batch(plan, 0, 0, 1, 8).input_ids
    parts = [two.micro_batch(plan, m, r, 2, 2).input_ids for m in range(2) for r in range(2)]
    torch.testing.assert_close(torch.cat(parts), whole)


def test_epochs_repeat_without_loss():
    arr = np.arange(1 + 4 * 10, dtype=np.uint16)  # 10 rows of stride 4
    src = SourceStream("s", [arr], seq_len=4, val_fraction=0.0)
    data = PretrainData({"s": src}, {"fundamental": {"s": 1.0}, "decay": {"s": 1.0}}, rows_per_step=5, seed=0,
                        eos_id=2, document_mask=False)
    firsts = [int(data.micro_batch(p, 0, 0, 1, 5).input_ids[i, 0]) for p in
              (data.plan_step("fundamental"), data.plan_step("fundamental")) for i in range(5)]
    assert sorted(firsts) == [4 * k for k in range(10)]  # epoch 1: each row exactly once


def test_document_positions_and_ids():
    eos = 2
    rows = np.array([[5, 6, eos, 1, 7, 8, eos, 1, 9]])  # doc tail | <s> 7 8 </s> | <s> ...
    b = make_batch(rows, eos, document_mask=True)
    assert b.input_ids.tolist() == [[5, 6, 2, 1, 7, 8, 2, 1]]
    assert b.targets.tolist() == [[6, 2, 1, 7, 8, 2, 1, 9]]
    assert b.doc_ids.tolist() == [[1, 1, 1, 2, 2, 2, 2, 3]]
    assert b.positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    plain = make_batch(rows, eos, document_mask=False)
    assert plain.positions is None and plain.doc_ids is None


def test_restore_adds_new_sources_and_restarts_a_resized_one(shard_dir, caplog):
    """#21: a decay run may add sources the fundamental run never had, and a source may be re-tokenized."""
    data = _data(shard_dir)
    for _ in range(3):
        data.plan_step("fundamental")
    saved = data.state.to_dict()
    name = next(iter(data.sources))
    # a checkpoint written before the new source existed, with another source's row count changed
    old = {"step": saved["step"], "consumed": {n: c for n, c in saved["consumed"].items() if n != name}}
    other = next(n for n in old["consumed"] if n != name) if len(old["consumed"]) else None
    if other is not None:
        old["rows"] = {n: data.sources[n].n_train for n in old["consumed"]}
        old["rows"][other] += 1  # the shards of `other` now hold a different number of rows
    fresh = _data(shard_dir)
    with caplog.at_level("WARNING", logger="neo_trainer.data"):
        fresh.restore(old)
    assert fresh.state.step == saved["step"]
    assert fresh.state.consumed[name] == 0
    assert any(name in r.getMessage() and "new source" in r.getMessage() for r in caplog.records)
    if other is not None:
        assert fresh.state.consumed[other] == 0
        assert any(other in r.getMessage() and "re-tokenized" in r.getMessage() for r in caplog.records)
    fresh.plan_step("fundamental")  # no KeyError
    # an unchanged source keeps its position; a round trip keeps the row counts
    same = _data(shard_dir)
    same.restore(saved)
    assert same.state.consumed == saved["consumed"]
    assert DataState.from_dict(same.state.to_dict()).consumed == saved["consumed"]


def test_a_bare_state_lacking_a_source_fails_so_resume_goes_through_restore(shard_dir):
    """Why ``restore`` exists: planning from an old checkpoint's DataState that lacks a source raises KeyError."""
    data = _data(shard_dir)
    name = next(iter(data.sources))
    data.state = DataState.from_dict({"step": 0, "consumed": {n: 0 for n in data.sources if n != name}})
    with pytest.raises(KeyError):
        while True:
            data.plan_step("fundamental")
