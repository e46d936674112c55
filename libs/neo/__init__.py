"""Neo: the shared model package (model, presets, tokenizer, HF export, schemas)."""

__version__ = "0.1.0"
