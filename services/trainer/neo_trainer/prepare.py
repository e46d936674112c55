"""Raw text files → a shard directory, so the demo path (``neo up``) trains through the same data code.

Each input file becomes one source named after the file (``fortunes.zh.jsonl.gz`` → ``fortunes.zh``),
tokenized as ``<s> doc </s>`` and written with ``neo.shards.ShardWriter`` plus a manifest. The result
is cached in the run directory and reused when the same files and tokenizer are given again (resume).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from neo.schemas import ShardManifest, SourceCounts
from neo.shards import ShardWriter, dtype_for_vocab, read_manifest, write_manifest
from neo.textio import iter_documents, source_name
from neo.tokenizer import NeoTokenizer, tokenizer_digest

log = logging.getLogger(__name__)

_TOKENS_PER_SHARD = 2**22  # 4 Mi tokens per file: small corpora stay a handful of files


def _fingerprint(files: Sequence[Path], tokenizer_sha: str, max_tokens: int | None) -> dict:
    return {"files": [{"path": str(Path(f).resolve()), "bytes": Path(f).stat().st_size} for f in files],
            "tokenizer_sha256": tokenizer_sha, "max_tokens": max_tokens}


def prepare_text_shards(
    files: Sequence[Path], tokenizer_dir: Path, out_dir: Path, max_tokens: int | None = None,
) -> Path:
    """Tokenize ``files`` into ``out_dir`` (one source per file) unless an identical result is there."""
    out_dir = Path(out_dir)
    tokenizer_sha = tokenizer_digest(tokenizer_dir)
    fingerprint = _fingerprint(files, tokenizer_sha, max_tokens)
    if (out_dir / "manifest.json").exists() and read_manifest(out_dir).config == fingerprint:
        log.info("reusing tokenized text in %s", out_dir)
        return out_dir
    names = [source_name(f) for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"data.text_files: two files map to the same source name ({names})")
    tokenizer = NeoTokenizer.load(tokenizer_dir)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    manifest = ShardManifest(job="text-files", dtype=dtype, vocab_size=tokenizer.vocab_size,
                             tokenizer_sha256=tokenizer_sha, tokenizer_path=str(Path(tokenizer_dir).resolve()),
                             bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                             tokens_per_shard=_TOKENS_PER_SHARD, config=fingerprint)
    for path, name in zip(files, names, strict=True):
        docs = tokens = 0
        with ShardWriter(out_dir, dtype, _TOKENS_PER_SHARD, prefix=f"{name}-", source=name) as writer:
            for text in iter_documents(path):
                if not text.strip():
                    continue
                ids = tokenizer.encode(text, add_bos=True, add_eos=True)
                writer.add(ids)
                docs, tokens = docs + 1, tokens + len(ids)
                if max_tokens and tokens >= max_tokens:
                    break
        manifest.files.extend(writer.files)
        manifest.sources[name] = SourceCounts(documents=docs, tokens=tokens, files=len(writer.files))
        log.info("tokenized %s: %d documents, %s tokens", path, docs, f"{tokens:,}")
    write_manifest(out_dir, manifest)
    return out_dir
