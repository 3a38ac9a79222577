"""The study scripts of experiments/: short, on the library, and running.

Each study folder's run.py composes `jaxue.pipelines` runs; a few of the
cheapest run here with ``--smoke`` (tiny sizes), in-process so that they
share compiled functions.
"""

import ast
import importlib.util
import json
import pathlib
import re
import sys
import textwrap

import pytest

from jaxue import noise
from jaxue import train

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
MAX_LINES = 150
ALLOWED = {"jaxue", "numpy", "jax", "flax", "matplotlib"}
# experiments/__init__.py only lets the tests import the scripts.
SCRIPTS = sorted(p for p in EXPERIMENTS.rglob("*.py")
                 if p.name != "__init__.py")


def _load(study):
  """The run.py of ``experiments/<study>/`` as a module."""
  path = EXPERIMENTS / study / "run.py"
  spec = importlib.util.spec_from_file_location(f"study_{study}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _imported(path):
  """Top-level package names a script imports."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}: relative import"
      names.add(node.module.split(".")[0])
  return names


def test_every_study_folder_has_a_run_script_and_notes_with_its_command():
  studies = {p.name for p in EXPERIMENTS.iterdir()
             if p.is_dir() and p.name != "__pycache__"}
  assert {"quickstart_reference", "pue_vs_em", "certificates", "rem",
          "rem_authors_setting", "methods_vs_defences_2"} <= studies
  for study in studies:
    assert (EXPERIMENTS / study / "run.py").is_file(), study
    notes = (EXPERIMENTS / study / "NOTES.md").read_text()
    assert f"python experiments/{study}/run.py --out runs/{study}" in notes
  assert EXPERIMENTS / "api_example.py" in SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS,
                         ids=[str(p.relative_to(EXPERIMENTS)) for p in SCRIPTS])
def test_scripts_are_short_and_import_only_the_library(path):
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_LINES, (
      f"{path.relative_to(REPO)} has {lines} lines; move the reusable part "
      "into the library")
  foreign = _imported(path) - ALLOWED - set(sys.stdlib_module_names)
  assert not foreign, f"{path.relative_to(REPO)} imports {sorted(foreign)}"


def test_api_example_is_the_readme_example():
  readme = REPO / "README.md"
  blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(),
                                  re.S)
            if "noise.error_minimizing_noise(" in b and "min_draws" in b]
  assert len(blocks) == 1
  tree = ast.parse((EXPERIMENTS / "api_example.py").read_text())
  main = next(n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == "main")
  source = (EXPERIMENTS / "api_example.py").read_text().splitlines()
  body = "\n".join(source[main.body[0].lineno - 1:main.end_lineno]) + "\n"
  assert textwrap.dedent(body) == blocks[0]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """Each study's smoke run: ``study -> (out, results)``."""
  out = tmp_path_factory.mktemp("studies")
  return {study: (out / study, _load(study).main(
      ["--out", str(out / study), "--smoke", "--quiet"] + extra))
          for study, extra in (("em_fashion_mnist", []),
                               ("error_max_surrogates", []),
                               ("pue_vs_em_certification",
                                ["--only", "certify"]))}


@pytest.mark.slow
def test_em_fashion_mnist_smoke_and_resume(smoke, monkeypatch):
  out, results = smoke["em_fashion_mnist"]
  saved = json.loads((out / "em.json").read_text())
  assert saved["victim_accuracy"] == results["victim_accuracy"]
  assert set(saved["victim_accuracy"]) == {"clean", "random", "em-classwise",
                                           "em-samplewise"}
  assert set(saved["smallest_epsilon_at_or_below"]) == {
      "threshold", "em-classwise", "em-samplewise"}
  assert saved["config"]["widths"] == [4, 8, 8]
  assert (out / "em_eps_sweep.png").is_file()
  assert (out / "craft" / "em-classwise-200-8" / "release.npz").is_file()

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished run was computed again")

  # Every pipeline run is finished: a rerun only reads them.
  monkeypatch.setattr(train, "train_victim", must_not_run)
  monkeypatch.setattr(noise, "craft", must_not_run)
  again = _load("em_fashion_mnist").main(
      ["--out", str(out), "--smoke", "--quiet"])
  assert again["victim_accuracy"] == results["victim_accuracy"]


@pytest.mark.slow
def test_error_max_surrogates_smoke(smoke):
  out, written = smoke["error_max_surrogates"]
  saved = json.loads((out / "error_max_surrogates.json").read_text())
  assert set(written) == {"error_max_surrogates"}
  assert set(saved["summary"]) == {"augmented", "unaugmented"}
  cells = saved["cells"]
  assert [c["surrogate_augment"] for c in cells["augmented"]] == [True]
  assert [c["surrogate_augment"] for c in cells["unaugmented"]] == [False]
  assert 0 <= cells["augmented"][0]["surrogate_test_accuracy"] <= 1
  assert saved["summary"]["augmented"]["below_clean"] == pytest.approx(
      saved["clean_victim_accuracy"]
      - cells["augmented"][0]["victim_accuracy"])


@pytest.mark.slow
def test_pue_vs_em_certification_smoke(smoke):
  out, written = smoke["pue_vs_em_certification"]
  assert set(written) == {"certify"}
  saved = json.loads((out / "certify.json").read_text())
  methods = {"em-classwise", "pue-classwise"}
  assert set(saved["curves"]) == set(saved["recovery"]) == methods
  assert set(saved["victim_accuracy"]) == methods | {"clean"}
  # The sigma sweep chose the largest sigma (min_quantile 0 in the smoke).
  assert saved["sigma"] == 0.1 and set(saved["sigma_sweep"]["clean"]) == {
      "0.05", "0.1"}
  assert saved["n"] == 10 and "accuracies" not in saved
  assert (out / "certify" / "certified_learnability.png").is_file()
  assert (out / "recover" / "em-classwise" / "recovery.png").is_file()
