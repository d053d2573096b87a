"""The documentation cannot drift from the code: every `onnx-snn` command shown in README.md and
docs/*.md is parsed by the real parser (a renamed or removed option fails here, with the file and
line), the blocks marked `<!-- docs-test: run -->` run for real on a tiny model, every Python block
compiles, docs/cli.md and docs/api.md are what scripts/reference_docs.py writes from the code, and
every link, file path and `onnx_snn.` name the docs mention exists."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

import onnx_snn
from onnx_snn import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARKER = "<!-- docs-test: run -->"
SHELL = ("bash", "sh", "console", "shell")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    lang: str
    text: str
    run: bool  # marked to run for real

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    found, rows = [], path.read_text().split("\n")
    i = 0
    while i < len(rows):
        opening = re.match(r"^```(\w*)\s*$", rows[i])
        if opening:
            end = next(j for j in range(i + 1, len(rows)) if rows[j].startswith("```"))
            marked = i > 0 and rows[i - 1].strip() == RUN_MARKER
            found.append(Block(path, i + 1, opening.group(1), "\n".join(rows[i + 1:end]), marked))
            i = end
        i += 1
    return found


ALL_BLOCKS = [b for path in DOCS for b in blocks(path)]


@dataclass
class Command:
    where: str
    argv: list[str]  # after `onnx-snn`


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line, text): backslash continuations joined, and a synopsis's indented continuation lines
    (`[--option ...]` under the command) too; `$ ` prompts stripped."""
    lines: list[tuple[int, str]] = []
    for offset, row in enumerate(block.text.split("\n")):
        text = row[2:] if row.startswith("$ ") else row
        if lines and (lines[-1][1].endswith("\\") or (text[:1].isspace() and text.strip()[:1] in "[-")):
            lines[-1] = (lines[-1][0], lines[-1][1].rstrip("\\").rstrip() + " " + text.strip())
        else:
            lines.append((block.line + 1 + offset, text))
    return lines


def commands_in(text: str) -> list[list[str]]:
    """The `onnx-snn` (or `python -m onnx_snn.cli`) commands of a shell line: comments dropped,
    split at && || ; |, leading VAR=value assignments skipped."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # an unclosed quote spans lines: not a command of ours
        return []
    found, segment = [], []
    for token in tokens + ["&&"]:
        if token in ("&&", "||", ";", "|"):
            while segment and re.match(r"^[A-Za-z_]\w*=", segment[0]):
                segment.pop(0)
            if segment[:1] == ["onnx-snn"]:
                found.append(segment[1:])
            elif segment[:3] in (["python", "-m", "onnx_snn.cli"], ["python3", "-m", "onnx_snn.cli"]):
                found.append(segment[3:])
            segment = []
        else:
            segment.append(token)
    return found


def shell_commands() -> list[Command]:
    return [Command(f"{b.path.relative_to(ROOT)}:{line}", argv)
            for b in ALL_BLOCKS if b.lang in SHELL for line, text in logical_lines(b) for argv in commands_in(text)]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(=[A-Z]+)?$")


def concrete(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """A synopsis made runnable: [optional] brackets and `...` dropped, `a|b` takes a, an upper-case
    placeholder value becomes a value of the option's type (a choice, a number, gelu=4); other
    placeholders (MODEL.onnx, DIR) are fine as strings."""
    out: list[str] = []
    command = subparsers(parser).get(argv[0]) if argv else None
    action = None
    for token in argv:
        token = token.lstrip("[").rstrip("]")
        if token in ("...", "options", ""):
            continue
        if "|" in token and not token.startswith("-"):
            token = token.split("|")[0]
        if token.startswith("-"):
            action = command._option_string_actions.get(token.split("=")[0]) if command else None
        elif action is not None and PLACEHOLDER.match(token):
            if action.choices:
                token = str(next(iter(action.choices)))
            elif action.type is int:
                token = "16"
            elif action.type is float:
                token = "1.0"
            elif action.metavar and "=" in action.metavar:  # NAME=N
                token = "gelu=4"
        out.append(token)
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    """argv parsed by the real parser; SystemExit becomes an AssertionError with argparse's message."""
    parser = cli.build_parser()
    for strict in (parser, *subparsers(parser).values()):
        strict.allow_abbrev = False  # the docs spell options out: --input must not pass for --inputs
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(concrete(argv, parser))
    except SystemExit:
        raise AssertionError(errors.getvalue().strip().splitlines()[-1]) from None


