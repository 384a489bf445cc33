"""#17 point 9: the guides a newcomer follows are true to the code: every `fedguard` command
shown in README.md and docs/*.md parses (its subcommand and options exist, values have the
right types), and every link resolves (file and heading)."""

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from fedguard.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _commands(page: Path) -> list[tuple[int, list[str]]]:
    found, block = [], False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if line.startswith("```"):
            block = line.strip() in ("```sh", "```bash", "```console")
            continue
        if not block:
            continue
        text = line.split(" #", 1)[0].strip()
        words = shlex.split(text) if text else []
        if words and Path(words[0]).name == "fedguard":
            found.append((number, words[1:]))
    return found


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in page.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }


COMMANDS = [(p, n, args) for p in PAGES for n, args in _commands(p)]


def test_the_guides_show_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize(
    ("page", "line", "args"), COMMANDS, ids=[f"{p.name}:{n}" for p, n, _ in COMMANDS]
)
def test_every_command_shown_parses(page: Path, line: int, args: list[str]):
    command: click.Command = typer.main.get_command(app)
    name, rest = "fedguard", list(args)
    while isinstance(command, click.Group):
        assert rest, f"{page.name}:{line}: `fedguard {' '.join(args)}` names no subcommand"
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{page.name}:{line}: no command `{rest[0]}`"
        name, command, rest = rest[0], sub, rest[1:]
    try:
        command.make_context(name, rest)
    except click.BadParameter as exc:  # a file the example names need not exist here
        assert "does not exist" in str(exc), f"{page.name}:{line}: {exc}"
    except click.UsageError as exc:
        pytest.fail(f"{page.name}:{line}: `fedguard {' '.join(args)}`: {exc}")


def test_every_link_resolves():
    problems = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{page.name}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                problems.append(f"{page.name}: {target}: no heading #{anchor}")
    assert not problems, problems


def test_the_reference_names_every_config_key_and_simulate_option():
    import dataclasses

    from fedguard import federation_config as f
    from fedguard import node_config as d

    text = (ROOT / "docs" / "reference.md").read_text()
    sections = {
        "federation": f.FederationSection, "task": f.TaskSection,
        "training": f.TrainingSection, "server": f.ServerNetwork, "secagg": f.SecAggSection,
        "client-dp": f.ClientDPSection, "node": d.NodeSection, "data": d.DataSection,
        "privacy": d.PolicySection,
    }  # fmt: skip
    missing = [
        f"{section}.{f.name.replace('_', '-')}"
        for section, cls in sections.items()
        for f in dataclasses.fields(cls)
        if f"`{section}.{f.name.replace('_', '-')}`" not in text
    ]
    missing += [
        f"secagg.{f.name.replace('_', '-')}"
        for f in dataclasses.fields(d.NodeSecAggSection)
        if f"`secagg.{f.name.replace('_', '-')}`" not in text
    ]
    simulate = typer.main.get_command(app).get_command(click.Context(click.Group()), "simulate")
    assert simulate is not None
    missing += [
        opt
        for param in simulate.params
        for opt in param.opts
        if opt.startswith("--") and opt != "--help" and f"`{opt}`" not in text
    ]
    assert not missing, f"docs/reference.md lacks {missing}"
