"""A small bilingual text for the tests' tokenizer (made here: tests never download data)."""

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Neo is an open bilingual language model trained from scratch.",
    "Serving answers requests over an OpenAI compatible API.",
    "A tokenizer turns text into pieces and pieces into ids.",
    "Continuous batching lets many requests share one forward pass.",
    "The cat sat on the mat and looked at the rain outside.",
    "Please write a short story about a robot who learns to paint.",
    "Numbers like 1024 and 2048 are split into single digits.",
    "def add(a, b):\n    return a + b\n",
    "Hello, world! How are you today? I am fine, thank you.",
]
ZH = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个重要分支。",
    "这个模型可以用中文和英文回答问题。",
    "请写一首关于春天的短诗。",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "我喜欢读书，也喜欢听音乐。",
    "开放的语言模型让更多人可以研究和使用。",
    "你好，世界！很高兴认识你。",
]


def corpus_lines(repeat: int = 30) -> list[str]:
    """Every sentence many times, in shifted orders, so BPE sees stable statistics."""
    lines = []
    for r in range(repeat):
        for i, sentence in enumerate(EN + ZH):
            lines.append(sentence if (i + r) % 3 else sentence.upper() if sentence.isascii() else sentence * 2)
    return lines
