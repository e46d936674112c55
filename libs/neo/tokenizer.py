"""Neo's tokenizer: a SentencePiece BPE trained with MAP-Neo's settings, and its exact Hugging Face twin.

MAP-Neo (arXiv 2405.19327, §3 "Tokenizer"): 64,000-piece SentencePiece BPE, pieces of at most 16
characters, ``remove_extra_whitespaces`` off (collapsing whitespace hurt code: on in the fundamental phase, off in
the decay phase, ``WHITESPACE_PHASES``), trained on whole documents up to 64K sampled with per-source weights
(``TokenizerConfig.map_neo``). A tokenizer directory::

    tokenizer.model  tokenizer.vocab                               SentencePiece model: the reference
    tokenizer.json  tokenizer_config.json  special_tokens_map.json  HF fast tokenizer, same ids

Ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, 3 ``<pad>``, 4 ``<|im_start|>``, 5 ``<|im_end|>``, 6..261 the
byte pieces ``<0x00>``..``<0xFF>``, then merged pieces and single characters.

Why the HF file gives the same ids: SentencePiece's BPE encoder runs over the whole normalized string
(no word split at encode time: ``split_by_whitespace``/``split_digits`` only constrain *training*) and
repeatedly merges the adjacent pair whose concatenation is the highest-scoring piece. The export is a
``tokenizers`` BPE with no pre-tokenizer, a normalizer that only replaces " " with "▁" (identity
rules, no dummy prefix) and one merge rule per (left, right) split of every normal piece, ranked by the
piece's score, so HF applies merges in SentencePiece's order; byte fallback and the frozen
user-defined symbols (HF added tokens) behave alike. Known gaps: literal ``<s>``/``</s>``/``<unk>``/
``<pad>`` in raw text are plain characters to SentencePiece (and to :meth:`NeoTokenizer.encode` on both
backends) but control tokens to ``transformers``; and two different merge pairs giving one piece at
overlapping places (``ab|a`` vs ``a|ba``) are ordered leftmost-first by SentencePiece, by rank in HF.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from neo.textio import InputError, iter_documents, source_name

log = logging.getLogger(__name__)

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML role markers (MAP-Neo's instruct models)
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IM_START, IM_END)  # ids 0..5, in this order
#: ChatML. It starts with BOS itself, so ``apply_chat_template`` (which tokenizes with
#: ``add_special_tokens=False``) and :meth:`NeoTokenizer.encode_chat` both give exactly one leading ``<s>``.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# TokenizerConfig fields SentencePiece lacks
_SP_ONLY = ("seed", "text_field", "add_bos_token", "add_eos_token", "sample_unit", "source_weights")

#: SentencePiece's ``remove_extra_whitespaces`` in MAP-Neo's two pretraining phases (paper §3 "Tokenizer", and
#: its summary in shared/seeds/001): the fundamental phase kept SentencePiece's default, on, which collapses runs
#: of spaces (code indentation) and made code metrics fluctuate; the decay phase's data was tokenized with it off.
#: The released tokenizer (Megatron-LM-NEO neo/tokenizer.model, normalizer_spec) has it off.
WHITESPACE_PHASES: dict[str, bool] = {"fundamental": True, "decay": False}
#: Longest training sentence of MAP-Neo's tokenizer: whole documents up to 64,000 bytes (paper §3: "the maximum
#: length is 64K"; the released tokenizer.model's trainer_spec: max_sentence_length 64000).
MAP_NEO_MAX_SENTENCE_BYTES = 64000


@dataclass
class TokenizerConfig:
    """Every training option. SentencePiece names; the last four are Neo's own."""

    vocab_size: int = 64000  # MAP-Neo §3: 64k vocabulary
    max_sentencepiece_length: int = 16  # MAP-Neo §3: pieces of at most 16 characters
    remove_extra_whitespaces: bool = False  # MAP-Neo §3: collapsing whitespace hurt code; keep it all
    model_type: str = "bpe"  # MAP-Neo §3: BPE (the HF export supports BPE only)
    byte_fallback: bool = True  # no <unk>: unseen characters (emoji, rare CJK) become UTF-8 byte pieces
    split_digits: bool = True  # numbers are one digit per token (LLaMA), no "2024" pieces
    allow_whitespace_only_pieces: bool = True  # runs of spaces (code indentation) can be one piece
    # Pieces never span a word boundary ("▁" only leads a piece; whitespace-only runs excepted). The
    # default, and parity holds either way since encoding never splits words (see module docstring).
    split_by_whitespace: bool = True
    split_by_unicode_script: bool = True  # SentencePiece default: no Latin+Han pieces
    character_coverage: float = 0.9995  # usual for CJK-rich data; the rarest 0.05% of chars byte-fall back
    # "identity": no NFKC folding (full-width digits, ligatures ... stay as written), so
    # decode(encode(x)) == x for any text, and HF needs no precompiled charsmap to match.
    normalization_rule_name: str = "identity"
    # No "▁" prepended to the text: round-trips need no special-casing, and HF would otherwise
    # prepend it after every special token ("legacy" Llama behaviour), breaking chat-template parity.
    add_dummy_prefix: bool = False
    input_sentence_size: int = 2_000_000  # uniform reservoir sample of this many lines when input is larger
    shuffle_input_sentence: bool = True
    max_sentence_length: int = 4192  # bytes; longer lines are cut into chunks (SentencePiece would drop them)
    num_threads: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    seed: int = 0  # SentencePiece's random generator (sampling, shuffling)
    text_field: str = "text"  # JSONL field holding a document
    # "line": every line of a document is a training sentence (newlines are never learned; they byte-fall back).
    # "document": a whole document is one (cut at max_sentence_length bytes), as MAP-Neo trained its tokenizer
    # (use max_sentence_length=MAP_NEO_MAX_SENTENCE_BYTES): pieces can hold newlines ("):\n", "\n\n").
    sample_unit: Literal["line", "document"] = "line"
    # Sampling weight per source (a file's name without its extensions, as the trainer names sources): each of
    # its documents is fed int(w) times plus once more with probability frac(w) (seeded), so its share of the
    # sample is proportional to weight x size. MAP-Neo (paper §3) weighted code, math and academic text up.
    source_weights: dict[str, float] = field(default_factory=dict)
    add_bos_token: bool = True  # HF export: tokenizer(text) prepends <s>, as LLaMA/MAP-Neo
    add_eos_token: bool = False

    @classmethod
    def map_neo(cls, whitespace: str = "decay", **overrides: Any) -> TokenizerConfig:
        """MAP-Neo's tokenizer settings for one pretraining ``whitespace`` phase (WHITESPACE_PHASES): whole
        documents up to 64,000 bytes as sentences and character coverage 0.9999 (the released tokenizer.model's
        trainer_spec), plus Neo's defaults (64000 pieces, BPE, max piece 16, digits split, byte fallback)."""
        if whitespace not in WHITESPACE_PHASES:
            raise ValueError(f"whitespace={whitespace!r}: choose one of {', '.join(WHITESPACE_PHASES)}")
        return cls(**{"remove_extra_whitespaces": WHITESPACE_PHASES[whitespace], "sample_unit": "document",
                      "max_sentence_length": MAP_NEO_MAX_SENTENCE_BYTES, "character_coverage": 0.9999} | overrides)

    def trainer_kwargs(self) -> dict[str, Any]:
        if self.model_type != "bpe":
            raise ValueError(f"model_type={self.model_type!r}: only 'bpe' can be exported to Hugging Face")
        min_vocab = len(SPECIAL_TOKENS) + 256 * self.byte_fallback + 1
        if self.vocab_size < min_vocab:
            raise ValueError(f"vocab_size={self.vocab_size} is below the {min_vocab} special + byte pieces")
        for source, weight in self.source_weights.items():
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"source_weights.{source}: weight must be a finite number >= 0, got {weight}")
        kwargs = {k: v for k, v in asdict(self).items() if k not in _SP_ONLY}
        return kwargs | dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
                             pad_piece=PAD, user_defined_symbols=[IM_START, IM_END], hard_vocab_limit=True)


