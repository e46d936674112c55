"""Every `neo ...` command line shown in the docs names a real subcommand and real options (issue #20).

The command lines are read from the fenced code blocks of README.md, docs/*.md and services/*/README.md and
checked against the Click command tree that Typer builds from `neo.cli.app` (with the services' commands mounted, as
`neo` itself does) — nothing is executed, so the docs cannot drift from the CLI unnoticed.
"""

import functools
import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "services").glob("*/README.md")])
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
#: shell words that end one command and may start the next (`a && neo b`, `neo a | head`)
SEPARATORS = {"&&", "||", "|", ";", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@functools.cache
def _neo_tree():
    from neo import cli
    cli._add_service_commands()
    return typer.main.get_command(cli.app)


def _command_lines(text: str) -> list[str]:
    """The `neo ...` invocations in the fenced code blocks of one markdown file (continuations joined)."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\$|>>>)\s*", "", line)
            line = line.split(" #", 1)[0].split("\t#", 1)[0]
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            current: list[str] | None = None
            at_start = True  # only a command's first word (after VAR=value assignments) is a program
            for word in words:
                if word in SEPARATORS or word.endswith(";"):
                    if current:
                        lines.append(current)
                    current, at_start = None, True
                elif current is not None:
                    current.append(word)
                elif at_start and word == "neo":
                    current = [word]
                elif not ENV_ASSIGNMENT.match(word):
                    at_start = False
            if current:
                lines.append(current)
    return [" ".join(shlex.quote(w) for w in words) for words in lines]


def _problems(tree, words: list[str]) -> list[str]:
    """What is wrong with one command line: an unknown subcommand or an option its command doesn't take."""
    command, path = tree, ["neo"]
    rest = words[1:]
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            if command.commands and not command.params:
                return [f"`{' '.join(path)}` has no subcommand {rest[0]!r}"]
            break
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    if (command.context_settings or {}).get("ignore_unknown_options"):
        return []  # a stand-in for a service whose extra is missing here
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    bad = []
    for word in rest:
        if word.startswith("--") and word != "--":
            name = word.split("=", 1)[0]
            if name not in known:
                bad.append(f"`{' '.join(path)}` has no option {name}")
    return bad


def _doc_commands() -> list[tuple[str, str]]:
    return [(str(doc.relative_to(ROOT)), line) for doc in DOCS for line in _command_lines(doc.read_text())]


def test_the_docs_show_neo_commands():
    """The extractor finds the README's examples (a broken extractor would make the check below vacuous)."""
    found = {line for doc, line in _doc_commands() if doc == "README.md"}
    assert any(line.startswith("neo train pretrain ") for line in found), found
    assert len(found) >= 10


def test_the_extractor_takes_commands_not_words():
    text = "```bash\nNEO_HOME=/x neo data run a.yaml --eager  # comment --nope\n" \
           "make vllm && neo serve --engine vllm\n" \
           "pip install neo\n```\n```python\nfrom neo import cli\n```\n"
    assert _command_lines(text) == ["neo data run a.yaml --eager", "neo serve --engine vllm"]


def test_the_checker_catches_a_wrong_command_and_option():
    tree = _neo_tree()
    assert _problems(tree, ["neo", "model", "info", "neo-7b", "--seq-len", "4096"]) == []
    assert _problems(tree, ["neo", "model", "infoo"]) == ["`neo model` has no subcommand 'infoo'"]
    assert _problems(tree, ["neo", "model", "info", "--seq-length=4"]) == [
        "`neo model info` has no option --seq-length"]


@pytest.mark.parametrize(("doc", "line"), _doc_commands())
def test_doc_command_exists(doc, line):
    """Each documented `neo` command line: its subcommand path and every --option exist."""
    assert _problems(_neo_tree(), shlex.split(line)) == [], f"{doc}: {line}"
