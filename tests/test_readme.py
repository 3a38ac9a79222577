"""The README and docs are true: their code runs, commands parse, links exist."""

import pathlib
import re
import shlex

import numpy as np
import pytest

from jaxue import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _section(title: str) -> str:
  return README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _block(text: str, language: str) -> str:
  return text.split(f"```{language}", 1)[1].split("```", 1)[0]


def test_readme_is_a_short_guide_without_commit_hashes():
  assert len(README.splitlines()) <= 200
  hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", README)
            if re.search(r"[a-f]", w) and re.search(r"[0-9]", w)]
  assert not hashes


def test_setup_commands_are_what_ci_runs():
  commands = [line for line in _block(_section("Set-up: two commands"),
                                      "bash").splitlines()
              if line.strip() and not line.startswith("#")]
  assert len(commands) == 2, commands
  install, test = commands
  assert "python3 -m venv .venv" in install
  assert "dataset-fashion-mnist" in install
  assert ".venv/bin/jaxue quickstart --out runs/quick" in install
  ci_lines = [line.strip() for line in
              (ROOT / ".ci" / "run").read_text().splitlines()]
  assert install in ci_lines  # CI runs both commands exactly.
  assert ci_lines[-1] == test


@pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_library_example_runs_as_written(capsys):
  code = _block(_section("The library"), "python")
  scope = {}
  # pylint: disable-next=exec-used
  exec(compile(code, "README.md (The library)", "exec"), scope)
  assert scope["protected"].dtype == np.uint8
  assert scope["protected"].shape == scope["x"].shape == (2000, 28, 28, 1)
  change = np.abs(scope["protected"].astype(int) - scope["x"].astype(int))
  assert 0 < change.max() <= 32
  assert scope["accs"].shape == (100,)
  out = capsys.readouterr().out
  assert out.strip().splitlines()[-1].endswith("8920")


def test_command_line_examples_parse():
  parser = cli.build_parser()
  block = _block(_section("The command line"), "bash")
  lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
  commands = [shlex.split(line)[1:] for line in lines
              if line.startswith("jaxue ") and "--help" not in line]
  assert len(commands) >= 5
  for argv in commands:
    args = parser.parse_args(argv)
    assert args.command in cli.SUBCOMMANDS


def _links(path: pathlib.Path) -> list[str]:
  text = path.read_text()
  return [m for m in re.findall(r"\]\(([^)\s]+)\)", text)
          if not m.startswith(("http://", "https://", "#", "mailto:"))]


@pytest.mark.parametrize("doc", ["README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_exist(doc):
  path = ROOT / doc
  missing = [link for link in _links(path)
             if not (path.parent / link.split("#", 1)[0]).exists()]
  assert not missing, f"{doc} links to missing files: {missing}"


def test_no_reference_to_documents_outside_the_repository():
  # Spelled in pieces so that this file does not match itself.
  outside = ("DESIGN" + ".md", "../" + "shared")
  offenders = [str(path.relative_to(ROOT)) for path in [
      *ROOT.glob("jaxue/**/*.py"), *ROOT.glob("tests/**/*.py"),
      *ROOT.glob("experiments/**/*"), *ROOT.glob("docs/*.md"),
      ROOT / "README.md"]
               if path.is_file() and path.suffix in (".py", ".md")
               and any(name in path.read_text() for name in outside)]
  assert not offenders
