"""Weight-recovery attack on the first EM and PUE victims (PUE, NDSS 2025).

    python experiments/recovery/run.py --out runs/recovery

The recovery part of ../pue_vs_em_certification/ (its certify.json holds
the committed numbers): class-wise EM and PUE noise (`jaxue craft`, same
seed, PUE robust to sigma 0.05, the sweep's choice in that run), victims on
each release (`jaxue evaluate`), then projected SGD from each method's
first victim on a stratified 20% of the clean training set within L2
radius eta, for every eta (`jaxue recover`). The runs have the same
directories and settings as pue_vs_em_certification/run.py's, so ``--out``
of that study reuses its crafts and victims. Writes ``--out/recovery.json``
and ``--out/recovery.png``; each run resumes.
"""

import argparse
import pathlib
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import _figures
from jaxue.pipelines import craft
from jaxue.pipelines import evaluate
from jaxue.pipelines import recover

CONFIG = {
    # The settings of the committed run (one H100).
    "full": {"train_size": 10_000, "test_size": None, "widths": [16, 32, 64],
             "epsilon": 8 / 255, "max_rounds": 60, "epochs": 8, "seeds": 3,
             "sigma": 0.05, "surrogate_draws": 100, "noise_draws": 10,
             "recovery_etas": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
             "recovery_fraction": 0.2, "recovery_epochs": 10},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"train_size": 200, "test_size": 200, "widths": [4, 8, 8],
              "max_rounds": 1, "epochs": 1, "seeds": 1, "surrogate_draws": 1,
              "noise_draws": 1, "recovery_etas": [1.0],
              "recovery_fraction": 0.01, "recovery_epochs": 1},
}
METHODS = ("em-classwise", "pue-classwise")


def recovery(cfg, out, method, quiet=False):
  """Craft, victims and the recovery attack of one method."""
  pue = dict(sigma=cfg["sigma"], surrogate_draws=cfg["surrogate_draws"],
             noise_draws=cfg["noise_draws"]) if method in craft.PUE else {}
  folder = out / "craft" / f"{method}-{round(cfg['epsilon'] * 255)}"
  craft.run(craft.Config(
      method=method, train_size=cfg["train_size"], test_size=cfg["test_size"],
      widths=tuple(cfg["widths"]), epsilon=cfg["epsilon"],
      max_rounds=cfg["max_rounds"], quiet=quiet, **pue), folder)
  evaluate.run(evaluate.Config(
      release=str(folder), test_size=cfg["test_size"],
      widths=tuple(cfg["widths"]), epochs=cfg["epochs"], seeds=cfg["seeds"],
      quiet=quiet), out / "victims" / method)
  return recover.run(recover.Config(
      checkpoint=str(out / "victims" / method), name="victim-seed0",
      test_size=cfg["test_size"], etas=tuple(cfg["recovery_etas"]),
      fraction=cfg["recovery_fraction"], epochs=cfg["recovery_epochs"],
      random_directions=0, quiet=quiet), out / "recover" / method)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  recovered = {m: recovery(cfg, args.out, m, args.quiet) for m in METHODS}
  results = {
      "recovery": {m: r["recovery"] for m, r in recovered.items()},
      "recovery_theta0_accuracy": {m: r["theta0_accuracy"]
                                   for m, r in recovered.items()},
      "theta0_norm": {m: r["theta0_norm"] for m, r in recovered.items()},
      "recovery_size": recovered[METHODS[0]]["recovery_size"],
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "jaxue_version": jaxue.__version__,
  }
  _figures.line_plot(args.out / "recovery.png", results["recovery"],
                     xlabel="eta (L2 radius)",
                     ylabel="clean test accuracy after recovery", logx=True)
  runs.write_json(args.out / "recovery.json", results)
  print(f"recovery (eta, accuracy): {results['recovery']}; theta0: "
        f"{results['recovery_theta0_accuracy']}")
  return results


if __name__ == "__main__":
  main()