TokenizerInputError = InputError  # training/stats input that cannot be read


def _chunks(line: str, max_bytes: int) -> Iterator[str]:
    """``line`` cut into pieces of at most ``max_bytes`` UTF-8 bytes, at character boundaries."""
    if len(line) * 4 <= max_bytes or len(data := line.encode("utf-8")) <= max_bytes:
        yield line
        return
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # do not split a multi-byte character
            end -= 1
        yield data[start:end].decode("utf-8")
        start = end


@dataclass
class TrainProgress:
    """What :func:`train_tokenizer` reports to a progress callback (``stage``: reading, training, done)."""

    stage: str
    file: Path | None = None
    documents: int = 0
    bytes: int = 0
    sentences: int = 0


ProgressCallback = Callable[[TrainProgress], None]


@contextmanager
def _rich_progress() -> Iterator[ProgressCallback]:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[docs]:,} docs"),
               TextColumn("{task.fields[mb]:,.1f} MB"), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stdout)) as bar:
        task = bar.add_task("tokenizer", docs=0, mb=0.0)

        def report(p: TrainProgress) -> None:
            name = f"{p.stage} {p.file.name}" if p.file is not None and p.stage == "reading" else p.stage
            bar.update(task, description=name, docs=p.documents, mb=p.bytes / 1e6)

        yield report


