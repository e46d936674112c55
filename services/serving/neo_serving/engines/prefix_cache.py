"""Automatic prefix caching for the torch engine: keys/values of full token blocks, found by chained hashes.

The design is vLLM's automatic prefix caching (``vllm/v1/core/kv_cache_utils.py``, ``block_pool.py``): a
token sequence is cut into blocks of ``block_size`` tokens; block i is named by the hash of (block i-1's
hash, block i's tokens), so a name stands for the whole prefix up to the block's end, and the longest
cached prefix of a prompt is its first blocks whose names are stored. Only full blocks are cached.

Unlike vLLM, Neo's KV cache is one contiguous row per running request (``KVCache``), not pages, so a hit
is a *copy*: the stored blocks' keys/values are copied into the request's row and only the rest of the
prompt is prefilled. Blocks are stored as copies too (after a prefill, and when a request ends, for its
generated tokens), so the store owns its memory, bounded by ``capacity`` blocks.

A running request holds a reference on the blocks it matched or stored (as vLLM's ``ref_cnt``); only
blocks nobody holds are evicted, least recently used first. ``release`` drops a request's references
when it finishes or is aborted.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

#: tokens per block, vLLM's default ``--block-size`` on CPU and GPU
DEFAULT_BLOCK_SIZE = 16
ROOT_HASH = b"neo-prefix-root"  # the parent "hash" of a sequence's first block


def block_hashes(tokens: Sequence[int], block_size: int, parent: bytes = ROOT_HASH, start: int = 0) -> list[bytes]:
    """The chained sha256 names of the full blocks of ``tokens[start:]`` (``parent``: the block before)."""
    out = []
    for i in range(start, len(tokens) - block_size + 1, block_size):
        parent = hashlib.sha256(parent + array("q", tokens[i:i + block_size]).tobytes()).digest()
        out.append(parent)
    return out


@dataclass
class _Block:
    kv: torch.Tensor  # (n_layers, 2, n_kv_heads, block_size, head_dim): keys then values
    refs: int = 0


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up (vLLM: prefix_cache_queries)
    hits: int = 0  # of those, tokens found cached (vLLM: prefix_cache_hits)
    evictions: int = 0  # blocks dropped to make room


@dataclass
class PrefixCache:
    """Up to ``capacity`` blocks of ``block_size`` tokens, LRU among the unreferenced ones."""

    capacity: int
    block_size: int = DEFAULT_BLOCK_SIZE
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    blocks_in_use: int = 0  # blocks some running request holds (never evicted); kept as a count, read by /metrics
    _blocks: OrderedDict[bytes, _Block] = field(default_factory=OrderedDict)  # oldest use first

    def __len__(self) -> int:
        return len(self._blocks)

    def _ref(self, h: bytes, block: _Block) -> None:
        block.refs += 1
        self.blocks_in_use += block.refs == 1
        self._blocks.move_to_end(h)

    def match(self, hashes: Sequence[bytes], max_blocks: int, query_tokens: int) -> list[bytes]:
        """The longest run of ``hashes[:max_blocks]`` that is cached, referenced for the caller; counts
        ``query_tokens`` queried and the matched tokens as hits."""
        found: list[bytes] = []
        for h in hashes[:max_blocks]:
            block = self._blocks.get(h)
            if block is None:
                break
            self._ref(h, block)
            found.append(h)
        self.stats.queries += query_tokens
        self.stats.hits += len(found) * self.block_size
        return found

    def gather(self, hashes: Sequence[bytes]) -> torch.Tensor:
        """The matched blocks' keys/values side by side: (n_layers, 2, n_kv_heads, n · block_size, head_dim)."""
        return torch.cat([self._blocks[h].kv for h in hashes], dim=3)

    def put(self, h: bytes, kv: torch.Tensor) -> bool:
        """Store a block (``kv`` itself: pass a tensor nobody writes afterwards) referenced for the caller,
        evicting unreferenced LRU blocks for room; False (nothing stored, nothing referenced) when every stored
        block is held or capacity is 0."""
        block = self._blocks.get(h)
        if block is not None:  # another request stored it meanwhile: share theirs
            self._ref(h, block)
            return True
        while len(self._blocks) >= self.capacity:
            victim = next((k for k, b in self._blocks.items() if b.refs == 0), None)
            if victim is None:
                return False
            del self._blocks[victim]
            self.stats.evictions += 1
        self._blocks[h] = block = _Block(kv)
        self._ref(h, block)
        return True

    def release(self, hashes: Sequence[bytes]) -> None:
        """Drop one reference on each block (a request finished or was aborted)."""
        for h in hashes:
            block = self._blocks.get(h)
            if block is not None and block.refs > 0:
                block.refs -= 1
                self.blocks_in_use -= block.refs == 0

    def clear(self) -> None:
        self._blocks.clear()
        self.blocks_in_use = 0
