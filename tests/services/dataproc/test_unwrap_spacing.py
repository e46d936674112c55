"""``unwrap`` reads a double-spaced copy of a hard-wrapped text (a blank line after every line, as
bench/dataproc's "different whitespace" copies and pasted web text have) as the original, so both
clean to the same lines and dedup sees one document (issue #19, seventh session)."""

from __future__ import annotations

from neo_dataproc.steps.extract import unwrap

# data/sample fortunes (bench/dataproc synthetic input d2343; its copy p1235-whitespace)
FORTUNE = (
    "Until my mem'ry melts away.\nPoems are made by fools, I fear\nBut only Schlitz can make a beer.\n\n"
    "I think that I shall never see\nA billboard lovely as a tree.\nIndeed, unless the billboards fall\n"
    "I'll never see a tree at all.\n\t\t-- Ogden Nash\n\n"
    "I think that I shall never see\nA thing as lovely as a tree.\nBut as you see the trees have gone\n"
    "They went this morning with the dawn.\nA logging firm from out of town\nCame and chopped the trees all down.\n"
    "But I will trick those dirty skunks\nAnd write a brand new poem called 'Trunks'.\n"
)


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def test_double_spaced_copy_unwraps_as_the_original():
    copy = "  " + FORTUNE.replace(" ", "  ").replace("\n", "\n\n") + "\n"  # bench/dataproc/corpus.py
    want = _lines(unwrap(FORTUNE))
    assert want[0] == "Until my mem'ry melts away. Poems are made by fools, I fear But only Schlitz can make a beer."
    assert _lines(unwrap(copy)) == want


def test_double_spaced_lines_that_are_not_a_fill_keep_their_blank_lines():
    text = "First point.\n\nSecond point, a longer one than the first.\n\nThird.\n\nFourth and last point.\n"
    assert unwrap(text) == text
