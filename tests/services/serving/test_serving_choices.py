"""Stop strings and streaming text, with a scripted engine bound to the real ``Engine`` interface (the unit
under test is ``choices.ChoiceRun``; its tokenizer is the real one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from neo.generate import SamplingParams
from neo_serving.choices import ChoiceRun, merge, plan_max_tokens
from neo_serving.engines.base import Engine, EngineOutput, EngineRequest, EngineStats, ModelInfo
from neo_serving.errors import ContextLengthError
from neo_serving.tokens import ServedTokenizer


class ScriptedEngine:
    """Yields a fixed token list one token per output; records how far it got and whether it was aborted."""

    def __init__(self, tokenizer: ServedTokenizer, script: list[int]):
        self.tokenizer, self.script = tokenizer, script
        self.info = ModelInfo("scripted", "local", Path("."), 256, 0)
        self.yielded, self.closed_early = 0, False

    async def start(self) -> None: ...

    async def generate(self, request: EngineRequest):
        stops = set(request.params.stop_ids)
        try:
            for i, token in enumerate(self.script):
                self.yielded += 1
                last = i == len(self.script) - 1 or token in stops
                finish = ("stop" if token in stops else "length") if last else None
                yield EngineOutput([token], finish_reason=finish)
                await asyncio.sleep(0)
                if finish:
                    return
        except GeneratorExit:
            self.closed_early = True
            raise

    async def abort(self, request_id: str) -> None: ...

    def healthy(self) -> bool:
        return True

    def check_available(self) -> None: ...

    def stats(self) -> EngineStats:
        return EngineStats()

    async def shutdown(self) -> None: ...


@pytest.fixture(scope="module")
def tok(checkpoint) -> ServedTokenizer:
    return ServedTokenizer.load(checkpoint)


def run(tok, text_or_ids, stops=(), stop_ids=()):
    ids = tok.tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    engine = ScriptedEngine(tok, ids)
    assert isinstance(engine, Engine)
    request = EngineRequest("r", [1], SamplingParams(max_new_tokens=len(ids), stop_ids=stop_ids))
    choice = ChoiceRun(0, engine, request, list(stops))

    async def collect():
        return [d async for d in choice.deltas()]

    deltas = asyncio.run(collect())
    return choice, deltas, engine


SENTENCE = "The quick brown fox jumps over the lazy dog."


def test_stop_string_spanning_tokens_is_cut_exactly(tok):
    pieces = [tok.tokenizer.decode([i]) for i in tok.tokenizer.encode(SENTENCE)]
    # a stop that starts inside one token and ends inside a later one
    joined, boundary = "", None
    for piece in pieces:
        if len(joined) > 6 and len(piece) > 1 and boundary is None:
            boundary = len(joined)
        joined += piece
    stop = SENTENCE[boundary - 2:boundary + 2]
    assert not any(stop in p for p in pieces)  # really across a boundary
    choice, deltas, engine = run(tok, SENTENCE, stops=[stop])
    expected = SENTENCE[:SENTENCE.index(stop)]
    assert choice.text == expected and "".join(d.text for d in deltas) == expected
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    assert engine.closed_early and engine.yielded < len(pieces)  # generation stopped at the match


def test_earliest_of_several_stops_wins_and_no_partial_stop_is_streamed(tok):
    choice, deltas, _ = run(tok, SENTENCE, stops=["lazy", "brown f"])
    assert choice.text == "The quick "
    for i in range(len(deltas)):
        sent = "".join(d.text for d in deltas[:i + 1])
        assert not sent.endswith(("b", "br", "bro", "brow", "brown", "brown "))  # held back until decided


def test_held_text_is_released_when_the_stop_does_not_complete(tok):
    choice, deltas, _ = run(tok, SENTENCE, stops=["quick brown cat"])
    assert choice.text == SENTENCE and "".join(d.text for d in deltas) == SENTENCE
    assert deltas[-1].finish_reason == "length" and deltas[-1].stop_reason is None


def test_stop_at_the_very_start_gives_empty_text(tok):
    choice, deltas, _ = run(tok, SENTENCE, stops=["The"])
    assert choice.text == "" and deltas[-1].finish_reason == "stop"


def test_stop_id_is_counted_but_not_shown(tok):
    ids = tok.tokenizer.encode("Hello") + [tok.eos_id] + tok.tokenizer.encode(" never")
    choice, deltas, engine = run(tok, ids, stop_ids=(tok.eos_id,))
    assert choice.text == "Hello" and choice.completion_tokens == len(tok.tokenizer.encode("Hello")) + 1
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == tok.eos_id
    assert engine.yielded == choice.completion_tokens


def test_multibyte_characters_never_stream_broken(tok):
    text = "好😀ok🎉中文"
    ids = tok.tokenizer.encode(text)
    assert any(tok.tokenizer.is_byte(i) for i in ids)  # the emoji really arrive as byte pieces
    choice, deltas, _ = run(tok, ids)
    assert "".join(d.text for d in deltas) == text
    assert all("\ufffd" not in d.text for d in deltas)
    assert len([d for d in deltas if d.text]) >= 4  # still streamed piece by piece


def test_merge_interleaves_choices_and_closes_them(tok):
    engines = [ScriptedEngine(tok, tok.tokenizer.encode(SENTENCE)) for _ in range(3)]
    runs = [ChoiceRun(i, e, EngineRequest(f"r{i}", [1], SamplingParams(max_new_tokens=99)), ["fox"])
            for i, e in enumerate(engines)]

    async def collect():
        return [d async for d in merge(runs)]

    deltas = asyncio.run(collect())
    assert {d.index for d in deltas} == {0, 1, 2}
    for i in range(3):
        assert "".join(d.text for d in deltas if d.index == i) == "The quick brown "
    assert all(e.closed_early for e in engines)


def test_plan_max_tokens_names_the_numbers():
    assert plan_max_tokens(100, None, 256, "prompt") == 156
    assert plan_max_tokens(100, None, 256, "prompt", default=16) == 16
    assert plan_max_tokens(250, None, 256, "prompt", default=16) == 6
    with pytest.raises(ContextLengthError, match=r"maximum context length is 256 tokens.*requested 300 tokens "
                                                 r"\(200 in the messages, 100 in the completion\)"):
        plan_max_tokens(200, 100, 256, "messages")
    with pytest.raises(ContextLengthError, match="has 256 tokens"):
        plan_max_tokens(256, None, 256, "prompt")
