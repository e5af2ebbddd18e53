"""The README and docs/ stay true to the repository: every relative link and anchor resolves, every
docs page is linked from the README, and every command of the README's ``bash`` blocks is one the
``anatldm`` CLI or the Makefile knows, naming configs that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from anatldm.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,})([^\n`]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (where brackets are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http(s), mailto: not ours to check


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    unlinked = [page.relative_to(ROOT) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def readme_commands() -> list[list[str]]:
    """Each command of the README's ``bash`` blocks as words: comments dropped, ``\\`` lines joined."""
    commands = []
    for _, language, body in FENCE.findall(README.read_text(encoding="utf-8")):
        if language.strip() != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def makefile_targets() -> set[str]:
    rules = re.findall(r"^([A-Za-z0-9_.\- ]+):(?![=:])", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    return {target for rule in rules for target in rule.split() if not target.startswith(".")}


def cli_knows(subcommand: str, capsys: pytest.CaptureFixture) -> bool:
    """Whether ``anatldm SUBCOMMAND --help`` exits 0: the CLI itself says which subcommands exist."""
    with pytest.raises(SystemExit) as done:
        main([subcommand, "--help"])
    capsys.readouterr()
    return done.value.code == 0


def test_the_readme_shows_bash_commands() -> None:
    words = [command[0] for command in readme_commands()]
    assert "make" in words and "anatldm" in words  # the checks below would pass on an empty README


def test_every_readme_command_is_known(capsys: pytest.CaptureFixture) -> None:
    targets, unknown, known_subcommands = makefile_targets(), [], {}
    for command in readme_commands():
        program, arguments = command[0], command[1:]
        shown = " ".join(command)
        if program == "make":
            goals = [word for word in arguments if "=" not in word and not word.startswith("-")]
            unknown += [f"{shown} (no Makefile target {goal!r})" for goal in goals if goal not in targets]
        elif program == "anatldm":
            subcommand = arguments[0] if arguments else ""
            if subcommand not in known_subcommands:
                known_subcommands[subcommand] = bool(subcommand) and cli_knows(subcommand, capsys)
            if not known_subcommands[subcommand]:
                unknown.append(f"{shown} (anatldm has no subcommand {subcommand!r})")
            configs = [arguments[i + 1] for i, word in enumerate(arguments[:-1]) if word == "--config"]
            unknown += [f"{shown} (no file {config})" for config in configs if not (ROOT / config).is_file()]
        else:
            unknown.append(f"{shown} (neither make nor anatldm)")
    assert not unknown, f"README.md bash blocks: {unknown}"


def test_the_checks_catch_a_wrong_command_and_a_broken_link(capsys: pytest.CaptureFixture) -> None:
    assert not cli_knows("fitt", capsys)
    assert "quickstartt" not in makefile_targets() and "quickstart" in makefile_targets()
    assert "no-such-heading" not in anchors(README.read_text(encoding="utf-8"))
    assert anchors("# A `b`, c (d)\n## A `b`, c (d)\n") == {"a-b-c-d", "a-b-c-d-1"}