COMMANDS = shell_commands()


def test_the_docs_show_commands_of_every_kind():
    """The extraction finds them (a broken extractor would pass every check below vacuously)."""
    shown = {c.argv[0] for c in COMMANDS if c.argv}
    assert shown >= {"convert", "eval", "energy", "sweep", "serve", "triton-repo", "demo"}, shown
    assert len(COMMANDS) >= 20 and sum(b.run for b in ALL_BLOCKS) >= 4


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_command_shown_is_accepted_by_the_parser(command):
    try:
        parse(command.argv)
    except AssertionError as e:
        pytest.fail(f"{command.where}: onnx-snn {shlex.join(command.argv)}: {e}")


def test_a_renamed_option_would_fail():
    with pytest.raises(AssertionError, match="unrecognized arguments: --calibration-file"):
        parse(["convert", "model.onnx", "-o", "out.onnx", "--calibration-file", "inputs.npz"])
    assert parse(concrete(["convert", "M.onnx", "-o", "S.onnx", "[--identity-code", "digits|binary]",
                           "[--bases", "FUNCTION=N", "...]"], cli.build_parser())).bases == [("gelu", 4)]


def inline_commands() -> list[Command]:
    """`onnx-snn SUBCOMMAND --option ...` in prose (code spans): partial commands, so only their
    subcommand and option names are checked."""
    found = []
    for path in DOCS:
        for number, row in enumerate(path.read_text().split("\n"), 1):
            for span in re.findall(r"`(onnx-snn [^`]+)`", row):
                tokens = span.split()
                if len(tokens) > 1 and (re.match(r"^[a-z-]+$", tokens[1]) or tokens[1].startswith("--")):
                    found.append(Command(f"{path.relative_to(ROOT)}:{number}", tokens[1:]))
    return found


INLINE = inline_commands()


@pytest.mark.parametrize("command", INLINE, ids=[c.where for c in INLINE])
def test_every_option_named_in_prose_exists(command):
    parser = cli.build_parser()
    if command.argv[0].startswith("-"):
        assert command.argv[0] in parser._option_string_actions, f"{command.where}: onnx-snn {command.argv[0]}"
        return
    commands = subparsers(parser)
    assert command.argv[0] in commands, f"{command.where}: no command onnx-snn {command.argv[0]}"
    options = commands[command.argv[0]]._option_string_actions
    for token in command.argv[1:]:
        if token.startswith("-") and len(token) > 1:
            assert token.split("=")[0] in options, f"{command.where}: onnx-snn {command.argv[0]} has no {token}"


# ---- the marked blocks, run for real on a tiny model ------------------------------------------------

def tiny_model(path: Path) -> None:
    """x [batch, 8] -> MatMul -> Tanh -> MatMul -> Softmax: rules, encoders and MACs, in milliseconds."""
    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), name) for name in ("w1", "w2")]
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("Tanh", ["h"], ["t"]),
         oh.make_node("MatMul", ["t", "w2"], ["z"]), oh.make_node("Softmax", ["z"], ["y"], axis=-1)],
        "tiny", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], weights)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with the files the examples name: model.onnx, inputs.npz, calibration.npz."""
    tiny_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    for name in ("inputs", "calibration"):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(4, 8)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


RUN_FILES = sorted({b.path for b in ALL_BLOCKS if b.run})


@pytest.mark.parametrize("path", RUN_FILES, ids=[str(p.relative_to(ROOT)) for p in RUN_FILES])
def test_marked_blocks_run_on_a_tiny_model(path, workspace, capsys):
    """Each file's marked blocks in order, in one folder (a later block reads what an earlier wrote)."""
    for block in (b for b in ALL_BLOCKS if b.path == path and b.run):
        if block.lang == "python":
            exec(compile(block.text, block.where, "exec"), {"__name__": "__docs__"})
            continue
        assert block.lang in SHELL, block.where
        for line, text in logical_lines(block):
            for argv in commands_in(text):
                status = cli.main(argv)
                out, err = capsys.readouterr()
                assert status == 0, f"{path.relative_to(ROOT)}:{line}: onnx-snn {shlex.join(argv)}: exit {status}: {err}"
                assert out.strip(), f"{path.relative_to(ROOT)}:{line}: printed nothing"
    assert (workspace / "model.onnx").is_file()


PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_every_python_block_compiles(block):
    compile(block.text, block.where, "exec")


def test_code_blocks_are_fenced():
    """An indented command block would escape the checks above: commands go in fenced blocks."""
    for path in DOCS:
        inside = False
        for number, row in enumerate(path.read_text().split("\n"), 1):
            inside ^= row.startswith("```")
            assert inside or not re.match(r"^    (onnx-snn|python -m onnx_snn)", row), \
                f"{path.relative_to(ROOT)}:{number}: an indented command; put it in a ```bash block"


# ---- generated references ---------------------------------------------------------------------------

def reference_docs():
    spec = importlib.util.spec_from_file_location("reference_docs", ROOT / "scripts" / "reference_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["cli.md", "api.md"])
def test_generated_references_are_up_to_date(name):
    expected = reference_docs().FILES[name]()
    assert (ROOT / "docs" / name).read_text() == expected, \
        f"docs/{name} is out of date with the code: run python scripts/reference_docs.py"


def test_cli_reference_names_every_option_of_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    for name, command in subparsers(cli.build_parser()).items():
        section = text.split(f"## onnx-snn {name}\n", 1)[1].split("\n## ", 1)[0]
        for option in command._option_string_actions:
            if option not in ("-h", "--help"):
                assert f"`{option}" in section, f"docs/cli.md: onnx-snn {name} {option} is not documented"


def test_api_reference_documents_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in onnx_snn.__all__:
        assert re.search(rf"^### (class )?`onnx_snn\.{name}`", text, re.M), f"docs/api.md: onnx_snn.{name} missing"


# ---- links, paths and names -------------------------------------------------------------------------

def slug(heading: str) -> str:
    """The anchor a Markdown heading gets (GitHub's rule)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_link_between_the_docs_resolves():
    for path in DOCS:
        for number, row in enumerate(path.read_text().split("\n"), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", row):
                if re.match(r"^[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                where = f"{path.relative_to(ROOT)}:{number}: {target}"
                assert linked.is_file(), f"{where}: no such file"
                assert not anchor or anchor in anchors(linked), f"{where}: no such heading"


PATH = re.compile(r"(?<![\w/.~-])((?:tests|benchmarks|models|scripts|onnx_snn|custom_ops)/[\w./*-]*[\w*])")
HYPOTHETICAL = ("NAME", "spiking_x")  # the files "Adding a rule / an op" tells you to write


def test_every_repository_path_the_docs_name_exists():
    for path in DOCS:
        for number, row in enumerate(path.read_text().split("\n"), 1):
            for named in PATH.findall(row):
                if any(h in named for h in HYPOTHETICAL):
                    continue
                assert list(ROOT.glob(named)), f"{path.relative_to(ROOT)}:{number}: {named} does not exist"


NOT_PYTHON = {"onnx_snn.kind", "onnx_snn.layer"}  # node metadata keys, not names


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def test_every_onnx_snn_name_the_docs_mention_exists():
    for path in DOCS:
        for number, row in enumerate(path.read_text().split("\n"), 1):
            for dotted in re.findall(r"(?<![\w/.])onnx_snn(?:\.\w+)+", row):
                if dotted in NOT_PYTHON or dotted == "onnx_snn.cli" and "-m" in row:
                    continue
                try:
                    resolve(dotted)
                except (ImportError, AttributeError):
                    pytest.fail(f"{path.relative_to(ROOT)}:{number}: {dotted} does not exist")


def test_readme_is_short_and_shows_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 10_000
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].replace(" -q", "")
    assert ci in readme, f"README.md does not show .ci/run's command: {ci}"
    assert 'python3 -m pip install -c constraints.txt ".[demo]" && onnx-snn demo' in readme
