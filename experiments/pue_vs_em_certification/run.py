"""EM against PUE: victims, certified (q, eta)-learnability and recovery.

    python experiments/pue_vs_em_certification/run.py \\
        --out runs/pue_vs_em_certification [--only certify|certify-cpu]

certify.json (Wang et al., NDSS 2025: certification and recovery) from
pipeline runs under ``--out``, each resumable: clean victims; a sigma sweep
on the first (the largest sigma whose q-quantile stays >= min_quantile,
unless ``sigma`` is set); class-wise EM and PUE from the same seed; their
victims; both surrogates certified; recovery from each first victim.
certify-cpu.json: the quickstart's EM surrogate (32/255) certified.
"""

import argparse
import pathlib
import sys

import jaxue
from jaxue import runs
from jaxue.pipelines import certify, craft, evaluate, recover

CONFIG = {
    # The settings of the committed certify.json (one H100).
    "full": {"train_size": 10_000, "test_size": None, "widths": [16, 32, 64],
             "epsilon": 8 / 255, "max_rounds": 60, "epochs": 8, "seeds": 3,
             "sigma": None, "min_quantile": 0.7, "sweep_draws": 32,
             "sigma_sweep": [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25],
             "q": 0.9, "draws": 1000, "confidence": 0.99,
             "surrogate_draws": 100, "noise_draws": 10,
             "recovery_etas": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
             "recovery_fraction": 0.2, "recovery_epochs": 10,
             # certify-cpu.json: the quickstart's surrogate (2 CPU cores).
             "cpu": {"epsilon": 32 / 255, "sigma": 0.05, "draws": 1000}},
    # --smoke: tiny sizes, to check that the script runs.
    "smoke": {"train_size": 200, "test_size": 200, "widths": [4, 8, 8],
              "max_rounds": 1, "epochs": 1, "seeds": 1, "min_quantile": 0.0,
              "sweep_draws": 10, "sigma_sweep": [0.05, 0.1], "draws": 10,
              "surrogate_draws": 1, "noise_draws": 1, "recovery_etas": [1.0],
              "recovery_fraction": 0.01, "recovery_epochs": 1,
              "cpu": {"epsilon": 32 / 255, "sigma": 0.05, "draws": 10}},
}
METHODS = ("em-classwise", "pue-classwise")


def surrogate(cfg, out, method, epsilon, sigma=None, quiet=False):
  """`jaxue craft` of one method into ``out/craft/NAME``; its folder."""
  pue = dict(sigma=sigma, surrogate_draws=cfg["surrogate_draws"],
             noise_draws=cfg["noise_draws"]) if method in craft.PUE else {}
  folder = out / "craft" / f"{method}-{round(epsilon * 255)}"
  craft.run(craft.Config(
      method=method, train_size=cfg["train_size"], test_size=cfg["test_size"],
      widths=tuple(cfg["widths"]), epsilon=epsilon,
      max_rounds=cfg["max_rounds"], quiet=quiet, **pue), folder)
  return folder


def pick(results, key):
  """``key`` of each run's results."""
  return {name: r[key] for name, r in results.items()}


