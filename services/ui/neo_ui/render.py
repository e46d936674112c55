"""Model text → what the browser shows: Markdown whose HTML is inert.

Model output (and prompts, and anything a user typed) is untrusted. Outside code, ``<``, ``>`` and ``&``
are escaped, so ``<script>`` or ``<img onerror=…>`` is *shown* as text and never becomes an element;
code spans and fenced blocks are left alone because the Markdown renderer prints their content
literally already (escaping there would show ``&lt;``). Gradio's own HTML sanitizer stays on behind
this, as a second fence.
"""

from __future__ import annotations

import html
import re
from typing import Any

# a fenced block (``` or ~~~, closed or still streaming to the end), or an inline code span
_CODE = re.compile(r"(^[ \t]*```.*?(?:^[ \t]*```[^\n]*$|\Z)|^[ \t]*~~~.*?(?:^[ \t]*~~~[^\n]*$|\Z)|`[^`\n]+`)",
                   re.S | re.M)


def safe_markdown(text: str) -> str:
    """``text`` as Markdown in which no HTML tag or entity is live."""
    parts = _CODE.split(text)
    return "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))


def conversation_markdown(messages: list[dict[str, str]]) -> str:
    """A prompt (a list of chat turns) as one safe Markdown block: ``**role**`` then the text."""
    blocks = [f"**{m['role']}**\n\n{safe_markdown(m['content'])}" for m in messages]
    return "\n\n---\n\n".join(blocks)


def markdown_table(rows: list[dict[str, Any]], empty: str = "_nothing yet_") -> str:
    """Rows of dicts as a Markdown table, every cell escaped."""
    if not rows:
        return empty
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(safe_markdown(str("" if r[h] is None else r[h])).replace("|", "\\|") for h in head)
              + " |" for r in rows]
    return "\n".join(lines)
