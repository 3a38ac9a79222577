"""EM on Fashion-MNIST: clean, random, class-/sample-wise EM and an eps sweep.

    python experiments/em_fashion_mnist/run.py --out runs/em_fashion_mnist

Reproduces em.json (Huang et al., ICLR 2021: error-minimizing noise) with
the pipelines: main cells on a stratified ``train_size`` subset (victims on
clean data, on random noise and on class- and sample-wise EM at the first
epsilon), then the sweep on a ``sweep_size`` subset (class- and sample-wise
EM at every epsilon) and the smallest epsilon whose victims fall to the
threshold. Each release is a `jaxue craft` run under ``--out/craft/`` and
its victims a `jaxue evaluate` run under ``--out/victims/``, so a rerun
resumes. Writes ``--out/em.json`` and ``--out/em_eps_sweep.png``.
"""

import argparse
import pathlib
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import _figures
from jaxue.pipelines import craft
from jaxue.pipelines import evaluate

CONFIG = {
    # The settings of the committed em.json (one H100).
    "full": {"train_size": 10_000, "sweep_size": 5_000,
             "epsilons": [8 / 255, 16 / 255, 32 / 255],
             "widths": [64, 128, 256], "epochs": 10, "seeds": 3,
             "max_rounds": 60, "threshold": 0.30, "test_size": None,
             "seed": 0},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"train_size": 200, "sweep_size": 200, "epsilons": [8 / 255],
              "widths": [4, 8, 8], "epochs": 1, "seeds": 1, "max_rounds": 1,
              "test_size": 200},
}
EM = ("em-classwise", "em-samplewise")


def label(epsilon):
  return f"{round(epsilon * 255)}/255"


def cell(cfg, out, method, size, epsilon=None, quiet=False):
  """Victims on clean data or on a release (crafted first, once)."""
  name = f"{method}-{size}" + (f"-{round(epsilon * 255)}" if epsilon else "")
  shared = dict(widths=tuple(cfg["widths"]), test_size=cfg["test_size"],
                seed=cfg["seed"], quiet=quiet)
  summary = {}
  if method == "clean":
    source = dict(clean=True, train_size=size)
  else:
    rounds = {"max_rounds": cfg["max_rounds"]} if method in EM else {}
    crafted = craft.run(craft.Config(method=method, train_size=size,
                                     epsilon=epsilon, **rounds, **shared),
                        out / "craft" / name)
    source = dict(release=str(out / "craft" / name))
    if method in EM:
      summary = {k: crafted["craft"][k] for k in ("rounds", "converged")}
      summary["final_noisy_accuracy"] = crafted["craft"]["noisy_accuracy"][-1]
      summary["seconds"] = crafted["wall_seconds"]["craft"]
  victims = evaluate.run(evaluate.Config(epochs=cfg["epochs"],
                                         seeds=cfg["seeds"], **source,
                                         **shared), out / "victims" / name)
  return {"name": name, "accuracy": victims["victim_accuracy"],
          "per_seed": victims["victim_accuracy_per_seed"], "craft": summary}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  size, sweep_size, eps = cfg["train_size"], cfg["sweep_size"], cfg["epsilons"]

  def run(method, n, epsilon=None):
    return cell(cfg, args.out, method, n, epsilon, args.quiet)

  main_cells = {m: run(m, size, None if m == "clean" else eps[0])
                for m in ("clean", "random") + EM}
  sweep = {"clean": run("clean", sweep_size)}
  sweep.update({m: {label(e): run(m, sweep_size, e) for e in eps}
                for m in EM})
  victim = {"clean": main_cells["clean"]["accuracy"],
            "random": {label(eps[0]): main_cells["random"]["accuracy"]}}
  train_size = {"clean": size, "random": size}
  smallest = {}
  for m in EM:
    victim[m] = {label(eps[0]): main_cells[m]["accuracy"]}
    victim[m].update({label(e): sweep[m][label(e)]["accuracy"]
                      for e in eps[1:]})
    train_size[m] = {label(e): size if i == 0 else sweep_size
                     for i, e in enumerate(eps)}
    below = [e for e in eps
             if sweep[m][label(e)]["accuracy"] <= cfg["threshold"]]
    smallest[m] = label(min(below)) if below else None
  cells = list(main_cells.values()) + [sweep["clean"]] + [
      c for m in EM for c in sweep[m].values()]
  results = {
      "victim_accuracy": victim, "train_size": train_size,
      "sweep": {"train_size": sweep_size, "victim_accuracy": {
          "clean": sweep["clean"]["accuracy"],
          **{m: {k: c["accuracy"] for k, c in sweep[m].items()}
             for m in EM}}},
      "smallest_epsilon_at_or_below": {"threshold": cfg["threshold"],
                                       **smallest},
      "victim_accuracy_per_seed": {c["name"]: c["per_seed"] for c in cells},
      "craft": {c["name"]: c["craft"] for c in cells if c["craft"]},
      "epochs": cfg["epochs"], "seeds": cfg["seeds"],
      "model": {"name": "small_cnn", "widths": cfg["widths"]},
      "command": " ".join(["python"] + sys.argv), "config": cfg,
      "jaxue_version": jaxue.__version__,
  }
  _figures.line_plot(
      args.out / "em_eps_sweep.png",
      {m: [(e * 255, sweep[m][label(e)]["accuracy"]) for e in eps]
       for m in EM}, xlabel="epsilon (x/255)",
      ylabel="victim clean test accuracy",
      title=f"{sweep_size} training images; clean "
      f"{sweep['clean']['accuracy']:.3f}")
  runs.write_json(args.out / "em.json", results)
  print(f"victim accuracy {victim}\nsmallest eps with victim <= "
        f"{cfg['threshold']}: {smallest}\nwrote {args.out / 'em.json'}")
  return results


if __name__ == "__main__":
  main()
