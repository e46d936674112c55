"""neo_ui.render: model text is shown as text; HTML in it never becomes live markup."""

from __future__ import annotations

from neo_ui.render import conversation_markdown, markdown_table, safe_markdown

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def test_tags_outside_code_are_escaped():
    out = safe_markdown(f"before {PAYLOAD} after & more")
    assert "<script>" not in out and "<img" not in out
    assert out == ('before &lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img src=x onerror="window.__pwned=2"&gt;'
                   " after &amp; more")


def test_code_is_left_to_the_markdown_renderer():
    text = "use `<b>` like this:\n```html\n<i>x</i>\n```\nthen <u>"
    assert safe_markdown(text) == "use `<b>` like this:\n```html\n<i>x</i>\n```\nthen &lt;u&gt;"


def test_unclosed_fence_while_streaming_stays_code():
    assert safe_markdown("x <a>\n```py\nif a < b:") == "x &lt;a&gt;\n```py\nif a < b:"


def test_chinese_and_markdown_pass_through():
    text = "**你好**，世界！\n- 第一\n- second"
    assert safe_markdown(text) == text


def test_conversation_and_tables_escape_every_cell():
    md = conversation_markdown([{"role": "system", "content": "be <b>nice</b>"}, {"role": "user", "content": "你好"}])
    assert "&lt;b&gt;nice&lt;/b&gt;" in md and "**user**\n\n你好" in md
    table = markdown_table([{"annotator": "<img src=x onerror=alert(1)>", "labels": 2, "rate": None}])
    assert "<img" not in table and "| &lt;img src=x onerror=alert(1)&gt; | 2 |  |" in table
    assert markdown_table([]) == "_nothing yet_"
