"""``neo eval``: benchmarks in the formats of C-Eval and MMLU (multiple choice scored by log-likelihood),
GSM8K (generation + answer extraction) and HumanEval (code run in a sandboxed subprocess), against a
model directory or any OpenAI-compatible completions API (ours, vLLM)."""
