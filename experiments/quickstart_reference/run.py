"""The quickstart reference run: `jaxue quickstart` with the recorded settings.

    python experiments/quickstart_reference/run.py \\
        --out runs/quickstart_reference

Class-wise EM and PUE noise on a 10,000-image Fashion-MNIST subset at
32/255, victims on the clean, random, EM and PUE releases, both crafting
surrogates certified with N = 100 draws on 2,000 test images
(`jaxue.pipelines.quickstart`; its run directory is ``--out/quickstart``
and resumes). Writes ``--out/quickstart.json`` and copies of the two
figures kept in this folder (quickstart_samples.png,
quickstart_victim_curves.png).
"""

import argparse
import pathlib
import shutil
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import quickstart

CONFIG = {
    # The settings of the committed quickstart.json (2 CPU cores).
    "full": {"train_size": 10_000, "test_size": None, "method": "em-classwise",
             "widths": [16, 32, 64], "epsilon": 32 / 255, "max_rounds": 60,
             "epochs": 8, "seeds": 1, "sigma": 0.05, "draws": 100,
             "certify_test_size": 2000, "pue_draws": 2, "seed": 0},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"train_size": 200, "test_size": 200, "widths": [4, 8, 8],
              "max_rounds": 1, "epochs": 1, "draws": 10,
              "certify_test_size": 200, "pue_draws": 1},
}
FIGURES = {"samples.png": "quickstart_samples.png",
           "victim_curves.png": "quickstart_victim_curves.png"}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  config = quickstart.Config(**{**cfg, "widths": tuple(cfg["widths"])},
                             quiet=args.quiet)
  results = quickstart.run(config, args.out / "quickstart")
  for source, target in FIGURES.items():
    shutil.copyfile(args.out / "quickstart" / source, args.out / target)
  results = dict(results, command=" ".join(["python"] + sys.argv),
                 config=cfg, jaxue_version=jaxue.__version__)
  runs.write_json(args.out / "quickstart.json", results)
  print(f"victim accuracy {results['victim_accuracy']}; wrote "
        f"{args.out / 'quickstart.json'}")
  return results


if __name__ == "__main__":
  main()
