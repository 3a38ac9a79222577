"""Error-max noise from clean surrogates trained with and without augmentation.

    python experiments/error_max_surrogates/run.py \\
        --out runs/error_max_surrogates

Error-maximizing noise (PGD against a fully trained clean surrogate; Huang
et al., ICLR 2021, Sec. 4.1) depends on the one surrogate it attacks, so a
single crafting run says little. For each of ``surrogates`` surrogates
(surrogate i is `jaxue craft --method error-max --seed i`: its
initialisation and its stratified subset derive from seed i), the clean
surrogate is trained with the dataset's standard augmentation and without,
sample-wise noise is crafted against each, and ``seeds`` standard victims
are trained on every release with the same victim keys as the clean
victims (`jaxue evaluate --seed 0`). One results JSON per committed file:
``clean_epochs`` 10 (error_max_surrogates.json) and 20
(error_max_surrogates-20epochs.json). Every craft and evaluate run has its
own directory under ``--out``, so a rerun resumes.
"""

import argparse
import pathlib
import sys

import numpy as np

import jaxue
from jaxue import runs
from jaxue.pipelines import craft
from jaxue.pipelines import evaluate

CONFIG = {
    # The settings of the committed JSONs (2 CPU cores), by file.
    "full": {"train_size": 4000, "widths": [16, 32, 64],
             "epsilon": 16 / 255, "pgd_steps": 20, "epochs": 8,
             "surrogates": 3, "seeds": 3, "test_size": None,
             "clean_epochs": {"error_max_surrogates": 10,
                              "error_max_surrogates-20epochs": 20}},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"train_size": 200, "widths": [4, 8, 8], "pgd_steps": 1,
              "epochs": 1, "surrogates": 1, "seeds": 1, "test_size": 200,
              "clean_epochs": {"error_max_surrogates": 1}},
}
KINDS = {"augmented": True, "unaugmented": False}


def victims(cfg, out, quiet, **source):
  """`jaxue evaluate` of one training set: mean and per-seed accuracy."""
  result = evaluate.run(evaluate.Config(
      widths=tuple(cfg["widths"]), epochs=cfg["epochs"], seeds=cfg["seeds"],
      test_size=cfg["test_size"], seed=0, quiet=quiet, **source), out)
  return {"victim_accuracy": result["victim_accuracy"],
          "victim_accuracy_per_seed": result["victim_accuracy_per_seed"]}


def study(cfg, out, clean_epochs, quiet=False):
  """One committed JSON: every surrogate of both kinds, and the clean
  victims."""
  clean = victims(cfg, out / "victims" / "clean", quiet, clean=True,
                  train_size=cfg["train_size"])
  cells = {}
  for kind, augment in KINDS.items():
    cells[kind] = []
    for i in range(cfg["surrogates"]):
      name = f"{kind}-{i}-clean_epochs{clean_epochs}"
      crafted = craft.run(craft.Config(
          method="error-max", train_size=cfg["train_size"],
          widths=tuple(cfg["widths"]), epsilon=cfg["epsilon"],
          pgd_steps=cfg["pgd_steps"], clean_epochs=clean_epochs,
          surrogate_augment=augment, test_size=cfg["test_size"], seed=i,
          quiet=quiet), out / "craft" / name)
      cell = {"name": name, "surrogate": i, "surrogate_augment": augment,
              "surrogate_test_accuracy":
                  crafted["craft"]["surrogate_test_accuracy"],
              "craft_seconds": crafted["wall_seconds"]["craft"]}
      cell.update(victims(cfg, out / "victims" / name, quiet,
                          release=str(out / "craft" / name)))
      cells[kind].append(cell)
  summary = {}
  for kind, row in cells.items():
    means = [c["victim_accuracy"] for c in row]
    summary[kind] = {
        "victim_accuracy": float(np.mean(means)),
        "below_clean": clean["victim_accuracy"] - float(np.mean(means)),
        "per_surrogate": means,
        "min_below_clean": clean["victim_accuracy"] - max(means)}
  return {
      "clean_victim_accuracy": clean["victim_accuracy"],
      "clean_victim_accuracy_per_seed": clean["victim_accuracy_per_seed"],
      "summary": summary, "cells": cells, "dataset": "fashion_mnist",
      "train_size": cfg["train_size"], "epsilon": cfg["epsilon"],
      "clean_epochs": clean_epochs,
      "model": {"name": "small_cnn", "widths": cfg["widths"]},
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  written = {}
  for file, clean_epochs in cfg["clean_epochs"].items():
    results = study(cfg, args.out, clean_epochs, args.quiet)
    results.update(command=" ".join(["python"] + sys.argv), config=cfg,
                   jaxue_version=jaxue.__version__)
    runs.write_json(args.out / f"{file}.json", results)
    written[file] = results
    print(f"clean epochs {clean_epochs}: clean victims "
          f"{results['clean_victim_accuracy']:.3f}; " + "; ".join(
              f"{kind} {s['victim_accuracy']:.3f} ({s['below_clean']:.3f} "
              "below clean)" for kind, s in results["summary"].items()))
  return written


if __name__ == "__main__":
  main()