def certify_json(cfg, out, quiet=False):
  """certify.json: sweep, EM and PUE, victims, certificates, recovery."""
  shared = dict(test_size=cfg["test_size"], widths=tuple(cfg["widths"]),
                epochs=cfg["epochs"], seeds=cfg["seeds"], quiet=quiet)
  victims = {"clean": evaluate.run(evaluate.Config(
      clean=True, train_size=cfg["train_size"], **shared),
      out / "victims" / "clean")}
  sweep = certify.run(certify.Config(
      models=(str(out / "victims" / "clean" / "models" / "victim-seed0"),),
      names=("clean",), test_size=cfg["test_size"],
      sigma_sweep=tuple(cfg["sigma_sweep"]), sweep_draws=cfg["sweep_draws"],
      sigma=cfg["sigma_sweep"][0], draws=cfg["sweep_draws"], q=cfg["q"],
      quiet=quiet), out / "sigma_sweep")["models"]["clean"]["sigma_sweep"]
  sigma = cfg["sigma"] or max([float(s) for s, v in sweep.items()
                               if v["q_quantile"] >= cfg["min_quantile"]],
                              default=None)
  if sigma is None:
    raise ValueError(f"no sigma of the sweep keeps the clean victim's "
                     f"{cfg['q']}-quantile >= {cfg['min_quantile']}")
  folders = {m: surrogate(cfg, out, m, cfg["epsilon"], sigma, quiet)
             for m in METHODS}
  crafted = {m: runs.read_json(f / "results.json")["craft"]
             for m, f in folders.items()}
  for m, folder in folders.items():
    victims[m] = evaluate.run(evaluate.Config(release=str(folder), **shared),
                              out / "victims" / m)
  certified = certify.run(certify.Config(
      models=tuple(str(folders[m]) for m in METHODS), names=METHODS,
      test_size=cfg["test_size"], sigma=sigma, draws=cfg["draws"],
      q=cfg["q"], confidence=cfg["confidence"], sigma_sweep=(),
      quiet=quiet), out / "certify")["models"]
  recovered = {m: recover.run(recover.Config(
      checkpoint=str(out / "victims" / m), name="victim-seed0",
      test_size=cfg["test_size"], etas=tuple(cfg["recovery_etas"]),
      fraction=cfg["recovery_fraction"], epochs=cfg["recovery_epochs"],
      random_directions=0, quiet=quiet), out / "recover" / m)
               for m in METHODS}
  return {
      "sigma": sigma, "q": cfg["q"], "n": cfg["draws"],
      "confidence": cfg["confidence"], "mode": "per-eta",
      "epsilon": cfg["epsilon"], "train_size": cfg["train_size"],
      "test_size": victims["clean"]["test_size"],
      "curves": pick(certified, "curve"),
      "largest_certified_eta": pick(certified, "largest_certified_eta"),
      "victim_accuracy": pick(victims, "victim_accuracy"),
      "victim_accuracy_per_seed": pick(victims, "victim_accuracy_per_seed"),
      "recovery": pick(recovered, "recovery"),
      "recovery_theta0_accuracy": pick(recovered, "theta0_accuracy"),
      "accuracy_summary": pick(certified, "accuracy_summary"),
      "draws_per_second": pick(certified, "draws_per_second"),
      "sigma_sweep": {"clean": sweep}, "craft": crafted}


def certify_cpu_json(cfg, out, quiet=False):
  """certify-cpu.json: the quickstart's EM surrogate, N draws, no sweep."""
  cpu = cfg["cpu"]
  folder = surrogate(cfg, out, "em-classwise", cpu["epsilon"], quiet=quiet)
  name = f"em-classwise-{round(cpu['epsilon'] * 255)}_255"
  return certify.run(certify.Config(
      models=(str(folder),), names=(name,), sigma=cpu["sigma"],
      draws=cpu["draws"], sigma_sweep=(), test_size=cfg["test_size"],
      quiet=quiet), out / "certify-cpu")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (CONFIG['smoke'])")
  parser.add_argument("--only", choices=("certify", "certify-cpu"))
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  cfg = {**CONFIG["full"], **(CONFIG["smoke"] if args.smoke else {})}
  written = {}
  for name, make in (("certify", certify_json),
                     ("certify-cpu", certify_cpu_json)):
    if args.only in (None, name):
      results = make(cfg, args.out, args.quiet)
      results.pop("accuracies", None)  # Arrays: in the run's certificates/.
      results.update(command=" ".join(["python"] + sys.argv), config=cfg,
                     jaxue_version=jaxue.__version__)
      runs.write_json(args.out / f"{name}.json", results)
      written[name] = results
      print(f"wrote {args.out / name}.json")
  return written


if __name__ == "__main__":
  main()
