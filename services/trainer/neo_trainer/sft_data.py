"""Chat data for SFT and DPO: template-rendered ids with assistant-only targets, packing, a bilingual demo set.

Encoding (``encode_conversation``, SFT): every assistant turn is trained on as it is generated at
inference: the prompt is ``encode_chat(turns before it, add_generation_prompt=True)`` (ending in
``<|im_start|>assistant\\n``), then the turn's tokens are the targets. System and user turns and role
headers are context only (``IGNORE_INDEX``).

Preference pairs (``encode_preference``, DPO) are tokenized as TRL's ``DPOTrainer`` does: the whole prompt,
earlier assistant replies included, is context; the completion is what the chat template renders after
``encode_chat(prompt, add_generation_prompt=True)``.

Where an assistant turn ends (``completion_end``, both stages):

* ``"template"`` (default, TRL's convention): everything the chat template renders for the turn,
  ``reply<|im_end|>\\n`` in ChatML. TRL's ``DPOTrainer`` scores this (the rendering of prompt + completion
  after the prompt), and its ChatML training templates for ``SFTTrainer(assistant_only_loss=True)`` put the
  same span inside ``{% generation %}``. Runs match TRL's token for token (tests/services/trainer/
  test_trl_parity.py), and SFT trains the ``\\n`` that DPO then scores, so it is no untrained noise there.
* ``"im_end"`` (Neo before issue #17): ``reply<|im_end|>``, exactly the tokens the model generates
  (serving stops at ``<|im_end|>``; the ``\\n`` after it is only ever context). Kept to reproduce older runs,
  and for templates whose text after the stop token should not be learned.

Packing (``pack``): examples are placed greedily into rows of ``seq_len``; each keeps its own document
id (attention stays inside it) and positions restarting at 0, so packing changes no example's loss.

``build_debian_sft`` makes a small real bilingual set from the sample corpus' parallel Debian Reference
(EN and ZH pages share ``meta.section``): phase 1 instructions (translate EN→ZH / ZH→EN, "what does this
section say"), phase 2 multi-turn chats (ask about a section, then ask for it in the other language).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from neo.records import iter_records
from neo.tokenizer import NeoTokenizer
from neo_trainer.losses import IGNORE_INDEX

#: Where an assistant turn's targets end (module docstring): TRL's ``"template"`` or Neo's former ``"im_end"``.
CompletionEnd = Literal["template", "im_end"]
TruncationMode = Literal["keep_start", "keep_end"]  # TRL's DPOConfig.truncation_mode values


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a data file: JSONL (``.gz`` too), Parquet, Arrow, or a ``datasets.save_to_disk`` directory
    (``neo.records``; the name stays from when JSONL was the only format)."""
    return iter_records(path)


#: the SFT row shapes (TRL's): conversational ``messages``, or ``prompt`` + ``completion`` (strings or messages)
SFT_SHAPES = ('{"messages": [{"role", "content"}, ...]} or {"prompt": ..., "completion": ...} '
              "(a string or a list of messages each)")


def sft_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A conversation from an SFT row of either TRL shape (``SFT_SHAPES``); ``ValueError`` otherwise."""
    if isinstance(row.get("messages"), list):
        return row["messages"]
    if "prompt" in row and "completion" in row:
        return _as_messages(row["prompt"], "user") + _as_messages(row["completion"], "assistant")
    raise ValueError(f"expected {SFT_SHAPES}; got the fields {sorted(row)}")


def _prompt_ids(tokenizer: NeoTokenizer, context: list[dict[str, Any]], pending: list[dict[str, Any]],
                current: list[int]) -> list[int]:
    """``encode_chat(context + pending, add_generation_prompt=True)``, kept an extension of ``current``."""
    ids = tokenizer.encode_chat(context + pending, add_generation_prompt=True)
    if ids[:len(current)] == current:
        return ids
    # the earlier turns tokenized differently in a longer context: keep ours and add the new turns
    tail = tokenizer.encode_chat(pending, add_generation_prompt=True)
    return current + tail[1 if tokenizer.add_bos_token and tail[:1] == [tokenizer.bos_id] else 0:]


def encode_conversation(tokenizer: NeoTokenizer, messages: Sequence[dict[str, Any]],
                        completion_end: CompletionEnd = "template") -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per token, whether it is trained on: each assistant turn's
    reply and ``<|im_end|>``, and with ``completion_end="template"`` the ``\\n`` the template renders after it."""
    if not messages or not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("a training conversation needs at least one assistant turn")
    ids: list[int] = []
    train: list[bool] = []
    pending: list[dict[str, Any]] = []  # turns since the last assistant reply
    done: list[dict[str, Any]] = []
    newline = tokenizer.encode("\n")
    for m in messages:
        if m.get("role") != "assistant":
            pending.append(m)
            continue
        prompt = _prompt_ids(tokenizer, done, pending, ids)
        train += [False] * (len(prompt) - len(ids))
        reply = tokenizer.encode(str(m.get("content") or "")) + [tokenizer.im_end_id]
        ids = prompt + reply
        train += [True] * len(reply)
        ids += newline
        train += [completion_end == "template"] * len(newline)
        done += pending + [m]
        pending = []
    return ids, train