class _Feeder:
    """Training sentences for SentencePiece's ``sentence_iterator``, weighted by source. An exception raised inside
    it would reach Python as a bare RuntimeError from the C++ trainer, so it is kept and re-raised afterwards."""

    def __init__(self, paths: Sequence[Path], config: TokenizerConfig, report: ProgressCallback | None):
        self.paths, self.config, self.report = paths, config, report
        self.state = TrainProgress("reading")
        self.error: Exception | None = None
        self.sources: dict[str, Counter[str]] = {}  # per source: documents read, documents and bytes fed

    def emit(self, stage: str | None = None) -> None:
        if stage is not None:
            self.state.stage, self.state.file = stage, None
        if self.report is not None:
            self.report(replace(self.state))

    def _sentences(self, text: str) -> Iterator[str]:
        max_bytes = self.config.max_sentence_length
        for unit in (text,) if self.config.sample_unit == "document" else text.split("\n"):
            yield from _chunks(unit, max_bytes) if unit else ()

    def __iter__(self) -> Iterator[str]:
        s, rng = self.state, random.Random(self.config.seed)
        try:
            for path in self.paths:
                s.file = path
                weight = self.config.source_weights.get(source_name(path), 1.0)
                counts = self.sources.setdefault(source_name(path), Counter())
                for text in iter_documents(path, self.config.text_field):
                    s.documents += 1
                    counts["documents"] += 1
                    copies = int(weight) + (rng.random() < weight - int(weight))
                    counts["documents_fed"] += copies
                    counts["bytes_fed"] += copies * len(text.encode("utf-8"))
                    s.bytes += len(text.encode("utf-8"))
                    for _ in range(copies):
                        for sentence in self._sentences(text):
                            s.sentences += 1
                            yield sentence
                    if s.documents % 2000 == 0:
                        self.emit()
            self.emit("training")
        except Exception as e:  # re-raised by train_tokenizer once the trainer returns
            self.error = e


def _explain(err: RuntimeError, config: TokenizerConfig) -> Exception:
    msg = str(err)
    if m := re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", msg):
        return ValueError(f"vocab_size={config.vocab_size} is too large for this training data: SentencePiece "
                          f"can make at most {m[1]} pieces from it. Lower vocab_size to <= {m[1]} or add text.")
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):
        return ValueError(f"vocab_size={config.vocab_size} is too small: the characters kept by "
                          f"character_coverage={config.character_coverage} plus special/byte pieces need {m[1]}. "
                          "Raise vocab_size or lower character_coverage.")
    return RuntimeError(f"SentencePiece training failed: {msg}")


