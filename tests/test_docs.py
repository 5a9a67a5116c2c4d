"""The commands the README and the guides show are ones the tools accept as written.

The guides whose steps matter most are followed end to end by their own tests (docs/own-data.md,
docs/new-stage.md, docs/domino.md's rehearsal). This one reads every shell block and every inline command
of README.md and docs/*.md and checks each against the tool itself: a `make` target that exists, with
variables the Makefile reads; a `stageflow` command with options its parser takes; `make bench` arguments
the bench takes; a `pyflyte run` of flow.py's workflow with its inputs. So renaming an option, a target or
a flow input turns this red until the documentation follows, and the links between the pages must land.
"""

import click
import re
import shlex
import sys
from pathlib import Path

import pytest

from stageflow import cli, dag as dag_module
from stageflow.runtime.contract import StageError

from conftest import ROOT, fenced

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKED = {"make", "stageflow", "pyflyte"}
# Commands of other tools the guides show; each is that tool's own business, not something we could check.
OTHERS = {"git", ".venv/bin/python"}
INLINE = re.compile(r"`((?:make|stageflow|pyflyte) [^`]+)`")


def commands(page: Path) -> list[str]:
    """Each simple command of the page's shell blocks (continuations joined, comments and `&&` split off)."""
    found = []
    for block in fenced(page, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            found += [part.strip() for part in re.split(r"&&|;", line) if part.strip()]
    return found


def mentions(page: Path) -> list[str]:
    """The page's inline commands: often a command's name and an option or two (`pyflyte run --remote`,
    `stageflow report RUN_DIR`) rather than a whole command line."""
    return [span.replace("\\|", "|") for span in INLINE.findall(page.read_text())]


def all_commands(reader=commands) -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), command) for page in PAGES for command in reader(page)]


def makefile() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", text, re.M))
    variables = set(re.findall(r"\$\((\w+)\)", text)) | set(re.findall(r"^(\w+) \?=", text, re.M))
    return targets, variables


def words(command: str) -> list[str]:
    """The command's words without leading VAR=value assignments; `a|b|c` (alternatives) becomes its first."""
    parts = shlex.split(command)
    while len(parts) > 1 and re.fullmatch(r"[A-Z_]+=.*", parts[0]):
        parts = parts[1:]
    return [p.split("|")[0] if re.fullmatch(r"[\w-]+(\|[\w-]+)+", p) else p for p in parts]


def check_make(argv: list[str], whole: bool) -> None:
    targets, variables = makefile()
    assigned = dict(a.split("=", 1) for a in argv if "=" in a)
    for target in (a for a in argv if "=" not in a and a != "..."):
        assert target in targets, f"make {target}: no such target in the Makefile"
    for name in assigned:
        assert name in variables, f"make {name}=...: the Makefile never reads {name}"
    if "bench" in argv:
        bench.arguments().parse_args(["--rows", assigned.get("ROWS", "1000000"),
                                      *shlex.split(assigned.get("BENCH_ARGS", ""))])


def made_by(page: str) -> set[Path]:
    """The files a page's own commands make (`stageflow draft-schema ... -o FILE`), which its later commands
    may name: they do not exist where the commands are checked."""
    made = set()
    for command in (command for name, command in all_commands() if name == page):
        argv = words(command)
        if argv[:2] == ["stageflow", "draft-schema"] and "-o" in argv:
            made.add(Path(argv[argv.index("-o") + 1]).absolute())
    return made


def check_stageflow(argv: list[str], whole: bool, page: str = "") -> None:
    """A whole command must parse; a mention must name a subcommand and only options it has. A command that
    names a schema the page's own commands make is parsed up to the schema's reading (its options first)."""
    if whole:
        try:
            cli.parse(argv)
        except (click.ClickException, StageError) as err:  # the schema is read as flow.py is compiled
            if not any(str(err).startswith(f"schema {path} ") for path in made_by(page)):
                pytest.fail(f"`stageflow {' '.join(argv)}` is refused: {err}")
        return
    if argv[0].startswith("-"):  # an option of stageflow itself (--version)
        assert argv[0] in {opt for param in cli.cli.params for opt in param.opts}, f"stageflow: no option {argv[0]}"
        return
    assert argv[0] in cli.cli.commands, f"stageflow {argv[0]}: no such command"
    for option in (a.split("=")[0] for a in argv[1:] if a.startswith("-") and not a.lstrip("-").isupper()):
        assert option in cli.options_of(argv[0]), f"stageflow {argv[0]}: no option {option}"  # --INPUT: a placeholder


def check_pyflyte(argv: list[str], whole: bool) -> None:
    args = [a for a in argv if a != "--remote"]
    assert args[0] == "run", f"pyflyte {args[0]}: the guides only use `pyflyte run`"
    if len(args) == 1 and not whole:
        return
    if args[1] == "FLOW.py" and not whole:  # the form of any flow's command (docs/any-flow.md)
        return
    assert args[1] == "flow.py", f"pyflyte {' '.join(argv)}: expected `pyflyte run [--remote] flow.py`"
    flow = dag_module.load()
    assert args[2] == flow.name, f"pyflyte run: flow.py's workflow is {flow.name}, not {args[2]}"
    for option in (a for a in args[3:] if a.startswith("--")):
        assert option[2:] in flow.inputs, f"pyflyte run: {flow.name} has no input {option[2:]}"


def check(page: str, command: str, whole: bool) -> None:
    argv = words(command)
    if argv[0] not in CHECKED:
        assert argv[0] in OTHERS, f"{page}: `{command}` runs a tool this test does not know; check it here or " \
                                  f"add it to OTHERS"
        return
    try:
        if argv[0] == "stageflow":
            check_stageflow(argv[1:], whole, page)
        else:
            {"make": check_make, "pyflyte": check_pyflyte}[argv[0]](argv[1:], whole)
    except SystemExit as err:  # argparse refused it, and printed why
        pytest.fail(f"{page}: `{command}` is refused (exit {err.code})")


@pytest.mark.parametrize("page, command", all_commands())
def test_every_command_of_a_shell_block_is_accepted_as_written(page, command):
    check(page, command, whole=True)


@pytest.mark.parametrize("page, command", all_commands(mentions))
def test_every_command_named_in_the_text_exists_with_the_options_shown(page, command):
    check(page, command, whole=False)


def test_the_pages_show_the_commands_users_start_with():
    """A guard on the reader above: it finds the README's two commands and a guide's pyflyte run."""
    found = all_commands()
    assert ("README.md", "make run") in found and ("README.md", "make test") in found
    assert any(page == "docs/running.md" and command.startswith("pyflyte run flow.py") for page, command in found)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_the_pages_land(page):
    """Relative links point at a file that exists and, with a #fragment, at one of its headings."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if fragment:
            assert fragment in anchors(linked), f"{page.name}: link to {target}: no such heading in {linked.name}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found
