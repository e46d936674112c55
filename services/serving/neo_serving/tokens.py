"""The tokenizer as serving uses it: prompts, the checkpoint's chat template, stop ids, token texts,
and incremental detokenization (``neo.detokenize``) that never emits half a character.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from neo.detokenize import IncrementalDetokenizer
from neo.tokenizer import NeoTokenizer
from neo_serving.errors import InvalidRequestError, NoChatTemplateError

log = logging.getLogger(__name__)


class ServedTokenizer:
    """A ``NeoTokenizer`` plus what the checkpoint directory says about chat and stopping."""

    def __init__(self, tokenizer: NeoTokenizer, chat_template: str | None, stop_ids: Sequence[int],
                 config: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.config = config or {}  # the checkpoint's tokenizer_config.json
        self.chat_template = chat_template
        self.stop_ids = tuple(dict.fromkeys(int(i) for i in stop_ids))
        self.vocab_size = tokenizer.vocab_size
        self.bos_id, self.eos_id = tokenizer.bos_id, tokenizer.eos_id
        self.add_bos = bool(tokenizer.add_bos_token)
        self.token_text = lru_cache(maxsize=None)(self._token_text)
        if chat_template is not None:
            tokenizer.chat_template = chat_template

    @classmethod
    def load(cls, path: str | Path) -> ServedTokenizer:
        """Tokenizer, ``chat_template`` (tokenizer_config.json) and eos ids (generation_config.json) of a
        checkpoint directory. The template comes only from the directory: without one, chat is refused."""
        path = Path(path)
        tok = NeoTokenizer.load(path)
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # HF allows named templates: [{"name": "default", "template": ...}]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if not template:
            log.warning("%s has no chat_template in tokenizer_config.json: chat requests will get a 400", path)
        eos = _read_json(path / "generation_config.json").get("eos_token_id")
        stop_ids = [eos] if isinstance(eos, int) else list(eos or [tok.eos_id, tok.im_end_id])
        return cls(tok, template or None, stop_ids, config)

    def info(self, max_model_len: int) -> dict[str, Any]:
        """``GET /tokenizer_info`` as vLLM answers it: the tokenizer's config (tokenizer_config.json without
        file paths and the added-token table) with its chat template; lm-eval's ``tokenizer_backend=remote``."""
        info = {k: v for k, v in self.config.items() if k not in ("added_tokens_decoder", "vocab_file", "merges_file")}
        info.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        info["model_max_length"] = max_model_len
        if self.chat_template:
            info["chat_template"] = self.chat_template
        return info

    # --- prompts --------------------------------------------------------------------------------------
    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A completion prompt as HF ``tokenizer(text)`` and vLLM encode it: special token strings in it are
        those tokens, and BOS comes first when the tokenizer's config says so (and ``add_special_tokens``)."""
        return self.tokenizer.encode_specials(text, add_bos=self.add_bos and add_special_tokens)

    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        self._require_template()
        try:
            return self.tokenizer.render_chat(messages, add_generation_prompt)
        except TemplateError as exc:
            raise InvalidRequestError(f"the chat template refused these messages: {exc}", param="messages") from exc

    def encode_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        self._require_template()
        try:
            return self.tokenizer.encode_chat(messages, add_generation_prompt)
        except TemplateError as exc:
            raise InvalidRequestError(f"the chat template refused these messages: {exc}", param="messages") from exc

    def _require_template(self) -> None:
        if self.chat_template is None:
            raise NoChatTemplateError(
                "this model has no chat template (no chat_template in its tokenizer_config.json); "
                "use /v1/completions, or serve a checkpoint exported with a tokenizer", param="model")

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    # --- logprobs ---------------------------------------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        """A token as OpenAI's logprobs show it: its text (``▁`` as a space); byte pieces stay ``<0xE4>``."""
        if not 0 <= token_id < self.vocab_size:
            return ""
        return self.tokenizer.id_to_piece(token_id).replace("▁", " ")

    def token_bytes(self, token_id: int) -> list[int]:
        """OpenAI's logprobs ``bytes``: the token's UTF-8 bytes; special tokens show their name's bytes."""
        if not 0 <= token_id < self.vocab_size:
            return []
        return list(self.tokenizer.token_bytes(token_id) or self.token_text(token_id).encode("utf-8"))

    def char_offsets(self, ids: Sequence[int]) -> list[int]:
        return self.tokenizer.char_offsets(ids)

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