def train_tokenizer(inputs: Sequence[str | Path], out_dir: str | Path, config: TokenizerConfig | None = None,
                    progress: bool | ProgressCallback = True) -> Path:
    """Train on text/JSONL(.gz/.zst) files; write ``out_dir/tokenizer.model`` (returned), ``.vocab``, the HF files
    and ``training_sample.json`` (the config, and per source the documents read and fed).

    Sentences (lines or whole documents, ``config.sample_unit``; each source's documents repeated or thinned by
    ``config.source_weights``) are streamed to SentencePiece, which keeps a uniform sample of
    ``input_sentence_size`` of them.
    ``progress``: True for a rich progress display on stdout, False for none, or a callback.
    """
    config = config or TokenizerConfig()
    kwargs = config.trainer_kwargs()
    paths, out_dir = [Path(p) for p in inputs], Path(out_dir)
    if not paths:
        raise ValueError("no tokenizer training inputs given")
    if unknown := sorted(set(config.source_weights) - {source_name(p) for p in paths}):
        raise ValueError(f"source_weights: no input is named {', '.join(map(repr, unknown))} (sources: "
                         f"{', '.join(sorted({source_name(p) for p in paths}))})")
    for path in paths:  # fail fast: missing, empty or undecodable at the start
        docs = iter_documents(path, config.text_field)
        if next(docs, None) is None:
            raise TokenizerInputError(f"{path}: no text to train on (empty file, or no non-empty "
                                      f"{config.text_field!r} values)")
        docs.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    display = _rich_progress() if progress is True else nullcontext(progress or None)
    with display as report, tempfile.TemporaryDirectory(dir=out_dir, prefix=".train-") as tmp:
        feeder = _Feeder(paths, config, report)
        spm.set_random_generator_seed(config.seed)
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(feeder), model_prefix=f"{tmp}/tokenizer",
                                           minloglevel=0 if log.isEnabledFor(logging.DEBUG) else 2, **kwargs)
        except RuntimeError as e:
            raise (feeder.error or _explain(e, config)) from e
        if feeder.error is not None:
            raise feeder.error
        for name in ("tokenizer.model", "tokenizer.vocab"):
            os.replace(f"{tmp}/{name}", out_dir / name)
        tok = NeoTokenizer.load(out_dir / "tokenizer.model")
        tok.add_bos_token, tok.add_eos_token = config.add_bos_token, config.add_eos_token
        tok.save_hf(out_dir)
        sample = {"config": {k: v for k, v in asdict(config).items() if k != "num_threads"},
                  "sources": {name: dict(c) for name, c in feeder.sources.items()}}
        (out_dir / "training_sample.json").write_text(json.dumps(sample, indent=2, ensure_ascii=False) + "\n")
        feeder.emit("done")
    s = feeder.state
    log.info("trained %d-piece tokenizer on %d documents (%d lines) from %d files -> %s",
             tok.vocab_size, s.documents, s.sentences, len(paths), out_dir)
    return out_dir / "tokenizer.model"


# ------------------------------------------------------------------------- SentencePiece model proto
_NORMAL, _USER_DEFINED = pb.ModelProto.SentencePiece.NORMAL, pb.ModelProto.SentencePiece.USER_DEFINED
_SPECIAL_TYPES = (pb.ModelProto.SentencePiece.UNKNOWN, pb.ModelProto.SentencePiece.CONTROL, _USER_DEFINED)
_TRAINER_FIELDS = ("vocab_size", "character_coverage", "max_sentencepiece_length", "split_by_whitespace",
                   "split_digits", "allow_whitespace_only_pieces", "byte_fallback")
_NORMALIZER_FIELDS = ("precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces",
                      "escape_whitespaces")


def model_spec(model_proto: bytes) -> dict[str, Any]:
    """The trainer/normalizer settings stored in a ``tokenizer.model`` (proto defaults filled in), plus
    ``piece_types`` (sentencepiece_model.proto: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte)."""
    proto = pb.ModelProto.FromString(model_proto)
    spec: dict[str, Any] = {f: getattr(proto.trainer_spec, f) for f in _TRAINER_FIELDS}
    spec |= {f: getattr(proto.normalizer_spec, f) for f in _NORMALIZER_FIELDS}
    spec["normalization_rule_name"] = proto.normalizer_spec.name
    spec["model_type"] = pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
    spec["piece_types"] = [piece.type for piece in proto.pieces]
    return spec


