"""Every protection method against every defence, old and new (issue 26).

    python experiments/methods_vs_defences_2/run.py \\
        --out runs/methods_vs_defences_2

`jaxue table` (`jaxue.pipelines.table`) with the recorded settings: every
`jaxue craft` method on a 1,000-image Fashion-MNIST subset at 16/255
(CPU-sized PUE and REM), two victim seeds per cell, under every defence
(grayscale, a no-op on 1-channel images, and UEraser's standard schedule,
between Lite and Max, left out). The cells are filled in phases over one
``--out/cells`` folder (cheap defences first, then UEraser-Max, then
adversarial training), so an interrupted run has the most columns for the
most rows; every cell resumes. The last phase is the whole table, which
finds every cell finished. Writes ``--out/table/`` and, next to this
script unless ``--results`` says otherwise, table.json (results, command,
settings), table.md and heatmap.png.
"""

import argparse
import pathlib
import shutil
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import craft
from jaxue.pipelines import table

HERE = pathlib.Path(__file__).resolve().parent
CHEAP = ["none", "augmentation", "cutout", "mixup", "cutmix", "jpeg",
         "orthogonal-projection", "ueraser-lite"]
CONFIG = {
    "full": {"methods": ["clean"] + list(craft.METHODS),
             "phases": [CHEAP, ["ueraser-max"], ["adversarial"]],
             "train_size": 2000, "test_size": 1000, "widths": [16, 32, 64],
             "epsilon": 16 / 255, "epochs": 8, "seeds": 2, "sigma": 0.05,
             "surrogate_draws": 5, "noise_draws": 2, "rem_train_steps": 150,
             "noise_steps": 5, "eot_draws": 2, "attack_steps": 5,
             "max_rounds": 100, "clean_epochs": 10, "error_max_steps": 20,
             "adv_steps": 5, "seed": 0},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"methods": ["clean", "random", "em-classwise"],
              "phases": [["none", "orthogonal-projection"],
                         ["ueraser-lite"]],
              "train_size": 200, "test_size": 200, "widths": [4, 8, 8],
              "epochs": 1, "max_rounds": 2},
}


def config_of(cfg, methods, defences, cells, quiet):
  """The table of ``methods`` x ``defences``; a method whose craft cell is
  finished is taken from it (--from-runs), so that later changes to
  `jaxue craft`'s flags do not make the table refuse it."""
  fields = {k: tuple(v) if isinstance(v, list) else v
            for k, v in cfg.items() if k not in ("phases", "methods")}
  done = tuple(f"{m}={cells}/{m}" for m in methods if m != "clean" and all(
      (pathlib.Path(cells) / m / f).is_file()
      for f in ("release.npz", "results.json")))
  return table.Config(methods=tuple(methods), defences=tuple(defences),
                      cells=cells, from_runs=done, quiet=quiet, **fields)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--results", type=pathlib.Path, default=HERE,
                      help="folder for table.json, table.md, heatmap.png")
  parser.add_argument("--methods", default=None,
                      help="only these methods (comma-separated)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  methods = (args.methods.split(",") if args.methods else cfg["methods"])
  cells = str(args.out / "cells")
  for i, defences in enumerate(cfg["phases"]):
    print(f"=== phase {i + 1}: {', '.join(defences)}", flush=True)
    table.run(config_of(cfg, methods, defences, cells, args.quiet),
              args.out / f"phase{i + 1}", overwrite=True)
  every = [d for phase in cfg["phases"] for d in phase]
  results = table.run(config_of(cfg, methods, every, cells, args.quiet),
                      args.out / "table", overwrite=True)
  args.results.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(args.out / "table" / "heatmap.png",
                  args.results / "heatmap.png")
  shutil.copyfile(args.out / "table" / "table.md", args.results / "table.md")
  results = dict(results, command=" ".join(["python"] + sys.argv),
                 config=dict(cfg, methods=methods),
                 jaxue_version=jaxue.__version__)
  runs.write_json(args.results / "table.json", results)
  print(table.markdown(results) + f"wrote {args.results / 'table.json'}")
  return results


if __name__ == "__main__":
  main()
