"""Every protection method against every defence: the table of table.json.

    python experiments/methods_vs_defences/run.py \\
        --out runs/methods_vs_defences

`jaxue table` (`jaxue.pipelines.table`) with the recorded settings: eleven
methods on a 4,000-image Fashion-MNIST subset at 16/255, CPU-sized PUE and
REM, one victim seed per cell, under seven defences. Its run directory is
``--out/table``; every cell (a craft run and an evaluate run per defence)
is a run of its own under ``--out/table/cells`` and resumes (rem/run.py
and baselines/run.py can share it with ``--cells``). Writes
``--out/table.json`` (the results) and ``--out/table-heatmap.png``.
"""

import argparse
import pathlib
import shutil
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import table

CONFIG = {
    # The settings of the committed table.json (2 CPU cores).
    "full": {"methods": ["clean", "random", "em-samplewise", "em-classwise",
                         "pue-classwise", "rem", "error-max",
                         "error-max-targeted", "ops", "ar", "lsp"],
             "defences": ["none", "augmentation", "cutout", "mixup",
                          "cutmix", "jpeg", "adversarial"],
             "train_size": 4000, "test_size": None, "widths": [16, 32, 64],
             "epsilon": 16 / 255, "epochs": 8, "seeds": 1, "sigma": 0.05,
             "surrogate_draws": 5, "noise_draws": 2, "rem_train_steps": 150,
             "noise_steps": 5, "eot_draws": 2, "attack_steps": 5,
             "max_rounds": 100, "clean_epochs": 10, "error_max_steps": 20,
             "adv_steps": 10, "seed": 0},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"methods": ["clean", "random", "ops"],
              "defences": ["none", "jpeg"], "train_size": 200,
              "test_size": 200, "widths": [4, 8, 8], "epochs": 1},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  config = table.Config(
      **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()},
      quiet=args.quiet)
  results = table.run(config, args.out / "table")
  shutil.copyfile(args.out / "table" / "heatmap.png",
                  args.out / "table-heatmap.png")
  results = dict(results, command=" ".join(["python"] + sys.argv),
                 config=cfg, jaxue_version=jaxue.__version__)
  runs.write_json(args.out / "table.json", results)
  print(table.markdown(results) + f"wrote {args.out / 'table.json'}")
  return results


if __name__ == "__main__":
  main()
