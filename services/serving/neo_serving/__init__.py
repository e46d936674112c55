"""Neo's OpenAI-compatible serving: a batched torch engine on CPU, or a gateway to vLLM replicas."""
