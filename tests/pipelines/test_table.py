"""`jaxue table`: cells composed of craft and evaluate runs, reuse, flags."""

import json

import numpy as np
import pytest

from jaxue import cli
from jaxue import noise as noise_lib
from jaxue import runs
from jaxue import train
from jaxue.pipelines import table

TINY = dict(methods=("clean", "random"), defences=("none", "jpeg"),
            train_size=200, test_size=200, widths=(4, 8, 8), epochs=1,
            poison_ratio=0.5, quiet=True)
FLAGS = ["--methods", "clean,random", "--train-size", "200", "--test-size",
         "200", "--widths", "4,8,8", "--epochs", "1", "--poison-ratio", "0.5",
         "--quiet"]


def _forbid_work(monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished cell was computed again")

  monkeypatch.setattr(noise_lib, "uniform_noise", must_not_run)
  monkeypatch.setattr(train, "train_victim", must_not_run)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  out = tmp_path_factory.mktemp("table") / "table"
  return out, table.run(table.Config(**TINY), out)


def test_cells_outputs_and_partial_protection(first):
  out, results = first
  acc = results["victim_accuracy"]
  assert set(acc) == {"clean", "random"}
  assert all(set(row) == {"none", "jpeg"} for row in acc.values())
  assert all(0 <= a <= 1 for row in acc.values() for a in row.values())
  saved = json.loads((out / "results.json").read_text())
  assert saved["victim_accuracy"] == acc
  assert saved["poison_ratio"] == 0.5 and saved["train_size"] == 200
  assert saved["epsilon"] == pytest.approx(32 / 255)
  assert saved["budgets"] == {"random": "Linf 32/255"}
  grid = json.loads((out / "table.json").read_text())
  assert grid["victim_accuracy"] == acc and grid["defences"] == ["none",
                                                                  "jpeg"]
  assert (out / "heatmap.png").is_file()
  markdown = (out / "table.md").read_text()
  assert "| random |" in markdown and "50% of them protected" in markdown
  # Each cell is a run of its own pipeline, keyed by its settings.
  assert runs.read_run(out / "cells" / "random")["kind"] == "craft"
  assert (out / "cells" / "random" / "release.npz").is_file()
  cell = out / "cells" / "random" / "jpeg"
  assert runs.read_run(cell)["kind"] == "evaluate"
  victims = json.loads((cell / "results.json").read_text())
  assert victims["defence"] == "jpeg" and victims["protected_images"] == 100
  assert victims["model"]["widths"] == [4, 8, 8]
  clean = json.loads((out / "cells" / "clean" / "none" / "results.json")
                     .read_text())
  assert clean["training_data"] == "clean" and clean["train_size"] == 200
  assert clean["protected_images"] is None


def test_second_call_reuses_every_cell(first, tmp_path, monkeypatch):
  out, results = first
  _forbid_work(monkeypatch)
  again = table.run(table.Config(**TINY), out)
  assert again["victim_accuracy"] == results["victim_accuracy"]
  # Another table over the same cells: "standard" is the "none" cell.
  other = table.run(table.Config(**dict(
      TINY, defences=("standard", "jpeg"), cells=str(out / "cells"))),
                    tmp_path / "other")
  assert other["victim_accuracy"] == {
      m: {"standard": row["none"], "jpeg": row["jpeg"]}
      for m, row in results["victim_accuracy"].items()}
  assert not (tmp_path / "other" / "cells").exists()


def test_another_epsilon_never_reuses_a_cell(first, tmp_path, monkeypatch,
                                             capsys):
  out, _ = first
  _forbid_work(monkeypatch)
  # The table itself refuses it...
  assert cli.main(["table", "--out", str(out), "--defences", "none,jpeg",
                   "--epsilon", "16/255"] + FLAGS) == 2
  err = capsys.readouterr().err
  assert "epsilon" in err and "Traceback" not in err
  # ... and so does a crafted cell shared through --cells.
  assert cli.main(["table", "--out", str(tmp_path / "t16"), "--cells",
                   str(out / "cells"), "--defences", "none", "--epsilon",
                   "16/255"] + FLAGS) == 2
  err = capsys.readouterr().err
  assert "cells/random" in err and "epsilon" in err


def test_from_runs_takes_an_earlier_release(first, tmp_path):
  out, results = first
  source = out / "cells" / "random"
  taken = table.run(table.Config(**dict(
      TINY, methods=("random",), defences=("none",),
      from_runs=(f"random={source}",))), tmp_path / "t")
  assert taken["victim_accuracy"]["random"]["none"] == (
      results["victim_accuracy"]["random"]["none"])
  assert taken["from_runs"] == {"random": str(source)}
  assert not (tmp_path / "t" / "cells" / "random" / "run.json").exists()


def test_cell_settings():
  config = table.Config(epsilon=16 / 255)
  for method in ("error-max", "error-max-targeted"):
    cell = table.craft_config(config, method)
    assert cell.surrogate_augment is True and cell.pgd_steps == 20
    cell = table.craft_config(table.Config(surrogate_augment=False,
                                           error_max_steps=5), method)
    assert cell.surrogate_augment is False and cell.pgd_steps == 5
  # Every default is explicit in a cell's key, e.g. AR's bound.
  assert table.craft_config(config, "ar").ar_min_response == 10.0
  assert table.craft_config(table.Config(ar_min_response=3.0),
                            "ar").ar_min_response == 3.0
  assert table.craft_config(config, "lsp").ar_min_response is None
  assert table.craft_config(config, "ops").epsilon is None
  rem = table.craft_config(config, "rem")
  assert rem.rho_a == pytest.approx(8 / 255) and rem.epsilon == 16 / 255
  assert table.craft_config(table.Config(sigma=0.25),
                            "pue-classwise").sigma == 0.25
  # Only a PUE cell is keyed by sigma.
  assert table.craft_config(table.Config(sigma=0.25), "em-classwise").sigma \
      == table.craft_config(config, "em-classwise").sigma
  adv = table.evaluate_config(config, "adversarial", None)
  assert adv.adversarial and adv.adv_radius == pytest.approx(8 / 255)
  assert adv.adv_steps == 10 and adv.clean
  victims = table.evaluate_config(table.Config(poison_ratio=0.5, model=
                                               "small_cnn_flat"),
                                  "standard", "runs/x")
  assert victims.defence == "none" and victims.release == "runs/x"
  assert victims.poison_ratio == 0.5 and victims.model == "small_cnn_flat"
  assert table.craft_config(table.Config(model="small_cnn_flat"),
                            "em-classwise").model == "small_cnn_flat"


def _fake_craft_run(folder, method):
  folder.mkdir(parents=True)
  (folder / "results.json").write_text(json.dumps(
      {"method": method, "dataset": "fashion_mnist", "train_size": 20}))
  runs.save_arrays(folder / "release.npz",
                   {"images": np.zeros((20, 28, 28, 1), np.uint8)})
  return folder


@pytest.mark.parametrize("argv,message", [
    (["--defences", "none,magic"], "--defences: unknown 'magic'"),
    (["--methods", "clean,clean"], "--methods lists 'clean' twice"),
    (["--defences", "none,standard"], "lists both none and standard"),
    (["--poison-ratio", "0"], "--poison-ratio must be in (0, 1]"),
    (["--methods", "clean", "--from-runs", "random=x"],
     "--from-runs random=x: METHOD must be one of the crafted --methods"),
    (["--methods", "random", "--from-runs", "random"],
     "--from-runs entries must be METHOD=DIR"),
    (["--model", "vgg"], "--model: unknown 'vgg'"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, message):
  assert cli.main(["table", "--out", str(tmp_path / "t"), "--quiet"]
                  + argv) == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "t").exists()


def test_from_runs_checks_the_folder(tmp_path, capsys):
  crafted = _fake_craft_run(tmp_path / "em", "em-classwise")
  base = ["table", "--out", str(tmp_path / "t"), "--methods", "random",
          "--defences", "none", "--quiet"]
  assert cli.main(base + ["--from-runs", f"random={crafted}"]) == 2
  assert "holds a 'em-classwise' release, not 'random'" in (
      capsys.readouterr().err)
  assert cli.main(base + ["--from-runs", f"random={tmp_path / 'none'}"]) == 2
  assert "no jaxue craft run there" in capsys.readouterr().err
  mnist = _fake_craft_run(tmp_path / "mnist", "random")
  (mnist / "results.json").write_text(json.dumps(
      {"method": "random", "dataset": "mnist"}))
  assert cli.main(base + ["--from-runs", f"random={mnist}"]) == 2
  assert "a release of mnist, not of the table's fashion_mnist" in (
      capsys.readouterr().err)
  assert not (tmp_path / "t").exists()
