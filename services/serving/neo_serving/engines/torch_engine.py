"""The built-in torch engine: continuous batching over one KV cache, driven by a background thread.

Each running request owns one row of a ``KVCache`` (``max_batch_size`` rows). The thread loops:

1. drop aborted requests (their rows are freed at once),
2. admit waiting requests into free rows and prefill them, sampling each one's first token: the
   admitted prompts go through one forward, right-padded to the longest (a pad token's key/value lands in
   a slot past its row's position, which no query sees and decoding overwrites); the LM head runs on each
   prompt's last position only, or on all of them when prompt logprobs are asked for. With
   ``batch_invariant`` each prompt is prefilled alone, so its logits never depend on what else is queued,
3. one batched decode step: every running row feeds its last token at its own position, and each row
   samples with its own ``SamplingParams`` and its own seeded ``torch.Generator``.

Running requests stay packed in rows ``0..R-1`` (a finished request's row is filled by moving the last
one down), so a decode step computes exactly R rows. With ``batch_invariant`` the step is always the
full cache plus an anchor row (the last, pinned to the last position), so every step has one shape, and
attention runs on SDPA's math backend: a row's logits are then bitwise the same whatever its batch-mates
and row are (checked on CPU in the tests); otherwise they agree to float rounding.

A prompt with more tokens to compute than ``max_prefill_tokens`` is prefilled in chunks of that many, one
chunk per loop iteration with a decode step of the running rows in between (vLLM's chunked prefill), so a long
prompt delays the others' next tokens by one chunk's forward, not by its whole prefill. It holds the last running
row until its last chunk; shorter prompts are still admitted meanwhile (their rows go before it, its keys/values
move up a row), another prompt to chunk waits for it. Off under ``batch_invariant`` (each prompt stays one
forward there, so its rounding never depends on the chunk size).

With a ``PrefixCache`` (``prefix_cache.py``, off under ``batch_invariant``), step 2 first copies the longest
cached block prefix of each admitted prompt into its row and prefills only the rest, at its own offset;
a prompt's full blocks are stored after its prefill, its generated ones when it leaves.

Outputs cross to the event loop once per step (``call_soon_threadsafe``), each request reading its own
``asyncio.Queue``; closing a request's stream aborts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from neo.generate import sample_next
from neo.hf import load_hf
from neo.model import KVCache, NeoModel
from neo_serving.engines.base import (
    EngineOutput,
    EngineRequest,
    EngineStats,
    ModelInfo,
    TokenLogprob,
)
from neo_serving.engines.prefix_cache import DEFAULT_BLOCK_SIZE, ROOT_HASH, PrefixCache, block_hashes
from neo_serving.engines.streams import RESTART_BASE_S, next_output, restart_delay, validate_request
from neo_serving.errors import (
    EngineUnavailableError,
    ServingError,
)
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(eq=False)
class _Seq:
    """A request inside the engine thread."""

    req: EngineRequest
    sink: object  # where its outputs go: its asyncio.Queue (thread engine) or its key (engine process)
    budget: int  # tokens it may still generate in total
    seen: torch.Tensor  # (prompt + budget,) prompt ids then generated ids: the repetition penalty's input
    generator: torch.Generator | None
    stop_ids: frozenset[int]
    n_seen: int = 0
    row: int = -1
    pos: int = 0  # position (= cache slot) of ``last``, the next token to feed; while chunked: prompt slots filled
    last: int = 0
    generated: int = 0
    arrived: float = 0.0  # perf_counter when it was queued
    queue_time: float | None = None  # set when admitted, reported with its first output
    start: int = 0  # prompt tokens whose keys/values came from the prefix cache (prefill starts here)
    hashes: list[bytes] = field(default_factory=list)  # chained names of its full blocks (prefix cache)
    held: list[bytes] = field(default_factory=list)  # prefix-cache blocks it references
    looked_up: bool = False  # its prompt was matched against the prefix cache
    prefilled: bool = False
    prompt_lp: list | None = None  # prompt logprobs gathered chunk by chunk (chunked prefill)


@dataclass
class _Batch:
    """Outputs of one loop iteration, handed to the event loop in one call."""

    items: list[tuple[object, EngineOutput | BaseException]] = field(default_factory=list)  # (sink, output)


class TorchEngine:
    """Serves one checkpoint directory with ``NeoModel`` on ``device``."""

    def __init__(
        self, info: ModelInfo, tokenizer: ServedTokenizer, max_batch_size: int | None = 16,
        max_prefill_tokens: int = 2048, batch_invariant: bool = False, device: str = "cpu",
        dtype: str = "auto", max_waiting: int = 1024, prefix_cache_mb: float = 0.0,
        prefix_block_size: int = DEFAULT_BLOCK_SIZE, restart_backoff_s: float = RESTART_BASE_S,
        kv_cache_gb: float = 1.0, chunked_prefill: bool = True,
    ):
        self.info, self.tokenizer = info, tokenizer
        self.max_batch_size, self.max_prefill_tokens = max_batch_size, max_prefill_tokens
        self.kv_cache_gb = kv_cache_gb  # sizes the rows when max_batch_size is None
        # a longer prompt is prefilled max_prefill_tokens at a time; never under batch_invariant (see the docstring)
        self.chunked_prefill = chunked_prefill and not batch_invariant
        self._partial: _Seq | None = None  # the prompt being prefilled chunk by chunk (in the last running row)
        self.batch_invariant, self.device, self.dtype = batch_invariant, torch.device(device), dtype
        self.max_waiting = max_waiting  # sequences queued for a row before new ones are refused
        # off in batch-invariant mode: a hit prefills a shorter suffix, whose rounding differs from a cold run
        self.prefix_cache_mb = 0.0 if batch_invariant else prefix_cache_mb
        self.prefix_block_size = prefix_block_size
        self.prefix: PrefixCache | None = None
        self.model: NeoModel | None = None
        self.cache: KVCache | None = None
        self._cond = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._aborts: set[str] = set()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.restart_backoff_s = restart_backoff_s  # first restart's delay after a death; doubles while it keeps dying
        self.restarts = 0  # times the engine thread was restarted after dying
        self._deaths = 0  # consecutive early deaths (up less than STABLE_AFTER_S), which set the backoff
        self._started_at = 0.0
        self._restart_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch = _Batch()
        # engine process: prefill forwards (long, few) on every core, decode steps on all but the API process's one
        self.prefill_threads: int | None = None
        self.decode_threads: int | None = None
        self.steps = 0  # decode steps run, for tests and metrics
        self.prefills = 0  # prefill forwards run (one per admitted group, one per chunk of a long prompt)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.setup)
        self._start_thread()

    def setup(self) -> None:
        """Load the weights, size and allocate the KV cache (and prefix cache); the loop can run after this."""
        self.model = self._load()
        cfg = self.model.config
        dtype = next(self.model.parameters()).dtype
        if self.max_batch_size is None:
            self.max_batch_size = auto_batch_size(cfg, self.info.max_model_len, dtype, self.kv_cache_gb,
                                                  self.batch_invariant)
        rows = self.max_batch_size + int(self.batch_invariant)  # + the anchor row
        self.cache = KVCache.empty(cfg, rows, self.info.max_model_len, dtype, self.device)
        mib = sum(t.numel() * t.element_size() for t in self.cache.k + self.cache.v) / 2**20
        log.info("%s: %d KV-cache rows × %d positions (%.1f MiB, %s) on %s", self.info.name, rows,
                 self.info.max_model_len, mib, dtype, self.device)
        if self.prefix_cache_mb > 0:
            block_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * self.prefix_block_size * cfg.head_dim * dtype.itemsize
            self.prefix = PrefixCache(int(self.prefix_cache_mb * 2**20 // block_bytes), self.prefix_block_size)
            log.info("%s: prefix cache of %d blocks × %d tokens (%.0f MiB)", self.info.name, self.prefix.capacity,
                     self.prefix_block_size, self.prefix_cache_mb)

    def _start_thread(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.info.name}", daemon=True)
        self._thread.start()

    def _died(self) -> None:
        """On the event loop, after the engine thread died of an exception: restart it after a backoff."""
        if self._stopping or (self._restart_task is not None and not self._restart_task.done()):
            return
        up_for = time.monotonic() - self._started_at
        self._deaths, delay = restart_delay(up_for, self._deaths, self.restart_backoff_s)
        log.warning("engine %s died after %.0f s (%r); restarting it in %.1f s", self.info.name, up_for,
                    self._error, delay)
        self._restart_task = asyncio.get_running_loop().create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)  # its finally has failed every request it had
        with self._cond:
            if self._stopping:
                return
            # the weights are only read, so they stay; the rows' and prefix cache's contents are dropped
            self._waiting.clear()
            self._running, self._aborts, self._batch = [], set(), _Batch()
            if self.prefix is not None:
                self.prefix = PrefixCache(self.prefix.capacity, self.prefix.block_size, self.prefix.stats)
            self.restarts += 1
            self._error = None
            self._start_thread()
        log.warning("engine %s restarted (%d restarts)", self.info.name, self.restarts)

    def _load(self) -> NeoModel:
        dtype = None if self.dtype == "auto" else _DTYPES[self.dtype]
        model = load_hf(Path(self.info.path), device=self.device, dtype=dtype)
        model.fuse_projections()  # q/k/v and gate/up as one matmul each: +2-12% tok/s at c=16 (tiny, CPU)
        return model

    async def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self.model = self.cache = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def stats(self) -> EngineStats:
        stats = EngineStats(waiting=len(self._waiting), running=len(self._running), healthy=self.healthy(),
                            counters={"decode_steps": float(self.steps), "prefill_forwards": float(self.prefills),
                                      "restarts": float(self.restarts)},
                            kv_cache_usage=len(self._running) / (self.max_batch_size or 1),
                            error=None if self._error is None else self._why())
        if self.prefix is not None:
            stats.prefix_cache_queries, stats.prefix_cache_hits = self.prefix.stats.queries, self.prefix.stats.hits
            stats.extra |= {"prefix_cache_blocks": float(len(self.prefix)),
                            "prefix_cache_blocks_in_use": float(self.prefix.blocks_in_use)}
            stats.counters["prefix_cache_evictions"] = float(self.prefix.stats.evictions)
        return stats

    # --- requests (event loop side) --------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        seq = self._admit_check(request)
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify()
        finished = False
        try:
            while not finished:
                out = await next_output(seq.sink)
                finished = out.finish_reason is not None
                yield out
        finally:
            if not finished:
                await self.abort(request.request_id)

    async def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.add(request_id)
            self._cond.notify()

    def check_available(self) -> None:
        if not self.healthy():
            reason = f": {self._why()}" if self._error else ""
            raise EngineUnavailableError(f"the engine for {self.info.name} is not running{reason}")

    def _why(self) -> str:
        restarting = self._restart_task is not None and not self._restart_task.done()
        return f"it died of {self._error!r}" + ("; restarting" if restarting else "")

    def _admit_check(self, request: EngineRequest) -> _Seq:
        self.check_available()
        vocab = self.model.config.vocab_size if self.model is not None else self.tokenizer.vocab_size
        validate_request(request, self.info, vocab, len(self._waiting), self.max_waiting)
        return self.new_seq(request, asyncio.Queue())

    def new_seq(self, request: EngineRequest, sink: object) -> _Seq:
        """A validated request as the loop holds it; its outputs go to ``sink``."""
        prompt = request.prompt_ids
        budget = min(request.params.max_new_tokens, self.info.max_model_len - len(prompt))
        seen = torch.empty(len(prompt) + budget, dtype=torch.long, device=self.device)
        seen[:len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        return _Seq(req=request, sink=sink, budget=budget, seen=seen, n_seen=len(prompt),
                    generator=request.params.make_generator(self.device),
                    stop_ids=frozenset(request.params.stop_ids), arrived=time.perf_counter())

    # --- the engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            # batch-invariant: SDPA's math backend, as the fused CPU kernel's result depends on a row's index
            attention = sdpa_kernel(SDPBackend.MATH) if self.batch_invariant else contextlib.nullcontext()
            with torch.inference_mode(), attention:
                while self._iterate():
                    pass
        except Exception as exc:  # noqa: BLE001 - the engine is dead: fail every request, /health says 503
            log.exception("engine %s died", self.info.name)
            self._error = exc
        finally:
            error = EngineUnavailableError(f"the engine for {self.info.name} stopped"
                                           + (f": {self._error!r}" if self._error else ""))
            with self._cond:
                left = list(self._waiting) + self._running
                self._waiting.clear()
                self._running = []
                self._partial = None
            self._batch.items += [(seq.sink, error) for seq in left]
            self._flush()
            if self._error is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._died)

    def _iterate(self) -> bool:
        with self._cond:
            while not (self._stopping or self._waiting or self._running or self._aborts):
                self._cond.wait()
            if self._stopping:
                return False
            aborts, self._aborts = self._aborts, set()
            dropped = [s for s in [*self._waiting, *self._running] if s.req.request_id in aborts]
            if dropped:
                self._waiting = deque(s for s in self._waiting if s.req.request_id not in aborts)
            admitted = self._take_waiting()
        if dropped:
            self._remove([s for s in dropped if s in self._running])
            if self.prefix is not None:  # a waiting request may hold the blocks it matched
                for s in dropped:
                    self.prefix.release(s.held)
                    s.held = []
            # usually nobody is listening any more; if someone is, they learn why the stream ended
            self._batch.items += [(s.sink, EngineUnavailableError(f"request {s.req.request_id} was aborted"))
                                  for s in dropped]
        if self._partial is None and len(admitted) == 1 and self._chunks(admitted[0]):
            self._begin_chunked(admitted.pop())
        work = sum(len(q.req.prompt_ids) - q.start for q in admitted) + (
            0 if self._partial is None
            else min(self.max_prefill_tokens, len(self._partial.req.prompt_ids) - self._partial.pos))
        switch = (self.prefill_threads is not None and self.prefill_threads != self.decode_threads
                  and work >= PARALLEL_PREFILL_MIN_TOKENS)
        if switch:
            torch.set_num_threads(self.prefill_threads)
        if self._partial is not None:
            self._prefill_chunk(self._partial)
        if len(admitted) > 1 and not self.batch_invariant:
            try:
                hidden = self._prefill_forward(admitted)
            except (RuntimeError, ValueError, IndexError):  # find out whose: one by one below
                log.exception("batched prefill of %d requests failed; prefilling them one by one", len(admitted))
                self._running = [s for s in self._running if s not in admitted]
            else:
                self._prefill_finish(admitted, hidden)
                admitted = []
        for seq in admitted:
            try:
                hidden = self._prefill_forward([seq])
            except (RuntimeError, ValueError, IndexError) as exc:  # this request's failure, not the engine's
                log.exception("prefill failed for %s", seq.req.request_id)
                self._batch.items.append((seq.sink, ServingError(f"prefill failed for this request: {exc}")))
                self._remove([seq])
            else:
                self._prefill_finish([seq], hidden)
        if switch:
            torch.set_num_threads(self.decode_threads)
        if self._ready():
            self._decode()
        self._flush()
        return True

    def _take_waiting(self) -> list[_Seq]:
        taken: list[_Seq] = []
        longest = 0
        free = self.max_batch_size - len(self._running)
        while self._waiting and len(taken) < free:
            seq = self._waiting[0]
            self._match_prefix(seq)
            n = len(seq.req.prompt_ids) - seq.start
            if taken and (len(taken) + 1) * max(longest, n) > self.max_prefill_tokens:  # padded size
                break
            if self._chunks(seq) and (taken or self._partial is not None):  # chunked alone, one at a time
                break
            self._waiting.popleft()
            seq.queue_time = time.perf_counter() - seq.arrived
            taken.append(seq)
            longest = max(longest, n)
            if self._chunks(seq):  # prefilled alone, chunk by chunk
                break
        return taken

    def _match_prefix(self, seq: _Seq) -> None:
        """Reference the longest cached block prefix of ``seq``'s prompt (leaving one token to prefill, whose
        logits give the first sample); prompt-logprob requests need every position's logits: no lookup."""
        if self.prefix is None or seq.looked_up:
            return
        seq.looked_up = True
        prompt = seq.req.prompt_ids
        seq.hashes = block_hashes(prompt, self.prefix.block_size)
        if seq.req.prompt_logprobs is None:
            seq.held = self.prefix.match(seq.hashes, (len(prompt) - 1) // self.prefix.block_size, len(prompt))
            seq.start = len(seq.held) * self.prefix.block_size

    def _store_blocks(self, seq: _Seq, upto: int) -> None:
        """Put ``seq``'s full blocks of positions < ``upto`` (keys/values in its row) in the prefix cache."""
        assert self.prefix is not None and self.cache is not None
        size, row = self.prefix.block_size, seq.row
        if upto > len(seq.hashes) * size + size - 1:  # generated tokens completed more blocks: name them
            parent = seq.hashes[-1] if seq.hashes else ROOT_HASH
            seq.hashes += block_hashes(seq.seen[:upto].tolist(), size, parent, len(seq.hashes) * size)
        first, end = len(seq.held), min(len(seq.hashes), upto // size)
        if end <= first:
            return
        a, b = first * size, end * size  # the new blocks side by side, then one copy each (exact memory bound)
        kv = torch.stack([torch.stack((k[row, :, a:b], v[row, :, a:b]))
                          for k, v in zip(self.cache.k, self.cache.v, strict=True)])
        for j in range(first, end):
            if not self.prefix.put(seq.hashes[j], kv[:, :, :, (j - first) * size:(j - first + 1) * size].clone()):
                break  # full of blocks that running requests hold
            seq.held.append(seq.hashes[j])

    def _chunks(self, seq: _Seq) -> bool:
        """Whether ``seq``'s prompt is prefilled in chunks (more tokens to compute than one forward takes)."""
        return self.chunked_prefill and len(seq.req.prompt_ids) - seq.start > self.max_prefill_tokens

    def _ready(self) -> list[_Seq]:
        """The running requests that decode: all but a prompt still being prefilled (always the last row)."""
        return self._running if self._partial is None else self._running[:-1]

    def _begin_chunked(self, seq: _Seq) -> None:
        """Give ``seq`` the next free row (the last running one) and its cached prefix blocks' keys/values."""
        assert self.cache is not None
        seq.row = len(self._running)
        self._running.append(seq)
        self._partial = seq
        seq.pos = seq.start  # slots filled so far (also the span _move_row copies)
        if seq.start:
            self._copy_prefix(seq)
        if seq.req.prompt_logprobs is not None:
            seq.prompt_lp = [None]

    def _prefill_chunk(self, seq: _Seq) -> None:
        """The next ``max_prefill_tokens`` positions of the partly prefilled ``seq``; after the last one its
        first token is sampled and it decodes with the others from the next step on."""
        assert self.model is not None and self.cache is not None
        prompt = seq.req.prompt_ids
        a = seq.pos
        b = min(len(prompt), a + self.max_prefill_tokens)
        try:
            self.prefills += 1
            ids = torch.tensor([prompt[a:b]], device=self.device)
            positions = torch.arange(a, b, device=self.device)[None]
            row = self.cache.rows(seq.row, seq.row + 1)
            hidden = self.model.hidden_states(ids, positions=positions, cache=row)[0]  # (b - a, d)
            if seq.prompt_lp is not None:  # position t predicts prompt token t + 1
                end = min(b, len(prompt) - 1)
                if end > a:
                    seq.prompt_lp += _logprobs(self.model.lm_head(hidden[:end - a]), prompt[a + 1:end + 1],
                                               seq.req.prompt_logprobs)
        except (RuntimeError, ValueError, IndexError) as exc:  # this request's failure, not the engine's
            log.exception("prefill failed for %s", seq.req.request_id)
            self._batch.items.append((seq.sink, ServingError(f"prefill failed for this request: {exc}")))
            self._partial = None
            self._remove([seq])
            return
        seq.pos = b
        if b == len(prompt):
            self._partial = None
            if self._first_token(seq, self.model.lm_head(hidden[-1]), seq.prompt_lp):
                self._remove([seq])

    def _move_row(self, seq: _Seq, row: int) -> None:
        """Copy ``seq``'s computed keys/values (slots 0..pos) to ``row`` (a free one) and give it that row."""
        assert self.cache is not None
        if seq.row != row:
            span = seq.pos + 1
            for k, v in zip(self.cache.k, self.cache.v, strict=True):
                k[row, :, :span] = k[seq.row, :, :span]
                v[row, :, :span] = v[seq.row, :, :span]
            seq.row = row

    def _copy_prefix(self, seq: _Seq) -> None:
        """A prefix-cache hit: its blocks' keys/values go to slots 0..start-1 of ``seq``'s row."""
        kv = self.prefix.gather(seq.held[:seq.start // self.prefix.block_size])
        for layer, (k, v) in enumerate(zip(self.cache.k, self.cache.v, strict=True)):
            k[seq.row, :, :seq.start] = kv[layer, 0]
            v[seq.row, :, :seq.start] = kv[layer, 1]

    def _prefill_forward(self, seqs: list[_Seq]) -> torch.Tensor:
        """Put ``seqs`` in the next free rows and run their prompts through the model in one forward,
        right-padded to the longest; returns the final hidden states (n, T, d)."""
        assert self.model is not None and self.cache is not None
        self.prefills += 1
        partial = self._partial
        first = len(self._running) - (partial is not None)
        for i, seq in enumerate(seqs):
            seq.row = first + i
        if partial is None:
            self._running.extend(seqs)
        else:  # the prompt being chunked stays in the last running row: its keys/values move past the new rows
            self._running[-1:] = [*seqs, partial]
            self._move_row(partial, first + len(seqs))
        for seq in seqs:
            if seq.start:
                self._copy_prefix(seq)
        ids = torch.zeros(len(seqs), max(len(seq.req.prompt_ids) - seq.start for seq in seqs), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq.req.prompt_ids) - seq.start] = torch.tensor(seq.req.prompt_ids[seq.start:])  # pads: 0
        ids = ids.to(self.device)
        starts = torch.tensor([[seq.start] for seq in seqs], device=self.device)
        # a pad past the cache's end writes to its last slot, which no real token of these rows reaches
        positions = (starts + torch.arange(ids.shape[1], device=self.device)).clamp(max=self.info.max_model_len - 1)
        return self.model.hidden_states(ids, positions=positions, cache=self.cache.rows(first, first + len(seqs)))

    def _prefill_finish(self, seqs: list[_Seq], hidden: torch.Tensor) -> None:
        """Each prefilled request's prompt logprobs (if asked) and first token; finished ones leave."""
        assert self.model is not None
        lengths = [len(seq.req.prompt_ids) - seq.start for seq in seqs]  # positions this forward computed
        lm_head = self.model.lm_head
        rows = torch.arange(len(seqs), device=hidden.device)
        last = lm_head(hidden[rows, torch.tensor(lengths, device=hidden.device) - 1])  # (n, V)
        done = []
        for i, seq in enumerate(seqs):
            prompt, prompt_lp = seq.req.prompt_ids, None
            try:
                if seq.req.prompt_logprobs is not None:  # position t predicts prompt token t + 1
                    prompt_lp = [None] + _logprobs(lm_head(hidden[i, :lengths[i] - 1]), prompt[1:],
                                                   seq.req.prompt_logprobs)
            except (RuntimeError, ValueError, IndexError) as exc:
                log.exception("prompt logprobs failed for %s", seq.req.request_id)
                self._batch.items.append((seq.sink, ServingError(f"prefill failed for this request: {exc}")))
                done.append(seq)
                continue
            if self._first_token(seq, last[i], prompt_lp):
                done.append(seq)
        if done:
            self._remove(done)

    def _first_token(self, seq: _Seq, logits: torch.Tensor, prompt_lp: list | None) -> bool:
        """``seq``'s prompt is in its row: cache its blocks, emit its prompt logprobs and sample its first token
        from ``logits`` (V,). True when it is done (the caller takes it out)."""
        seq.pos = len(seq.req.prompt_ids)
        seq.prefilled = True
        if self.prefix is not None:
            self._store_blocks(seq, seq.pos)
        if seq.budget == 0:  # echo-only scoring: no token to sample
            self._emit(seq, EngineOutput([], None, prompt_lp, "length"))
            return True
        return self._sample(seq, logits, prompt_lp)

    def _decode(self) -> None:
        assert self.model is not None and self.cache is not None
        ready = self._ready()
        n = len(ready)
        last = torch.tensor([[s.last] for s in ready], device=self.device)  # (R, 1)
        pos = torch.tensor([[s.pos] for s in ready], device=self.device)  # (R, 1)
        if self.batch_invariant:  # one shape for every step: all rows, span pinned by the anchor row
            rows = self.cache.k[0].shape[0]
            ids = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
            positions = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
            ids[:n], positions[:n], positions[-1] = last, pos, self.info.max_model_len - 1
            logits = self.model(ids, positions=positions, cache=self.cache)[:n, 0]  # (R, V)
        else:
            logits = self.model(last, positions=pos, cache=self.cache.rows(0, n))[:, 0]  # (R, V)
        self.steps += 1
        # greedy rows without a repetition penalty: one argmax for all of them (the same ids, first max on ties)
        greedy = [i for i, s in enumerate(ready)
                  if s.req.params.temperature == 0 and s.req.params.repetition_penalty == 1.0]
        picks = dict(zip(greedy, logits[greedy].argmax(-1).tolist(), strict=True)) if len(greedy) > 1 else {}
        done = []
        for i, seq in enumerate(ready):
            seq.pos += 1
            if self._sample(seq, logits[i], token=picks.get(i)):
                done.append(seq)
        if done:
            self._remove(done)

    def _sample(self, seq: _Seq, logits: torch.Tensor, prompt_lp: list | None = None,
                token: int | None = None) -> bool:
        """Sample ``seq``'s next token from its logits row (V,) (or take ``token``, picked by the batch's greedy
        argmax), emit it; True when the request is done.

        A failure here is this request's alone (its parameters): it gets the error, the batch goes on.
        """
        params = seq.req.params
        try:
            if token is None:
                token = sample_next(logits, params, seq.generator, seen=seq.seen[:seq.n_seen])
        except (RuntimeError, ValueError) as exc:
            log.exception("sampling failed for %s (%s)", seq.req.request_id, params)
            self._batch.items.append((seq.sink, ServingError(f"sampling failed for this request: {exc}")))
            return True
        lp = _logprobs(logits[None], [token], seq.req.logprobs) if seq.req.logprobs is not None else None
        seq.seen[seq.n_seen] = token
        seq.n_seen += 1
        seq.generated += 1
        seq.last = token
        finish = "stop" if token in seq.stop_ids else "length" if seq.generated >= seq.budget else None
        self._emit(seq, EngineOutput([token], lp, prompt_lp, finish))
        return finish is not None

    def _remove(self, seqs: list[_Seq]) -> None:
        """Take finished or aborted requests out and pack the others into rows 0..R-1."""
        assert self.cache is not None
        if self.prefix is not None:
            for seq in seqs:
                if seq.prefilled and seq in self._running:  # its row still holds its keys/values
                    self._store_blocks(seq, seq.pos)  # slots 0..pos-1 are computed; `last` is not fed yet
                self.prefix.release(seq.held)
                seq.held = []
        gone = set(map(id, seqs))
        if self._partial is not None and id(self._partial) in gone:
            self._partial = None
        kept = [s for s in self._running if id(s) not in gone]
        for row, seq in enumerate(kept):  # rows only move down, so a source is never overwritten first
            self._move_row(seq, row)
        self._running = kept

    def _emit(self, seq: _Seq, out: EngineOutput) -> None:
        if seq.queue_time is not None:
            out.queue_time_s, seq.queue_time = seq.queue_time, None
        self._batch.items.append((seq.sink, out))

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if batch.items:
            self.deliver(batch.items)

    def deliver(self, items: list[tuple[object, EngineOutput | BaseException]]) -> None:
        """Hand one iteration's outputs to their readers (here: each sink is an ``asyncio.Queue`` on the loop)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue, EngineOutput | BaseException]]) -> None:
    for queue, out in items:
        queue.put_nowait(out)


def _logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """logits (N, V) and the N tokens chosen after them → each token's logprob and the top k."""
    if not tokens:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    chosen = lp[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in tokens]
    if k > 0:
        values, ids = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops, strict=True)]


# an engine process prefills on every core (its decode steps leave one to the API process) when the admitted
# prompts hold at least this many tokens to compute: a burst; single short prompts (steady chat) stay on the
# decode threads. Ours, from bench/serve on 2 cores: every prefill on 2 threads cost c=16 ~12% tok/s, while a
# 64-prompt burst's TTFT p50 fell 175 → 116-167 ms with its 2048-token prefills on 2 threads.
PARALLEL_PREFILL_MIN_TOKENS = 512
AUTO_MAX_ROWS = 128  # rows an unset max_batch_size grows to at most (the tiny model: 128 MiB at 512 tokens)
AUTO_INVARIANT_ROWS = 16  # batch-invariant decode steps compute every row: the former fixed default


def auto_batch_size(cfg, max_model_len: int, dtype: torch.dtype, kv_cache_gb: float, batch_invariant: bool) -> int:
    """KV-cache rows that fit ``kv_cache_gb``: one row is keys and values of ``max_model_len`` positions in
    every layer; at least 1, at most ``AUTO_MAX_ROWS`` (``AUTO_INVARIANT_ROWS`` when batch-invariant)."""
    row = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * max_model_len * dtype.itemsize
    cap = AUTO_INVARIANT_ROWS if batch_invariant else AUTO_MAX_ROWS
    return max(1, min(cap, int(kv_cache_gb * 2**30 // row)))


def torch_engine_kwargs(settings) -> dict:
    """``TorchEngine`` / ``ProcessEngine`` keyword arguments from ``ServingSettings``."""
    return dict(max_batch_size=settings.max_batch_size, max_prefill_tokens=settings.max_prefill_tokens,
                batch_invariant=settings.batch_invariant, device=settings.device, dtype=settings.dtype,
                max_waiting=settings.max_waiting,
                prefix_cache_mb=settings.prefix_cache_mb if settings.prefix_cache else 0.0,
                prefix_block_size=settings.prefix_cache_block_size,
                restart_backoff_s=settings.engine_restart_backoff_s, kv_cache_gb=settings.kv_cache_gb,
                chunked_prefill=settings.chunked_prefill)


def build_torch_engine(info: ModelInfo, tokenizer: ServedTokenizer, settings) -> TorchEngine:
    """The engine with the knobs of ``ServingSettings``, its loop on a thread of this process."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return TorchEngine(info, tokenizer, **torch_engine_kwargs(settings))
