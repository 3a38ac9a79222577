"""Weight-recovery attack on a model trained on protected data.

    python -m experiments.recover --checkpoint runs/em-cw/surrogate \\
        --out runs/em-cw/recover

Wang et al., "Provably Unlearnable Data Examples", NDSS 2025 (arXiv
2405.03316), recovery attack section. Starting from the checkpoint's θ0, the
attacker fine-tunes on a stratified ``--fraction`` (20%) of the clean
training set with projected SGD inside ‖θ − θ0‖₂ ≤ η, for every η of
``--etas``; the random variant keeps the best of ``--random-directions``
Gaussian directions of norm η, chosen on the same clean subset. Both report
clean test accuracy against η. Writes ``results.json`` and
``recovery_curve.png``.

The default η grid (0.25 ... 8) spans about 2% to 60% of ‖θ0‖ for the CPU
small CNN (16/32/64 widths, ‖θ0‖ of order 10-20); ‖θ0‖ is printed and
recorded so the grid can be read relative to it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import pathlib

import jax
import numpy as np

from experiments import common
from experiments import figures
from jaxue import checkpoint
from jaxue import data as data_lib
from jaxue import recover
from jaxue import train

DEFAULT_ETAS = "0.25,0.5,1,2,4,8"


def fraction_arg(text: str) -> float:
  value = common.parse_fraction(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"fraction must be in (0, 1], got {text}")
  return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m experiments.recover", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", type=pathlib.Path, required=True,
                 help="model checkpoint (jaxue.checkpoint.save_model) of θ0")
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--etas", type=common.etas_arg,
                 default=common.etas_arg(DEFAULT_ETAS),
                 help=f"radii η (default {DEFAULT_ETAS})")
  p.add_argument("--fraction", type=fraction_arg, default=0.2,
                 help="stratified fraction of the clean training set the "
                 "attacker holds")
  p.add_argument("--epochs", type=common.positive_int,
                 default=recover.DEFAULT_EPOCHS)
  p.add_argument("--batch-size", type=common.positive_int, default=128)
  p.add_argument("--learning-rate", type=common.positive_float,
                 default=0.01)
  p.add_argument("--weight-decay", type=float, default=5e-4)
  p.add_argument("--project", choices=recover.PROJECTIONS, default="ball",
                 help="'sphere' reproduces the reference code's quirk")
  p.add_argument("--random-directions", type=common.nonnegative_int, default=64,
                 help="directions per η for the random variant (0: skip)")
  p.add_argument("--chunk-size", type=common.positive_int, default=None,
                 help="random directions vmapped together (default: 1 on "
                 "CPU, 16 on accelerators)")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


@common.cli
def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = args.out
  timer = common.Timer()
  with timer("load"):
    model, variables0, description = checkpoint.load_model(args.checkpoint)
    ds = common.load_data(args.dataset, args.data_dir, None, args.seed)
  x_train, y_train = ds["train"]
  x_test, y_test = ds["test"]
  if tuple(description["input_shape"]) != tuple(x_train.shape[1:]):
    raise ValueError(
        f"the checkpoint's model takes {tuple(description['input_shape'])} "
        f"images but {ds['name']} has {x_train.shape[1:]}: pass the matching "
        "--dataset")
  if model.num_classes != ds["num_classes"]:
    raise ValueError(f"the checkpoint's model has {model.num_classes} "
                     f"classes, {ds['name']} has {ds['num_classes']}")
  key = jax.random.key(args.seed)
  subset_key, sgd_key, random_key = jax.random.split(key, 3)
  indices = data_lib.stratified_subset(subset_key, y_train, args.fraction,
                                       num_classes=ds["num_classes"])
  recovery_set = (x_train[indices], y_train[indices])
  test_set = (x_test, y_test)
  if len(indices) < args.batch_size:
    raise ValueError(
        f"the recovery set has {len(indices)} images, fewer than "
        f"--batch-size {args.batch_size}")
  out.mkdir(parents=True, exist_ok=True)

  theta0_norm = float(np.sqrt(sum(  # On the host: no compilations.
      np.sum(np.square(np.asarray(x, np.float64)))
      for x in jax.tree.leaves(variables0["params"]))))
  theta0_accuracy = train.evaluate(model.apply, variables0, *test_set)
  print(f"θ0: {model.name}, ‖θ0‖₂ = {theta0_norm:.3f}, clean test accuracy "
        f"{theta0_accuracy:.4f}; recovery set {len(indices)} images "
        f"({args.fraction:g} of {len(y_train)})")

  with timer("recovery"):
    curve = recover.recovery_curve(
        sgd_key, model, variables0, recovery_set, test_set, etas=args.etas,
        epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        project=args.project)
  randoms, random_detail = [], []
  if args.random_directions:
    with timer("random_directions"):
      for eta in args.etas:
        r = recover.random_direction_recovery(
            random_key, model, variables0, recovery_set, test_set, eta=eta,
            num_directions=args.random_directions,
            chunk_size=args.chunk_size)
        randoms.append((eta, r["test_accuracy"]))
        random_detail.append({
            "eta": eta, "best_index": r["best_index"],
            "selection_accuracy": r["selection_accuracy"],
            "mean_selection_accuracy": float(
                r["selection_accuracies"].mean()),
            "test_accuracy": r["test_accuracy"]})

  rows = []
  random_by_eta = dict(randoms)
  for eta, acc in curve:
    rnd = random_by_eta.get(eta)
    rows.append([f"{eta:g}", f"{eta / theta0_norm:.3f}", f"{acc:.4f}",
                 "-" if rnd is None else f"{rnd:.4f}"])
  common.print_table(rows, ["eta", "eta/‖θ0‖", "projected SGD",
                            "random best"])
  series = {f"projected SGD ({args.project})": curve,
            "θ0 (no recovery)": [(eta, theta0_accuracy)
                                 for eta in args.etas]}
  if randoms:
    series[f"best of {args.random_directions} random directions"] = randoms
  figures.line_plot(out / "recovery_curve.png", series, xlabel="η",
                    ylabel="clean test accuracy",
                    title=f"weight recovery from {args.checkpoint.name} "
                    f"(‖θ0‖ = {theta0_norm:.2f})")
  results = {
      "recovery": [[eta, acc] for eta, acc in curve],
      "random_directions": [[eta, acc] for eta, acc in randoms],
      "random_directions_detail": random_detail,
      "theta0_accuracy": theta0_accuracy,
      "theta0_norm": theta0_norm,
      "checkpoint": str(args.checkpoint),
      "model": model.name,
      "checkpoint_description": description,
      "dataset": ds["name"],
      "recovery_size": len(indices), "test_size": len(y_test),
      "fraction": args.fraction, "epochs": args.epochs,
      "batch_size": args.batch_size, "learning_rate": args.learning_rate,
      "weight_decay": args.weight_decay, "project": args.project,
      "num_directions": args.random_directions,
      "wall_seconds": dict(timer.seconds),
      **common.metadata(args),
  }
  checkpoint.write_json(out / "results.json", results)
  print(f"wrote {out / 'results.json'}")
  return results


if __name__ == "__main__":
  main()