@dataclass
class Example:
    """One conversation: ``input_ids`` and next-token ``targets`` (IGNORE_INDEX outside assistant replies)."""

    input_ids: list[int]
    targets: list[int]


def to_example(ids: list[int], train: list[bool], seq_len: int) -> Example:
    """Shift to next-token targets and cut to ``seq_len`` inputs."""
    inputs, nxt = ids[:-1][:seq_len], ids[1:][:seq_len]
    mask = train[1:][:seq_len]
    return Example(inputs, [t if m else IGNORE_INDEX for t, m in zip(nxt, mask, strict=True)])


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, T)
    targets: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.targets, self.positions, self.doc_ids)))

    def rows(self, sl: slice) -> PackedBatch:
        return PackedBatch(self.input_ids[sl], self.targets[sl], self.positions[sl], self.doc_ids[sl])


def pack(examples: Iterable[Example], seq_len: int, pad_id: int, packing: bool = True) -> PackedBatch:
    """Greedy first-fit packing into rows of ``seq_len`` (one example per row without ``packing``)."""
    rows: list[list[Example]] = []
    space: list[int] = []
    for ex in examples:
        n = len(ex.input_ids)
        slot = next((i for i, s in enumerate(space) if s >= n), None) if packing else None
        if slot is None:
            rows.append([ex])
            space.append(seq_len - n)
        else:
            rows[slot].append(ex)
            space[slot] -= n
    B = len(rows)
    input_ids = torch.full((B, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((B, seq_len), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((B, seq_len), dtype=torch.long)
    doc_ids = torch.full((B, seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, ex in enumerate(row):
            n = len(ex.input_ids)
            input_ids[r, at:at + n] = torch.tensor(ex.input_ids)
            targets[r, at:at + n] = torch.tensor(ex.targets)
            positions[r, at:at + n] = torch.arange(n)
            doc_ids[r, at:at + n] = d
            at += n
        doc_ids[r, at:] = len(row)  # padding: its own document
        positions[r, at:] = torch.arange(seq_len - at)
    return PackedBatch(input_ids, targets, positions, doc_ids)


def load_sft_examples(paths: Sequence[Path], tokenizer: NeoTokenizer, seq_len: int,
                      completion_end: CompletionEnd = "template") -> list[Example]:
    out = []
    for path in paths:
        for n, row in enumerate(read_jsonl(Path(path)), 1):
            try:
                messages = sft_messages(row)
            except ValueError as exc:
                raise ValueError(f"{path}: row {n}: {exc}") from None
            ex = to_example(*encode_conversation(tokenizer, messages, completion_end), seq_len)
            if any(t != IGNORE_INDEX for t in ex.targets):
                out.append(ex)
    if not out:
        raise ValueError(f"no trainable conversations in {', '.join(map(str, paths))}")
    return out


# --- DPO pairs ------------------------------------------------------------------------------------------


def _as_messages(value: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_preference(tokenizer: NeoTokenizer, row: dict[str, Any], seq_len: int,
                      completion_end: CompletionEnd = "template",
                      truncation_mode: TruncationMode = "keep_start") -> tuple[Example, Example] | None:
    """(chosen, rejected) examples of a TRL preference row, tokenized as TRL's ``DPOTrainer`` does.

    The prompt, all of its turns (an earlier assistant reply included), is context: its ids are
    ``encode_chat(prompt, add_generation_prompt=True)``. The completion, the only targets, is what follows
    them in ``encode_chat(prompt + chosen)`` (resp. rejected): ``reply<|im_end|>\\n`` in ChatML, or up to its
    last ``<|im_end|>`` with ``completion_end="im_end"``. Where the two tokenize differently at the boundary,
    the completion starts where they diverge, the shorter of chosen's and rejected's (TRL's
    ``common_prefix_length``). A text prompt is one user message, a text completion one assistant message.

    Longer than ``seq_len`` (+ 1, the last target), as TRL's ``truncation_mode``: ``keep_start`` (TRL's default)
    cuts the completion's end, and a row whose prompt alone fills ``seq_len`` is dropped (None; TRL filters it
    out); ``keep_end`` keeps the whole completion and cuts the prompt's start (a long multi-turn prompt keeps
    the answer it is judged on).
    """
    prompt = _as_messages(row["prompt"], "user")
    prompt_ids = tokenizer.encode_chat(prompt, add_generation_prompt=True)
    full = [tokenizer.encode_chat(prompt + _as_messages(row[key], "assistant"), add_generation_prompt=False)
            for key in ("chosen", "rejected")]
    start = min(_common_prefix(prompt_ids, ids) for ids in full)
    if truncation_mode == "keep_start" and len(prompt_ids) >= seq_len:
        return None
    out = []
    for ids in full:
        end = len(ids)
        if completion_end == "im_end" and tokenizer.im_end_id in ids[start:]:
            end -= ids[::-1].index(tokenizer.im_end_id)
        ids, train = ids[:end], [False] * start + [True] * (end - start)
        cut = slice(None, seq_len + 1) if truncation_mode == "keep_start" else slice(-(seq_len + 1), None)
        ids, train = ids[cut], train[cut]
        out.append(to_example(ids, train, seq_len))
    return out[0], out[1]


def load_preferences(paths: Sequence[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for n, row in enumerate(read_jsonl(Path(path)), 1):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing {', '.join(missing)} (expected TRL preference rows)")
            rows.append(row)
    return rows


# --- the bilingual demo set from the parallel Debian Reference ----------------------------------------


def _sections(path: Path) -> dict[str, dict[str, str]]:
    out = {}
    for row in read_jsonl(path):
        meta = row.get("meta") or {}
        if meta.get("section") and row.get("text", "").strip():
            out[meta["section"]] = {"title": meta.get("title", ""), "text": row["text"].strip()}
    return out


def _body(text: str, max_chars: int) -> str:
    """The section's first paragraph after its title (EN and ZH pages align paragraph by paragraph), cut at a
    sentence end near ``max_chars``."""
    lines = text.split("\n", 1)
    body = (lines[1] if len(lines) > 1 else lines[0]).strip().split("\n\n", 1)[0].strip()
    if len(body) <= max_chars:
        return body
    cut = body[:max_chars]
    end = max(cut.rfind("\n"), cut.rfind(". "), cut.rfind("。"))
    return cut[:end + 1].strip() if end > max_chars // 3 else cut.strip()


def build_debian_sft(en_path: Path, zh_path: Path, out_dir: Path, *, max_chars: int = 240, seed: int = 0,
                     limit: int | None = None) -> dict[str, Path]:
    """Write ``instruction.jsonl`` (phase 1) and ``chat.jsonl`` (phase 2) from parallel EN/ZH sections."""
    en, zh = _sections(en_path), _sections(zh_path)
    shared = sorted(set(en) & set(zh))
    if not shared:
        raise ValueError(f"{en_path} and {zh_path} share no meta.section ids")
    rng = random.Random(seed)
    rng.shuffle(shared)
    shared = shared[:limit] if limit else shared
    system = {"role": "system", "content": "You are Neo, a helpful bilingual assistant. 你是 Neo，一个双语助手。"}
    instruction, chat = [], []
    for sid in shared:
        e, z = en[sid], zh[sid]
        e_body, z_body = _body(e["text"], max_chars), _body(z["text"], max_chars)
        u = lambda c: {"role": "user", "content": c}  # noqa: E731
        a = lambda c: {"role": "assistant", "content": c}  # noqa: E731
        instruction += [
            {"messages": [u(f"Translate into Chinese:\n\n{e_body}"), a(z_body)], "section": sid, "task": "en2zh"},
            {"messages": [u(f"请把下面这段文字翻译成英文：\n\n{z_body}"), a(e_body)], "section": sid, "task": "zh2en"},
            {"messages": [u(f"What does the Debian Reference section \"{e['title']}\" say?"), a(e_body)],
             "section": sid, "task": "explain_en"},
            {"messages": [u(f"Debian 参考手册中“{z['title']}”这一节讲了什么？"), a(z_body)],
             "section": sid, "task": "explain_zh"},
        ]
        chat += [
            {"messages": [system, u(f"Tell me about \"{e['title']}\" in the Debian Reference."), a(e_body),
                          u("请用中文再说一遍。"), a(z_body)], "section": sid, "task": "chat_en_zh"},
            {"messages": [system, u(f"请介绍 Debian 参考手册的“{z['title']}”。"), a(z_body),
                          u("Now say that in English, please."), a(e_body)], "section": sid, "task": "chat_zh_en"},
        ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (("instruction", instruction), ("chat", chat)):
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths
