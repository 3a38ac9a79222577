"""The robustness table: victims trained normally and adversarially on each
protected dataset (method x training), as in Fu et al. 2022, Tables 1-2.

    python -m experiments.table --out runs/table

For each method (clean, random, em-samplewise, rem, error-max by default;
also error-max-targeted, em-classwise) the training subset is protected with
`experiments.craft` at eps = ``--epsilon`` (rho_u; REM's rho_a defaults to
eps / 2) -- or taken from ``--from METHOD=DIR``, the ``--out`` of an earlier
craft run -- and victims are trained with `experiments.evaluate`, once by
standard training and once by Madry adversarial training at radius rho_a
(``--adv-steps`` steps of rho_a / 5). Writes ``results.json`` (victim accuracy
per method and training: the mean over ``--seeds``, spread, per seed; the
crafting wall times; every setting) and ``table.md``.

Every cell lives in its own folder under ``--out`` (``craft/METHOD``,
``victims/METHOD-TRAINING``) and is skipped when rerun with the same
settings; an interrupted REM or EM crafting run resumes from its last
checkpoint. The defaults are the published settings; on a 2-core CPU scale
down with ``--train-size``, ``--widths``, ``--rem-train-steps``,
``--eot-draws``, ``--attack-steps``, ``--noise-steps`` and ``--epochs`` (all
recorded in results.json).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib
import time
from typing import Any

import numpy as np

from experiments import common
from experiments import craft
from experiments import evaluate
from jaxue import checkpoint
from jaxue import noise as noise_lib

DEFAULT_METHODS = ("clean", "random", "em-samplewise", "rem", "error-max")
METHODS = ("clean",) + craft.METHODS
TRAININGS = ("standard", "adversarial")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.table", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                 help=f"comma-separated, from {', '.join(METHODS)}")
  p.add_argument("--from", dest="sources", action="append", default=[],
                 metavar="METHOD=DIR",
                 help="use the released data of an earlier "
                 "experiments.craft --out DIR for METHOD (repeatable)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="stratified training subset (default: whole set)")
  p.add_argument("--widths", type=common.widths_arg, default=None,
                 help="small CNN widths of surrogates and victims (default:"
                 " published 64,128,256; e.g. 16,32,64 on a CPU)")
  p.add_argument("--epsilon", type=common.parse_fraction, default=8 / 255,
                 help="noise budget rho_u of every method (default 8/255)")
  p.add_argument("--epochs", type=common.positive_int, default=8,
                 help="victim epochs (default 8)")
  p.add_argument("--seeds", type=common.positive_int, default=2,
                 help="victims per cell (default 2)")
  p.add_argument("--adv-steps", type=common.nonnegative_int, default=10,
                 help="PGD steps of adversarial training (default 10, of "
                 "rho_a / 5)")
  p.add_argument("--max-rounds", type=common.positive_int, default=100,
                 help="EM rounds at most (default 100)")
  craft.add_rem_arguments(p)  # Also the adversarial victims' --rho-a.
  p.add_argument("--clean-epochs", type=common.positive_int, default=10,
                 help="epochs of error-max's clean surrogate (default 10)")
  p.add_argument("--error-max-steps", type=common.positive_int, default=20,
                 help="PGD steps of error-max noise (default 20, of "
                 "eps / 10)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in args.method_list if m not in METHODS]
  if unknown or not args.method_list:
    raise common.UsageError(f"unknown method(s) {unknown}; choose from "
                            f"{', '.join(METHODS)}")
  noise_lib.check_epsilon(args.epsilon)
  args.rho_a = args.epsilon / 2 if args.rho_a is None else args.rho_a
  noise_lib.check_epsilon(args.rho_a, "rho_a")
  source_dirs(args)
  return args


def source_dirs(args: argparse.Namespace) -> dict[str, pathlib.Path]:
  """The ``--from METHOD=DIR`` folders by method."""
  folders = {}
  for source in args.sources:
    method, sep, folder = source.partition("=")
    if not sep or method not in args.method_list or method == "clean":
      raise common.UsageError(
          f"--from {source!r}: expected METHOD=DIR with METHOD one of the "
          "crafted --methods")
    folders[method] = pathlib.Path(folder)
  return folders


def _common_flags(args: argparse.Namespace) -> list[str]:
  flags = ["--dataset", args.dataset, "--seed", str(args.seed)]
  if args.data_dir:
    flags += ["--data-dir", args.data_dir]
  if args.widths:
    flags += ["--widths", ",".join(map(str, args.widths))]
  return flags


def craft_argv(args: argparse.Namespace, method: str, out: pathlib.Path
               ) -> list[str]:
  """The `experiments.craft` command line of one method."""
  argv = ["--out", str(out), "--method", method,
          "--epsilon", repr(args.epsilon)] + _common_flags(args)
  if args.train_size:
    argv += ["--train-size", str(args.train_size)]
  if method.startswith("em-"):
    argv += ["--max-rounds", str(args.max_rounds)]
  elif method == "rem":
    for name in craft.REM_FLAGS:
      if getattr(args, name) is not None:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
  elif method.startswith("error-max"):
    argv += ["--clean-epochs", str(args.clean_epochs),
             "--pgd-steps", str(args.error_max_steps)]
  return argv


def victim_argv(args: argparse.Namespace, training: str,
                released: pathlib.Path | None, out: pathlib.Path
                ) -> list[str]:
  """The `experiments.evaluate` command line of one cell."""
  argv = ["--out", str(out), "--epochs", str(args.epochs), "--seeds",
          str(args.seeds)] + _common_flags(args)
  if released is None:
    argv += ["--clean"] + (["--train-size", str(args.train_size)]
                           if args.train_size else [])
  else:
    argv += ["--released", str(released)]
  if training == "adversarial":
    argv += ["--adversarial", "--adv-radius", repr(args.rho_a),
             "--adv-steps", str(args.adv_steps)]
  return argv


def run_cached(script, argv: list[str], out: pathlib.Path) -> dict[str, Any]:
  """Runs ``script.main(argv)`` unless ``out`` holds a finished run of the
  same command line; returns its results.json."""
  marker = out / "cell.json"
  if marker.exists():
    saved = json.loads(marker.read_text())
    if saved["argv"] != argv:
      raise common.UsageError(
          f"{out} holds a run with other settings ({' '.join(saved['argv'])}"
          "); use another --out")
    return json.loads((out / "results.json").read_text())
  results = script.main(argv)
  checkpoint.write_json(marker, {"argv": argv})
  return results


def markdown(results: dict[str, Any]) -> str:
  """The method x training table in markdown (mean +- std over seeds)."""
  rho_a = common.epsilon_label(results["rho_a"])
  lines = [f"| method | standard training | adversarial training "
           f"(rho_a = {rho_a}) | crafting wall time (s) |",
           "|---|---|---|---|"]
  for method, cells in results["victim_accuracy"].items():
    row = [method]
    for training in TRAININGS:
      std = results["victim_accuracy_std"][method][training]
      row.append(f"{cells[training]:.3f} +- {std:.3f}")
    seconds = results["craft_wall_seconds"].get(method)
    row.append("-" if seconds is None else f"{seconds:.0f}")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  lines.append(
      f"Clean test accuracy of victims (small CNN {results['model']['widths']}"
      f", {results['epochs']} epochs, mean over {results['seeds']} seeds) "
      f"trained on {results['train_size']} protected "
      f"{results['dataset']} images; eps = rho_u = "
      f"{common.epsilon_label(results['epsilon'])}; adversarial training: "
      f"{results['adversarial_training']['steps']} PGD steps of rho_a / 5. "
      f"REM: {results['rem']['rem_train_steps']} surrogate steps, "
      f"{results['rem']['noise_steps']} noise steps, K = "
      f"{results['rem']['eot_draws']}, {results['rem']['attack_steps']} "
      "inner steps.")
  return "\n".join(lines) + "\n"


@common.cli
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  sources = source_dirs(args)
  accuracy, spread, per_seed, crafted, craft_seconds = {}, {}, {}, {}, {}
  train_size = None
  for method in args.method_list:
    released = None
    if method in sources:
      released = sources[method]
      crafted[method] = json.loads((released / "results.json").read_text())
    elif method != "clean":
      released = args.out / "craft" / method
      print(f"== crafting {method}")
      crafted[method] = run_cached(craft, craft_argv(args, method, released),
                                   released)
    if method in crafted:
      info = crafted[method]
      train_size = train_size or info["train_size"]
      summary = info.get("craft") or {}
      craft_seconds[method] = summary.get("craft_seconds_total",
                                          info["wall_seconds"]["craft"])
    accuracy[method], spread[method], per_seed[method] = {}, {}, {}
    for training in TRAININGS:
      out = args.out / "victims" / f"{method}-{training}"
      print(f"== victims: {method}, {training} training")
      victims = run_cached(evaluate,
                           victim_argv(args, training, released, out),
                           out)
      accuracy[method][training] = victims["victim_accuracy"]
      spread[method][training] = victims["victim_accuracy_std"]
      per_seed[method][training] = victims["victim_accuracy_per_seed"]
      train_size = train_size or victims["train_size"]
  results = {
      "victim_accuracy": accuracy,
      "victim_accuracy_std": spread,
      "victim_accuracy_per_seed": per_seed,
      "craft_wall_seconds": craft_seconds,
      "craft": {m: {"wall_seconds": c["wall_seconds"], **(c.get("craft")
                                                          or {})}
                for m, c in crafted.items()},
      "dataset": args.dataset, "train_size": train_size,
      "epsilon": args.epsilon, "rho_a": args.rho_a,
      "epochs": args.epochs, "seeds": args.seeds,
      "model": {"name": "small_cnn",
                "widths": list(args.widths) if args.widths else [64, 128,
                                                                 256]},
      "adversarial_training": {"radius": args.rho_a,
                               "steps": args.adv_steps,
                               "step_size": args.rho_a / 5},
      "rem": {name: getattr(args, name) for name in craft.REM_FLAGS},
      "error_max": {"clean_epochs": args.clean_epochs,
                    "pgd_steps": args.error_max_steps},
      "wall_seconds": {"total_this_invocation":
                       round(time.perf_counter() - start, 1)},
      **common.metadata(args),
  }
  checkpoint.write_json(args.out / "results.json", results)
  table = markdown(results)
  (args.out / "table.md").write_text(table)
  print(table)
  return results


if __name__ == "__main__":
  main()
