"""A terminal chat with an exported checkpoint: the foundation's way to talk to a model.

Streams tokens as they are sampled through ``neo.detokenize.IncrementalDetokenizer`` (as serving does),
which holds back text while a multi-byte character is incomplete.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from neo.detokenize import IncrementalDetokenizer
from neo.generate import SamplingParams, stream_generate
from neo.hf import load_hf
from neo.tokenizer import NeoTokenizer

console = Console()


def _show(piece: str) -> str:
    if piece:
        console.print(piece, end="", markup=False, highlight=False)
    return piece


def run_chat(model_dir: Path, system: str, max_new_tokens: int, temperature: float, top_p: float) -> None:
    model = load_hf(model_dir)
    tokenizer = NeoTokenizer.load(model_dir)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop_ids=(tokenizer.eos_id, tokenizer.im_end_id))
    messages = [{"role": "system", "content": system}] if system else []
    console.print(f"[bold]Neo[/bold] chat with {model_dir} — an empty line or Ctrl-D quits.")
    while True:
        try:
            user = console.input("[bold cyan]you>[/bold cyan] ")
        except (EOFError, KeyboardInterrupt):
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
        room = model.config.max_seq_len - max_new_tokens
        while len(prompt) > room and len(messages) > 2:  # forget the oldest turns first
            del messages[1 if messages[0]["role"] == "system" else 0]
            prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
        console.print("[bold green]neo>[/bold green] ", end="")
        detok, answer = IncrementalDetokenizer(tokenizer), ""
        for token in stream_generate(model, prompt[-room:], params):
            if token in params.stop_ids:
                break
            answer += _show(detok.push([token]))
        answer += _show(detok.flush())  # a character cut off by max_new_tokens shows as U+FFFD
        console.print()
        messages.append({"role": "assistant", "content": answer})