def sentencepiece_to_hf(sp: spm.SentencePieceProcessor, add_bos: bool = True, add_eos: bool = False) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` giving the same ids as ``sp`` (see the module docstring)."""
    spec = model_spec(sp.serialized_model_proto())
    if spec["model_type"] != "bpe":
        raise ValueError(f"only BPE SentencePiece models convert exactly, not {spec['model_type']}")
    pieces, types = [sp.id_to_piece(i) for i in range(sp.get_piece_size())], spec["piece_types"]
    normal = {p: i for i, p in enumerate(pieces) if types[i] == _NORMAL}
    ranked = sorted((-sp.get_score(i), i, k, p[:k], p[k:]) for p, i in normal.items() for k in range(1, len(p))
                    if p[:k] in normal and p[k:] in normal)  # SentencePiece merges the best-scoring piece first
    model = BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[(a, b) for *_, a, b in ranked], unk_token=UNK,
                byte_fallback=spec["byte_fallback"], fuse_unk=True, ignore_merges=False, dropout=None)
    tok = Tokenizer(model)
    norm: list[normalizers.Normalizer] = []
    if spec["precompiled_charsmap"]:
        norm.append(normalizers.Precompiled(spec["precompiled_charsmap"]))
    if spec["remove_extra_whitespaces"]:  # SentencePiece: strip, and collapse runs of " " (approximate in HF)
        norm += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec["escape_whitespaces"]:
        norm.append(normalizers.Replace(" ", "▁"))
    if spec["add_dummy_prefix"]:
        norm.append(normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm) if norm else None
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + [decoders.Strip(" ", 1, 0)] * spec["add_dummy_prefix"])
    single = f"{BOS + ' ' if add_bos else ''}$A{' ' + EOS if add_eos else ''}"
    pair = f"{single}{' ' + BOS + ':1' if add_bos else ''} $B:1{' ' + EOS + ':1' if add_eos else ''}"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=[(BOS, sp.bos_id()), (EOS, sp.eos_id())])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for i, p in enumerate(pieces) if types[i] in _SPECIAL_TYPES])
    return tok


# ------------------------------------------------------------------------------------------ tokenizer
def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile_template(template: str) -> Any:
    """Compiled as ``transformers`` does (same environment options, ``raise_exception``, ``tojson``)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template)




def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class NeoTokenizer:
    """Encode/decode/chat with the SentencePiece model when present, else with ``tokenizer.json``."""

    def __init__(self, sp: spm.SentencePieceProcessor | None = None, hf: Tokenizer | None = None,
                 chat_template: str = CHAT_TEMPLATE, add_bos_token: bool = True, add_eos_token: bool = False,
                 added_tokens: Mapping[int, str] | None = None, special: Mapping[str, str] | None = None):
        """``added_tokens``: {id: text} of special tokens the SentencePiece model lacks (a released checkpoint's
        ``added_tokens_decoder`` entries, e.g. MAP-Neo's pad/chat tokens at ids ≥ 64000); ``special``: the
        role → text map (``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``) when it differs from Neo's."""
        if sp is None and hf is None:
            raise ValueError("NeoTokenizer needs a SentencePiece model or a tokenizers.Tokenizer")
        self._sp, self._hf = sp, hf
        self.chat_template, self.add_bos_token, self.add_eos_token = chat_template, add_bos_token, add_eos_token
        self._added: dict[str, int] = {}
        self._dummy_prefix = False  # SentencePiece's add_dummy_prefix (LLaMA-style models; Neo's own: off)
        if sp is not None:
            self.vocab_size = sp.get_piece_size()
            self._byte_ids = frozenset(i for i in range(self.vocab_size) if sp.is_byte(i))
            self._dummy_prefix = bool(model_spec(sp.serialized_model_proto())["add_dummy_prefix"])
            for i, text in sorted((added_tokens or {}).items()):
                if i >= self.vocab_size or sp.id_to_piece(i) != text:
                    if i < self.vocab_size:
                        raise ValueError(f"added token {text!r} at id {i} collides with piece "
                                         f"{sp.id_to_piece(i)!r} of the SentencePiece model")
                    self._added[text] = i
            self.vocab_size = max([self.vocab_size - 1, *self._added.values()]) + 1
        else:
            assert hf is not None
            hf.encode_special_tokens = True  # text is text: only the markers split out in encode() are special
            self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
            self._byte_ids = frozenset(i for p, i in hf.get_vocab().items() if re.fullmatch("<0x[0-9A-F]{2}>", p))
        roles = {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD} | dict(special or {})
        self.special_text = roles  # role → token text, as the chat template sees them (bos_token, ...)
        ids = {role: self.piece_to_id(text) for role, text in roles.items()}
        ids |= {IM_START: self.piece_to_id(IM_START), IM_END: self.piece_to_id(IM_END)}
        if ids["pad_token"] is None and "pad_token" not in (special or {}):
            ids["pad_token"], roles["pad_token"] = ids["unk_token"], roles["unk_token"]  # LLaMA: no pad piece
        if missing := [roles.get(k, k) for k, i in ids.items() if i is None]:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.unk_id, self.bos_id, self.eos_id, self.pad_id, self.im_start_id, self.im_end_id = ids.values()
        texts = [*roles.values(), IM_START, IM_END, *self._added]
        self._special_tokens: dict[str, int] = {t: self.piece_to_id(t) for t in texts}  # type: ignore[misc]
        self._special_ids = {i: t for t, i in self._special_tokens.items()}
        self._special_re = re.compile("|".join(map(re.escape, sorted(self._special_tokens, key=len, reverse=True))))
        # markers encode() keeps as one token: ChatML's, and (SentencePiece backend) tokens added beside the model
        user = sorted({IM_START, IM_END, *self._added}, key=len, reverse=True)
        self._user_re = re.compile("(" + "|".join(map(re.escape, user)) + ")")

    @classmethod
    def load(cls, path: str | Path) -> NeoTokenizer:
        """A directory with ``tokenizer.model`` and/or ``tokenizer.json``, or either file itself.

        A ``tokenizer_config.json`` beside it gives the chat template, BOS/EOS flags, the special tokens' texts
        and (``added_tokens_decoder``) special tokens the SentencePiece model lacks: a released checkpoint with a
        custom tokenizer class (MAP-Neo's ``trust_remote_code`` tokenizer) loads from these files alone, no
        remote code runs."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        model = path / "tokenizer.model" if path.is_dir() else path if path.suffix == ".model" else None
        js = path / "tokenizer.json" if path.is_dir() else path if path.suffix == ".json" else None
        kwargs: dict[str, Any] = {}
        cfg = _read_json(folder / "tokenizer_config.json")
        kwargs = {k: cfg[k] for k in ("chat_template", "add_bos_token", "add_eos_token") if cfg.get(k) is not None}
        if isinstance(kwargs.get("chat_template"), list):  # HF's named templates: [{"name", "template"}]
            kwargs["chat_template"] = next((t["template"] for t in kwargs["chat_template"]
                                            if t.get("name") == "default"), CHAT_TEMPLATE)
        special = {}
        for source in (_read_json(folder / "special_tokens_map.json"), cfg):
            for role in ("unk_token", "bos_token", "eos_token", "pad_token"):
                value = source.get(role)
                if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                    value = value.get("content")
                if isinstance(value, str) and value:
                    special[role] = value
        added = {int(i): t["content"] for i, t in (cfg.get("added_tokens_decoder") or {}).items()
                 if isinstance(t, dict) and t.get("content")}
        if model is not None and model.is_file():
            return cls(sp=spm.SentencePieceProcessor(model_file=str(model)), added_tokens=added, special=special,
                       **kwargs)
        if js is not None and js.is_file():
            return cls(hf=Tokenizer.from_file(str(js)), special=special, **kwargs)
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json at {path}")

    @property
    def backend(self) -> str:
        return "sentencepiece" if self._sp is not None else "tokenizers"

    def id_to_piece(self, i: int) -> str:
        if self._sp is None:
            return self._hf.id_to_token(i)  # type: ignore[union-attr]
        return self._sp.id_to_piece(i) if i < self._sp.get_piece_size() else self._special_ids.get(i, "")

    def piece_to_id(self, piece: str) -> int | None:
        if self._sp is not None:
            if piece in self._added:
                return self._added[piece]
            i = self._sp.piece_to_id(piece)
            return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i
        return self._hf.token_to_id(piece)  # type: ignore[union-attr]

    def is_byte(self, i: int) -> bool:
        return i in self._byte_ids

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text``; ``<|im_start|>``/``<|im_end|>`` in it are single tokens, ``<s>`` etc. are plain text."""
        if self._sp is not None and not self._added:
            ids = self._sp.encode(text)  # the ChatML markers are user-defined pieces of the model
        else:
            ids = []
            for k, part in enumerate(self._user_re.split(text)):  # odd parts: the markers
                ids += [self._special_tokens[part]] if k % 2 else self._encode_plain(part)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def _encode_plain(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids  # type: ignore[union-attr]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._sp is not None and not self._added:
            return self._sp.encode(list(texts))
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` all six special tokens are dropped, else written out."""
        ids = [int(i) for i in ids]
        if self._sp is None:
            return self._hf.decode(ids, skip_special_tokens=skip_special)  # type: ignore[union-attr]
        # ids of embedding rows past the model's pieces that no token uses (a released checkpoint's padding
        # rows, e.g. 64256 rows for 64000 pieces + added tokens) decode to nothing, as in transformers
        size = self._sp.get_piece_size()
        ids = [i for i in ids if i < size or i in self._special_ids]
        if skip_special and not self._dummy_prefix:
            return self._sp.decode([i for i in ids if i not in self._special_ids])
        # each run between special tokens on its own: with a dummy prefix (LLaMA-style models) every run was
        # encoded with a leading "▁" that decoding drops at the start of a text, not in its middle
        out, run = [], []
        for i in ids:  # SentencePiece writes control tokens as "" and <unk> as " ⁇ ": spell them like HF
            if i in self._special_ids:
                out += [self._sp.decode(run), "" if skip_special else self._special_ids[i]]
                run = []
            else:
                run.append(i)
        return "".join(out) + self._sp.decode(run)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes token ``i`` contributes to ``decode(ids)`` (special tokens: none)."""
        if i in self._special_ids:
            return b""
        piece = self.id_to_piece(i)
        if i in self._byte_ids:
            return bytes([int(piece[3:5], 16)])  # "<0xE4>"
        return piece.replace("▁", " ").encode("utf-8")

    def char_offsets(self, ids: Sequence[int]) -> list[int]:
        """Each token's character offset in ``decode(ids)``: the characters completed before it starts.

        The bytes of one multi-byte character split over byte-fallback tokens all get that
        character's offset, so "tokens at or after offset k" never cuts a character (OpenAI's
        ``text_offset`` meaning, and how evaluation finds a continuation's tokens).
        """
        offsets, chars, pending, run_start = [], 0, b"", True
        for i in ids:
            offsets.append(chars)
            piece = self.token_bytes(int(i))
            if int(i) in self._special_ids:
                run_start = True  # decode() drops a dummy prefix's space at the start of every run
            elif piece:
                if run_start and self._dummy_prefix and piece.startswith(b" "):
                    piece = piece[1:]
                run_start = False
            pending += piece
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason == "unexpected end of data":
                    continue  # a character still incomplete: its next bytes follow
                text = pending.decode("utf-8", errors="replace")
            chars, pending = chars + len(text), b""
        return offsets

    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat template rendered exactly as ``transformers``' ``apply_chat_template(tokenize=False)``."""
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return _compile_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special_text)

    def encode_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered chat; every special token string in it is one token (as HF added tokens)."""
        return self.encode_specials(self.render_chat(messages, add_generation_prompt))

    def encode_specials(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of ``text`` as ``transformers`` (and so vLLM) tokenize a prompt: every special token string in
        it (``<s>``, ``</s>``, ``<unk>``, ``<pad>`` and the ChatML markers) is that one token. :meth:`encode`
        keeps ``<s>`` etc. as plain text, which training data needs."""
        ids, start = [self.bos_id] * add_bos, 0
        for m in self._special_re.finditer(text):
            ids += self.encode(text[start:m.start()]) + [self._special_tokens[m[0]]]
            start = m.end()
        return ids + self.encode(text[start:])

    def to_hf(self) -> Tokenizer:
        if self._sp is not None:
            return sentencepiece_to_hf(self._sp, self.add_bos_token, self.add_eos_token)
        tok = Tokenizer.from_str(self._hf.to_str())  # type: ignore[union-attr]
        tok.encode_special_tokens = False
        return tok

    def save_hf(self, out_dir: str | Path, model_max_length: int | None = None) -> None:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ tokenizer.model).

        A SentencePiece model with special tokens added beside it (a released checkpoint's pad/chat tokens past
        the model's pieces) is written as it came: tokenizer.model and the added tokens in tokenizer_config.json,
        no tokenizer.json (a ``tokenizers`` BPE cannot hold ids past a gap in its vocabulary)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not self._added:
            self.to_hf().save(str(out / "tokenizer.json"))
        if self._sp is not None:
            (out / "tokenizer.model").write_bytes(self._sp.serialized_model_proto())
        extra = [t for t in self._special_tokens if t not in self.special_text.values()]
        special = {**self.special_text, "additional_special_tokens": extra}
        added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for i, t in sorted(self._special_ids.items())}
        # PreTrainedTokenizerFast loads tokenizer.json as is; "LlamaTokenizerFast" would rebuild the
        # pipeline in transformers 5 (Metaspace with a prepended "▁") and break parity.
        config = {"tokenizer_class": "PreTrainedTokenizerFast" if not self._added else "LlamaTokenizer", **special,
                  "add_bos_token": self.add_bos_token,
                  "add_eos_token": self.add_eos_token, "clean_up_tokenization_spaces": False,
                  "chat_template": self.chat_template, "added_tokens_decoder": added}
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_stats(tokenizer: NeoTokenizer, files: Sequence[str | Path], text_field: str = "text",
                    max_documents: int | None = None, batch: int = 256) -> list[dict[str, Any]]:
    """Per file: documents, UTF-8 bytes, tokens, bytes/token, the share of tokens that are byte-fallback
    pieces or ``<unk>`` (text the vocabulary does not cover), and ``lossless_rate``, the share of documents
    that decode back to exactly their text (collapsed whitespace fails it). Text files: one document per line."""
    rows = []
    for path in files:
        c: Counter[str] = Counter()
        docs = islice(iter_documents(path, text_field), max_documents)
        while chunk := list(islice(docs, batch)):
            c["documents"] += len(chunk)
            c["bytes"] += sum(len(text.encode("utf-8")) for text in chunk)
            for text, ids in zip(chunk, tokenizer.encode_batch(chunk), strict=True):
                c["tokens"] += len(ids)
                c["byte_tokens"] += sum(map(tokenizer.is_byte, ids))
                c["unk_tokens"] += ids.count(tokenizer.unk_id)
                c["lossless"] += tokenizer.decode(ids) == text
        n = max(c["tokens"], 1)
        rows.append({"file": str(path), "documents": c["documents"], "bytes": c["bytes"], "tokens": c["tokens"],
                     "bytes_per_token": c["bytes"] / n, "byte_fallback_rate": c["byte_tokens"] / n,
                     "unk_rate": c["unk_tokens"] / n, "lossless_rate": c["lossless"] / max(c["documents"], 1)})
    return rows


def tokenizer_digest(path: str | Path) -> str:
    """What identifies a tokenizer in manifests and checkpoints (``ShardManifest.tokenizer_sha256``): the sha256
    of its reference file, ``tokenizer.model`` (SentencePiece) or else ``tokenizer.json``, in a directory, or
    of the file itself. Other files beside it (a checkpoint's weights, configs) do not change it."""
    path = Path(path)
    for name in ("tokenizer.model", "tokenizer.json"):
        if (path / name).is_file():
            path = path / name
            break
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
